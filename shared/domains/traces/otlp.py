"""OTLP/HTTP for traces (spec v1.11, ``POST /v1/traces``): bytes in, normalised spans out, replies back.

Pure: no storage, no HTTP framework. The transport calls, in order,

* :func:`decompress` with the ``Content-Encoding`` (``identity``, ``gzip``, ``deflate``,
  or several of them comma-separated) and the body cap: the body is inflated in
  chunks of at most :data:`DECOMPRESS_CHUNK` bytes and refused (:class:`~shared.errors.TooLarge`)
  as soon as the output passes the cap, so a gzip bomb costs at most cap plus one
  chunk of memory, never its full inflated size;
* :func:`decode_request` with the ``Content-Type``: ``application/x-protobuf`` (an
  ``ExportTraceServiceRequest``) or ``application/json`` (OTLP JSON: trace and span
  ids as hex, enums as integers or names, 64-bit integers as strings or numbers,
  unknown fields ignored). It returns :class:`Decoded`: the spans to store and
  the spans refused one by one (:class:`~shared.domains.traces.models.RejectedSpan`);
* :func:`encode_response` (an ``ExportTraceServiceResponse``, ``partial_success`` set
  only when spans were refused) or, for a failed request, :func:`encode_status`
  (a ``google.rpc.Status``), each in the request's encoding (:func:`reply_content_type`).

Errors: a body that is not the message it claims to be is :class:`OtlpDecodeError`
(400), a corrupt or truncated compressed stream InvalidInput (400); an unsupported
Content-Type or Content-Encoding is :class:`UnsupportedMediaType` (415); over the cap
is TooLarge (413). Nothing here keeps state between calls, so a failure leaves
nothing behind; a request is either an exception or a full :class:`Decoded`.

Normalisation (one rule set for OTLP and the producer API, :func:`new_span` and
:func:`span_problem`):

* ids are lowercase hex; a trace id of other than 16 bytes, a span id of other than
  8, or an all-zero one refuses the span, and so does, in OTLP JSON, an id that is
  not hex (the rest of the request still decodes). An empty or all-zero parent span
  id means a root span. A link's ids may be empty (a link to an invalid context is
  allowed by the API spec) but not of a wrong length.
* a span must have a start time (not 0) and end at or after it.
* attribute values become JSON values (:mod:`~shared.domains.traces.models`): ints
  exact, bytes as ``{"bytes": "<base64>"}``, arrays as lists, kvlists as objects,
  an empty value as null, and the doubles NaN/Infinity/-Infinity (which JSON
  cannot hold) as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, the
  proto3 JSON mapping's own spelling of them. A repeated key keeps its last value.
* limits (models.py) refuse the span, naming the rule: more than MAX_ATTRIBUTES span
  attributes (resource, event and link attributes counted apart, with the same
  limit), events or links over their limits, a key over MAX_ATTRIBUTE_KEY_LENGTH,
  a value over MAX_ATTRIBUTE_VALUE_BYTES as JSON, the whole span over MAX_SPAN_BYTES
  (the sum of its texts and attribute keys and values as JSON, resource included),
  and any first-class text (name, event names, service, component, resource,
  session, user and the GenAI strings) over MAX_NAME_LENGTH characters. A resource
  that breaks a limit refuses each of its spans.
* ``service_name`` is the resource's ``service.name``. ``resource`` is ``stowage.resource``
  (span, then resource attributes), else ``enduser.id`` (span, then resource).
  ``component`` is ``stowage.component`` (span, then resource), else the scope name,
  else the service name. ``session_id`` is ``session.id`` (span, then resource),
  else ``gen_ai.conversation.id``. ``user_id`` is ``user.id`` or else ``enduser.id``
  on the span, else the same two on the resource. These take a string, or an integer as its decimal
  text; other types and empty strings count as absent.
* GenAI fields come from span attributes only (:data:`GENAI_STRING_ATTRIBUTES`,
  :data:`GENAI_TOKEN_ATTRIBUTES`); a deprecated name is read only when the current
  one is absent. A token count that is not a non-negative integer leaves the field
  unset; the attribute itself is kept as sent either way.
* an unknown span kind is ``unspecified``, an unknown status code ``unset``.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.domains.traces.models import (
    MAX_ATTRIBUTE_KEY_LENGTH,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_EVENTS,
    MAX_LINKS,
    MAX_NAME_LENGTH,
    MAX_SPAN_BYTES,
    SPAN_ID_HEX_LENGTH,
    TRACE_ID_HEX_LENGTH,
    GenAI,
    RejectedSpan,
    Span,
    SpanEvent,
    SpanKind,
    SpanLink,
    StatusCode,
)
from shared.errors import InvalidInput, TooLarge, UnsupportedMediaType
from shared.jsonvalues import parse_client_json

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2

# protobuf and the generated OTLP messages are imported by the functions that decode and encode,
# not here: the span rules (new_span, span_problem) serve the producer API too, and importing this
# module on a cold start should not cost the protobuf runtime.

#: Largest piece of output one decompression step may produce: the memory a bomb can cost above the cap.
DECOMPRESS_CHUNK = 64 * 1024
#: Reasons quoted in a partial-success message; the rest are counted.
REASONS_IN_MESSAGE = 5


class OtlpFormat(enum.StrEnum):
    """The two encodings of OTLP/HTTP, by their media type (also the reply's Content-Type)."""

    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"


class OtlpDecodeError(InvalidInput):
    """The body is not the OTLP message its Content-Type claims (400): nothing of it was stored."""

    title = "Undecodable OTLP data"
    type_slug = "otlp-undecodable"


@dataclass(frozen=True)
class Decoded:
    """An export request, decoded: the spans to store and those refused, with their reasons, in request order."""

    spans: list[Span] = field(default_factory=list)
    rejected: list[RejectedSpan] = field(default_factory=list)


# --------------------------------------------------------------------------- content types and encodings


def otlp_format(content_type: str | None) -> OtlpFormat:
    """The encoding a Content-Type names (parameters such as ``charset`` ignored); UnsupportedMediaType otherwise."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    for known in OtlpFormat:
        if media_type == known.value:
            return known
    raise UnsupportedMediaType(
        f"Content-Type {content_type!r} is not an OTLP encoding; send {OtlpFormat.PROTOBUF.value} "
        f"(ExportTraceServiceRequest) or {OtlpFormat.JSON.value} (OTLP JSON)")


def reply_content_type(request_content_type: str | None) -> str:
    """The Content-Type of a reply to a request of this Content-Type: the same encoding, protobuf if unknown."""
    try:
        return otlp_format(request_content_type).value
    except UnsupportedMediaType:
        return OtlpFormat.PROTOBUF.value


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``body`` with its Content-Encoding undone, at most ``limit`` bytes.

    Codings: ``identity`` (or none), ``gzip`` (``x-gzip``; concatenated members are
    read as one stream, as gzip does) and ``deflate`` (zlib-wrapped as HTTP says, or
    raw as some clients send it); a list applies them in the order given, so they
    are undone in reverse. Over ``limit`` at any step: TooLarge, found after at most
    ``limit`` + :data:`DECOMPRESS_CHUNK` bytes of output. A corrupt or truncated
    stream: InvalidInput. Another coding: UnsupportedMediaType.
    """
    codings = [part.strip().lower() for part in (content_encoding or "").split(",")]
    codings = [coding for coding in codings if coding and coding != "identity"]
    for coding in codings:
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise UnsupportedMediaType(f"Content-Encoding {content_encoding!r} is not supported; "
                                       "send the body as is, or with gzip or deflate")
    data = body
    if len(data) > limit:
        raise TooLarge(f"the request body is {len(data)} bytes, over the limit of {limit}")
    for coding in reversed(codings):
        data = _inflate(data, coding, limit)
    return data


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    """One coding undone, in chunks, stopping as soon as the output passes ``limit``."""
    output: list[bytes] = []
    produced = 0
    pending = data
    first = True
    while first or pending:
        if coding == "deflate":
            wbits = zlib.MAX_WBITS if _looks_like_zlib(pending) else -zlib.MAX_WBITS
        else:
            wbits = 16 + zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            while not inflater.eof:
                chunk = inflater.decompress(pending, DECOMPRESS_CHUNK)
                pending = inflater.unconsumed_tail
                produced += len(chunk)
                if produced > limit:
                    raise TooLarge(f"the request body inflates to more than {limit} bytes ({coding}), over the limit")
                output.append(chunk)
                if not chunk and not pending:
                    break
        except zlib.error as exc:
            raise InvalidInput(f"the request body is not valid {coding} data: {exc}") from None
        if not inflater.eof:
            raise InvalidInput(f"the request body is truncated {coding} data (the stream does not end)")
        pending = inflater.unused_data
        first = False
        if coding == "deflate" and pending:
            raise InvalidInput(f"the request body has {len(pending)} bytes after the end of its deflate stream")
    return b"".join(output)


def _looks_like_zlib(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib header (RFC 1950: method 8, check bits), not a raw deflate block."""
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


# --------------------------------------------------------------------------- decoding


def decode_request(body: bytes, content_type: str | None) -> Decoded:
    """Decode an ``ExportTraceServiceRequest`` (protobuf or OTLP JSON, by ``content_type``) into spans.

    Each span is normalised and checked on its own (module docstring): those that
    break a rule are in ``rejected`` with the reason, the rest in ``spans``, both in
    request order. OtlpDecodeError if the body is not such a message at all;
    UnsupportedMediaType for another Content-Type.
    """
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    encoding = otlp_format(content_type)
    request = trace_service_pb2.ExportTraceServiceRequest()
    invalid_ids: dict[tuple[int, int, int], _InvalidIds] = {}
    if encoding is OtlpFormat.PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpDecodeError(f"the body is not a protobuf ExportTraceServiceRequest ({exc}); "
                                  f"send {OtlpFormat.JSON.value} for OTLP JSON") from None
    else:
        try:
            document = parse_client_json(body, what="the OTLP JSON body")
        except InvalidInput as exc:
            raise OtlpDecodeError(str(exc)) from None
        if not isinstance(document, dict):
            raise OtlpDecodeError("the OTLP JSON body must be an object (an ExportTraceServiceRequest), "
                                  f"not {type(document).__name__}")
        invalid_ids = _hex_ids_to_base64(document)
        try:
            json_format.ParseDict(document, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise OtlpDecodeError(f"the body is not an OTLP JSON ExportTraceServiceRequest: {exc}") from None
    return _normalise(request, invalid_ids)


@dataclass(frozen=True)
class _InvalidIds:
    """Ids of one OTLP JSON span that were not hex: as sent, and why."""

    trace_id: str
    span_id: str
    reason: str


_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_ID_FIELDS = (("traceId", "trace_id", "trace id"), ("spanId", "span_id", "span id"),
              ("parentSpanId", "parent_span_id", "parent span id"))


def _members(container: Any, *names: str) -> list[Any]:
    """The list under the first of ``names`` that ``container`` (a JSON object) has; [] if none is a list."""
    if isinstance(container, dict):
        for name in names:
            value = container.get(name)
            if isinstance(value, list):
                return value
    return []


def _hex_ids_to_base64(document: dict[str, Any]) -> dict[tuple[int, int, int], _InvalidIds]:
    """Rewrite OTLP JSON's hex ids in place as the base64 protobuf's JSON mapping reads for bytes.

    An id that is not hex becomes empty (so the document still parses) and is
    reported, by the span's (resource, scope, span) position, to refuse that span alone.
    """
    invalid: dict[tuple[int, int, int], _InvalidIds] = {}
    for r, resource_spans in enumerate(_members(document, "resourceSpans", "resource_spans")):
        for s, scope_spans in enumerate(_members(resource_spans, "scopeSpans", "scope_spans")):
            for i, span in enumerate(_members(scope_spans, "spans")):
                if not isinstance(span, dict):
                    continue  # ParseDict says what is wrong with it
                problems: list[str] = []
                sent = {label: span.get(camel, span.get(snake)) for camel, snake, label in _ID_FIELDS}
                _rewrite_ids(span, _ID_FIELDS, problems, "")
                for link in _members(span, "links"):
                    if isinstance(link, dict):
                        _rewrite_ids(link, _ID_FIELDS[:2], problems, "link ")
                if problems:
                    invalid[(r, s, i)] = _InvalidIds(_as_sent(sent["trace id"]), _as_sent(sent["span id"]),
                                                     "; ".join(problems))
    return invalid


def _rewrite_ids(holder: dict[str, Any], fields: Iterable[tuple[str, str, str]], problems: list[str],
                 prefix: str) -> None:
    for camel, snake, label in fields:
        for name in (camel, snake):
            value = holder.get(name)
            if value is None:
                continue
            if isinstance(value, str) and _HEX.fullmatch(value):
                holder[name] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            else:
                problems.append(f"{prefix}{label} {_shown(value)} is not hex")
                holder[name] = ""


def _as_sent(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else json.dumps(value)


def _shown(value: Any, limit: int = 40) -> str:
    """A value for a message, shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


#: ``Span.SpanKind`` and ``Status.StatusCode`` by their numbers in trace.proto (fixed by the spec).
_KINDS: dict[int, SpanKind] = {
    0: SpanKind.UNSPECIFIED, 1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER, 5: SpanKind.CONSUMER,
}
_STATUS_CODES: dict[int, StatusCode] = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}


def _normalise(request: trace_service_pb2.ExportTraceServiceRequest,
               invalid_ids: Mapping[tuple[int, int, int], _InvalidIds]) -> Decoded:
    decoded = Decoded()
    for r, resource_spans in enumerate(request.resource_spans):
        resource_attributes = attributes_to_json(resource_spans.resource.attributes)
        service = resource_attributes.get("service.name")
        service_name = service if isinstance(service, str) and service else None
        resource_problem, resource_size = attributes_problem(resource_attributes, "resource")
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope
            for i, otlp_span in enumerate(scope_spans.spans):
                invalid = invalid_ids.get((r, s, i))
                problem = resource_problem or (invalid.reason if invalid else None) or _ids_problem(otlp_span)
                span = None
                if problem is None:
                    span = _span_of(otlp_span, resource_attributes, service_name, scope.name, scope.version)
                    problem = span_problem(span, resource_size=resource_size)
                if span is not None and problem is None:
                    decoded.spans.append(span)
                else:
                    decoded.rejected.append(RejectedSpan(
                        trace_id=invalid.trace_id if invalid else otlp_span.trace_id.hex(),
                        span_id=invalid.span_id if invalid else otlp_span.span_id.hex(),
                        reason=problem or "invalid span"))
    return decoded


def _ids_problem(span: trace_pb2.Span) -> str | None:
    """Why the span's ids cannot be stored as hex of the right length, or None (span_problem checks the rest)."""
    for name, value, size in (("trace id", span.trace_id, TRACE_ID_HEX_LENGTH // 2),
                              ("span id", span.span_id, SPAN_ID_HEX_LENGTH // 2)):
        if len(value) != size:
            return f"{name} is {len(value)} bytes, not {size}"
    if len(span.parent_span_id) not in (0, SPAN_ID_HEX_LENGTH // 2):
        return f"parent span id is {len(span.parent_span_id)} bytes, not {SPAN_ID_HEX_LENGTH // 2} (or empty for a root)"
    for link in span.links:
        for name, value, size in (("link trace id", link.trace_id, TRACE_ID_HEX_LENGTH // 2),
                                  ("link span id", link.span_id, SPAN_ID_HEX_LENGTH // 2)):
            if len(value) not in (0, size):
                return f"{name} is {len(value)} bytes, not {size}"
    return None


def _span_of(span: trace_pb2.Span, resource_attributes: dict[str, Any], service_name: str | None,
             scope_name: str, scope_version: str) -> Span:
    """The normalised Span of an OTLP span whose ids are valid."""
    parent = span.parent_span_id
    return new_span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=parent.hex() if any(parent) else None,
        name=span.name,
        kind=_KINDS.get(span.kind, SpanKind.UNSPECIFIED),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status_code=_STATUS_CODES.get(span.status.code, StatusCode.UNSET),
        status_message=span.status.message,
        service_name=service_name,
        resource_attributes=resource_attributes,
        attributes=attributes_to_json(span.attributes),
        events=tuple(SpanEvent(name=event.name, time_ns=event.time_unix_nano,
                               attributes=attributes_to_json(event.attributes),
                               dropped_attributes_count=event.dropped_attributes_count)
                     for event in span.events),
        links=tuple(SpanLink(trace_id=link.trace_id.hex(), span_id=link.span_id.hex(), trace_state=link.trace_state,
                             attributes=attributes_to_json(link.attributes),
                             dropped_attributes_count=link.dropped_attributes_count)
                    for link in span.links),
        scope_name=scope_name,
        scope_version=scope_version,
        trace_state=span.trace_state,
        flags=span.flags,
        dropped_attributes_count=span.dropped_attributes_count,
        dropped_events_count=span.dropped_events_count,
        dropped_links_count=span.dropped_links_count,
    )


def attributes_to_json(attributes: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    """OTLP attributes as a dict of JSON values (module docstring); a repeated key keeps its last value."""
    return {pair.key: any_value_to_json(pair.value) for pair in attributes}


def any_value_to_json(value: common_pb2.AnyValue) -> Any:
    """One OTLP ``AnyValue`` as a JSON value (module docstring). Nesting is bounded by protobuf's recursion limit."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        number = value.double_value
        if math.isfinite(number):
            return number
        return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"
    if kind == "bytes_value":
        return {"bytes": base64.b64encode(value.bytes_value).decode("ascii")}
    if kind == "array_value":
        return [any_value_to_json(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_to_json(value.kvlist_value.values)
    return None


# --------------------------------------------------------------------------- the rules every span follows

#: Span attributes read into the GenAI fields of the same name: field -> current name, deprecated names.
GENAI_STRING_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "operation_name": ("gen_ai.operation.name",),
    "provider_name": ("gen_ai.provider.name", "gen_ai.system"),
    "request_model": ("gen_ai.request.model",),
    "response_model": ("gen_ai.response.model",),
    "conversation_id": ("gen_ai.conversation.id",),
    "agent_name": ("gen_ai.agent.name",),
    "agent_id": ("gen_ai.agent.id",),
    "tool_name": ("gen_ai.tool.name",),
}
#: Token counts: field -> current name, deprecated names. Only non-negative integers are taken.
GENAI_TOKEN_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "cached_input_tokens": ("gen_ai.usage.cache_read.input_tokens",),
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens",),
}


def _text(value: Any) -> str | None:
    """An identifying attribute's value as text: a non-empty string, or an integer's decimal digits; else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _first_text(names: Sequence[str], *attribute_sets: Mapping[str, Any]) -> str | None:
    """The first usable text among ``names``, trying every name in each attribute set before the next set."""
    for attributes in attribute_sets:
        for name in names:
            text = _text(attributes.get(name))
            if text is not None:
                return text
    return None


def genai_of(attributes: Mapping[str, Any]) -> GenAI:
    """The GenAI fields of a span's attributes (current names first, then the deprecated ones)."""
    fields: dict[str, Any] = {}
    for name, keys in GENAI_STRING_ATTRIBUTES.items():
        fields[name] = _first_text(keys, attributes)
    for name, keys in GENAI_TOKEN_ATTRIBUTES.items():
        present = [attributes[key] for key in keys if key in attributes]
        count = present[0] if present else None
        fields[name] = count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None
    return GenAI(**fields)


def new_span(*, trace_id: str, span_id: str, parent_span_id: str | None, name: str, kind: SpanKind,
             start_ns: int, end_ns: int, status_code: StatusCode = StatusCode.UNSET, status_message: str = "",
             service_name: str | None = None, resource_attributes: dict[str, Any] | None = None,
             attributes: dict[str, Any] | None = None, events: tuple[SpanEvent, ...] = (),
             links: tuple[SpanLink, ...] = (), scope_name: str = "", scope_version: str = "",
             trace_state: str = "", flags: int = 0, dropped_attributes_count: int = 0,
             dropped_events_count: int = 0, dropped_links_count: int = 0) -> Span:
    """A Span with its derived fields (resource, component, session, user, GenAI) filled by the module's rules.

    Checks nothing: :func:`span_problem` says whether the result may be stored.
    """
    span_attributes = attributes if attributes is not None else {}
    resource_set = resource_attributes if resource_attributes is not None else {}
    genai = genai_of(span_attributes)
    return Span(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id, name=name, kind=kind,
        start_ns=start_ns, end_ns=end_ns, status_code=status_code, status_message=status_message,
        service_name=service_name, resource_attributes=resource_set, attributes=span_attributes,
        events=events, links=links, scope_name=scope_name, scope_version=scope_version,
        trace_state=trace_state, flags=flags, dropped_attributes_count=dropped_attributes_count,
        dropped_events_count=dropped_events_count, dropped_links_count=dropped_links_count,
        resource=(_first_text(("stowage.resource",), span_attributes, resource_set)
                  or _first_text(("enduser.id",), span_attributes, resource_set)),
        component=(_first_text(("stowage.component",), span_attributes, resource_set)
                   or scope_name or service_name or None),
        session_id=_first_text(("session.id",), span_attributes, resource_set) or genai.conversation_id,
        user_id=_first_text(("user.id", "enduser.id"), span_attributes, resource_set),
        genai=genai,
    )


def _json_size(value: Any) -> int | None:
    """Bytes of ``value`` as compact UTF-8 JSON; None if it is not a JSON value.

    Scalars are sized without serialising them (most attributes are short strings
    and numbers); a string is exact unless it holds characters JSON escapes, which
    count as one byte each here: at most a few bytes under the stored size.
    """
    if isinstance(value, str):
        try:
            return len(value.encode("utf-8")) + 2
        except UnicodeEncodeError:  # a lone surrogate: not text JSON can carry
            return None
    if value is None or isinstance(value, bool):
        return 4 if value is not False else 5
    if isinstance(value, int):
        return len(str(value)) if value.bit_length() <= 64 else _serialised_size(value)
    return _serialised_size(value)


def _serialised_size(value: Any) -> int | None:
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError):
        return None


def attributes_problem(attributes: Mapping[str, Any], what: str) -> tuple[str | None, int]:
    """(why ``attributes`` break a limit or None, their size in bytes as JSON keys and values)."""
    if len(attributes) > MAX_ATTRIBUTES:
        return f"{what} has {len(attributes)} attributes, over the limit of {MAX_ATTRIBUTES}", 0
    total = 0
    for key, value in attributes.items():
        if len(key) > MAX_ATTRIBUTE_KEY_LENGTH:
            return (f"{what} attribute key {_shown(key)} is {len(key)} characters, "
                    f"over the limit of {MAX_ATTRIBUTE_KEY_LENGTH}"), 0
        size = _json_size(value)
        if size is None:
            return f"{what} attribute {_shown(key)} is not a JSON value", 0
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            return (f"{what} attribute {_shown(key)} is {size} bytes as JSON, "
                    f"over the limit of {MAX_ATTRIBUTE_VALUE_BYTES}"), 0
        total += len(key.encode("utf-8", "surrogatepass")) + size
    return None, total


def span_problem(span: Span, *, resource_size: int | None = None) -> str | None:
    """Why ``span`` cannot be stored (the first rule it breaks), or None if it can.

    ``resource_size``: the size of its resource attributes when the caller has
    already checked them (once per OTLP resource); otherwise they are checked here.
    """
    for name, value, length in (("trace id", span.trace_id, TRACE_ID_HEX_LENGTH),
                                ("span id", span.span_id, SPAN_ID_HEX_LENGTH)):
        if len(value) != length or not _HEX.fullmatch(value) or value != value.lower():
            return f"{name} {_shown(value)} is not {length} lowercase hex digits"
        if not value.strip("0"):
            return f"{name} is all zeros"
    if span.start_ns <= 0:
        return "the span has no start time"
    if span.end_ns < span.start_ns:
        return f"the span ends ({span.end_ns} ns) before it starts ({span.start_ns} ns)"
    texts: dict[str, str | None] = {
        "name": span.name, "service name": span.service_name, "component": span.component,
        "resource": span.resource, "session id": span.session_id, "user id": span.user_id,
        **{name.replace("_", " "): getattr(span.genai, name) for name in GENAI_STRING_ATTRIBUTES},
    }
    for what, text in texts.items():
        if text is not None and len(text) > MAX_NAME_LENGTH:
            return f"{what} is {len(text)} characters, over the limit of {MAX_NAME_LENGTH}"
    if len(span.events) > MAX_EVENTS:
        return f"the span has {len(span.events)} events, over the limit of {MAX_EVENTS}"
    if len(span.links) > MAX_LINKS:
        return f"the span has {len(span.links)} links, over the limit of {MAX_LINKS}"
    if resource_size is None:
        problem, resource_size = attributes_problem(span.resource_attributes, "resource")
        if problem:
            return problem
    problem, total = attributes_problem(span.attributes, "span")
    if problem:
        return problem
    total += resource_size + len(span.name.encode("utf-8", "surrogatepass")) + len(span.status_message)
    for index, event in enumerate(span.events):
        if len(event.name) > MAX_NAME_LENGTH:
            return f"event {index} name is {len(event.name)} characters, over the limit of {MAX_NAME_LENGTH}"
        problem, size = attributes_problem(event.attributes, f"event {index} ({_shown(event.name)})")
        if problem:
            return problem
        total += size + len(event.name)
    for index, link in enumerate(span.links):
        problem, size = attributes_problem(link.attributes, f"link {index}")
        if problem:
            return problem
        total += size + len(link.trace_state)
    if total > MAX_SPAN_BYTES:
        return f"the span is about {total} bytes as JSON, over the limit of {MAX_SPAN_BYTES}"
    return None


# --------------------------------------------------------------------------- replies

#: google.rpc.Code of an HTTP status (the mapping google/rpc/code.proto documents; 413 and 415 as
#: INVALID_ARGUMENT: the request cannot succeed as sent). Anything else 4xx: INVALID_ARGUMENT; 5xx: UNKNOWN.
_RPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 413: 3, 415: 3, 429: 8, 499: 1, 500: 13,
              501: 12, 502: 14, 503: 14, 504: 4}


def _serialise(message: Message, content_type: str | None) -> bytes:
    from google.protobuf import json_format

    if reply_content_type(content_type) == OtlpFormat.JSON.value:
        as_dict = json_format.MessageToDict(message)
        return json.dumps(as_dict, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return message.SerializeToString()


def encode_response(rejected: Sequence[RejectedSpan], content_type: str | None) -> bytes:
    """The ``ExportTraceServiceResponse`` of a stored request, in the request's encoding.

    ``partial_success`` is left unset when nothing was rejected; otherwise it
    carries the number of rejected spans and a message quoting the first
    :data:`REASONS_IN_MESSAGE` reasons with their span ids.
    """
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    response = trace_service_pb2.ExportTraceServiceResponse()
    if rejected:
        quoted = "; ".join(f"span {item.span_id or '?'} of trace {item.trace_id or '?'}: {item.reason}"
                           for item in rejected[:REASONS_IN_MESSAGE])
        more = f"; and {len(rejected) - REASONS_IN_MESSAGE} more" if len(rejected) > REASONS_IN_MESSAGE else ""
        response.partial_success.rejected_spans = len(rejected)
        response.partial_success.error_message = f"{len(rejected)} span(s) rejected: {quoted}{more}"
    return _serialise(response, content_type)


def encode_status(http_status: int, message: str, content_type: str | None) -> bytes:
    """A ``google.rpc.Status`` body for an error reply of ``http_status``, in the request's encoding.

    ``code`` is the google.rpc.Code matching the HTTP status; ``message`` is for developers.
    """
    from google.rpc import status_pb2

    code = _RPC_CODES.get(http_status, 3 if 400 <= http_status < 500 else 2)
    return _serialise(status_pb2.Status(code=code, message=message), content_type)


__all__ = [
    "DECOMPRESS_CHUNK", "GENAI_STRING_ATTRIBUTES", "GENAI_TOKEN_ATTRIBUTES", "Decoded", "OtlpDecodeError",
    "OtlpFormat", "UnsupportedMediaType", "any_value_to_json", "attributes_problem", "attributes_to_json",
    "decode_request", "decompress", "encode_response", "encode_status", "genai_of", "new_span", "otlp_format",
    "reply_content_type", "span_problem",
]
