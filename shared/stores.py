"""What every service is built on: one backend, with the claim-check rule applied.

Services take a :class:`Stores` and never import a concrete backend.
"""

from __future__ import annotations

from shared import names
from shared.backends import Backend, BlobStore, create_backend
from shared.backends.offload import OffloadingQueue, OffloadingTable
from shared.config import Settings


class Stores:
    """Hands out offloading tables and queues, and blob stores, from one backend."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self._tables: dict[str, OffloadingTable] = {}
        self._queues: dict[str, OffloadingQueue] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        return cls(create_backend(settings), settings)

    def blobs(self, container: str = names.CONTAINER_DATA) -> BlobStore:
        return self.backend.blobs(container)

    def table(self, name: str) -> OffloadingTable:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = OffloadingTable(
                self.backend.table(name), self.blobs(), self.settings.offload_threshold_bytes
            )
        return table

    def queue(self, name: str) -> OffloadingQueue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = OffloadingQueue(
                self.backend.queue(name), self.blobs(), self.settings.offload_threshold_bytes
            )
        return queue

    def ensure(self) -> None:
        """Create every container, table and queue the app uses (idempotent)."""
        self.backend.ensure(containers=names.CONTAINERS, tables=names.TABLES, queues=names.QUEUES)

    def close(self) -> None:
        self.backend.close()
