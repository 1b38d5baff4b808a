"""Fixtures for domain-service tests: a Stores over the current backend (local, Azurite or moto)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import names as resource_names
from shared.config import Settings
from shared.stores import Stores


@pytest.fixture
def stores(settings: Settings) -> Iterator[Stores]:
    """Every app resource created. Azurite is shared by the session, so its command queues are drained."""
    instance = Stores.from_settings(settings)
    instance.ensure()
    for name in resource_names.QUEUES:
        queue = instance.backend.queue(name)
        while batch := queue.receive(max_messages=32, visibility_timeout=60):
            for message in batch:
                queue.delete(message.receipt)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def backend_names(stores: Stores, names):
    """This test's own container, table and queue, created on the test's backend."""
    stores.backend.ensure(containers=[names.container], tables=[names.table], queues=[names.queue])
    return names
