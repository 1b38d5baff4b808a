"""The domain registry: every domain of Stowage, in one list.

Each entry is a package under ``shared/domains/`` that exports a
:class:`~shared.domains.domain.Domain`. The queue command ops, the HTTP routers,
the timer functions, the app context's services and the tables in ``names`` are
all derived from :data:`DOMAINS` (``tests/domains`` checks that they agree), so
adding a domain touches no central list but this one.
"""

from shared.domains.domain import Domain, Job
from shared.domains.objects import DOMAIN as OBJECTS
from shared.domains.memory import DOMAIN as MEMORY
from shared.domains.sessions import DOMAIN as SESSIONS
from shared.domains.workflows import DOMAIN as WORKFLOWS
from shared.domains.checkpoints import DOMAIN as CHECKPOINTS
from shared.domains.audit import DOMAIN as AUDIT

DOMAINS: tuple[Domain, ...] = (OBJECTS, MEMORY, SESSIONS, WORKFLOWS, CHECKPOINTS, AUDIT)


def domain(name: str) -> Domain:
    """The registered domain called ``name`` (KeyError otherwise)."""
    for entry in DOMAINS:
        if entry.name == name:
            return entry
    raise KeyError(f"no domain {name!r}; registered: {', '.join(d.name for d in DOMAINS)}")


__all__ = ["DOMAINS", "Domain", "Job", "domain"]
