"""Conversation memory: threads and messages.

models (results, enums, limits, inputs), _layout (keys and row codecs),
service (:class:`MemoryService`), commands (queue ops), jobs (timer work).
"""

from shared import names
from shared.domains.domain import Domain
from shared.domains.memory.commands import COMMANDS
from shared.domains.memory.jobs import JOBS
from shared.domains.memory.models import MessageNotFound, ThreadAlreadyExists, ThreadFull, ThreadNotFound
from shared.domains.memory.service import MemoryService

DOMAIN = Domain(
    name="memory",
    tables=(names.TABLE_MEMORY,),
    service=MemoryService,
    router="functions.http.memory:router",
    commands=COMMANDS,
    jobs=JOBS,
    paths=("threads",),
)

__all__ = ["DOMAIN", "MemoryService", "MessageNotFound", "ThreadAlreadyExists", "ThreadFull", "ThreadNotFound"]
