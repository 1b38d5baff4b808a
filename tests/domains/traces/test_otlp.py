"""OTLP decoding, normalisation and replies (shared/domains/traces/otlp.py, inputs.py): pure, no backend.

Real bytes from the real SDK (a TracerProvider whose spans are encoded by the OTLP
exporter's own encoder, and the real OTLPSpanExporter posting to a loopback
receiver), OTLP JSON written by hand, partial rejection rule by rule, the
decompression cap against a gzip bomb, garbage, the replies, and the producer API.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import math
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv_genai
from pydantic import ValidationError

from shared.domains.traces import otlp
from shared.domains.traces.inputs import SpanInput, span_from_input
from shared.domains.traces.models import (
    MAX_ATTRIBUTE_KEY_LENGTH,
    MAX_ATTRIBUTE_VALUE_BYTES,
    MAX_ATTRIBUTES,
    MAX_EVENTS,
    MAX_LINKS,
    MAX_NAME_LENGTH,
    MAX_SPAN_BYTES,
    RejectedSpan,
    Span,
    SpanKind,
    StatusCode,
)
from shared.domains.traces.otlp import (
    DECOMPRESS_CHUNK,
    Decoded,
    OtlpDecodeError,
    UnsupportedMediaType,
    decode_request,
    decompress,
    encode_response,
    encode_status,
)
from shared.errors import InvalidInput, TooLarge

ROOT = Path(__file__).resolve().parents[3]
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
T0 = 1_764_000_000_123_456_789  # epoch ns with all nine digits significant
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"


# --------------------------------------------------------------------------- helpers


def _sdk_trace() -> tuple[list[ReadableSpan], InMemorySpanExporter]:
    """A nested trace from the real SDK: agent -> chat (GenAI) -> tool call that fails with an exception."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent", "enduser.id": "user-7",
                                                        "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("agent.framework", "2.1.0")
    with tracer.start_as_current_span("invoke_agent support", kind=otel_trace.SpanKind.SERVER) as root:
        root.set_attribute("gen_ai.operation.name", "invoke_agent")
        root.set_attribute("gen_ai.agent.name", "support")
        root.set_attribute("gen_ai.agent.id", "agent-42")
        root.set_attribute("gen_ai.conversation.id", "conv-1")
        with tracer.start_as_current_span("chat gpt-4o", kind=otel_trace.SpanKind.CLIENT) as chat:
            chat.set_attributes({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 85,
                "gen_ai.usage.cache_read.input_tokens": 1024, "gen_ai.usage.reasoning.output_tokens": 12,
                "gen_ai.request.temperature": 0.2, "gen_ai.response.finish_reasons": ("stop",),
            })
            with tracer.start_as_current_span("execute_tool lookup_order") as tool:
                tool.set_attribute("gen_ai.operation.name", "execute_tool")
                tool.set_attribute("gen_ai.tool.name", "lookup_order")
                try:
                    raise KeyError("order 17 not found")
                except KeyError as exc:
                    tool.record_exception(exc)
                    tool.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, "lookup failed"))
    provider.shutdown()
    return list(exporter.get_finished_spans()), exporter


def _by_name(spans: list[Span]) -> dict[str, Span]:
    return {span.name: span for span in spans}


def _kv(key: str, value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=_any(value))


def _any(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_any(item) for item in value]))
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[_kv(key, item) for key, item in value.items()]))
    if value is None:
        return common_pb2.AnyValue()
    return common_pb2.AnyValue(string_value=value)


def _pb_span(name: str = "op", *, trace_id: bytes = bytes.fromhex(TRACE), span_id: bytes = bytes.fromhex(SPAN),
             start: int = T0, end: int = T0 + 1000, attributes: dict[str, Any] | None = None,
             **fields: Any) -> trace_pb2.Span:
    return trace_pb2.Span(trace_id=trace_id, span_id=span_id, name=name, start_time_unix_nano=start,
                          end_time_unix_nano=end,
                          attributes=[_kv(key, value) for key, value in (attributes or {}).items()], **fields)


def _request(*spans: trace_pb2.Span, resource: dict[str, Any] | None = None, scope: str = "scope",
             scope_version: str = "") -> trace_service_pb2.ExportTraceServiceRequest:
    resource_attrs = {"service.name": "svc"} if resource is None else resource
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[_kv(key, value) for key, value in resource_attrs.items()]),
        scope_spans=[trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name=scope, version=scope_version),
                                          spans=list(spans))])])


def _decode_pb(request: trace_service_pb2.ExportTraceServiceRequest) -> Decoded:
    return decode_request(request.SerializeToString(), PROTOBUF)


def _one(attributes: dict[str, Any] | None = None, resource: dict[str, Any] | None = None,
         scope: str = "scope") -> Span:
    decoded = _decode_pb(_request(_pb_span(attributes=attributes), resource=resource, scope=scope))
    assert decoded.rejected == []
    (span,) = decoded.spans
    return span


