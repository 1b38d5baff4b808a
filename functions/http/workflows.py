"""HTTP transport for suspended workflows and events: /api/v1/workflows, /api/v1/events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from functions.auth import tenant_of
from functions.context import context_of
from functions.http import ClientJsonStorageRoute
from functions.http_common import quoted, read_json, unquote
from functions.problems import responses
from shared.domains.workflows.models import (
    ID_RULE,
    MAX_EVENT_PAYLOAD_BYTES,
    MAX_TEXT_LENGTH,
    TEXT_PATTERN,
    ApproveRequest,
    SuspendRequest,
    TransitionRequest,
    Workflow,
    WorkflowStatus,
)
from shared.errors import TooLarge
from shared.keys import ID_PATTERN

router = APIRouter(prefix="/api/v1", tags=["workflows"], route_class=ClientJsonStorageRoute)
Tenant = Annotated[str, Depends(tenant_of)]
#: shared.keys.check_id's rule, declared so that the document says it and the server refuses the same ids.
ID = {"pattern": ID_PATTERN, "min_length": 1, "max_length": 128}
WorkflowId = Annotated[str, Path(**ID, description=f"The workflow's id: {ID_RULE}.")]
IfMatch = Annotated[str | None, Header(alias="If-Match", description="Apply only if the workflow is at this ETag.")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              description="A retry with the same key is applied once.")]


class WorkflowOut(BaseModel):
    """A workflow; timestamps are ISO-8601 UTC."""

    model_config = ConfigDict(from_attributes=True)

    workflow_id: str = Field(description="The workflow's id.")
    workflow_name: str = Field(description="What kind of workflow it is.")
    resource: str = Field(description="What it works on.")
    status: WorkflowStatus = Field(description="suspended, running, completed, failed, cancelled or timed_out.")
    current_step: int | str = Field(description="The step to continue from: an index or a name, as given.")
    suspend_reason: dict[str, Any] = Field(description="The latest suspend reason, with 'kind'; kept after resume.")
    resume_conditions: dict[str, Any] | None = Field(description="As given at suspend.")
    ready: bool = Field(description="Suspended and ready to resume (event came, schedule due, or approved).")
    ready_reason: str | None = Field(description="'event:<event_id>', 'schedule' or 'approval'.")
    timeout_reason: str | None = Field(description="Why it timed out (status timed_out).")
    detail: str | None = Field(description="The note given on complete, fail or cancel.")
    approval: dict[str, Any] | None = Field(description="Who approved, their comment, and when.")
    wait_until: str | None = Field(description="When the pending timeout or scheduled resume falls due.")
    suspensions: int = Field(description="How many times it has been suspended.")
    etag: str = Field(description="Moves on every change; send it as If-Match.")
    created_at: str
    updated_at: str
    suspended_at: str | None
    resumed_at: str | None
    finished_at: str | None
    context_state: dict[str, Any] | None = Field(default=None,
                                                 description="The context, with include_context=true only.")


class ResumeOut(BaseModel):
    """The context and step to continue from, handed out once."""

    context_state: dict[str, Any] = Field(description="The context, with delivered events under 'events'.")
    current_step: int | str = Field(description="The step to continue from: an index or a name, as given.")
    workflow: WorkflowOut = Field(description="The workflow, now running.")


class WorkflowPage(BaseModel):
    """One page of workflows (maybe fewer than the limit); pass ``continuation`` back for the next."""

    items: list[WorkflowOut]
    continuation: str | None = None


class DeliveryOut(BaseModel):
    """What a delivery did."""

    event_id: str = Field(description="The event delivered.")
    delivered: int = Field(description="How many waiting workflows it made ready to resume (for a repeated "
                                       "Idempotency-Key: the first delivery's count).")


def _out(workflow: Workflow) -> WorkflowOut:
    return WorkflowOut.model_validate(workflow, from_attributes=True)


async def _limit_body(request: Request) -> None:
    """413 before the body is parsed when its declared size is over what can be stored."""
    declared = request.headers.get("content-length")
    limit = context_of(request).workflows.max_context_bytes + 64 * 1024
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is {declared} bytes; the limit is {limit}")


def _with_etag(response: Response, workflow: Workflow) -> WorkflowOut:
    response.headers["ETag"] = quoted(workflow.etag)
    return _out(workflow)


@router.get("/workflows", response_model=WorkflowPage, responses=responses(400, 401, 422),
            summary="List workflows by resource, status, name or readiness")
def list_workflows(
    request: Request,
    tenant: Tenant,
    resource: Annotated[str | None, Query(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=TEXT_PATTERN,
                                          description="Only this resource.")] = None,
    status: Annotated[WorkflowStatus | None, Query(description="Only this status.")] = None,
    workflow_name: Annotated[str | None, Query(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=TEXT_PATTERN,
                                               description="Only this name.")] = None,
    ready: Annotated[bool | None, Query(description="true: suspended and ready to resume (work to pick up).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
) -> WorkflowPage:
    page = context_of(request).workflows.list(tenant, resource=resource, status=status,
                                                    workflow_name=workflow_name, ready=ready, limit=limit,
                                                    continuation=continuation)
    return WorkflowPage(items=[_out(w) for w in page.items], continuation=page.continuation)


@router.post(
    "/workflows/{workflow_id}/suspend", response_model=WorkflowOut, status_code=200,
    responses={201: {"model": WorkflowOut, "description": "Created and suspended"},
               **responses(400, 401, 404, 409, 412, 413, 422)},
    dependencies=[Depends(_limit_body)],
    summary="Suspend a workflow (a new one is created) with its context and reason",
)
def suspend_workflow(
    workflow_id: WorkflowId,
    body: SuspendRequest,
    request: Request,
    response: Response,
    tenant: Tenant,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> WorkflowOut:
    outcome = context_of(request).workflows.suspend_outcome(
        tenant, workflow_id, workflow_name=body.workflow_name, resource=body.resource,
        current_step=body.current_step, context_state=body.context_state, reason=body.suspend_reason,
        resume_conditions=body.resume_conditions, if_match=unquote(if_match), idempotency_key=idempotency_key)
    response.status_code = outcome.status  # 201 when it created the workflow, also on a replay of that
    return _with_etag(response, outcome.result)


@router.post("/workflows/{workflow_id}/resume", response_model=ResumeOut,
             responses=responses(400, 401, 404, 409, 412, 422),
             summary="Resume: the context and step, once; the workflow is then running")
def resume_workflow(workflow_id: WorkflowId, request: Request, response: Response, tenant: Tenant,
                    if_match: IfMatch = None) -> ResumeOut:
    resumed = context_of(request).workflows.resume(tenant, workflow_id, if_match=unquote(if_match))
    return ResumeOut(context_state=resumed.context_state, current_step=resumed.current_step,
                     workflow=_with_etag(response, resumed.workflow))


@router.get("/workflows/{workflow_id}", response_model=WorkflowOut, responses=responses(400, 401, 404, 422),
            summary="A workflow, with its context if asked")
def get_workflow(
    workflow_id: WorkflowId,
    request: Request,
    response: Response,
    tenant: Tenant,
    include_context: Annotated[bool, Query(description="Also return context_state.")] = False,
) -> WorkflowOut:
    workflow = context_of(request).workflows.get(tenant, workflow_id, include_context=include_context)
    return _with_etag(response, workflow)


def _transition_route(status: WorkflowStatus, summary: str) -> None:
    def change(workflow_id: WorkflowId, request: Request, response: Response, tenant: Tenant,
               body: Annotated[TransitionRequest | None, Body()] = None, if_match: IfMatch = None,
               idempotency_key: IdempotencyKey = None) -> WorkflowOut:
        workflow = context_of(request).workflows.transition(
            tenant, workflow_id, status, detail=body.detail if body else None, if_match=unquote(if_match),
            idempotency_key=idempotency_key)
        return _with_etag(response, workflow)

    verb = {"completed": "complete", "failed": "fail", "cancelled": "cancel"}[status]
    change.__name__ = f"{verb}_workflow"
    router.post(f"/workflows/{{workflow_id}}/{verb}", response_model=WorkflowOut,
                responses=responses(400, 401, 404, 409, 412, 422), summary=summary)(change)


_transition_route(WorkflowStatus.COMPLETED, "Mark a running workflow completed")
_transition_route(WorkflowStatus.FAILED, "Mark a running workflow failed")
_transition_route(WorkflowStatus.CANCELLED, "Cancel a suspended or running workflow")


@router.post("/workflows/{workflow_id}/approve", response_model=WorkflowOut,
             responses=responses(400, 401, 404, 409, 412, 422),
             summary="Approve a workflow waiting for approval: it becomes ready to resume")
def approve_workflow(workflow_id: WorkflowId, request: Request, response: Response, tenant: Tenant,
                     body: Annotated[ApproveRequest | None, Body()] = None, if_match: IfMatch = None,
                     idempotency_key: IdempotencyKey = None) -> WorkflowOut:
    workflow = context_of(request).workflows.approve(
        tenant, workflow_id, approved_by=body.approved_by if body else None, comment=body.comment if body else None,
        if_match=unquote(if_match), idempotency_key=idempotency_key)
    return _with_etag(response, workflow)


@router.post(
    "/events/{event_id}", response_model=DeliveryOut, responses=responses(400, 401, 413, 422),
    summary="Deliver an event: every workflow waiting for it becomes ready to resume",
    description="The JSON body (any JSON, or empty for null) is merged into each waiting workflow's context under "
                "events[event_id]; their status stays suspended with ready=true and ready_reason 'event:<event_id>'. "
                "With an Idempotency-Key, a repeated delivery changes nothing. Only the caller's tenant is affected.",
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"description": "Any JSON value."}}},
                                   "required": False}},
)
async def deliver_event(
    event_id: Annotated[str, Path(**ID, description=f"The event, e.g. 'data_ready': {ID_RULE}.")],
    request: Request,
    tenant: Tenant,
    idempotency_key: IdempotencyKey = None,
) -> DeliveryOut:
    payload = await read_json(request, MAX_EVENT_PAYLOAD_BYTES, "event payload")
    workflows = context_of(request).workflows
    delivered = await run_in_threadpool(
        lambda: workflows.deliver_event(tenant, event_id, payload, delivery_id=idempotency_key))
    return DeliveryOut(event_id=event_id, delivered=delivered)
