"""HTTP transport for memory: /api/v1/threads and their messages.

Request bodies are :mod:`shared.domains.memory.models`' input models, the ones the
queue payloads extend, so both transports accept and refuse the same values.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from functions.auth import tenant_of
from functions.context import context_of
from functions.http import ClientJsonStorageRoute
from functions.http_common import json_object_param, quoted, unquote
from functions.problems import responses
from shared.domains.memory.models import (
    ID,
    ID_RULE,
    AddMessagesRequest,
    Content,
    CreateThreadRequest,
    Message,
    MessageInput,
    Order,
    Role,
    Thread,
    UpdateMessageRequest,
    UpdateThreadRequest,
    given,
)

router = APIRouter(prefix="/api/v1", tags=["memory"], route_class=ClientJsonStorageRoute)
Tenant = Annotated[str, Depends(tenant_of)]
IfMatch = Annotated[str | None, Header(alias="If-Match", description="Apply only if the ETag is still this one.")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              description="A retry with the same key is applied once.")]
ThreadId = Annotated[str, Path(**ID, description=f"The thread's id: {ID_RULE}.")]
MessageId = Annotated[str, Path(**ID, description="The message's id, e.g. 'msg_000000000042_1a2b3c4d'.")]
#: A history bound: a seq from 0 to 10**12 (digits), or a message id (its seq).
CURSOR_PATTERN = r"^(?:0*(?:[0-9]{1,12}|1000000000000)|msg_[0-9]{12}_[0-9a-f]{8})$"
_METADATA_FILTER = "metadata"


# --------------------------------------------------------------------------- models
# The request bodies are the domain's input models (shared.domains.memory.models), which the
# queue payloads extend; only the answers are HTTP's own.


class ThreadOut(BaseModel):
    """A conversation thread."""

    thread_id: str = Field(description="The thread's id, unique in the tenant.")
    resource: str = Field(description="Who the thread belongs to inside the tenant, e.g. 'user_123'.")
    title: str | None = Field(description="The title, if any.")
    metadata: dict[str, Any] = Field(description="Free JSON metadata.")
    created_at: str = Field(description="ISO-8601 UTC creation time.")
    updated_at: str = Field(description="ISO-8601 UTC time of the last change, messages included.")
    message_count: int = Field(description="How many messages the thread holds, exact.")
    etag: str = Field(description="Changes on every change to the thread, messages included (also the ETag header).")

    @classmethod
    def of(cls, thread: Thread) -> ThreadOut:
        return cls(thread_id=thread.thread_id, resource=thread.resource, title=thread.title,
                   metadata=thread.metadata, created_at=thread.created_at, updated_at=thread.updated_at,
                   message_count=thread.message_count, etag=thread.etag)


class ThreadPage(BaseModel):
    """One page of threads; pass ``continuation`` back for the next page."""

    items: list[ThreadOut] = Field(description="Threads, newest created first.")
    continuation: str | None = Field(default=None, description="Token for the next page; absent on the last page.")


class MessageOut(BaseModel):
    """A message of a thread."""

    message_id: str = Field(description="The message's id; it embeds the seq.")
    thread_id: str = Field(description="The thread it belongs to.")
    seq: int = Field(description="Position in the thread: from 1, strictly increasing, never reused.")
    role: Role = Field(description="Who wrote it.")
    content: Content = Field(description="Text, or structured JSON parts.")
    metadata: dict[str, Any] = Field(description="Free JSON metadata.")
    parent_message_id: str | None = Field(description="The message this one answers, if any.")
    created_at: str = Field(description="ISO-8601 UTC time it was added.")
    updated_at: str = Field(description="ISO-8601 UTC time of its last edit.")
    etag: str = Field(description="Changes when the message is edited (also the ETag header).")

    @classmethod
    def of(cls, message: Message) -> MessageOut:
        return cls(message_id=message.message_id, thread_id=message.thread_id, seq=message.seq, role=message.role,
                   content=message.content, metadata=message.metadata,
                   parent_message_id=message.parent_message_id, created_at=message.created_at,
                   updated_at=message.updated_at, etag=message.etag)


class AddedMessages(BaseModel):
    """The messages as stored, with their ids and seqs."""

    messages: list[MessageOut] = Field(description="In seq order.")


class MessagePage(BaseModel):
    """One page of a thread's history; pass ``continuation`` back for the next page."""

    items: list[MessageOut] = Field(description="Messages in the order asked for.")
    continuation: str | None = Field(default=None, description="Token for the next page; absent on the last page.")


# --------------------------------------------------------------------------- threads


@router.post("/threads", response_model=ThreadOut, status_code=201, responses=responses(400, 401, 409, 413, 422),
             summary="Create a thread")
def create_thread(request: Request, response: Response, tenant: Tenant, body: CreateThreadRequest,
                  idempotency_key: IdempotencyKey = None) -> ThreadOut:
    thread = context_of(request).memory.create_thread(
        tenant, body.resource, thread_id=body.thread_id, title=body.title, metadata=body.metadata,
        idempotency_key=idempotency_key)
    response.headers["ETag"] = quoted(thread.etag)
    return ThreadOut.of(thread)


@router.get("/threads", response_model=ThreadPage, responses=responses(400, 401, 422),
            summary="List a resource's threads, newest first",
            openapi_extra={"parameters": [{  # a JSON object in the query string, which Query() cannot declare
                "name": _METADATA_FILTER, "in": "query", "required": False,
                "description": 'Only threads whose metadata has these keys with equal values: a JSON object, e.g. '
                               '{"project":"apollo"}. Filtering looks at up to 1000 threads per call, so a page '
                               'may be short (even empty) and still have a continuation.',
                "content": {"application/json": {"schema": {"type": "object"}}}}]})
