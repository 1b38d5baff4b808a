"""What the workflows domain speaks: statuses, suspend reasons, results, and input models.

The input models serve both transports: the HTTP routes take :class:`SuspendRequest`,
:class:`TransitionRequest` and :class:`ApproveRequest` as bodies (the workflow id from
the path), and the queue payloads (``Workflows*Payload``) are the same models with
the workflow id. Statuses and the only transitions allowed (anything else is
a 409 naming both states)::

    (new) ─suspend─> suspended ─resume─> running ─suspend─> suspended
    suspended ─> running | cancelled | timed_out (timer only)
    running   ─> suspended | completed | failed | cancelled

completed, failed, cancelled and timed_out are terminal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from shared.command_ops import CommandPayload
from shared.errors import Conflict, InvalidInput
from shared.keys import ID_PATTERN
from shared.models_base import RequestBodyModel, StowageModel

MAX_TEXT_LENGTH = 200  # workflow_name, resource: they become parts of index keys
MAX_STEP_LENGTH = 1000
#: Largest integer step index: the largest integer every JSON client reads exactly.
MAX_STEP_INDEX = 2**53 - 1
MAX_DETAIL_LENGTH = 2000
MAX_CONDITIONS_BYTES = 16_000  # stays inline: the workflow entity is read on every listing
MAX_EVENT_PAYLOAD_BYTES = 1024 * 1024
MAX_WAIT_SECONDS = 366 * 24 * 3600
MAX_SCHEDULE_SECONDS = 10 * 365 * 24 * 3600


class WorkflowStatus(enum.StrEnum):
    """Where a workflow is: suspended, running, or one of the terminal states."""

    SUSPENDED = "suspended"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.SUSPENDED: frozenset({WorkflowStatus.RUNNING, WorkflowStatus.CANCELLED, WorkflowStatus.TIMED_OUT}),
    WorkflowStatus.RUNNING: frozenset({WorkflowStatus.SUSPENDED, WorkflowStatus.COMPLETED, WorkflowStatus.FAILED,
                                       WorkflowStatus.CANCELLED}),
}
SET_BY_TRANSITION = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)
SET_ELSEWHERE = {WorkflowStatus.RUNNING: "resume", WorkflowStatus.SUSPENDED: "suspend",
                  WorkflowStatus.TIMED_OUT: "the timer"}
TERMINAL_STATUSES = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED,
                               WorkflowStatus.TIMED_OUT})


class ReasonKind(enum.StrEnum):
    """Why a workflow is suspended."""

    EVENT = "event"
    APPROVAL = "approval"
    SCHEDULE = "schedule"
    MANUAL = "manual"


class IllegalTransition(Conflict):
    """The workflow's status does not allow this change; the message names both states.

    ``workflow_id``, ``current`` and ``target`` say which workflow and which change.
    """

    title = "Illegal transition"
    type_slug = "illegal-transition"
    problem_fields = ("workflow_id", "current", "target")

    def __init__(self, workflow_id: str, current: str, target: str) -> None:
        allowed = sorted(TRANSITIONS.get(WorkflowStatus(current), ()))
        super().__init__(
            f"workflow {workflow_id!r} is {current}: {current} → {target} is not an allowed transition "
            f"(from {current}: {', '.join(allowed) or 'none, it is terminal'})")
        self.workflow_id = workflow_id
        self.current = current
        self.target = target


class NotAwaitingApproval(Conflict):
    """Only a suspended workflow waiting for approval, and not ready yet, can be approved.

    ``workflow_id``, ``workflow_status``, ``waiting_for`` (the suspend reason's kind)
    and ``ready_reason`` say why this one cannot.
    """

    title = "Not awaiting approval"
    type_slug = "not-awaiting-approval"
    problem_fields = ("workflow_id", "workflow_status", "waiting_for", "ready_reason")

    def __init__(self, workflow_id: str, workflow_status: str, *, waiting_for: str | None = None,
                 ready_reason: str | None = None) -> None:
        if workflow_status != WorkflowStatus.SUSPENDED:
            message = (f"workflow {workflow_id!r} is {workflow_status}; only a suspended workflow waiting for "
                       "approval can be approved")
        elif waiting_for != ReasonKind.APPROVAL:
            message = f"workflow {workflow_id!r} is waiting for {waiting_for}, not approval"
        else:
            message = f"workflow {workflow_id!r} is already ready to resume ({ready_reason})"
        super().__init__(message)
        self.workflow_id = workflow_id
        self.workflow_status = workflow_status
        self.waiting_for = waiting_for
        self.ready_reason = ready_reason


# --------------------------------------------------------------------------- suspend reasons


def _kind_required(schema: dict[str, Any]) -> None:
    """The document says ``kind`` is required: the discriminated union needs it, whatever the default says."""
    schema["properties"]["kind"].pop("default", None)
    schema["required"] = ["kind", *[name for name in schema.get("required", []) if name != "kind"]]


class _Reason(StowageModel):
    # kind keeps its default for Python callers building a model; as data (HTTP, queue) it must be sent.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_kind_required)


class WaitingForEvent(_Reason):
    """Waiting for an event; delivering it makes the workflow ready to resume."""

    kind: Literal["event"] = Field(default="event", description="Always 'event'.")
    event_id: str = Field(pattern=ID_PATTERN, description="The event to wait for, e.g. 'data_ready'.")
    timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_WAIT_SECONDS,
                                        description="Time out (status timed_out) if the event has not come by then.")


class WaitingForApproval(_Reason):
    """Waiting for someone to approve; approving makes the workflow ready to resume."""

    kind: Literal["approval"] = Field(default="approval", description="Always 'approval'.")
    approver: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH, description="Who is asked to approve.")
    timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_WAIT_SECONDS,
                                        description="Time out (status timed_out) without an approval by then.")


def _date_time_text(value: Any) -> Any:
    """resume_at as the document states it, a date-time string (or a datetime from Python): no epoch numbers."""
    if not isinstance(value, (str, datetime)):
        raise PydanticCustomError("datetime_type", "resume_at must be an ISO-8601 date-time string with a time zone")
    return value


class ScheduledResume(_Reason):
    """Resume at a time: the timer makes the workflow ready then."""

    kind: Literal["schedule"] = Field(default="schedule", description="Always 'schedule'.")
    resume_at: Annotated[AwareDatetime, BeforeValidator(_date_time_text)] = Field(
        description="When the workflow becomes ready: an ISO-8601 date-time with a time zone; "
                    "a time already past makes it ready at once.")


class ManualResume(_Reason):
    """Waits for an explicit resume; nothing makes it ready."""

    kind: Literal["manual"] = Field(default="manual", description="Always 'manual'.")
    note: str | None = Field(default=None, max_length=MAX_DETAIL_LENGTH, description="Why, for the humans.")


SuspendReason = Annotated[WaitingForEvent | WaitingForApproval | ScheduledResume | ManualResume,
                          Field(discriminator="kind")]
#: A text with no control characters (the rule _check_text enforces), for the document.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _whole_number(value: Any) -> Any:
    """A whole-number float (JSON ``3.0``, an integer to JSON Schema) as that int; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: The step to continue from: an integer step index (as seed 000 keeps it) or a step name, returned as given.
#: The index is strict (no bools, no numeric strings, no fractions) but takes a whole-number float.
CurrentStep = Annotated[
    Annotated[int, Field(strict=True, ge=0, le=MAX_STEP_INDEX), BeforeValidator(_whole_number)]
    | Annotated[str, Field(min_length=1, max_length=MAX_STEP_LENGTH, pattern=TEXT_PATTERN)],
    Field(description=f"The step to continue from: a step index (an integer from 0 to {MAX_STEP_INDEX}) or a "
                      f"step name (1-{MAX_STEP_LENGTH} characters); resume returns it as given, with its type."),
]
#: A parsed suspend reason, one of the four models.
AnyReason = WaitingForEvent | WaitingForApproval | ScheduledResume | ManualResume
_REASON_ADAPTER: TypeAdapter[AnyReason] = TypeAdapter(SuspendReason)


def parse_reason(reason: Any) -> AnyReason:
    """A suspend reason from one of the models or a dict with ``kind``; InvalidInput otherwise."""
    try:
        return _REASON_ADAPTER.validate_python(reason)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'reason'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise InvalidInput(f"suspend_reason is invalid: {problems}") from None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Workflow:
    """A workflow as stored; timestamps are ISO-8601 UTC."""

    workflow_id: str
    workflow_name: str
    resource: str
    status: WorkflowStatus
    #: A step index (int) or a step name (str), as given at suspend.
    current_step: int | str
    #: The latest suspend reason, with ``kind``; kept after resume and timeout.
    suspend_reason: dict[str, Any]
    resume_conditions: dict[str, Any] | None
    #: Suspended and ready to resume (an event came, the schedule fell due, or it was approved).
    ready: bool
    #: Why it became ready: "event:<event_id>", "schedule" or "approval"; kept after resume.
    ready_reason: str | None
    #: Why it timed out (status timed_out).
    timeout_reason: str | None
    #: Note given on complete, fail or cancel.
    detail: str | None
    #: Who approved and their comment, once approved.
    approval: dict[str, Any] | None
    #: When the pending timeout or scheduled resume falls due.
    wait_until: str | None
    #: How many times it has been suspended.
    suspensions: int
    #: Moves on every change; pass it as If-Match.
    etag: str
    created_at: str
    updated_at: str
    suspended_at: str | None
    resumed_at: str | None
    finished_at: str | None
    #: The context, when asked for (``get(..., include_context=True)``); None otherwise.
    context_state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Resumed:
    """What a resume hands out, once: the context and step to continue from."""

    context_state: dict[str, Any]
    current_step: int | str
    workflow: Workflow


# --------------------------------------------------------------------------- input models (HTTP and queue)

#: shared.keys.check_id's rule, declared so that documents say it and validation refuses the same ids.
ID_RULE = "1-128 letters, digits, '.', '_', ':' or '-'"


class SuspendRequest(CommandPayload, RequestBodyModel):
    """Suspend a new workflow (created) or a running one."""

    workflow_name: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=TEXT_PATTERN,
                               description="What kind of workflow it is, e.g. 'etl'; fixed at creation.")
    resource: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=TEXT_PATTERN,
                          description="What it works on, e.g. 'user:42'; fixed at creation.")
    current_step: CurrentStep
    context_state: dict[str, Any] = Field(default_factory=dict, description=(
        "Any JSON object, of any size up to the configured limit. The key 'events' is reserved: "
        "delivered events are merged under events[event_id]."))
    suspend_reason: SuspendReason = Field(description="Why it waits: event, approval, schedule or manual.")
    resume_conditions: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 16,000 bytes.")


