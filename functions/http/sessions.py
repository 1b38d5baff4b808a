"""HTTP transport for sessions and task context: /api/v1/sessions.

ETags: a session's is its ``version`` (moves on metadata changes and on ending,
not on metrics); a context's is its ``version`` (grows by one on every write).
Both are sent quoted, and If-Match takes them quoted or bare.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from functions.auth import tenant_of
from functions.context import context_of
from functions.http import ClientJsonStorageRoute
from functions.http_common import quoted, read_json, unquote
from functions.problems import responses
from shared.domains.sessions.models import (
    ID,
    ID_RULE,
    CreateSession,
    EndSession,
    RecordMetrics,
    Session,
    SessionStatus,
    TaskContext,
    UpdateSession,
)
from shared.errors import InvalidInput

router = APIRouter(prefix="/api/v1", tags=["sessions"], route_class=ClientJsonStorageRoute)
Tenant = Annotated[str, Depends(tenant_of)]
SessionId = Annotated[str, Path(**ID, description=f"The session's id: {ID_RULE}.")]
IfMatch = Annotated[str | None, Header(alias="If-Match", description="Apply only if the ETag is this one ('*': any).")]


# --------------------------------------------------------------------------- models


class SessionOut(BaseModel):
    """A session: metadata, status, metrics and timestamps (ISO-8601 UTC)."""

    session_id: str = Field(description="The session's id.")
    user_id: str = Field(description="The user the session belongs to.")
    status: SessionStatus = Field(description="active, or how it ended: completed, failed, cancelled, expired.")
    thread_id: str = Field(description="The memory thread holding the conversation (use the memory endpoints).")
    metadata: dict[str, Any] = Field(description="Any JSON object the client set.")
    request_count: int = Field(description="Requests recorded.")
    error_count: int = Field(description="Errors recorded.")
    total_processing_time: float = Field(description="Processing seconds recorded, summed exactly to the microsecond.")
    created_at: str = Field(description="When the session started.")
    updated_at: str = Field(description="When anything about the session last changed.")
    last_activity: str = Field(description="When activity was last recorded (creation counts).")
    expires_at: str | None = Field(description="When cleanup ends it as expired unless there is activity first; "
                                               "null once ended.")
    ended_at: str | None = Field(description="When it ended; null while active.")
    end_reason: str | None = Field(description="Why it ended, if given.")
    version: int = Field(description="Moves on metadata changes and on ending, not on metrics; the ETag.")


class SessionPage(BaseModel):
    """One page of sessions; pass ``continuation`` back for the next page (a page may be short)."""

    items: list[SessionOut]
    continuation: str | None = None


class ContextInfo(BaseModel):
    """A stored task context's version, without its content."""

    session_id: str = Field(description="The session it belongs to.")
    version: int = Field(description="Grows by one on every write; the ETag.")
    updated_at: str = Field(description="When it was written.")
    size: int = Field(description="Bytes of the context as compact UTF-8 JSON.")


class ContextOut(ContextInfo):
    """A session's task context."""

    context: dict[str, Any] = Field(description="The context, a JSON object.")


# --------------------------------------------------------------------------- helpers


def _out(session: Session, response: Response) -> SessionOut:
    response.headers["ETag"] = quoted(session.version)
    return SessionOut(**dataclasses.asdict(session))


def _context_info(context: TaskContext) -> dict[str, Any]:
    return {"session_id": context.session_id, "version": context.version,
            "updated_at": context.updated_at, "size": context.size}


