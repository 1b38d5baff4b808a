"""Objects: timer work, as data (6-field NCRONTAB schedules, UTC)."""

from __future__ import annotations

from shared.domains.domain import Job
from shared.domains.objects.service import PURGE_BUDGET_SECONDS, ObjectService
from shared.storage.due import Budget


def purge_expired(service: ObjectService) -> int:
    """One retention run: works while expired versions remain, fair across tenants, within its time budget."""
    return service.purge_expired(budget=Budget(seconds=PURGE_BUDGET_SECONDS))


JOBS = (
    Job("purge_expired_objects", "30 */5 * * * *", purge_expired,
        f"Delete objects whose TTL has passed, fair across tenants, for up to {PURGE_BUDGET_SECONDS:.0f} s per run; "
        "the next run takes the rest."),
)
