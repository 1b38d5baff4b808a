"""What a domain declares to the rest of Stowage: one :class:`Domain` value per package.

A domain package under ``shared/domains/`` exports ``DOMAIN``. From the registry
(:data:`shared.domains.DOMAINS`) the app derives everything that used to be a
central list: the queue command op table, the HTTP routers it mounts, the timer
functions, the tables ``names`` declares and the services the app context holds.
Adding a domain is one folder, one registry line, its table name, and the three
infrastructure templates.

Change records (:mod:`shared.storage.changefeed`): every state-changing operation
of a domain writes one, in the same atomic batch as the change. A domain declares
which of its ops are not audited (``unaudited``, e.g. high-volume writes such as
checkpoint puts); the feed carries them all, the audit log skips those. Services
build their records with :func:`change_record`, which takes ``audited`` from the
registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.storage.changefeed import ChangeRecord

if TYPE_CHECKING:
    from shared.command_ops import CommandOp
    from shared.stores import Stores


@dataclass(frozen=True)
class Job:
    """Timer work of a domain: a function name, its 6-field NCRONTAB schedule (UTC), and what it runs.

    ``run(service)`` does one bounded, resumable chunk and returns how many items it
    handled; it must be safe when two instances run it at once.
    """

    name: str
    schedule: str
    run: Callable[[Any], int]
    description: str


@dataclass(frozen=True)
class Domain:
    """A domain: its name, tables, service factory, queue ops, timer jobs and HTTP router.

    ``router`` is the dotted path of its FastAPI router (``"functions.http.objects:router"``),
    named rather than imported so that no domain imports the transport.
    """

    name: str
    tables: tuple[str, ...]
    service: Callable[[Stores], Any]
    router: str
    commands: tuple[CommandOp, ...] = ()
    jobs: tuple[Job, ...] = ()
    #: Path segments under /api/v1 that belong to this domain (for scopes limited to domains).
    paths: tuple[str, ...] = field(default=())
    #: Ops (change record ``op`` names, e.g. ``"checkpoints.put"``) whose records the audit
    #: log skips; every other op of the domain is audited.
    unaudited: frozenset[str] = frozenset()

    def audits(self, op: str) -> bool:
        """Whether the audit log takes this op's change records."""
        return op not in self.unaudited

    def record(self, op: str, target_type: str, target_id: str, details: Any = None) -> ChangeRecord:
        """A change record of ``op`` (actor and context are added where it is written)."""
        return ChangeRecord(domain=self.name, op=op, target_type=target_type, target_id=target_id,
                            audited=self.audits(op), details=details)


def change_record(domain: str, op: str, target_type: str, target_id: str, details: Any = None) -> ChangeRecord:
    """A change record of the registered ``domain``'s ``op``, audited as the registry declares.

    Looked up when called: the registry imports every domain package, which import their services.
    """
    from shared.domains import DOMAINS

    for entry in DOMAINS:
        if entry.name == domain:
            return entry.record(op, target_type, target_id, details)
    raise KeyError(f"no domain {domain!r} is registered")
