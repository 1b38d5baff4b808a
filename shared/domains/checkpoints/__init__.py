"""LangGraph-compatible checkpoints (no LangGraph import here; the savers are in savers.py)."""

from shared import names
from shared.domains.domain import Domain, Job
from shared.domains.checkpoints.service import COMMANDS, CheckpointService

DOMAIN = Domain(
    name="checkpoints",
    tables=(names.TABLE_CHECKPOINTS,),
    service=CheckpointService,
    router="functions.http.checkpoints:router",
    commands=COMMANDS,
    jobs=(),
    paths=("checkpoints",),
)

__all__ = ["DOMAIN", "CheckpointService"]
