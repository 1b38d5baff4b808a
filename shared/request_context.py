"""Who is acting and where a request came from, for the change feed and the audit log.

A :class:`RequestContext` travels with the work in a :mod:`contextvars` variable, so
services need no extra parameter: the HTTP edge sets it from the API key and the
request's ``traceparent``; the queue processor from the command envelope; timers
and the CLI as the system. Code that records a change reads :func:`current`.

Outside any of them (a script using ``StorageManager``), :func:`current` is the
system actor with source ``python``.

Both are immutable (``ids`` is kept as a read-only copy), so each computes its
change-record JSON once (:attr:`Actor.json_text`, :attr:`RequestContext.json_text`:
checked as client JSON is, by :func:`shared.jsonvalues.json_text`) and every write
of the same request reuses it. The variable is per task and per thread, as
contextvars are; work handed to a thread pool must be run under
``contextvars.copy_context()`` (``anyio.to_thread`` and ``asyncio.to_thread`` do).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal

from shared import jsonvalues

ActorType = Literal["user", "agent", "system"]
Source = Literal["http", "queue", "timer", "cli", "python"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@dataclass(frozen=True)
class Actor:
    """The one a change is attributed to: from the API key (user or agent), or the system."""

    type: ActorType
    id: str
    name: str | None = None
    roles: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"type": self.type, "id": self.id}
        if self.name:
            document["name"] = self.name
        if self.roles:
            document["roles"] = list(self.roles)
        return document

    @cached_property
    def json_text(self) -> str:
        """:meth:`as_json` as compact JSON text, checked (InvalidInput) on first use and then kept."""
        return jsonvalues.json_text(self.as_json(), "actor")


SYSTEM = Actor("system", "stowage")


@dataclass(frozen=True)
class RequestContext:
    """The actor, the transport, and the correlation ids of the work in progress."""

    actor: Actor = SYSTEM
    source: Source = "python"
    #: W3C trace context of the request, when it carried a valid ``traceparent``.
    trace_id: str | None = None
    span_id: str | None = None
    #: Ids the caller named (seed 002: workflow, session, agent, user), when known (a read-only copy).
    ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only copy: the caller's dict changing later must not change this context (nor its json_text).
        object.__setattr__(self, "ids", MappingProxyType(dict(self.ids)))

    def as_json(self) -> dict[str, Any]:
        """The context part of a change record (the actor goes separately)."""
        document: dict[str, Any] = {"source": self.source}
        if self.trace_id:
            document["trace_id"] = self.trace_id
            document["span_id"] = self.span_id
        document.update(self.ids)
        return document

    @cached_property
    def json_text(self) -> str:
        """:meth:`as_json` as compact JSON text, checked (InvalidInput) on first use and then kept."""
        return jsonvalues.json_text(self.as_json(), "request context")

    def with_ids(self, **ids: str | None) -> RequestContext:
        """This context with more correlation ids (None values are left out)."""
        return replace(self, ids={**self.ids, **{k: v for k, v in ids.items() if v}})


_CURRENT: ContextVar[RequestContext | None] = ContextVar("stowage_request_context", default=None)
_DEFAULT = RequestContext()


def current() -> RequestContext:
    """The context of the work in progress (the system, from Python, when none was set)."""
    return _CURRENT.get() or _DEFAULT


@contextmanager
def acting_as(context: RequestContext) -> Iterator[RequestContext]:
    """Run the ``with`` body under ``context``; the previous one is restored after it."""
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)


def parse_traceparent(header: str | None) -> tuple[str, str] | None:
    """(trace id, span id) of a W3C ``traceparent`` header, or None when absent or malformed.

    All-zero ids are invalid per the spec and give None; a bad header is ignored, never an error.
    """
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip().lower())
    if match is None:
        return None
    trace_id, span_id = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id
