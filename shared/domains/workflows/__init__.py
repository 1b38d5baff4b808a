"""Suspended workflows, resumed by events, approvals, timeouts and schedules.

The package: :mod:`.models` (statuses, reasons, results, queue payloads),
:mod:`._layout` (keys and row codecs), :mod:`.service` (:class:`WorkflowService`,
its layout and guarantees), :mod:`.commands` (queue ops) and :mod:`.jobs` (the timer).
"""

from shared import names
from shared.domains.domain import Domain
from shared.domains.workflows.commands import COMMANDS
from shared.domains.workflows.jobs import JOBS
from shared.domains.workflows.service import WorkflowService

DOMAIN = Domain(
    name="workflows",
    tables=(names.TABLE_WORKFLOWS,),
    service=WorkflowService,
    router="functions.http.workflows:router",
    commands=COMMANDS,
    jobs=JOBS,
    paths=("workflows", "events"),
)

__all__ = ["DOMAIN", "WorkflowService"]
