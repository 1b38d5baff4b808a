"""Traces: the simple producer API's input (seed 000's ``record_trace``), turned into a normalised Span.

``POST /api/v1/traces/spans`` and ``storage.traces.record(...)`` take a :class:`SpanInput`:
a resource, a component, an operation, start and end times, a status, attributes,
and optionally the trace, span and parent span ids (a new trace and span id are
generated when they are left out). :func:`span_from_input` builds the same
:class:`~shared.domains.traces.models.Span` an OTLP span would become, by the same
rules (:func:`shared.domains.traces.otlp.new_span` and ``span_problem``): ``resource`` and
``component`` given here win over the ``stowage.resource``/``stowage.component``
attributes, GenAI attributes become GenAI fields, and a span that breaks a limit
is InvalidInput (400) with the reason. Pure: nothing is read or written.
"""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from shared.domains.traces.models import (
    MAX_ATTRIBUTES,
    MAX_NAME_LENGTH,
    SPAN_ID_HEX_LENGTH,
    TRACE_ID_HEX_LENGTH,
    Span,
    SpanKind,
    StatusCode,
)
from shared.domains.traces.otlp import new_span, span_problem
from shared.errors import InvalidInput
from shared.jsonvalues import check_json_value
from shared.models_base import RequestBodyModel

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _date_time_text(value: Any) -> Any:
    """A time as the document states it: a date-time string (or a datetime from Python), no epoch numbers."""
    if not isinstance(value, (str, datetime)):
        raise PydanticCustomError("datetime_type", "start and end must be ISO-8601 date-times with a time zone")
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _not_all_zeros(value: str | None) -> str | None:
    if value is not None and not value.strip("0"):
        raise PydanticCustomError("id_zero", "an all-zero id is invalid; leave it out to get a new one")
    return value


#: An optional id: lowercased, then held to its pattern, then refused if all zeros.
OptionalId = Annotated[str | None, BeforeValidator(_lower), AfterValidator(_not_all_zeros)]
DateTime = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]


class SpanInput(RequestBodyModel):
    """One finished operation to record as a span."""

    resource: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH,
                                 description="The resource (user, team, agent) inside the tenant it belongs to; "
                                             "default: the stowage.resource or enduser.id attribute.")
    component: str = Field(min_length=1, max_length=MAX_NAME_LENGTH,
                           description="The part of the system that did it (e.g. 'llm', 'retriever').")
    operation: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, description="What it did: the span name.")
    start: DateTime = Field(description="When it started: an ISO-8601 date-time with a time zone.")
    end: DateTime = Field(description="When it ended (not before start): an ISO-8601 date-time with a time zone.")
    status: StatusCode = Field(default=StatusCode.UNSET, description="ok, error or unset.")
    status_message: str = Field(default="", max_length=MAX_NAME_LENGTH, description="Why, for an error.")
    kind: SpanKind = Field(default=SpanKind.INTERNAL,
                           description="internal, server, client, producer, consumer or unspecified.")
    service: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH,
                                description="The service name (OpenTelemetry's service.name), if any.")
    attributes: dict[str, Any] = Field(
        default_factory=dict, max_length=MAX_ATTRIBUTES,
        description="Span attributes: JSON values (GenAI ones, e.g. gen_ai.request.model, become searchable).")
    trace_id: OptionalId = Field(
        default=None, pattern=f"^[0-9a-f]{{{TRACE_ID_HEX_LENGTH}}}$",
        description="The trace, 32 hex digits; a new trace when left out.")
    span_id: OptionalId = Field(
        default=None, pattern=f"^[0-9a-f]{{{SPAN_ID_HEX_LENGTH}}}$",
        description="The span, 16 hex digits; generated when left out.")
    parent: OptionalId = Field(
        default=None, pattern=f"^[0-9a-f]{{{SPAN_ID_HEX_LENGTH}}}$",
        description="The parent span's id, 16 hex digits (needs trace_id); a root span when left out.")

    @model_validator(mode="after")
    def _consistent(self) -> SpanInput:
        if self.end < self.start:
            raise PydanticCustomError("end_before_start", "end is before start")
        if self.parent is not None and self.trace_id is None:
            raise PydanticCustomError("parent_without_trace", "a parent needs the trace_id it belongs to")
        return self


def _epoch_ns(moment: datetime) -> int:
    """Epoch nanoseconds of an aware datetime, exactly (integer arithmetic, microsecond precision)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _new_id(hex_length: int) -> str:
    while True:
        candidate = secrets.token_hex(hex_length // 2)
        if candidate.strip("0"):
            return candidate


def span_from_input(given: SpanInput) -> Span:
    """The normalised Span of a producer-API input; InvalidInput naming the rule it breaks, if any."""
    attributes = check_json_value(dict(given.attributes), "span attributes")
    span = new_span(
        trace_id=given.trace_id or _new_id(TRACE_ID_HEX_LENGTH),
        span_id=given.span_id or _new_id(SPAN_ID_HEX_LENGTH),
        parent_span_id=given.parent,
        name=given.operation,
        kind=given.kind,
        start_ns=_epoch_ns(given.start),
        end_ns=_epoch_ns(given.end),
        status_code=given.status,
        status_message=given.status_message,
        service_name=given.service,
        attributes=attributes,
    )
    explicit: dict[str, Any] = {"component": given.component}
    if given.resource is not None:
        explicit["resource"] = given.resource
    span = dataclasses.replace(span, **explicit)
    problem = span_problem(span)
    if problem is not None:
        raise InvalidInput(f"the span cannot be recorded: {problem}")
    return span


__all__ = ["SpanInput", "span_from_input"]
