"""The services one function app instance uses, built on first use from settings.

Routes reach it with :func:`context_of` (``context_of(request).objects``), which
types what ``functions.http_api.create_api`` keeps in ``app.state.context``.

Where storage calls run (:meth:`AppContext.run_storage`): every write, and every call
to Azure or AWS (their SDKs block for a network round trip), on the thread pool; a
read of the local backend on the event loop itself. Local reads are SQLite queries of
tens of microseconds that never wait for a writer (WAL), and a hop to the thread pool
and back costs more CPU than the read (docs/performance.md). Local writes stay in the
pool: they wait for SQLite's write lock, which another process of `stowage serve
--workers N` may hold. The price: a large local read (an object of many MB) holds its
worker's loop while SQLite copies it out, and that worker's other requests wait for it
(the other workers do not).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool

from shared.config import Settings
from shared.stores import Stores

if TYPE_CHECKING:
    # Imported where first used: the function app builds an AppContext on every cold
    # start, and an instance woken by a timer or a queue message needs few of these.
    from starlette.requests import HTTPConnection

    from shared.apikeys import ApiKeyService
    from shared.commands import CommandProcessor, PoisonQueue
    from shared.domains.audit import AuditService
    from shared.domains.checkpoints import CheckpointService
    from shared.domains.memory import MemoryService
    from shared.domains.objects import ObjectService
    from shared.domains.sessions import SessionService
    from shared.domains.workflows import WorkflowService

T = TypeVar("T")


class AppContext:
    """Holds one Stores and the services over it; nothing connects until first used."""

    def __init__(self, settings: Settings, stores: Stores | None = None) -> None:
        self.settings = settings
        self._stores = stores
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> AppContext:
        return cls(Settings.from_env())

    @property
    def stores(self) -> Stores:
        if self._stores is None:
            with self._lock:
                if self._stores is None:
                    stores = Stores.from_settings(self.settings)
                    stores.ensure()
                    self._stores = stores
        return self._stores

    @cached_property
    def reads_on_loop(self) -> bool:
        """Whether reads run on the event loop: only on the local backend (see the module docstring)."""
        return self.settings.backend == "local"

    async def run_storage(self, call: Callable[..., T], /, *args: Any, read: bool) -> T:
        """``call(*args)``: on the event loop for a local read, else on the thread pool (module docstring).

        Either way the call sees the caller's :mod:`contextvars`, so changes it makes are attributed
        to the request (:func:`shared.request_context.current`): ``run_in_threadpool`` runs it in a
        copy of the caller's context (``tests/test_request_context.py`` holds it to that).
        """
        if read and self.reads_on_loop:
            return call(*args)
        return await run_in_threadpool(call, *args)

    @cached_property
    def api_keys(self) -> ApiKeyService:
        from shared.apikeys import ApiKeyService

        return ApiKeyService(self.stores)

    @cached_property
    def objects(self) -> ObjectService:
        from shared.domains.objects import ObjectService

        return ObjectService(self.stores)

    @cached_property
    def memory(self) -> MemoryService:
        from shared.domains.memory import MemoryService

        return MemoryService(self.stores)

    @cached_property
    def sessions(self) -> SessionService:
        from shared.domains.sessions import SessionService

        return SessionService(self.stores)

    @cached_property
    def workflows(self) -> WorkflowService:
        from shared.domains.workflows import WorkflowService

        return WorkflowService(self.stores)

    @cached_property
    def checkpoints(self) -> CheckpointService:
        from shared.domains.checkpoints import CheckpointService

        return CheckpointService(self.stores)

    @cached_property
    def audit(self) -> AuditService:
        from shared.domains.audit import AuditService

        return AuditService(self.stores)

    def service(self, domain_name: str) -> Any:
        """The service of a registered domain: the same instance as the typed attribute of that name."""
        from shared.domains import DOMAINS

        if domain_name not in {domain.name for domain in DOMAINS}:
            raise KeyError(f"no domain {domain_name!r}")
        return getattr(self, domain_name)

    @cached_property
    def commands(self) -> CommandProcessor:
        from shared.commands import CommandProcessor

        return CommandProcessor(self.stores, self.service)

    @cached_property
    def poison(self) -> PoisonQueue:
        from shared.commands import PoisonQueue

        return PoisonQueue(self.stores)

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()


def context_of(connection: HTTPConnection) -> AppContext:
    """The :class:`AppContext` of the app serving ``connection`` (a Request or WebSocket), typed.

    ``functions.http_api.create_api`` keeps it in ``app.state.context``; use this
    instead of that untyped attribute.
    """
    context = connection.app.state.context
    if not isinstance(context, AppContext):
        raise TypeError("app.state.context is not an AppContext; build the app with functions.http_api.create_api")
    return context
