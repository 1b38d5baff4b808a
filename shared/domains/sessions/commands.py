"""Sessions' queue ops: each calls the public service API and reports a replay as a duplicate.

Every op but ``sessions.create`` passes the envelope's idempotency key to the
service, which writes its marker in the same atomic batch as the change: a
redelivery is answered from the marker ("duplicate") and never applied twice, and
the same key with another payload is refused (422, the message is poisoned).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from shared.command_ops import CommandOp
from shared.command_ops import Outcome as CommandOutcome
from shared.domains.sessions.models import (
    SessionNotActive,
    SessionsCreatePayload,
    SessionsEndPayload,
    SessionsPutContextPayload,
    SessionsRecordPayload,
    SessionStatus,
    SessionsUpdateMetadataPayload,
)
from shared.domains.sessions.service import SessionService
from shared.errors import AlreadyExists, NotFound, PreconditionFailed
from shared.storage.mutate import Outcome

P = TypeVar("P", SessionsRecordPayload, SessionsUpdateMetadataPayload, SessionsEndPayload, SessionsPutContextPayload)


def _apply_create(service: SessionService, tenant: str, payload: SessionsCreatePayload,
                  idempotency_key: str) -> CommandOutcome:
    try:
        outcome = service.create_outcome(tenant, payload.user_id, session_id=payload.session_id,
                                         metadata=payload.metadata, idempotency_key=idempotency_key)
    except AlreadyExists:
        try:
            owner = service.get(tenant, payload.session_id).user_id
        except NotFound:
            owner = None  # the id clashes with a memory thread, not with a session
        if owner == payload.user_id:  # created before markers existed, or by another request
            return CommandOutcome("duplicate", f"session {payload.session_id} already exists")
        raise
    if outcome.replayed:
        return CommandOutcome("duplicate", f"session {payload.session_id} already created")
    return CommandOutcome("applied", f"session {payload.session_id} created")


def _mutation(verb: str, call: Callable[[SessionService, str, P, str], Outcome[Any]]
              ) -> Callable[[SessionService, str, P, str], CommandOutcome]:
    def apply(service: SessionService, tenant: str, payload: P, idempotency_key: str) -> CommandOutcome:
        session_id = payload.session_id
        try:
            outcome = call(service, tenant, payload, idempotency_key)
        except SessionNotActive as exc:
            # An ended session never becomes active again: no retry can help, so poison the message.
            raise PreconditionFailed(str(exc)) from exc
        if outcome.replayed:
            return CommandOutcome("duplicate", f"{verb} of session {session_id} already applied")
        return CommandOutcome("applied", f"{verb} of session {session_id}")

    return apply


def _record(s: SessionService, t: str, p: SessionsRecordPayload, k: str) -> Outcome[Any]:
    return s.record_outcome(t, p.session_id, requests=p.requests, processing_time=p.processing_time,
                            errors=p.errors, idempotency_key=k)


def _update_metadata(s: SessionService, t: str, p: SessionsUpdateMetadataPayload, k: str) -> Outcome[Any]:
    return s.update_metadata_outcome(t, p.session_id, p.metadata, if_match=p.if_match, idempotency_key=k)


def _end(s: SessionService, t: str, p: SessionsEndPayload, k: str) -> Outcome[Any]:
    return s.end_outcome(t, p.session_id, SessionStatus(p.status), reason=p.reason, idempotency_key=k)


def _put_context(s: SessionService, t: str, p: SessionsPutContextPayload, k: str) -> Outcome[Any]:
    return s.put_context_outcome(t, p.session_id, p.context, if_match=p.if_match, idempotency_key=k)


COMMANDS = (
    CommandOp("sessions.create", SessionsCreatePayload, _apply_create, "Start a session with its memory thread."),
    CommandOp("sessions.record", SessionsRecordPayload, _mutation("record", _record),
              "Add to a session's metrics (counted once per idempotency key)."),
    CommandOp("sessions.update_metadata", SessionsUpdateMetadataPayload,
              _mutation("metadata update", _update_metadata), "Replace a session's metadata."),
    CommandOp("sessions.end", SessionsEndPayload, _mutation("end", _end), "End an active session."),
    CommandOp("sessions.put_context", SessionsPutContextPayload, _mutation("context write", _put_context),
              "Store a session's task context."),
)
