"""Queue commands of the workflows domain: each applies through the public service API.

Every op is idempotent for its envelope's idempotency key: the service writes the
key's marker in the same batch as the change (for a delivery, each workflow's
delivery marker), so a redelivered message replays ("duplicate") instead of
applying twice, and a key reused for another request is refused (poisoned, 422).
A command the workflow's state refuses (an illegal transition) can never succeed,
so it is poisoned too; a Busy store is retried by redelivery.
"""

from __future__ import annotations

from collections.abc import Callable

from shared.command_ops import CommandOp, Outcome
from shared.domains.workflows.models import (
    WorkflowsApprovePayload,
    WorkflowsDeliverEventPayload,
    WorkflowsSuspendPayload,
    WorkflowStatus,
    WorkflowsTransitionPayload,
)
from shared.domains.workflows.service import WorkflowService
from shared.errors import Conflict, PreconditionFailed


def _permanent(exc: Conflict) -> PreconditionFailed:
    # The workflow's state refuses the command; no retry can change that, so poison the message.
    return PreconditionFailed(str(exc))


def apply_suspend(service: WorkflowService, tenant: str, payload: WorkflowsSuspendPayload,
                  idempotency_key: str) -> Outcome:
    try:
        outcome = service.suspend_outcome(
            tenant, payload.workflow_id, workflow_name=payload.workflow_name, resource=payload.resource,
            current_step=payload.current_step, context_state=payload.context_state, reason=payload.suspend_reason,
            resume_conditions=payload.resume_conditions, idempotency_key=idempotency_key)
    except Conflict as exc:
        raise _permanent(exc) from exc
    if outcome.replayed:
        return Outcome("duplicate", f"suspend of workflow {payload.workflow_id} already applied")
    return Outcome("applied", f"workflow {outcome.result.workflow_id} suspended ({outcome.result.suspensions})")


def apply_deliver(service: WorkflowService, tenant: str, payload: WorkflowsDeliverEventPayload,
                  idempotency_key: str) -> Outcome:
    outcome = service.deliver_event_outcome(tenant, payload.event_id, payload.payload, delivery_id=idempotency_key)
    if outcome.replayed:
        return Outcome("duplicate", f"event {payload.event_id} already delivered ({outcome.result} readied)")
    return Outcome("applied", f"event {payload.event_id} made {outcome.result} workflow(s) ready")


def transition_op(status: WorkflowStatus) -> Callable[[WorkflowService, str, WorkflowsTransitionPayload, str],
                                                      Outcome]:
    """The apply function of the command that moves a workflow to ``status``."""

    def apply(service: WorkflowService, tenant: str, payload: WorkflowsTransitionPayload,
              idempotency_key: str) -> Outcome:
        try:
            outcome = service.transition_outcome(tenant, payload.workflow_id, status, detail=payload.detail,
                                                 idempotency_key=idempotency_key)
        except Conflict as exc:
            raise _permanent(exc) from exc
        if outcome.replayed:
            return Outcome("duplicate", f"workflow {payload.workflow_id} already {status}")
        return Outcome("applied", f"workflow {payload.workflow_id} {status}")

    return apply


def apply_approve(service: WorkflowService, tenant: str, payload: WorkflowsApprovePayload,
                  idempotency_key: str) -> Outcome:
    try:
        outcome = service.approve_outcome(tenant, payload.workflow_id, approved_by=payload.approved_by,
                                          comment=payload.comment, idempotency_key=idempotency_key)
    except Conflict as exc:
        raise _permanent(exc) from exc
    if outcome.replayed:
        return Outcome("duplicate", f"approval of workflow {payload.workflow_id} already applied")
    return Outcome("applied", f"workflow {payload.workflow_id} approved")


COMMANDS: tuple[CommandOp, ...] = (
    CommandOp("workflows.suspend", WorkflowsSuspendPayload, apply_suspend,
              "Suspend a new or running workflow with its context and reason."),
    CommandOp("workflows.deliver_event", WorkflowsDeliverEventPayload, apply_deliver,
              "Deliver an event: every workflow of the tenant waiting for it becomes ready to resume."),
    CommandOp("workflows.approve", WorkflowsApprovePayload, apply_approve,
              "Approve a workflow waiting for approval (it becomes ready to resume)."),
    CommandOp("workflows.complete", WorkflowsTransitionPayload, transition_op(WorkflowStatus.COMPLETED),
              "Mark a running workflow completed."),
    CommandOp("workflows.fail", WorkflowsTransitionPayload, transition_op(WorkflowStatus.FAILED),
              "Mark a running workflow failed."),
    CommandOp("workflows.cancel", WorkflowsTransitionPayload, transition_op(WorkflowStatus.CANCELLED),
              "Cancel a suspended or running workflow."),
)
