"""Memory's timer work, as data: what runs, when (6-field NCRONTAB, UTC), and why."""

from __future__ import annotations

from shared.domains.domain import Job
from shared.domains.memory.service import MemoryService

#: Seconds one timer run keeps finishing deletions while records remain.
FINISH_BUDGET_SECONDS = 60.0


def finish_thread_deletions(service: MemoryService) -> int:
    """Finish interrupted thread deletes, fair across tenants, while work remains within the budget."""
    return service.finish_deletions(budget_seconds=FINISH_BUDGET_SECONDS)


JOBS: tuple[Job, ...] = (
    Job("finish_thread_deletions", "15 */10 * * * *", finish_thread_deletions,
        "Finish thread deletions that a crash interrupted halfway."),
)
