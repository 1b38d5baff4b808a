"""StorageManager: the Python facade over every domain, one attribute per domain.

    storage = StorageManager.from_env(tenant="acme")
    storage.objects.save("agent_configs/ceo", {"name": "CEO"})
    storage.objects.load("agent_configs/ceo")   # -> {"name": "CEO"}

It talks to the configured backend directly (no HTTP), scoped to one tenant.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Mapping
from typing import Any

from shared.domains.checkpoints.service import CheckpointService
from shared.config import Settings
from shared.errors import NotFound
from shared.keys import check_tenant
from shared.domains.memory.service import MemoryService
from shared.domains.objects.service import ObjectInfo, ObjectService
from shared.domains.sessions.service import SessionService
from shared.stores import Stores
from shared.domains.workflows.service import WorkflowService


def encode_value(data: Any, content_type: str | None = None) -> tuple[bytes, str]:
    """Bytes and a content type for a Python value: bytes as is, str as text, anything else as JSON."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), content_type or "application/octet-stream"
    if isinstance(data, str):
        return data.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    return json.dumps(data, ensure_ascii=False).encode("utf-8"), content_type or "application/json"


def decode_value(data: bytes, content_type: str) -> Any:
    """The Python value :func:`encode_value` made: JSON parsed, text decoded, anything else bytes."""
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return json.loads(data)
    if media.startswith("text/"):
        return data.decode("utf-8")
    return data


class ObjectsClient:
    """Objects of one tenant (seed 001's StorageManager operations)."""

    def __init__(self, service: ObjectService, tenant: str) -> None:
        self._service = service
        self._tenant = tenant

    def save(self, key: str, data: Any, content_type: str | None = None, *,
             if_match: str | None = None, ttl_seconds: int | None = None) -> ObjectInfo:
        """Store JSON-able values, text or bytes; returns the new version's info."""
        body, media = encode_value(data, content_type)
        return self._service.put(self._tenant, key, body, media, if_match=if_match, ttl_seconds=ttl_seconds)

    def load(self, key: str, version_id: str | None = None) -> Any:
        """The value as saved (JSON parsed, text as str, binary as bytes); NotFound when absent."""
        stored = self._service.get(self._tenant, key, version_id)
        return decode_value(stored.data, stored.info.content_type)

    def info(self, key: str, version_id: str | None = None) -> ObjectInfo:
        return self._service.head(self._tenant, key, version_id)

    def exists(self, key: str) -> bool:
        try:
            self._service.head(self._tenant, key)
        except NotFound:
            return False
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        return list(self._service.iter_keys(self._tenant, prefix))

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._service.delete(self._tenant, key, if_match=if_match)

    def versions(self, key: str) -> list[ObjectInfo]:
        """Every version, newest first."""
        found: list[ObjectInfo] = []
        token = None
        while True:
            page = self._service.versions(self._tenant, key, limit=1000, continuation=token)
            found.extend(page.items)
            token = page.continuation
            if not token:
                return found


class TenantScoped:
    """A service with the tenant filled in: every public method whose first parameter
    is ``tenant`` is offered without it, e.g. ``storage.memory.get_thread(thread_id)``."""

    def __init__(self, service: object, tenant: str) -> None:
        self._service = service
        self._tenant = tenant

    def _scoped(self, name: str) -> bool:
        attribute = getattr(type(self._service), name, None)
        if name.startswith("_") or not callable(attribute):
            return False
        parameters = list(inspect.signature(attribute).parameters)
        return len(parameters) > 1 and parameters[1] == "tenant"

    def __getattr__(self, name: str) -> Any:
        if not self._scoped(name):
            raise AttributeError(f"{type(self._service).__name__} has no tenant-scoped method {name!r}")
        return functools.partial(getattr(self._service, name), self._tenant)

    def __dir__(self) -> list[str]:
        return [name for name in dir(type(self._service)) if self._scoped(name)]


class StorageManager:
    """Every Stowage domain for one tenant, over the configured backend."""

    def __init__(self, stores: Stores, tenant: str = "default") -> None:
        self.stores = stores
        self.tenant = check_tenant(tenant)
        self.objects = ObjectsClient(ObjectService(stores), self.tenant)
        #: Threads and messages (shared.memory.MemoryService, tenant filled in).
        self.memory = TenantScoped(MemoryService(stores), self.tenant)
        #: Sessions, metrics and task context (shared.sessions.SessionService).
        self.sessions = TenantScoped(SessionService(stores), self.tenant)
        #: Suspended workflows and events (shared.workflows.WorkflowService).
        self.workflows = TenantScoped(WorkflowService(stores), self.tenant)
        #: LangGraph-compatible checkpoints (shared.checkpoints.CheckpointService).
        self.checkpoints = TenantScoped(CheckpointService(stores), self.tenant)

    @classmethod
    def from_env(cls, tenant: str = "default", environ: Mapping[str, str] | None = None) -> StorageManager:
        """Configured from environment variables (and local.settings.json); creates missing resources."""
        stores = Stores.from_settings(Settings.from_env(environ))
        stores.ensure()
        return cls(stores, tenant)

    def close(self) -> None:
        self.stores.close()

    def __enter__(self) -> StorageManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
