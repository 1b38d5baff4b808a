"""Timer work of the workflows domain, as data: what runs, on which NCRONTAB schedule (UTC)."""

from __future__ import annotations

from typing import Any

from shared.domains.domain import Job
from shared.domains.workflows.service import WorkflowService


def process_due(service: Any) -> int:
    """One timer run: timeouts and scheduled resumes due now, fair across tenants, within the time budget."""
    if not isinstance(service, WorkflowService):
        raise TypeError(f"process_due_workflows runs on a WorkflowService, not {type(service).__name__}")
    return sum(service.process_due().values())


JOBS: tuple[Job, ...] = (
    # every minute: timeouts and schedules have minute resolution
    Job("process_due_workflows", "5 * * * * *", process_due,
        "Time out waits whose timeout passed and make scheduled workflows ready, fair across tenants, "
        "while work remains within the run's time budget."),
)
