"""Sessions' stored layout: keys and row codecs, typed (see the service module for the guarantees).

All in table ``stowagesessions``:

* partition ``<tenant>|s|<session id>``, the session's own partition:

  - ``session``: user, status, metadata (JSON), metrics, timestamps (epoch seconds)
    and ``version``;
  - ``context``: the task context (JSON) and its ``version``; a large context is
    moved to a blob by the offload layer, transparently;
  - ``i|<sha256 of an idempotency key>``: markers (:mod:`shared.storage.idempotency`),
    written in the same atomic batch as the change they record;

* partition ``<tenant>|u|<user id>``: one entry per active session of the user
  (row key ``<reversed creation ms>|<session id>``, newest first);
* the idle index, a :class:`~shared.storage.due.DueIndex` under ``!idle|t|``:
  partition ``!idle|t|<tenant>``, row key ``<idle deadline, epoch s>|<session id>``,
  and its tenant directory ``!idle|t|~dir|00`` to ``15``;
* legacy partitions ``!idle|00`` to ``!idle|15`` (row key
  ``<deadline>|<tenant>|<session id>``), written by releases before the due index:
  only read and drained, never written.

Every row carries ``fmt`` (:data:`FMT`); a row without it is format 1, read the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from shared.backends import Entity
from shared.domains.sessions.models import Session, SessionStatus, TaskContext
from shared.keys import escape
from shared.storage.rows import iso, stamped, stored_time

#: The row format this release writes (1: the same fields, written before ``fmt`` existed).
FMT = 2
SESSION_ROW = "session"
CONTEXT_ROW = "context"
IDLE_PREFIX = "!idle|t|"
LEGACY_IDLE_SHARDS = 16
_REVERSE_MS = 10**13


def session_pk(tenant: str, session_id: str) -> str:
    """The session's own partition."""
    return f"{tenant}|s|{session_id}"


def user_pk(tenant: str, user_id: str) -> str:
    """The partition listing a user's active sessions."""
    return f"{tenant}|u|{escape(user_id)}"


def user_row(created: float, session_id: str) -> str:
    """A user-index row key: newest first."""
    return f"{_REVERSE_MS - int(created * 1000):013d}|{session_id}"


def user_row_session(row_key: str) -> str:
    """The session id of a user-index row key."""
    return row_key.split("|", 1)[1]


def legacy_idle_shards() -> list[str]:
    """The idle partitions of releases before the due index (read only, to drain them)."""
    return [f"!idle|{shard:02d}" for shard in range(LEGACY_IDLE_SHARDS)]


def legacy_idle_entry(row_key: str) -> tuple[int, str, str]:
    """(deadline, tenant, session id) of a legacy idle row key."""
    deadline, tenant, session_id = row_key.split("|")
    return int(deadline), tenant, session_id


def deadline(last_activity: float, idle_seconds: float) -> int:
    """When a session idle since ``last_activity`` is due to expire (epoch s, rounded up)."""
    return math.ceil(last_activity + idle_seconds)


def _int(entity: Entity, name: str) -> int:
    value = entity[name]
    if value is None or isinstance(value, bytes):
        raise ValueError(f"row {entity.row_key!r}: {name} is {value!r}, not a number")
    return int(value)


def _float(entity: Entity, name: str) -> float:
    value = entity[name]
    if value is None or isinstance(value, bytes):
        raise ValueError(f"row {entity.row_key!r}: {name} is {value!r}, not a number")
    return float(value)


@dataclass(frozen=True)
class SessionRow:
    """The ``session`` row, typed."""

    user_id: str
    status: SessionStatus
    thread_id: str
    metadata_json: str
    requests: int
    errors: int
    processing_us: int
    created: float
    updated: float
    last_activity: float
    version: int
    user_row: str
    ended: float | None = None
    end_reason: str | None = None

    @classmethod
    def decode(cls, entity: Entity) -> SessionRow:
        ended = entity.get("ended")
        reason = entity.get("end_reason")
        return cls(
            user_id=str(entity["user_id"]), status=SessionStatus(str(entity["status"])),
            thread_id=str(entity["thread_id"]), metadata_json=str(entity["metadata"]),
            requests=_int(entity, "requests"), errors=_int(entity, "errors"),
            processing_us=_int(entity, "processing_us"), created=_float(entity, "created"),
            updated=_float(entity, "updated"), last_activity=_float(entity, "last_activity"),
            version=_int(entity, "version"), user_row=str(entity["user_row"]),
            ended=float(ended) if ended is not None else None,
            end_reason=str(reason) if reason is not None else None,
        )

    def encode(self) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "user_id": self.user_id, "status": self.status.value, "thread_id": self.thread_id,
            "metadata": self.metadata_json, "requests": self.requests, "errors": self.errors,
            "processing_us": self.processing_us, "created": stored_time(self.created),
            "updated": stored_time(self.updated), "last_activity": stored_time(self.last_activity),
            "version": self.version, "user_row": self.user_row,
            "ended": stored_time(self.ended) if self.ended is not None else None,
            "end_reason": self.end_reason,
        }
        return stamped(properties, FMT)

    @property
    def active(self) -> bool:
        return self.status is SessionStatus.ACTIVE

    def result(self, session_id: str, idle_seconds: float) -> Session:
        """The session as callers see it."""
        return Session(
            session_id=session_id, user_id=self.user_id, status=self.status, thread_id=self.thread_id,
            metadata=json.loads(self.metadata_json), request_count=self.requests, error_count=self.errors,
            total_processing_time=self.processing_us / 1_000_000,
            created_at=iso(self.created), updated_at=iso(self.updated), last_activity=iso(self.last_activity),
            expires_at=iso(deadline(self.last_activity, idle_seconds)) if self.active else None,
            ended_at=iso(self.ended) if self.ended is not None else None,
            end_reason=self.end_reason, version=self.version,
        )


@dataclass(frozen=True)
class ContextRow:
    """The ``context`` row, typed (``context_json`` is absent when read without its offloaded value)."""

    version: int
    size: int
    updated: float
    context_json: str | None

    @classmethod
    def decode(cls, entity: Entity) -> ContextRow:
        text = entity.get("context")
        return cls(_int(entity, "version"), _int(entity, "size"), _float(entity, "updated"),
                   str(text) if text is not None else None)

    def encode(self) -> dict[str, Any]:
        return stamped({"version": self.version, "context": self.context_json, "size": self.size,
                        "updated": stored_time(self.updated)}, FMT)

    def result(self, session_id: str, context: dict[str, Any] | None = None) -> TaskContext:
        """The context as callers see it (``context``: the value when already at hand)."""
        if context is None:
            context = json.loads(self.context_json or "{}")
        return TaskContext(session_id, self.version, context, iso(self.updated), self.size)

    def info(self) -> dict[str, Any]:
        """What an idempotency marker keeps of a context write (not the context: the request has it)."""
        return {"version": self.version, "size": self.size, "updated": self.updated}


def user_entry(created: float) -> dict[str, Any]:
    """The properties of a user-index entry."""
    return stamped({"created": stored_time(created)}, FMT)
