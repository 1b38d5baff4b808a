"""Sessions' timer work, as data: what runs, on which NCRONTAB schedule (UTC)."""

from __future__ import annotations

from shared.domains.domain import Job
from shared.domains.sessions.service import EXPIRY_BUDGET_SECONDS, SessionService
from shared.storage.due import Budget


def expire_idle_sessions(service: SessionService) -> int:
    """One run of the idle timer: works while due sessions remain, within its time budget."""
    return service.expire_idle(budget=Budget(seconds=EXPIRY_BUDGET_SECONDS))


JOBS = (
    Job("expire_idle_sessions", "45 */5 * * * *", expire_idle_sessions,
        f"End sessions idle longer than STOWAGE_SESSION_IDLE_SECONDS as expired, fair across tenants, "
        f"for up to {EXPIRY_BUDGET_SECONDS:.0f} s per run."),
)