async def _read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refused with 413 before parsing when over ``limit`` bytes."""
    document = await read_json(request, limit, "context")
    if not isinstance(document, dict):
        raise InvalidInput("the context must be a JSON object")
    return document


# --------------------------------------------------------------------------- routes


@router.post("/sessions", response_model=SessionOut, status_code=201,
             responses=responses(400, 401, 409, 413, 422), summary="Start a session (and its memory thread)")
def create_session(body: CreateSession, request: Request, response: Response, tenant: Tenant) -> SessionOut:
    session = context_of(request).sessions.create(tenant, body.user_id, session_id=body.session_id,
                                                        metadata=body.metadata)
    return _out(session, response)


@router.get("/sessions", response_model=SessionPage, responses=responses(400, 401, 422),
            summary="List a user's active sessions, newest first")
def list_sessions(
    request: Request,
    tenant: Tenant,
    user_id: Annotated[str, Query(**ID, description=f"Whose sessions: {ID_RULE}.")],
    status: Annotated[Literal["active"], Query(description="Only active sessions are listed.")] = "active",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
) -> SessionPage:
    page = context_of(request).sessions.list_active(tenant, user_id, limit=limit, continuation=continuation)
    return SessionPage(items=[SessionOut(**dataclasses.asdict(s)) for s in page.items],
                       continuation=page.continuation)


@router.get("/sessions/{session_id}", response_model=SessionOut, responses=responses(400, 401, 404),
            summary="Read a session")
def get_session(session_id: SessionId, request: Request, response: Response, tenant: Tenant) -> SessionOut:
    return _out(context_of(request).sessions.get(tenant, session_id), response)


@router.patch("/sessions/{session_id}", response_model=SessionOut, responses=responses(400, 401, 404, 412, 413, 422),
              summary="Replace a session's metadata")
def update_session(session_id: SessionId, body: UpdateSession, request: Request, response: Response,
                   tenant: Tenant, if_match: IfMatch = None) -> SessionOut:
    session = context_of(request).sessions.update_metadata(tenant, session_id, body.metadata,
                                                                 if_match=unquote(if_match))
    return _out(session, response)


@router.post("/sessions/{session_id}/end", response_model=SessionOut,
             responses=responses(400, 401, 404, 409, 412, 422), summary="End an active session with a status")
def end_session(session_id: SessionId, body: EndSession, request: Request, response: Response,
                tenant: Tenant, if_match: IfMatch = None) -> SessionOut:
    session = context_of(request).sessions.end(tenant, session_id, SessionStatus(body.status),
                                                     reason=body.reason, if_match=unquote(if_match))
    return _out(session, response)


@router.post("/sessions/{session_id}/metrics", response_model=SessionOut,
             responses=responses(400, 401, 404, 409, 422),
             summary="Add to a session's metrics atomically and refresh its last activity")
def record_metrics(
    session_id: SessionId,
    body: RecordMetrics,
    request: Request,
    response: Response,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                                  description="A retry with the same key is counted once.")] = None,
) -> SessionOut:
    session = context_of(request).sessions.record(
        tenant, session_id, requests=body.requests, processing_time=body.processing_time, errors=body.errors,
        idempotency_key=idempotency_key)
    return _out(session, response)


@router.put(
    "/sessions/{session_id}/context", response_model=ContextInfo, status_code=200,
    responses={201: {"model": ContextInfo, "description": "Created (the first version)"},
               **responses(400, 401, 404, 412, 413, 422)},
    summary="Store a session's task context (any JSON object; a new version)",
    openapi_extra={"requestBody": {"required": True, "description": "The context, a JSON object.",
                                   "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def put_context(session_id: SessionId, request: Request, response: Response, tenant: Tenant,
                      if_match: IfMatch = None) -> ContextInfo:
    sessions = context_of(request).sessions
    # Pretty-printed JSON may be larger than its compact form, which the service limits exactly.
    document = await _read_json_object(request, 2 * sessions.max_context_bytes + 1024)
    stored = await run_in_threadpool(
        lambda: sessions.put_context(tenant, session_id, document, if_match=unquote(if_match)))
    response.headers["ETag"] = quoted(stored.version)
    if stored.version == 1:
        response.status_code = 201
    return ContextInfo(**_context_info(stored))


@router.get("/sessions/{session_id}/context", response_model=ContextOut, responses=responses(400, 401, 404),
            summary="Read a session's task context")
def get_context(session_id: SessionId, request: Request, response: Response, tenant: Tenant) -> ContextOut:
    stored = context_of(request).sessions.get_context(tenant, session_id)
    response.headers["ETag"] = quoted(stored.version)
    return ContextOut(**_context_info(stored), context=stored.context)
