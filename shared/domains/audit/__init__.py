"""Audit: each tenant's audited changes as a signed, tamper-evident log, and the change feed's readers.

models (results, categories), _layout (keys, the entry JSON, row codecs),
service (sequencing, erasure, readers, verification),
jobs (the sequencer timer).
"""

from shared import names
from shared.domains.audit.commands import COMMANDS
from shared.domains.audit.jobs import JOBS
from shared.domains.audit.service import AuditService
from shared.domains.domain import Domain

DOMAIN = Domain(
    name="audit",
    tables=(names.TABLE_AUDIT,),
    service=AuditService,
    router="functions.http.audit:router",
    commands=COMMANDS,
    jobs=JOBS,
    paths=("audit", "changes"),
)

__all__ = ["DOMAIN", "AuditService"]