def _json_body(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


# --------------------------------------------------------------------------- imports


def test_the_span_rules_load_no_protobuf():
    # The producer API and the rules run on cold starts; only decoding and encoding need protobuf.
    code = ("import sys, shared.domains.traces.otlp, shared.domains.traces.inputs\n"
            "print(sorted(m for m in sys.modules if m.startswith(('google.protobuf', 'google.rpc', 'opentelemetry'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the real SDK


def _assert_sdk_trace(decoded: Decoded, sdk_spans: list[ReadableSpan]) -> None:
    assert decoded.rejected == []
    spans = _by_name(decoded.spans)
    assert set(spans) == {"invoke_agent support", "chat gpt-4o", "execute_tool lookup_order"}
    sdk = {span.name: span for span in sdk_spans}
    for name, span in spans.items():
        context = sdk[name].context
        assert context is not None
        assert span.trace_id == format(context.trace_id, "032x")
        assert span.span_id == format(context.span_id, "016x")
        assert span.start_ns == sdk[name].start_time and span.end_ns == sdk[name].end_time
        assert span.service_name == "support-agent"
        assert span.resource_attributes["deployment.environment"] == "test"
        assert span.resource_attributes["telemetry.sdk.language"] == "python"
        assert (span.scope_name, span.scope_version) == ("agent.framework", "2.1.0")
        assert span.component == "agent.framework"  # no stowage.component: the scope
        assert span.resource == "user-7" and span.user_id == "user-7"  # enduser.id on the resource
        assert span.flags == 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE set, IS_REMOTE not: local parents
    root, chat, tool = spans["invoke_agent support"], spans["chat gpt-4o"], spans["execute_tool lookup_order"]
    assert len({root.trace_id, chat.trace_id, tool.trace_id}) == 1
    assert root.parent_span_id is None
    assert chat.parent_span_id == root.span_id and tool.parent_span_id == chat.span_id
    assert (root.kind, chat.kind, tool.kind) == (SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL)
    assert root.genai.agent_name == "support" and root.genai.agent_id == "agent-42"
    assert root.session_id == "conv-1"  # no session.id: the conversation
    assert chat.genai.operation_name == "chat" and chat.genai.provider_name == "openai"
    assert (chat.genai.request_model, chat.genai.response_model, chat.genai.model) == (
        "gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06")
    assert (chat.genai.input_tokens, chat.genai.output_tokens) == (1200, 85)
    assert (chat.genai.cached_input_tokens, chat.genai.reasoning_tokens) == (1024, 12)
    assert chat.attributes["gen_ai.request.temperature"] == 0.2
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.status_code is StatusCode.UNSET and not chat.is_error
    assert tool.genai.tool_name == "lookup_order" and tool.genai.operation_name == "execute_tool"
    assert tool.status_code is StatusCode.ERROR and tool.is_error and tool.status_message == "lookup failed"
    (event,) = tool.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "KeyError"
    assert "order 17 not found" in event.attributes["exception.message"]
    assert "Traceback" in event.attributes["exception.stacktrace"]
    assert tool.start_ns <= event.time_ns <= tool.end_ns


def test_sdk_spans_encoded_by_the_exporter_encoder_decode_exactly():
    sdk_spans, _ = _sdk_trace()
    body = encode_spans(sdk_spans).SerializePartialToString()
    _assert_sdk_trace(decode_request(body, PROTOBUF), sdk_spans)


class _Receiver:
    """A loopback OTLP/HTTP endpoint built on this module only: what the real exporter's requests become."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Decoded]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                content_type = self.headers.get("Content-Type")
                body = decompress(raw, self.headers.get("Content-Encoding"), 64 * 1024 * 1024)
                decoded = decode_request(body, content_type)
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, decoded))
                reply = encode_response(decoded.rejected, content_type)
                self.send_response(200)
                self.send_header("Content-Type", otlp.reply_content_type(content_type))
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    running = _Receiver()
    yield running
    running.close()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_the_real_otlp_exporter_posts_what_decodes(receiver: _Receiver, compression: Compression):
    sdk_spans, _ = _sdk_trace()
    exporter = OTLPSpanExporter(endpoint=receiver.endpoint, headers={"Authorization": "Bearer k"},
                                compression=compression)
    try:
        assert exporter.export(sdk_spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    ((headers, decoded),) = receiver.requests
    assert headers["content-type"] == PROTOBUF
    expected_encoding = {Compression.Gzip: "gzip", Compression.Deflate: "deflate"}.get(compression)
    assert headers.get("content-encoding") == expected_encoding
    _assert_sdk_trace(decoded, sdk_spans)


# --------------------------------------------------------------------------- OTLP JSON by hand


def _json_document() -> dict[str, Any]:
    return {
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "json-svc"}},
                {"key": "stowage.component", "value": {"stringValue": "planner"}},
            ], "droppedAttributesCount": 0, "futureResourceField": {"x": 1}},
            "scopeSpans": [{
                "scope": {"name": "hand.made", "version": "0.1"},
                "spans": [{
                    "traceId": TRACE.upper(),
                    "spanId": SPAN,
                    "parentSpanId": "0102030405060708",
                    "traceState": "vendor=1",
                    "name": "plan",
                    "kind": 3,
                    "startTimeUnixNano": str(T0),
                    "endTimeUnixNano": T0 + 5_000,
                    "flags": 257,
                    "droppedAttributesCount": "2",
                    "droppedEventsCount": 1,
                    "droppedLinksCount": 0,
                    "attributes": [
                        {"key": "s", "value": {"stringValue": "text"}},
                        {"key": "i", "value": {"intValue": "9223372036854775807"}},
                        {"key": "i2", "value": {"intValue": -42}},
                        {"key": "d", "value": {"doubleValue": 1.5}},
                        {"key": "nan", "value": {"doubleValue": "NaN"}},
                        {"key": "inf", "value": {"doubleValue": "-Infinity"}},
                        {"key": "b", "value": {"boolValue": True}},
                        {"key": "raw", "value": {"bytesValue": base64.b64encode(b"\x00\xffbin").decode()}},
                        {"key": "arr", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "x"}]}}},
                        {"key": "kv", "value": {"kvlistValue": {"values": [
                            {"key": "inner", "value": {"kvlistValue": {"values": [
                                {"key": "deep", "value": {"boolValue": False}}]}}}]}}},
                        {"key": "empty", "value": {}},
                        {"key": "dup", "value": {"stringValue": "first"}},
                        {"key": "dup", "value": {"stringValue": "last"}},
                    ],
                    "events": [{"timeUnixNano": str(T0 + 10), "name": "retry", "droppedAttributesCount": 1,
                                "attributes": [{"key": "attempt", "value": {"intValue": 2}}], "newThing": True}],
                    "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                               "traceState": "a=b", "attributes": [{"key": "why", "value": {"stringValue": "fan-in"}}],
                               "flags": 1}],
                    "status": {"code": 2, "message": "boom"},
                    "someFutureField": [1, 2, 3],
                }],
            }],
        }],
        "unknownTopLevel": "ignored",
    }


def test_otlp_json_with_hex_ids_string_int64_unknown_fields_and_integer_enums():
    decoded = decode_request(_json_body(_json_document()), "application/json; charset=utf-8")
    assert decoded.rejected == []
    (span,) = decoded.spans
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, SPAN, "0102030405060708")
    assert span.trace_state == "vendor=1"
    assert span.kind is SpanKind.CLIENT
    assert (span.start_ns, span.end_ns, span.duration_ns) == (T0, T0 + 5_000, 5_000)
    assert span.flags == 257
    assert (span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count) == (2, 1, 0)
    assert span.attributes == {
        "s": "text", "i": 9223372036854775807, "i2": -42, "d": 1.5, "nan": "NaN", "inf": "-Infinity", "b": True,
        "raw": {"bytes": base64.b64encode(b"\x00\xffbin").decode()}, "arr": [1, "x"],
        "kv": {"inner": {"deep": False}}, "empty": None, "dup": "last",
    }
    assert isinstance(span.attributes["i"], int)
    assert span.status_code is StatusCode.ERROR and span.status_message == "boom"
    assert span.service_name == "json-svc"
    assert span.component == "planner"  # stowage.component on the resource beats the scope
    assert (span.scope_name, span.scope_version) == ("hand.made", "0.1")
    (event,) = span.events
    assert (event.name, event.time_ns, event.attributes, event.dropped_attributes_count) == (
        "retry", T0 + 10, {"attempt": 2}, 1)
    (link,) = span.links
    assert (link.trace_id, link.span_id, link.trace_state, link.attributes) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "a=b", {"why": "fan-in"})


def test_otlp_json_takes_enum_names_and_snake_case_field_names():
    document = _json_document()
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["kind"] = "SPAN_KIND_PRODUCER"
    span["status"] = {"code": "STATUS_CODE_OK"}
    span["trace_id"] = span.pop("traceId")
    span["start_time_unix_nano"] = span.pop("startTimeUnixNano")
    (decoded,) = decode_request(_json_body(document), JSON).spans
    assert decoded.kind is SpanKind.PRODUCER and decoded.status_code is StatusCode.OK
    assert decoded.trace_id == TRACE and decoded.start_ns == T0


def test_otlp_json_an_id_that_is_not_hex_rejects_that_span_only():
    document = _json_document()
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    bad = json.loads(json.dumps(spans[0]))
    bad["spanId"] = "not-hex-at-all!!"
    bad_link = json.loads(json.dumps(spans[0]))
    bad_link["spanId"] = "00000000000000aa"
    bad_link["links"][0]["traceId"] = 12345
    spans.extend([bad, bad_link])
    decoded = decode_request(_json_body(document), JSON)
    assert [span.span_id for span in decoded.spans] == [SPAN]
    first, second = decoded.rejected
    assert (first.trace_id, first.span_id) == (TRACE.upper(), "not-hex-at-all!!")  # as sent
    assert "span id" in first.reason and "not hex" in first.reason
    assert second.span_id == "00000000000000aa" and "link trace id" in second.reason


def test_otlp_json_base64_ids_are_not_taken_for_hex():
    document = _json_document()
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"] = base64.b64encode(bytes.fromhex(TRACE)).decode()  # what protobuf's own JSON would write
    decoded = decode_request(_json_body(document), JSON)
    assert decoded.spans == [] and "trace id" in decoded.rejected[0].reason


def test_an_empty_request_is_no_spans_in_either_encoding():
    assert decode_request(b"", PROTOBUF) == Decoded()
    assert decode_request(b"{}", JSON) == Decoded()
    assert decode_request(b'{"resourceSpans": []}', JSON) == Decoded()


# --------------------------------------------------------------------------- garbage and content types


@pytest.mark.parametrize("body", [b"garbage", b"\xff\xff\xff\xff", b'{"resourceSpans": []}', b"\x0a\x05hello"])
def test_protobuf_garbage_is_a_decode_error(body: bytes):
    with pytest.raises(OtlpDecodeError, match="not a protobuf ExportTraceServiceRequest") as caught:
        decode_request(body, PROTOBUF)
    assert isinstance(caught.value, InvalidInput) and caught.value.status == 400


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe{}", "UTF-8"),
    (b"[1, 2]", "must be an object"),
    (b'{"resourceSpans": "x"}', "resourceSpans"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', "name"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}', "startTimeUnixNano"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\\ud800"}]}]}]}', "surrogate"),
    (b"[" * 5000 + b"]" * 5000, "deeper"),
    (b'{"a": NaN}', "standard JSON"),
])
def test_json_garbage_is_a_decode_error(body: bytes, message: str):
    with pytest.raises(OtlpDecodeError, match=message) as caught:
        decode_request(body, JSON)
    assert caught.value.status == 400


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/protobuf", "application/grpc",
                                          "application/jsonx"])
def test_an_unsupported_content_type_is_415(content_type: str | None):
    with pytest.raises(UnsupportedMediaType, match="application/x-protobuf") as caught:
        decode_request(b"", content_type)
    assert caught.value.status == 415


def test_content_types_match_without_case_or_parameters():
    assert otlp.otlp_format("Application/X-Protobuf") is otlp.OtlpFormat.PROTOBUF
    assert otlp.otlp_format("application/json;charset=UTF-8") is otlp.OtlpFormat.JSON
    assert otlp.reply_content_type("application/json; charset=utf-8") == JSON
    assert otlp.reply_content_type("text/plain") == PROTOBUF  # an error reply to a bad type: protobuf, as the spec


# --------------------------------------------------------------------------- rejection, rule by rule

LONG_KEY = "k" * (MAX_ATTRIBUTE_KEY_LENGTH + 1)
TOO_MANY = {f"a{i}": i for i in range(MAX_ATTRIBUTES + 1)}


@pytest.mark.parametrize(("fields", "reason"), [
    ({"trace_id": b"\x01" * 15}, "trace id is 15 bytes, not 16"),
    ({"trace_id": b""}, "trace id is 0 bytes"),
    ({"trace_id": b"\x00" * 16}, "trace id is all zeros"),
    ({"span_id": b"\x01" * 9}, "span id is 9 bytes, not 8"),
    ({"span_id": b"\x00" * 8}, "span id is all zeros"),
    ({"parent_span_id": b"\x01" * 4}, "parent span id is 4 bytes"),
    ({"start": 0, "end": 5}, "no start time"),
    ({"end": T0 - 1}, "ends .* before it starts"),
    ({"name": "n" * (MAX_NAME_LENGTH + 1)}, f"name is {MAX_NAME_LENGTH + 1} characters"),
    ({"attributes": TOO_MANY}, f"span has {MAX_ATTRIBUTES + 1} attributes"),
    ({"attributes": {LONG_KEY: 1}}, f"span attribute key .* is {MAX_ATTRIBUTE_KEY_LENGTH + 1} characters"),
    ({"attributes": {"big": "x" * (MAX_ATTRIBUTE_VALUE_BYTES - 1)}}, f"{MAX_ATTRIBUTE_VALUE_BYTES + 1} bytes"),
    ({"events": [trace_pb2.Span.Event(name="e", time_unix_nano=T0)] * (MAX_EVENTS + 1)},
     f"{MAX_EVENTS + 1} events"),
    ({"events": [trace_pb2.Span.Event(name="e" * (MAX_NAME_LENGTH + 1))]}, "event 0 name"),
    ({"events": [trace_pb2.Span.Event(name="e", attributes=[_kv(LONG_KEY, 1)])]}, "event 0 .* attribute key"),
    ({"links": [trace_pb2.Span.Link(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN))] * (MAX_LINKS + 1)},
     f"{MAX_LINKS + 1} links"),
    ({"links": [trace_pb2.Span.Link(trace_id=b"\x01" * 3)]}, "link trace id is 3 bytes"),
    ({"links": [trace_pb2.Span.Link(span_id=b"\x01" * 3)]}, "link span id is 3 bytes"),
    ({"links": [trace_pb2.Span.Link(attributes=[_kv(f"a{i}", i) for i in range(MAX_ATTRIBUTES + 1)])]},
     "link 0 has"),
    ({"attributes": {"stowage.resource": "r" * (MAX_NAME_LENGTH + 1)}}, "resource is"),
    ({"attributes": {"stowage.component": "c" * (MAX_NAME_LENGTH + 1)}}, "component is"),
    ({"attributes": {"session.id": "s" * (MAX_NAME_LENGTH + 1)}}, "session id is"),
    ({"attributes": {"user.id": "u" * (MAX_NAME_LENGTH + 1)}}, "user id is"),
    ({"attributes": {"gen_ai.request.model": "m" * (MAX_NAME_LENGTH + 1)}}, "request model is"),
])
def test_a_span_that_breaks_a_rule_is_rejected_and_the_rest_of_the_batch_kept(fields: dict[str, Any], reason: str):
    good = _pb_span("good", span_id=bytes.fromhex("00000000000000f1"))
    also_good = _pb_span("also good", span_id=bytes.fromhex("00000000000000f2"))
    bad = _pb_span(**{"name": "bad", **fields})
    decoded = _decode_pb(_request(good, bad, also_good))
    assert [span.name for span in decoded.spans] == ["good", "also good"]
    (rejected,) = decoded.rejected
    assert rejected.trace_id == bad.trace_id.hex() and rejected.span_id == bad.span_id.hex()
    assert __import__("re").search(reason, rejected.reason), rejected.reason


def test_limits_are_inclusive():
    at_limit = _pb_span(
        "n" * MAX_NAME_LENGTH,
        attributes={**{f"a{i}": i for i in range(MAX_ATTRIBUTES - 2)}, "k" * MAX_ATTRIBUTE_KEY_LENGTH: 1,
                    "big": "x" * (MAX_ATTRIBUTE_VALUE_BYTES - 2)},  # JSON: the quotes make it exactly the limit
        events=[trace_pb2.Span.Event(name="e", time_unix_nano=T0)] * MAX_EVENTS,
        links=[trace_pb2.Span.Link(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN))] * MAX_LINKS,
        end=T0)
    decoded = _decode_pb(_request(at_limit))
    assert decoded.rejected == []
    (span,) = decoded.spans
    assert span.duration_ns == 0 and len(span.attributes) == MAX_ATTRIBUTES
    assert len(span.events) == MAX_EVENTS and len(span.links) == MAX_LINKS


def test_a_span_over_the_total_size_is_rejected():
    third = "x" * (MAX_SPAN_BYTES // 3 + 1)
    decoded = _decode_pb(_request(_pb_span(attributes={"a": third, "b": third, "c": third})))
    assert decoded.spans == [] and "over the limit of" in decoded.rejected[0].reason
    assert str(MAX_SPAN_BYTES) in decoded.rejected[0].reason


def test_a_resource_over_the_limits_rejects_its_spans_only():
    bad_resource = _request(_pb_span("a"), _pb_span("b", span_id=b"\x02" * 8), resource={LONG_KEY: "v"})
    good_resource = _request(_pb_span("c", span_id=b"\x03" * 8))
    bad_resource.resource_spans.extend(good_resource.resource_spans)
    decoded = _decode_pb(bad_resource)
    assert [span.name for span in decoded.spans] == ["c"]
    assert [item.span_id for item in decoded.rejected] == [SPAN, "0202020202020202"]
    assert all("resource attribute key" in item.reason for item in decoded.rejected)


def test_link_ids_may_be_empty_and_an_all_zero_parent_means_a_root():
    span = _pb_span(parent_span_id=b"\x00" * 8, links=[trace_pb2.Span.Link(trace_state="only-state")])
    (decoded,) = _decode_pb(_request(span)).spans
    assert decoded.parent_span_id is None
    (link,) = decoded.links
    assert (link.trace_id, link.span_id, link.trace_state) == ("", "", "only-state")


def test_unknown_kind_and_status_codes_fall_back():
    span = _pb_span(kind=17, status=trace_pb2.Status(code=9, message="?"))  # type: ignore[arg-type]
    (decoded,) = _decode_pb(_request(span)).spans
    assert decoded.kind is SpanKind.UNSPECIFIED and decoded.status_code is StatusCode.UNSET


def test_protobuf_attribute_values_become_json_values():
    span = _one({"bytes": b"\x01\x02", "inf": math.inf, "nan": math.nan, "neg": -(2**63), "nested": [[1.5], {"k": None}],
                 "empty_list": [], "empty_kv": {}})
    assert span.attributes == {"bytes": {"bytes": "AQI="}, "inf": "Infinity", "nan": "NaN", "neg": -(2**63),
                               "nested": [[1.5], {"k": None}], "empty_list": [], "empty_kv": {}}
    json.dumps(span.attributes, allow_nan=False)  # every value is standard JSON


# --------------------------------------------------------------------------- normalisation rules


@pytest.mark.parametrize(("span_attrs", "resource_attrs", "expected"), [
    ({"stowage.resource": "s-res", "enduser.id": "s-user"}, {"stowage.resource": "r-res"}, "s-res"),
    ({"enduser.id": "s-user"}, {"stowage.resource": "r-res"}, "r-res"),  # stowage.resource anywhere first
    ({"enduser.id": "s-user"}, {"enduser.id": "r-user"}, "s-user"),
    ({}, {"enduser.id": "r-user"}, "r-user"),
    ({"stowage.resource": 42}, {}, "42"),  # an integer as its digits
    ({"stowage.resource": ""}, {"enduser.id": "r-user"}, "r-user"),  # empty is absent
    ({"stowage.resource": ["x"]}, {}, None),  # another type is absent
    ({}, {}, None),
])
def test_resource_rule(span_attrs: dict[str, Any], resource_attrs: dict[str, Any], expected: str | None):
    assert _one(span_attrs, {"service.name": "svc", **resource_attrs}).resource == expected


@pytest.mark.parametrize(("span_attrs", "resource_attrs", "scope", "expected"), [
    ({"stowage.component": "span-c"}, {"stowage.component": "res-c"}, "scope", "span-c"),
    ({}, {"stowage.component": "res-c"}, "scope", "res-c"),
    ({}, {}, "scope", "scope"),
    ({}, {}, "", "svc"),
    ({}, {"service.name": None}, "", None),
])
def test_component_rule(span_attrs: dict[str, Any], resource_attrs: dict[str, Any], scope: str,
                        expected: str | None):
    span = _one(span_attrs, {"service.name": "svc", **resource_attrs}, scope=scope)
    assert span.component == expected


def test_service_name_is_a_string_resource_attribute():
    assert _one(resource={"service.name": "svc"}).service_name == "svc"
    assert _one(resource={"service.name": 5}).service_name is None
    assert _one(resource={}).service_name is None
    assert _one({"service.name": "on-the-span"}, resource={}).service_name is None  # a resource attribute only


@pytest.mark.parametrize(("span_attrs", "resource_attrs", "session", "user"), [
    ({"session.id": "s1", "gen_ai.conversation.id": "c1"}, {"session.id": "s2"}, "s1", None),
    ({"gen_ai.conversation.id": "c1"}, {"session.id": "s2"}, "s2", None),
    ({"gen_ai.conversation.id": "c1"}, {}, "c1", None),
    ({"user.id": "u1", "enduser.id": "e1"}, {"user.id": "u2"}, None, "u1"),
    ({"enduser.id": "e1"}, {"user.id": "u2"}, None, "e1"),  # the span before the resource
    ({}, {"enduser.id": "e2"}, None, "e2"),
    ({"user.id": 7}, {}, None, "7"),
])
def test_session_and_user_rules(span_attrs: dict[str, Any], resource_attrs: dict[str, Any], session: str | None,
                                user: str | None):
    span = _one(span_attrs, resource_attrs)
    assert (span.session_id, span.user_id) == (session, user)


def test_genai_attribute_names_are_the_semantic_conventions():
    assert otlp.GENAI_STRING_ATTRIBUTES == {
        "operation_name": (semconv_genai.GEN_AI_OPERATION_NAME,),
        "provider_name": (semconv_genai.GEN_AI_PROVIDER_NAME, semconv_genai.GEN_AI_SYSTEM),
        "request_model": (semconv_genai.GEN_AI_REQUEST_MODEL,),
        "response_model": (semconv_genai.GEN_AI_RESPONSE_MODEL,),
        "conversation_id": (semconv_genai.GEN_AI_CONVERSATION_ID,),
        "agent_name": (semconv_genai.GEN_AI_AGENT_NAME,),
        "agent_id": (semconv_genai.GEN_AI_AGENT_ID,),
        "tool_name": (semconv_genai.GEN_AI_TOOL_NAME,),
    }
    assert otlp.GENAI_TOKEN_ATTRIBUTES == {
        "input_tokens": (semconv_genai.GEN_AI_USAGE_INPUT_TOKENS, semconv_genai.GEN_AI_USAGE_PROMPT_TOKENS),
        "output_tokens": (semconv_genai.GEN_AI_USAGE_OUTPUT_TOKENS, semconv_genai.GEN_AI_USAGE_COMPLETION_TOKENS),
        "cached_input_tokens": (semconv_genai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,),
        "reasoning_tokens": (semconv_genai.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,),
    }


def test_deprecated_genai_names_are_mapped_when_the_current_ones_are_absent():
    old = _one({"gen_ai.system": "anthropic", "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": 3, "gen_ai.request.model": "claude"})
    assert (old.genai.provider_name, old.genai.input_tokens, old.genai.output_tokens) == ("anthropic", 10, 3)
    assert old.genai.model == "claude"  # no response model: the requested one
    both = _one({"gen_ai.system": "old", "gen_ai.provider.name": "new", "gen_ai.usage.prompt_tokens": 10,
                 "gen_ai.usage.input_tokens": 20, "gen_ai.usage.completion_tokens": 3,
                 "gen_ai.usage.output_tokens": 4})
    assert (both.genai.provider_name, both.genai.input_tokens, both.genai.output_tokens) == ("new", 20, 4)
    assert both.attributes["gen_ai.system"] == "old"  # attributes are kept as sent


@pytest.mark.parametrize("count", [-1, 1.5, 3.0, "12", True, [1], None])
def test_a_token_count_that_is_not_a_non_negative_integer_is_ignored_but_kept(count: Any):
    span = _one({"gen_ai.usage.input_tokens": count, "gen_ai.usage.prompt_tokens": 99,
                 "gen_ai.usage.cache_read.input_tokens": count, "gen_ai.usage.reasoning.output_tokens": count})
    # The current name is present, so the deprecated one is not read in its place.
    assert span.genai.input_tokens is None
    assert span.genai.cached_input_tokens is None and span.genai.reasoning_tokens is None
    expected = count if not (isinstance(count, float) and math.isnan(count)) else "NaN"
    assert span.attributes["gen_ai.usage.input_tokens"] == expected


def test_zero_tokens_count():
    assert _one({"gen_ai.usage.output_tokens": 0}).genai.output_tokens == 0


def test_genai_fields_come_from_span_attributes_only():
    span = _one({}, {"service.name": "svc", "gen_ai.agent.name": "on-resource", "gen_ai.usage.input_tokens": 5})
    assert span.genai.agent_name is None and span.genai.input_tokens is None


# --------------------------------------------------------------------------- decompression


def test_identity_and_no_encoding_return_the_body():
    assert decompress(b"abc", None, 3) == b"abc"
    assert decompress(b"abc", "identity", 3) == b"abc"
    assert decompress(b"abc", "", 3) == b"abc"
    with pytest.raises(TooLarge):
        decompress(b"abcd", None, 3)


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("GZIP", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some clients send it
    ("gzip", lambda data: gzip.compress(data[:1000]) + gzip.compress(data[1000:])),  # two members
    ("gzip, identity", gzip.compress),
    ("deflate, gzip", lambda data: gzip.compress(zlib.compress(data))),
])
def test_compressed_bodies_inflate(encoding: str, compress: Any):
    data = bytes(range(256)) * 1000
    assert decompress(compress(data), encoding, len(data)) == data


def test_the_cap_applies_after_inflating_and_is_inclusive():
    data = b"a" * 10_000
    assert decompress(gzip.compress(data), "gzip", 10_000) == data
    with pytest.raises(TooLarge, match="more than 9999 bytes"):
        decompress(gzip.compress(data), "gzip", 9_999)


@pytest.mark.parametrize(("body", "encoding", "message"), [
    (b"definitely not gzip", "gzip", "not valid gzip"),
    (gzip.compress(b"x" * 1000)[:-10], "gzip", "truncated"),
    (b"", "gzip", "truncated"),
    (gzip.compress(b"x") + b"trailing junk", "gzip", "not valid gzip"),
    (b"\x78\x9c\x00\x00garbage", "deflate", "not valid deflate"),
    (zlib.compress(b"x") + b"junk", "deflate", "after the end"),
])
def test_corrupt_streams_are_invalid_input(body: bytes, encoding: str, message: str):
    with pytest.raises(InvalidInput, match=message) as caught:
        decompress(body, encoding, 1 << 20)
    assert caught.value.status == 400


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_unknown_encodings_are_415(encoding: str):
    with pytest.raises(UnsupportedMediaType, match="Content-Encoding") as caught:
        decompress(gzip.compress(b"x"), encoding, 1 << 20)
    assert caught.value.status == 415


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """1 GiB of zeros as one gzip member of about 1 MiB, built without compressing 1 GiB.

    Each MiB of zeros is deflated after a full flush, which resets the compressor,
    so every block is the same bytes: the block is repeated, then the gzip trailer
    (CRC-32 and size of the whole GiB) closes the stream.
    """
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    bomb = header + block * 1024 + compressor.flush() + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)
    prefix = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bomb, 8 << 20)
    assert prefix == bytes(8 << 20)  # it does inflate to zeros
    return bomb


def test_a_gzip_bomb_is_refused_without_inflating_it(gzip_bomb: bytes, monkeypatch: pytest.MonkeyPatch):
    assert len(gzip_bomb) < 2 * 1024 * 1024
    produced: list[int] = []
    real_decompressobj = zlib.decompressobj

    class CountingInflater:
        """zlib's decompressor, counting what it hands out."""

        def __init__(self, wbits: int) -> None:
            self.inner = real_decompressobj(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            assert 0 < max_length <= DECOMPRESS_CHUNK  # never unbounded
            chunk = self.inner.decompress(data, max_length)
            produced.append(len(chunk))
            return chunk

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", CountingInflater)  # otlp calls zlib.decompressobj
    limit = 4 << 20  # the bomb itself (about 1 MiB) fits under it; what it inflates to does not
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="inflates to more than"):
            decompress(gzip_bomb, "gzip", limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert limit < sum(produced) <= limit + DECOMPRESS_CHUNK  # stopped right after the cap, of 1 GiB
    assert peak < 3 * limit  # what was inflated and kept (and joined), not the bomb's GiB


# --------------------------------------------------------------------------- replies


def _rejected(count: int) -> list[RejectedSpan]:
    return [RejectedSpan(trace_id=TRACE, span_id=f"{i:016x}", reason=f"reason {i}") for i in range(count)]


def test_full_success_leaves_partial_success_unset():
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(encode_response([], PROTOBUF))
    assert not response.HasField("partial_success")
    assert encode_response([], PROTOBUF) == b""
    assert json.loads(encode_response([], JSON)) == {}


def test_partial_success_counts_and_quotes_reasons_in_both_encodings():
    rejected = _rejected(7)
    response = trace_service_pb2.ExportTraceServiceResponse.FromString(encode_response(rejected, PROTOBUF))
    assert response.partial_success.rejected_spans == 7
    message = response.partial_success.error_message
    assert message.startswith("7 span(s) rejected")
    assert all(f"reason {i}" in message for i in range(otlp.REASONS_IN_MESSAGE))
    assert "reason 6" not in message and "and 2 more" in message
    assert f"span {0:016x} of trace {TRACE}" in message
    as_json = json.loads(encode_response(rejected[:1], "application/json; charset=utf-8"))
    assert set(as_json) == {"partialSuccess"}
    assert int(as_json["partialSuccess"]["rejectedSpans"]) == 1  # int64: a string in proto3 JSON
    assert "reason 0" in as_json["partialSuccess"]["errorMessage"]
    # What an OTLP JSON client parses it with.
    parsed = json_format.Parse(encode_response(rejected[:1], JSON), trace_service_pb2.ExportTraceServiceResponse())
    assert parsed.partial_success.rejected_spans == 1


@pytest.mark.parametrize(("http_status", "rpc_code"), [(400, 3), (401, 16), (403, 7), (413, 3), (415, 3), (429, 8),
                                                       (500, 13), (503, 14), (418, 3), (599, 2)])
def test_status_bodies_carry_the_matching_rpc_code(http_status: int, rpc_code: int):
    status = status_pb2.Status.FromString(encode_status(http_status, "why", PROTOBUF))
    assert (status.code, status.message) == (rpc_code, "why")
    assert json.loads(encode_status(http_status, "why ü", JSON)) == {"code": rpc_code, "message": "why ü"}


def test_a_status_for_an_unsupported_content_type_is_protobuf():
    status = status_pb2.Status.FromString(encode_status(415, "unsupported", "text/plain"))
    assert status.message == "unsupported"


# --------------------------------------------------------------------------- the producer API

START = "2026-12-02T10:00:00.123456+00:00"
END = "2026-12-02T12:00:01.000001+02:00"  # 2 seconds later, written in another zone


def test_a_producer_span_with_only_what_seed_000_gives():
    given = SpanInput.model_validate({"resource": "app:user_123", "component": "llm", "operation": "generate_response",
                                      "start": START, "end": END, "status": "ok",
                                      "attributes": {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 3,
                                                     "stowage.component": "ignored", "n": {"k": [1, None]}}})
    span = span_from_input(given)
    assert len(span.trace_id) == 32 and len(span.span_id) == 16
    assert int(span.trace_id, 16) and int(span.span_id, 16)
    assert span.parent_span_id is None
    start_ns = int(datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC).timestamp()) * 10**9 + 123_456_000
    assert (span.start_ns, span.duration_ns) == (start_ns, 876_545_000)
    assert (span.name, span.component, span.resource) == ("generate_response", "llm", "app:user_123")
    assert span.status_code is StatusCode.OK and span.kind is SpanKind.INTERNAL
    assert span.genai.request_model == "gpt-4o" and span.genai.input_tokens == 3
    assert span.attributes["n"] == {"k": [1, None]}
    again = span_from_input(given)
    assert (again.trace_id, again.span_id) != (span.trace_id, span.span_id)  # new ids each time


def test_a_producer_span_with_ids_and_parent():
    given = SpanInput.model_validate({"component": "retriever", "operation": "search", "start": START, "end": START,
                                      "trace_id": TRACE.upper(), "span_id": SPAN, "parent": "0102030405060708",
                                      "service": "rag", "kind": "client", "status": "error",
                                      "status_message": "timeout",
                                      "attributes": {"enduser.id": "u9", "session.id": "s9"}})
    span = span_from_input(given)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, SPAN, "0102030405060708")
    assert (span.service_name, span.kind, span.status_message) == ("rag", SpanKind.CLIENT, "timeout")
    assert span.is_error and span.duration_ns == 0
    assert (span.resource, span.user_id, span.session_id) == ("u9", "u9", "s9")  # no resource given: the rule


@pytest.mark.parametrize(("change", "message"), [
    ({"end": "2026-12-02T09:59:59+00:00"}, "end is before start"),
    ({"parent": "0102030405060708"}, "needs the trace_id"),
    ({"trace_id": "xyz"}, "pattern"),
    ({"span_id": "0" * 16}, "all-zero"),
    ({"start": "2026-12-02T10:00:00"}, "timezone"),
    ({"start": 1764669600}, "ISO-8601"),
    ({"component": ""}, "at least 1"),
    ({"operation": "o" * (MAX_NAME_LENGTH + 1)}, "at most"),
    ({"status": "fine"}, "status"),
    ({"attributes": TOO_MANY}, "at most"),
])
def test_producer_input_validation(change: dict[str, Any], message: str):
    body = {"component": "c", "operation": "o", "start": START, "end": END, **change}
    with pytest.raises(ValidationError, match=message):
        SpanInput.model_validate(body)


@pytest.mark.parametrize(("attributes", "message"), [
    ({LONG_KEY: 1}, "attribute key"),
    ({"a": "x" * MAX_ATTRIBUTE_VALUE_BYTES}, "bytes as JSON"),
    ({"a": "\ud800"}, "surrogate"),
    ({"a": math.nan}, "JSON cannot hold"),
    ({"gen_ai.agent.name": "a" * (MAX_NAME_LENGTH + 1)}, "agent name is"),
])
def test_producer_spans_over_the_limits_are_invalid_input(attributes: dict[str, Any], message: str):
    given = SpanInput.model_validate({"component": "c", "operation": "o", "start": START, "end": END,
                                      "attributes": attributes})
    with pytest.raises(InvalidInput, match=message):
        span_from_input(given)


def test_producer_texts_with_lone_surrogates_are_refused():
    with pytest.raises(ValidationError, match="unicode"):
        SpanInput.model_validate({"component": "c\ud800", "operation": "o", "start": START, "end": END})
