"""The audit domain's queue ops: ``audit.sequence``, "sequence this tenant's pending changes now".

Entries are never sent: the sequencer makes them from the change feed. The
``sequence_changes`` timer does that every minute for every tenant; this op does it
at once for the envelope's tenant (e.g. right before reading its log or exporting
its feed). Its payload is an empty object.

Idempotent without a marker: sequencing and appending are exactly once by
construction (:meth:`AuditService.sequence_changes`), so a redelivery, or a run
racing the timer, finds nothing left to do or does the rest. A tenant whose lease
another instance holds is being sequenced by that instance: applied. A tenant whose
log could not be appended to raises, so the message is retried and, if that keeps
failing, poisoned with the reason; the timer keeps retrying the tenant either way.
"""

from __future__ import annotations

from shared.command_ops import CommandOp, Outcome
from shared.domains.audit.models import AuditSequencePayload
from shared.domains.audit.service import AuditService
from shared.storage.tlog import LogCorrupt


def _apply_sequence(service: AuditService, tenant: str, payload: AuditSequencePayload,
                    idempotency_key: str) -> Outcome:
    result = service.sequence_changes(tenant)
    if tenant in result.failed:
        raise LogCorrupt(f"the audit log of tenant {tenant!r} could not be appended to (the sequencer's log says "
                         "why); the sequence_changes timer keeps retrying it")
    sequenced, appended = result.sequenced.get(tenant, 0), result.appended.get(tenant, 0)
    if tenant in result.contended:
        return Outcome("applied", f"{sequenced} changes sequenced; another instance is appending to the log")
    return Outcome("applied", f"{sequenced} changes sequenced, {appended} entries appended to the audit log")


COMMANDS: tuple[CommandOp, ...] = (
    CommandOp("audit.sequence", AuditSequencePayload, _apply_sequence,
              "Sequence the tenant's pending change records now and append the audited ones to its audit log "
              "(the timer does it every minute). Payload: an empty object."),
)
