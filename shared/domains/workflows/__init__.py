"""Suspended workflows, resumed by events, approvals, timeouts and schedules."""

from shared import names
from shared.domains.domain import Domain, Job
from shared.domains.workflows.service import COMMANDS, WorkflowService

DOMAIN = Domain(
    name="workflows",
    tables=(names.TABLE_WORKFLOWS,),
    service=WorkflowService,
    router="functions.http.workflows:router",
    commands=COMMANDS,
    jobs=(# every minute: timeouts and schedules have minute resolution
        Job("process_due_workflows", "5 * * * * *", lambda service: service.process_due(),
            "Time out waits whose timeout passed and make scheduled workflows ready, a chunk per run."),),
    paths=("workflows", "events"),
)

__all__ = ["DOMAIN", "WorkflowService"]
