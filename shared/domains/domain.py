"""What a domain declares to the rest of Stowage: one :class:`Domain` value per package.

A domain package under ``shared/domains/`` exports ``DOMAIN``. From the registry
(:data:`shared.domains.DOMAINS`) the app derives everything that used to be a
central list: the queue command op table, the HTTP routers it mounts, the timer
functions, the tables ``names`` declares and the services the app context holds.
Adding a domain is one folder, one registry line, its table name, and the three
infrastructure templates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
