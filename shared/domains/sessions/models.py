"""Sessions: the results, enums, errors and input models the service, HTTP and the queue share."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictFloat, StrictInt

from shared.command_ops import CommandPayload
from shared.errors import Conflict
from shared.keys import ID_PATTERN
from shared.models_base import RequestBodyModel

MAX_METADATA_BYTES = 16_000  # stays inline under the default offload threshold, so metric writes stay small
MAX_REASON_LENGTH = 1000
MAX_REQUESTS_PER_RECORD = 1_000_000
MAX_PROCESSING_SECONDS_PER_RECORD = 10 * 365 * 24 * 3600.0


class SessionStatus(enum.StrEnum):
    """Where a session is in its life: active, or ended in one of the other states."""

    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ENDED_STATUSES = tuple(s for s in SessionStatus if s is not SessionStatus.ACTIVE)


class SessionNotActive(Conflict):
    """The session has ended; only an active session can be ended or record activity (409)."""

    title = "Session not active"
    type_slug = "session-not-active"
    problem_fields = ("session_id", "current", "wanted")

    def __init__(self, session_id: str, current: str, wanted: str) -> None:
        super().__init__(f"session {session_id!r} is {current}, not active: cannot {wanted}")
        #: The session concerned.
        self.session_id = session_id
        #: The state it is in (one of :data:`ENDED_STATUSES`).
        self.current = current
        #: What the caller tried to do.
        self.wanted = wanted


@dataclass(frozen=True)
class Session:
    """A session as stored: metadata, status, metrics and timestamps (ISO-8601 UTC)."""

    session_id: str
    user_id: str
    status: SessionStatus
    thread_id: str
    metadata: dict[str, Any]
    request_count: int
    error_count: int
    #: Seconds, summed exactly (kept in whole microseconds).
    total_processing_time: float
    created_at: str
    updated_at: str
    last_activity: str
    #: When the cleanup ends the session as expired unless there is activity first; None once ended.
    expires_at: str | None
    ended_at: str | None
    end_reason: str | None
    #: Moves on metadata changes and on ending, not on metrics; the session's ETag.
    version: int

    @property
    def etag(self) -> str:
        """The session's ETag is its version."""
        return str(self.version)

    def to_json(self) -> dict[str, Any]:
        """The session as a JSON object (as an idempotency marker keeps it)."""
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Session:
        """A session from :meth:`to_json`."""
        return cls(**{**value, "status": SessionStatus(value["status"])})


@dataclass(frozen=True)
class TaskContext:
    """A session's task context: any JSON object, versioned."""

    session_id: str
    version: int
    context: dict[str, Any]
    updated_at: str
    #: Bytes of the context as compact UTF-8 JSON.
    size: int

    @property
    def etag(self) -> str:
        """The context's ETag is its version: it grows by one on every write."""
        return str(self.version)


# --------------------------------------------------------------------------- input models
# One model per operation: HTTP bodies are these models; queue payloads are the same
# models with the session's id added (and unknown fields refused).

ID_RULE = "1-128 letters, digits, '.', '_', ':' or '-'"
#: shared.keys.check_id's rule, declared so that the document says it and the server refuses the same ids.
ID: dict[str, Any] = {"pattern": ID_PATTERN, "min_length": 1, "max_length": 128}


def _whole_float_as_int(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: An integer as JSON Schema means it: 3 and 3.0, never true, false or "3" (which plain int would take).
JsonInt = Annotated[StrictInt, BeforeValidator(_whole_float_as_int)]


class CreateSession(RequestBodyModel):
    """A session to start."""

    user_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128, description=f"The user it belongs to: {ID_RULE}.")
    session_id: str | None = Field(default=None, pattern=ID_PATTERN, min_length=1, max_length=128, description="Its id (same rule); generated when omitted. "
                                                                   "Also the id of its memory thread.")
    metadata: dict[str, Any] | None = Field(default=None, description=f"Any JSON object, up to {MAX_METADATA_BYTES} bytes.")


class UpdateSession(RequestBodyModel):
    """New metadata for a session."""

    metadata: dict[str, Any] = Field(description=f"Replaces the metadata; any JSON object up to {MAX_METADATA_BYTES} bytes.")


class EndedStatus(enum.StrEnum):
    """How a session ends: every SessionStatus but active (:data:`ENDED_STATUSES`)."""

    COMPLETED = SessionStatus.COMPLETED.value
    FAILED = SessionStatus.FAILED.value
    CANCELLED = SessionStatus.CANCELLED.value
    EXPIRED = SessionStatus.EXPIRED.value


class EndSession(RequestBodyModel):
    """How a session ends."""

    status: EndedStatus = Field(default=EndedStatus.COMPLETED,
                                description="completed, failed, cancelled or expired (not active).")
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH, description="Why it ended.")


class RecordMetrics(RequestBodyModel):
    """Activity to add to a session's metrics; also refreshes its last activity."""

    requests: JsonInt = Field(default=1, ge=0, le=MAX_REQUESTS_PER_RECORD, description="Requests to add.")
    processing_time: StrictFloat = Field(default=0.0, ge=0, le=MAX_PROCESSING_SECONDS_PER_RECORD,
                                         description="Processing seconds to add (a number, not a string).")
    errors: JsonInt = Field(default=0, ge=0, le=MAX_REQUESTS_PER_RECORD, description="Errors to add.")


# --------------------------------------------------------------------------- queue command payloads


class SessionsCreatePayload(CreateSession, CommandPayload):
    """Start a session (with its memory thread). Applying it again is a no-op."""

    session_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128, description="Id of the new session; also its memory thread's id.")


class SessionsRecordPayload(RecordMetrics, CommandPayload):
    """Add to a session's metrics and refresh its last activity."""

    session_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128, description="The session.")


class SessionsUpdateMetadataPayload(UpdateSession, CommandPayload):
    """Replace a session's metadata."""

    session_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128, description="The session.")
    if_match: str | None = Field(default=None, description="Apply only if the session is at this version.")


class SessionsEndPayload(EndSession, CommandPayload):
    """End an active session."""

    session_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128, description="The session.")


class SessionsPutContextPayload(CommandPayload):
    """Store a session's task context (a new version)."""

    session_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128, description="The session.")
    context: dict[str, Any] = Field(description="The task context, a JSON object.")
    if_match: str | None = Field(default=None, description="Apply only if the context is at this version.")
