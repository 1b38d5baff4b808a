"""Conversation memory: threads and messages."""

from shared import names
from shared.domains.domain import Domain, Job
from shared.domains.memory.service import COMMANDS, MemoryService

DOMAIN = Domain(
    name="memory",
    tables=(names.TABLE_MEMORY,),
    service=MemoryService,
    router="functions.http.memory:router",
    commands=COMMANDS,
    jobs=(Job("finish_thread_deletions", "15 */10 * * * *", lambda service: service.finish_deletions(),
            "Finish thread deletions that a crash interrupted halfway."),),
    paths=("threads",),
)

__all__ = ["DOMAIN", "MemoryService"]
