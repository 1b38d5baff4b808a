"""HTTP transport for LangGraph-compatible checkpoints: /api/v1/checkpoints.

Values travel as ``{"type": <serializer tag>, "data": <base64>}``, the pairs
LangGraph's serializers make. ``checkpoint_ns`` is a query parameter (it may be
empty, the root namespace). Reads, deletes, copies and prunes of another
tenant's threads answer 404; writes (PUT) always land in the caller's tenant.
Request bodies are :mod:`shared.domains.checkpoints.models`' input models, the ones
the queue payloads extend.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from functions.auth import tenant_of
from functions.context import context_of
from functions.http import ClientJsonStorageRoute
from functions.http_common import json_object_param, read_body
from functions.problems import responses
from shared.domains.checkpoints.models import (
    ID,
    ID_RULE,
    MAX_TEXT_LENGTH,
    TEXT,
    CheckpointPut,
    CopyRequest,
    PruneRequest,
    RunsDelete,
    StoredCheckpoint,
    TaskWrites,
    Value,
    WritesPut,
)

router = APIRouter(prefix="/api/v1/checkpoints", tags=["checkpoints"], route_class=ClientJsonStorageRoute)
Tenant = Annotated[str, Depends(tenant_of)]
ThreadId = Annotated[str, Path(**ID, description=f"The thread's id: {ID_RULE}.")]
CheckpointId = Annotated[str, Path(**ID, description=f"The checkpoint's id: {ID_RULE}.")]
TaskId = Annotated[str, Path(**TEXT, description="The task's id: 1-256 characters, no control characters.")]
Namespace = Annotated[str, Query(**(TEXT | {"min_length": 0}),
                                 description="Checkpoint namespace; '' is the root graph.")]


# --------------------------------------------------------------------------- models
# The request bodies are the domain's input models (shared.domains.checkpoints.models), which
# the queue payloads extend; only the answers are HTTP's own.


class CheckpointStored(BaseModel):
    """Where a checkpoint was stored."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None = None
    created_at: str = Field(description="ISO-8601 UTC time of the write.")


class PendingWriteOut(BaseModel):
    """A task's write after a checkpoint."""

    task_id: str
    channel: str
    idx: int = Field(description="Position in the task's writes; negative for special channels.")
    task_path: str = ""
    value: Value


