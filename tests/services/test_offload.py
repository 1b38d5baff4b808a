"""Claim check: multi-megabyte values through tables and queues on every backend."""

from __future__ import annotations

import json
import os

import pytest

from shared import names
from shared.backends import Entity, TableOp
from shared.backends.offload import OFFLOAD_PROPERTY, OffloadingQueue, OffloadingTable
from shared.errors import AlreadyExists, PreconditionFailed

MB = 1024 * 1024


@pytest.fixture
def table(stores, backend_names) -> OffloadingTable:
    return stores.table(backend_names.table)


@pytest.fixture
def queue(stores, backend_names) -> OffloadingQueue:
    return stores.queue(backend_names.queue)


def _offloaded_blobs(stores, kind: str, name: str) -> list[str]:
    return [b.key for b in stores.blobs(names.CONTAINER_DATA).list_all(f"offload/{kind}/{name}/")]


def test_multi_megabyte_properties_round_trip_and_are_stored_by_reference(stores, table):
    document = "pasted document ✓ " * (3 * MB // 19)  # about 3 MB of text
    screenshot = os.urandom(2 * MB)
    table.insert(Entity("p", "r", {"doc": document, "png": screenshot, "small": 1}))

    raw = table.table.get("p", "r")
    assert "doc" not in raw.properties and "png" not in raw.properties
    assert set(json.loads(raw[OFFLOAD_PROPERTY])) == {"doc", "png"}
    assert len(_offloaded_blobs(stores, "tables", table.name)) == 2

    got = table.get("p", "r")
    assert got["doc"] == document and got["png"] == screenshot and got["small"] == 1
    assert [e["doc"] == document for e in table.query_all("p")] == [True]


def test_replacing_and_deleting_remove_the_old_blobs(stores, table):
    table.insert(Entity("p", "r", {"v": "a" * (100 * 1024)}))
    first = _offloaded_blobs(stores, "tables", table.name)
    entity = table.get("p", "r")
    entity.properties["v"] = "b" * (100 * 1024)
    table.update(entity, if_match=entity.etag)  # ETag known: no extra read
    second = _offloaded_blobs(stores, "tables", table.name)
    assert len(second) == 1 and second != first
    table.upsert(Entity("p", "r", {"v": "small now"}))  # unconditional: reads the old refs first
    assert _offloaded_blobs(stores, "tables", table.name) == []
    table.upsert(Entity("p", "r", {"v": "c" * (100 * 1024)}))
    table.delete("p", "r")
    assert _offloaded_blobs(stores, "tables", table.name) == []


def test_a_failed_write_leaves_no_blob_behind(stores, table):
    table.insert(Entity("p", "r", {"v": "x"}))
    with pytest.raises(AlreadyExists):
        table.insert(Entity("p", "r", {"v": "y" * MB}))
    with pytest.raises(PreconditionFailed):
        table.update(Entity("p", "r", {"v": "y" * MB}), if_match="stale")
    with pytest.raises(AlreadyExists):
        table.batch([TableOp.insert(Entity("p", "new", {"v": "z" * MB})), TableOp.insert(Entity("p", "r", {}))])
    assert _offloaded_blobs(stores, "tables", table.name) == []
    assert table.get("p", "r")["v"] == "x"


def test_many_medium_properties_are_offloaded_until_the_entity_fits(table):
    properties = {f"p{i}": "m" * 20_000 for i in range(30)}  # each under the threshold, 1.2 MB in all
    table.upsert(Entity("p", "many", properties))
    assert table.get("p", "many").properties == properties


def test_multi_megabyte_queue_messages_use_a_claim_check(stores, queue):
    body = json.dumps({"screenshot": "x" * (3 * MB)})
    queue.send(body)
    queue.send("small")
    raw = queue.queue.peek()
    assert sorted(len(m.body) for m in raw)[-1] < 200  # only the reference travels
    received = {m.body: m for m in queue.receive(max_messages=5, visibility_timeout=30)}
    assert set(received) == {body, "small"}
    assert len(_offloaded_blobs(stores, "queues", queue.name)) == 1
    for message in received.values():
        queue.delete(message.receipt)
    assert _offloaded_blobs(stores, "queues", queue.name) == []
    assert queue.approximate_length() == 0
