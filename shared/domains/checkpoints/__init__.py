"""LangGraph-compatible checkpoints (no LangGraph import here; the savers are in savers.py).

models.py: limits, results and the queue inputs; _layout.py: keys and row codecs;
service.py: the service; commands.py: queue ops; jobs.py: timer work (none).
"""

from shared import names
from shared.domains.checkpoints.commands import COMMANDS
from shared.domains.checkpoints.jobs import JOBS
from shared.domains.checkpoints.service import CheckpointService
from shared.domains.domain import Domain

DOMAIN = Domain(
    name="checkpoints",
    tables=(names.TABLE_CHECKPOINTS,),
    service=CheckpointService,
    router="functions.http.checkpoints:router",
    commands=COMMANDS,
    jobs=JOBS,
    paths=("checkpoints",),
    # LangGraph writes these every graph step: the feed carries them, the audit log skips them.
    unaudited=frozenset({"checkpoints.put", "checkpoints.put_writes"}),
)

__all__ = ["DOMAIN", "CheckpointService"]
