"""The audit domain's timer work, as data: what runs, on which NCRONTAB schedule (UTC)."""

from __future__ import annotations

from shared.domains.audit.service import SEQUENCE_BUDGET_SECONDS, AuditService
from shared.domains.domain import Job
from shared.storage.due import Budget


def sequence_changes(service: AuditService) -> int:
    """One run: sequence pending change records and append the audited ones to the tenants' logs."""
    return service.sequence_changes(budget=Budget(seconds=SEQUENCE_BUDGET_SECONDS)).total


JOBS = (
    Job("sequence_changes", "15 * * * * *", sequence_changes,
        f"Sequence every tenant's pending change records into its feed (gapless, exactly once) and append "
        f"the audited ones to its signed audit log, for up to {SEQUENCE_BUDGET_SECONDS:.0f} s per run."),
)
