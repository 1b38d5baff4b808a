"""Traces: the normalised span every ingestion path produces, and the limits the domain enforces.

Every way in (OTLP/HTTP protobuf, OTLP JSON, the simple producer API) turns its input
into :class:`Span` values (``otlp.py`` for OTLP); the service stores and indexes
only those. A span that cannot be stored is not a :class:`Span`: the decoder reports
it as a :class:`RejectedSpan` with the reason, and the rest of the batch goes on.

Attribute values are JSON values: OTLP strings, booleans, doubles and lists and
key-value lists as themselves; 64-bit integers as Python ints (exact); bytes as
``{"bytes": "<base64>"}`` so they stay distinguishable from strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

#: Trace ids are 16 bytes, span ids 8, as lowercase hex; all-zero ids are invalid (OTLP spec).
TRACE_ID_HEX_LENGTH = 32
SPAN_ID_HEX_LENGTH = 16
#: Largest span name, service, component, operation or resource accepted (characters).
MAX_NAME_LENGTH = 1024
#: Most attributes on one span (span attributes; resource attributes are counted apart).
MAX_ATTRIBUTES = 512
#: Most events and links on one span.
MAX_EVENTS = 1024
MAX_LINKS = 1024
#: Largest attribute key (characters).
MAX_ATTRIBUTE_KEY_LENGTH = 256
#: Largest single attribute value, JSON-encoded: larger values are refused with the span. Values
#: above the offload threshold are stored through the offload mechanism (a 10 MB prompt round-trips).
MAX_ATTRIBUTE_VALUE_BYTES = 16 * 1024 * 1024
#: Largest span as stored (JSON of everything), before offload.
MAX_SPAN_BYTES = 32 * 1024 * 1024


class SpanKind(enum.StrEnum):
    """OTLP ``Span.SpanKind`` by name (``SPAN_KIND_`` dropped, lower case)."""

    UNSPECIFIED = "unspecified"
    INTERNAL = "internal"
    SERVER = "server"
    CLIENT = "client"
    PRODUCER = "producer"
    CONSUMER = "consumer"


class StatusCode(enum.StrEnum):
    """OTLP ``Status.StatusCode`` by name (``STATUS_CODE_`` dropped, lower case)."""

    UNSET = "unset"
    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True)
class SpanEvent:
    """A timed event on a span (e.g. ``exception`` with ``exception.type``/``.message``/``.stacktrace``)."""

    name: str
    time_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    dropped_attributes_count: int = 0


@dataclass(frozen=True)
class SpanLink:
    """A link to a span of another (or the same) trace."""

    trace_id: str
    span_id: str
    trace_state: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    dropped_attributes_count: int = 0


@dataclass(frozen=True)
class GenAI:
    """OpenTelemetry GenAI semantic-convention fields of a span, first-class and queryable.

    Filled from the current attribute names, or their deprecated predecessors when only
    those are present (``gen_ai.system`` -> provider, ``gen_ai.usage.prompt_tokens`` ->
    input tokens, ``gen_ai.usage.completion_tokens`` -> output tokens). None: not given.
    """

    operation_name: str | None = None  # gen_ai.operation.name (chat, embeddings, execute_tool, invoke_agent ...)
    provider_name: str | None = None  # gen_ai.provider.name (was gen_ai.system)
    request_model: str | None = None  # gen_ai.request.model
    response_model: str | None = None  # gen_ai.response.model
    input_tokens: int | None = None  # gen_ai.usage.input_tokens (was gen_ai.usage.prompt_tokens)
    output_tokens: int | None = None  # gen_ai.usage.output_tokens (was gen_ai.usage.completion_tokens)
    cached_input_tokens: int | None = None  # gen_ai.usage.cache_read.input_tokens
    reasoning_tokens: int | None = None  # gen_ai.usage.reasoning.output_tokens
    conversation_id: str | None = None  # gen_ai.conversation.id
    agent_name: str | None = None  # gen_ai.agent.name
    agent_id: str | None = None  # gen_ai.agent.id
    tool_name: str | None = None  # gen_ai.tool.name

    @property
    def model(self) -> str | None:
        """The model a search by model matches: the response model, else the requested one."""
        return self.response_model or self.request_model


@dataclass(frozen=True)
class Span:
    """One span, normalised: what the traces service stores and indexes.

    ``resource`` is the tenant-level resource (seed 000's ResourceId) the span belongs to:
    the attribute ``stowage.resource`` on the span, else on its resource, else
    ``enduser.id`` (span, then resource); None when none is given. ``component`` is
    ``stowage.component`` (span, then resource), else the instrumentation scope's name,
    else the service name.
    """

    trace_id: str  # 32 lowercase hex, not all zero
    span_id: str  # 16 lowercase hex, not all zero
    parent_span_id: str | None  # None for a root span
    name: str
    kind: SpanKind
    start_ns: int  # epoch nanoseconds
    end_ns: int  # epoch nanoseconds, >= start_ns
    status_code: StatusCode = StatusCode.UNSET
    status_message: str = ""
    service_name: str | None = None  # resource attribute service.name
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()
    scope_name: str = ""
    scope_version: str = ""
    trace_state: str = ""
    flags: int = 0
    dropped_attributes_count: int = 0
    dropped_events_count: int = 0
    dropped_links_count: int = 0
    resource: str | None = None
    component: str | None = None
    session_id: str | None = None  # session.id (span, then resource), else gen_ai.conversation.id
    user_id: str | None = None  # user.id / enduser.id (span, then resource)
    genai: GenAI = field(default_factory=GenAI)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def is_error(self) -> bool:
        return self.status_code is StatusCode.ERROR


@dataclass(frozen=True)
class RejectedSpan:
    """A span of a batch that cannot be stored, and why (reported in OTLP's ``partial_success``)."""

    trace_id: str  # as given (hex), possibly invalid
    span_id: str
    reason: str