class Checkpoint(BaseModel):
    """A checkpoint with its channel values and pending writes."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None = None
    created_at: str = Field(description="ISO-8601 UTC time of the write.")
    checkpoint: Value = Field(description="The checkpoint as the client serialised it, without channel values.")
    metadata: dict[str, Any]
    channel_versions: dict[str, str] = Field(description="Version of every channel that holds a value.")
    values: dict[str, Value] = Field(description="Channel values at this checkpoint.")
    pending_writes: list[PendingWriteOut] = Field(description="In (task_path, task_id, idx) order.")

    @classmethod
    def of(cls, stored: StoredCheckpoint) -> Checkpoint:
        return cls(
            thread_id=stored.thread_id, checkpoint_ns=stored.checkpoint_ns, checkpoint_id=stored.checkpoint_id,
            parent_checkpoint_id=stored.parent_checkpoint_id, created_at=stored.created_at,
            checkpoint=Value.of(stored.checkpoint), metadata=stored.metadata,
            channel_versions=stored.channel_versions,
            values={channel: Value.of(value) for channel, value in stored.values.items()},
            pending_writes=[PendingWriteOut(task_id=w.task_id, channel=w.channel, idx=w.idx, task_path=w.task_path,
                                            value=Value.of(w.value)) for w in stored.pending_writes],
        )


class CheckpointPage(BaseModel):
    """One page of checkpoints, newest first; pass ``continuation`` back for the next page."""

    items: list[Checkpoint]
    continuation: str | None = None


class WritesStored(BaseModel):
    """Writes stored (new, or special ones replaced) and writes already there (kept as they were)."""

    written: int
    kept: int


class ThreadOut(BaseModel):
    """A thread that has checkpoints."""

    thread_id: str
    created_at: str


class ThreadPage(BaseModel):
    """One page of threads in id order; pass ``continuation`` back for the next page."""

    items: list[ThreadOut]
    continuation: str | None = None


class CopyResult(BaseModel):
    """How many checkpoints were copied."""

    copied: int


class DeletedCount(BaseModel):
    """How many checkpoints were deleted."""

    deleted: int


# --------------------------------------------------------------------------- helpers


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A request body documented in OpenAPI but read by hand (to refuse it early when too large).

    Nested models are inlined: "#/$defs/..." references would not resolve inside the OpenAPI document.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


async def _read_model(request: Request, model: type[BaseModel], limit: int) -> Any:
    """The JSON body as ``model``; 413 before it is stored when over ``limit`` bytes."""
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _body_limit(request: Request) -> int:
    """Base64 makes bytes 4/3 larger; allow some room for the JSON around them."""
    max_bytes: int = context_of(request).checkpoints.max_bytes
    return max_bytes * 4 // 3 + 1024 * 1024


# --------------------------------------------------------------------------- routes


@router.get("/threads", response_model=ThreadPage, responses=responses(400, 401, 422),
            summary="List the tenant's threads")
def list_threads(
    request: Request,
    tenant: Tenant,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
) -> ThreadPage:
    page = context_of(request).checkpoints.threads(tenant, limit=limit, continuation=continuation)
    return ThreadPage(items=[ThreadOut(thread_id=t.thread_id, created_at=t.created_at) for t in page.items],
                      continuation=page.continuation)


@router.put(
    "/threads/{thread_id}/checkpoints/{checkpoint_id}", response_model=CheckpointStored, status_code=201,
    responses={200: {"model": CheckpointStored, "description": "Replaced a checkpoint with this id"},
               **responses(400, 401, 413, 422)},
    summary="Store a checkpoint and the channel values it introduces (and its parent's pending writes)",
    openapi_extra=_body_schema(CheckpointPut),
)
async def put_checkpoint(
    thread_id: ThreadId,
    checkpoint_id: CheckpointId,
    request: Request,
    tenant: Tenant,
    checkpoint_ns: Namespace = "",
) -> Response:
    body: CheckpointPut = await _read_model(request, CheckpointPut, _body_limit(request))
    checkpoint = body.checkpoint.typed("checkpoint")
    values = {channel: value.typed(f"value of {channel!r}") for channel, value in body.new_values.items()}
    writes = [TaskWrites(task.task_id, [(w.idx, w.channel, w.value.typed(f"write to {w.channel!r}"))
                                        for w in task.writes], task.task_path) for task in body.writes]
    ref = await run_in_threadpool(
        context_of(request).checkpoints.put, tenant, thread_id, checkpoint_ns, checkpoint_id, checkpoint,
        channel_versions=body.channel_versions, new_values=values, metadata=body.metadata,
        parent_checkpoint_id=body.parent_checkpoint_id, writes=writes,
    )
    # Serialised once, here: the answer is built from the service's own result (valid by construction),
    # so FastAPI's validation of the response model would only repeat it (the document still names the model).
    answer = {"thread_id": ref.thread_id, "checkpoint_ns": ref.checkpoint_ns, "checkpoint_id": ref.checkpoint_id,
              "parent_checkpoint_id": ref.parent_checkpoint_id, "created_at": ref.created_at}
    return Response(json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
                    status_code=201 if ref.created else 200, media_type="application/json")


@router.put(
    "/threads/{thread_id}/checkpoints/{checkpoint_id}/writes/{task_id}", response_model=WritesStored,
    responses=responses(400, 401, 413, 422),
    summary="Store a task's pending writes (idempotent per task and idx)",
    openapi_extra=_body_schema(WritesPut),
)
async def put_writes(
    thread_id: ThreadId,
    checkpoint_id: CheckpointId,
    task_id: TaskId,
    request: Request,
    tenant: Tenant,
    checkpoint_ns: Namespace = "",
) -> WritesStored:
    body: WritesPut = await _read_model(request, WritesPut, _body_limit(request))
    writes = [(w.idx, w.channel, w.value.typed(f"write to {w.channel!r}")) for w in body.writes]
    result = await run_in_threadpool(
        context_of(request).checkpoints.put_writes, tenant, thread_id, checkpoint_ns, checkpoint_id,
        task_id, writes, task_path=body.task_path,
    )
    return WritesStored(written=result.written, kept=result.kept)


@router.get("/threads/{thread_id}/latest", response_model=Checkpoint, responses=responses(400, 401, 404, 422),
            summary="The newest checkpoint of a namespace, with values and pending writes")
def get_latest(request: Request, thread_id: ThreadId, tenant: Tenant, checkpoint_ns: Namespace = "") -> Checkpoint:
    return Checkpoint.of(context_of(request).checkpoints.get(tenant, thread_id, checkpoint_ns))


@router.get("/threads/{thread_id}/checkpoints/{checkpoint_id}", response_model=Checkpoint,
            responses=responses(400, 401, 404, 422), summary="One checkpoint, with values and pending writes")
def get_checkpoint(request: Request, thread_id: ThreadId, checkpoint_id: CheckpointId, tenant: Tenant,
                   checkpoint_ns: Namespace = "") -> Checkpoint:
    return Checkpoint.of(context_of(request).checkpoints.get(tenant, thread_id, checkpoint_ns, checkpoint_id))


@router.get("/threads/{thread_id}/checkpoints", response_model=CheckpointPage,
            responses=responses(400, 401, 404, 422), summary="A thread's checkpoints, newest first",
            openapi_extra={"parameters": [{  # a JSON object in the query string, which Query() cannot declare
                "name": "filter", "in": "query", "required": False,
                "description": 'Metadata values to match, a JSON object of up to 4096 characters, '
                               'e.g. {"source": "loop"}.',
                "content": {"application/json": {"schema": {"type": "object"}}}}]})
def list_checkpoints(
    request: Request,
    thread_id: ThreadId,
    tenant: Tenant,
    checkpoint_ns: Annotated[str | None, Query(max_length=MAX_TEXT_LENGTH, pattern=TEXT["pattern"],
                                               description="Only this namespace ('' is the root); "
                                                           "omit it for every namespace.")] = None,
    before: Annotated[str | None, Query(**ID, description="Only checkpoints older than this id.")] = None,
    filter: Annotated[str | None, Query(max_length=4096, include_in_schema=False)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
) -> CheckpointPage:
    page = context_of(request).checkpoints.list(
        tenant, thread_id, checkpoint_ns=checkpoint_ns, before=before, metadata_filter=json_object_param(filter, "filter"),
        limit=limit, continuation=continuation)
    return CheckpointPage(items=[Checkpoint.of(item) for item in page.items], continuation=page.continuation)


@router.delete("/threads/{thread_id}", status_code=204, responses=responses(400, 401, 404),
               summary="Delete a thread's checkpoints, values and pending writes")
def delete_thread(request: Request, thread_id: ThreadId, tenant: Tenant) -> Response:
    context_of(request).checkpoints.delete_thread(tenant, thread_id)
    return Response(status_code=204)


@router.post("/threads/{thread_id}/copy", response_model=CopyResult, status_code=201,
             responses=responses(400, 401, 404, 422), summary="Copy a thread to another thread")
def copy_thread(request: Request, thread_id: ThreadId, body: CopyRequest, tenant: Tenant) -> CopyResult:
    copied = context_of(request).checkpoints.copy_thread(tenant, thread_id, body.target_thread_id)
    return CopyResult(copied=copied)


@router.post("/threads/{thread_id}/prune", response_model=DeletedCount, responses=responses(400, 401, 404, 422),
             summary="Keep only the latest checkpoint of each namespace, or delete the thread")
def prune_thread(request: Request, thread_id: ThreadId, body: PruneRequest, tenant: Tenant) -> DeletedCount:
    deleted = context_of(request).checkpoints.prune(tenant, [thread_id], body.strategy)
    return DeletedCount(deleted=deleted)


@router.post("/runs/delete", response_model=DeletedCount, responses=responses(400, 401, 404, 422),
             summary="Delete every checkpoint the given runs wrote")
def delete_runs(request: Request, body: RunsDelete, tenant: Tenant) -> DeletedCount:
    deleted = context_of(request).checkpoints.delete_for_runs(tenant, body.run_ids)
    return DeletedCount(deleted=deleted)
