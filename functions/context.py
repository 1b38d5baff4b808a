"""The services one function app instance uses, built on first use from settings.

Routes reach it with :func:`context_of` (``context_of(request).objects``), which
types what ``functions.http_api.create_api`` keeps in ``app.state.context``.
"""

from __future__ import annotations

import threading
from functools import cached_property

from typing import Any

from starlette.requests import HTTPConnection

from shared.apikeys import ApiKeyService
from shared.commands import CommandProcessor, PoisonQueue
from shared.config import Settings
from shared.domains import DOMAINS
from shared.domains.checkpoints import CheckpointService
from shared.domains.memory import MemoryService
from shared.domains.objects import ObjectService
from shared.domains.sessions import SessionService
from shared.domains.workflows import WorkflowService
from shared.stores import Stores


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
    def api_keys(self) -> ApiKeyService:
        return ApiKeyService(self.stores)

    @cached_property
    def objects(self) -> ObjectService:
        return ObjectService(self.stores)

    @cached_property
    def memory(self) -> MemoryService:
        return MemoryService(self.stores)

    @cached_property
    def sessions(self) -> SessionService:
        return SessionService(self.stores)

    @cached_property
    def workflows(self) -> WorkflowService:
        return WorkflowService(self.stores)

    @cached_property
    def checkpoints(self) -> CheckpointService:
        return CheckpointService(self.stores)

    def service(self, domain_name: str) -> Any:
        """The service of a registered domain: the same instance as the typed attribute of that name."""
        if domain_name not in self._domain_names:
            raise KeyError(f"no domain {domain_name!r}")
        return getattr(self, domain_name)

    _domain_names = frozenset(domain.name for domain in DOMAINS)

    @cached_property
    def commands(self) -> CommandProcessor:
        return CommandProcessor(self.stores, self.service)

    @cached_property
    def poison(self) -> PoisonQueue:
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