class TransitionRequest(CommandPayload, RequestBodyModel):
    """An optional note on why the workflow completed, failed or was cancelled."""

    detail: str | None = Field(default=None, min_length=1, max_length=MAX_DETAIL_LENGTH, pattern=TEXT_PATTERN,
                               description="A note on why.")


class ApproveRequest(CommandPayload, RequestBodyModel):
    """Who approves, and why."""

    approved_by: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_LENGTH, pattern=TEXT_PATTERN,
                                    description="Who approved.")
    comment: str | None = Field(default=None, min_length=1, max_length=MAX_DETAIL_LENGTH, pattern=TEXT_PATTERN,
                                description="Their comment.")


class WorkflowsSuspendPayload(SuspendRequest):
    """Suspend a new or running workflow (the HTTP body with the workflow id). Applied once per idempotency key."""

    workflow_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128,
                             description=f"The workflow's id: {ID_RULE}.")


class WorkflowsDeliverEventPayload(CommandPayload):
    """Deliver an event; the idempotency key is the delivery id, so a redelivery readies nothing twice."""

    event_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128,
                          description=f"The event, e.g. 'data_ready': {ID_RULE}.")
    payload: Any = Field(default=None, description="Any JSON; merged into each waiting context under events[event_id].")


class WorkflowsTransitionPayload(TransitionRequest):
    """Complete, fail or cancel a workflow (the HTTP body with the workflow id)."""

    workflow_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128,
                             description=f"The workflow's id: {ID_RULE}.")


class WorkflowsApprovePayload(ApproveRequest):
    """Approve a workflow waiting for approval: it becomes ready to resume (the HTTP body with the workflow id)."""

    workflow_id: str = Field(pattern=ID_PATTERN, min_length=1, max_length=128,
                             description=f"The workflow's id: {ID_RULE}.")