def list_threads(
    request: Request,
    tenant: Tenant,
    resource: Annotated[str, Query(**ID, description=f"Whose threads, e.g. 'user_123': {ID_RULE}.")],
    metadata: Annotated[str | None, Query(alias=_METADATA_FILTER, include_in_schema=False)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    continuation: str | None = None,
) -> ThreadPage:
    page = context_of(request).memory.list_threads(
        tenant, resource, metadata=json_object_param(metadata, "metadata"), limit=limit, continuation=continuation)
    return ThreadPage(items=[ThreadOut.of(t) for t in page.items], continuation=page.continuation)


@router.get("/threads/{thread_id}", response_model=ThreadOut, responses=responses(400, 401, 404),
            summary="Read a thread")
def get_thread(thread_id: ThreadId, request: Request, response: Response, tenant: Tenant) -> ThreadOut:
    thread = context_of(request).memory.get_thread(tenant, thread_id)
    response.headers["ETag"] = quoted(thread.etag)
    return ThreadOut.of(thread)


@router.patch("/threads/{thread_id}", response_model=ThreadOut, responses=responses(400, 401, 404, 409, 412, 413, 422),
              summary="Change a thread's title and/or metadata")
def update_thread(thread_id: ThreadId, request: Request, response: Response, tenant: Tenant, body: UpdateThreadRequest,
                  if_match: IfMatch = None) -> ThreadOut:
    thread = context_of(request).memory.update_thread(
        tenant, thread_id, title=given(body, "title"), metadata=given(body, "metadata"),
        if_match=unquote(if_match))
    response.headers["ETag"] = quoted(thread.etag)
    return ThreadOut.of(thread)


@router.delete("/threads/{thread_id}", status_code=204, responses=responses(400, 401, 404, 409),
               summary="Delete a thread and all its messages")
def delete_thread(thread_id: ThreadId, request: Request, tenant: Tenant) -> Response:
    context_of(request).memory.delete_thread(tenant, thread_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------- messages


@router.post("/threads/{thread_id}/messages", response_model=AddedMessages, status_code=201,
             responses=responses(400, 401, 404, 409, 413, 422),
             summary="Append one message, or several atomically")
def add_messages(
    thread_id: ThreadId,
    request: Request,
    tenant: Tenant,
    body: Annotated[AddMessagesRequest | MessageInput, Body(
        description='One message ({"role": ..., "content": ...}) or several ({"messages": [...]}).')],
    idempotency_key: IdempotencyKey = None,
) -> AddedMessages:
    inputs = body.messages if isinstance(body, AddMessagesRequest) else [body]
    messages = context_of(request).memory.add_messages(
        tenant, thread_id, [m.new_message() for m in inputs], idempotency_key=idempotency_key)
    return AddedMessages(messages=[MessageOut.of(m) for m in messages])


@router.get("/threads/{thread_id}/messages", response_model=MessagePage, responses=responses(400, 401, 404, 422),
            summary="Read a thread's history")
def history(
    thread_id: ThreadId,
    request: Request,
    tenant: Tenant,
    last: Annotated[int | None, Query(ge=1, le=1000, description=(
        "The newest N messages of the window, in `order` (chronological by default); "
        "the continuation gives the N before them."))] = None,
    before: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description=(
        "Only messages before this seq (0 to 10**12) or message id (exclusive)."))] = None,
    after: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description=(
        "Only messages after this seq (0 to 10**12) or message id (exclusive)."))] = None,
    order: Annotated[Order, Query(description=(
        "Without `last`: 'asc' pages from the oldest message forward, 'desc' from the newest backward."))] = Order.asc,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size without `last`.")] = 50,
    continuation: Annotated[str | None, Query(description=(
        "From the previous page; it carries that read's window, order and page size."))] = None,
) -> MessagePage:
    page = context_of(request).memory.history(
        tenant, thread_id, last=last, before=before, after=after, limit=limit, continuation=continuation, order=order)
    return MessagePage(items=[MessageOut.of(m) for m in page.items], continuation=page.continuation)


@router.get("/threads/{thread_id}/messages/{message_id}", response_model=MessageOut,
            responses=responses(400, 401, 404), summary="Read one message")
def get_message(thread_id: ThreadId, message_id: MessageId, request: Request, response: Response, tenant: Tenant) -> MessageOut:
    message = context_of(request).memory.get_message(tenant, thread_id, message_id)
    response.headers["ETag"] = quoted(message.etag)
    return MessageOut.of(message)


@router.patch("/threads/{thread_id}/messages/{message_id}", response_model=MessageOut,
              responses=responses(400, 401, 404, 409, 412, 413, 422), summary="Edit a message's content and/or metadata")
def update_message(thread_id: ThreadId, message_id: MessageId, request: Request, response: Response, tenant: Tenant,
                   body: UpdateMessageRequest, if_match: IfMatch = None) -> MessageOut:
    message = context_of(request).memory.update_message(
        tenant, thread_id, message_id, content=given(body, "content"), metadata=given(body, "metadata"),
        if_match=unquote(if_match))
    response.headers["ETag"] = quoted(message.etag)
    return MessageOut.of(message)


@router.delete("/threads/{thread_id}/messages/{message_id}", status_code=204,
               responses=responses(400, 401, 404, 409, 412), summary="Delete one message")
def delete_message(thread_id: ThreadId, message_id: MessageId, request: Request, tenant: Tenant,
                   if_match: IfMatch = None) -> Response:
    context_of(request).memory.delete_message(tenant, thread_id, message_id, if_match=unquote(if_match))
    return Response(status_code=204)
