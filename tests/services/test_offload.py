"""Claim check: multi-megabyte values through tables and queues on every backend."""

from __future__ import annotations

import json
import os

import pytest

from shared import names
from shared.backends import Entity, OpKind, TableOp
from shared.backends.offload import OFFLOAD_PROPERTY, OffloadedValueMissing, OffloadingQueue, OffloadingTable
from shared.errors import AlreadyExists, NotFound, PreconditionFailed

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


def test_writes_that_know_the_old_state_remove_its_blobs_and_blind_ones_read_nothing(stores, table):
    table.insert(Entity("p", "r", {"v": "a" * (100 * 1024)}))
    first = _offloaded_blobs(stores, "tables", table.name)
    entity = table.get("p", "r")
    entity.properties["v"] = "b" * (100 * 1024)
    table.update(entity, if_match=entity.etag)  # ETag known: the old blob goes at once, no extra read
    second = _offloaded_blobs(stores, "tables", table.name)
    assert len(second) == 1 and second != first
    current = table.get("p", "r")
    table.delete("p", "r", if_match=current.etag, offloaded=current.offloaded)  # refs named: freed at once
    assert _offloaded_blobs(stores, "tables", table.name) == []

    table.upsert(Entity("p", "r", {"v": "c" * (100 * 1024)}))
    table.upsert(Entity("p", "r", {"v": "small now"}))  # blind: the old blob is left to the sweeper
    assert len(_offloaded_blobs(stores, "tables", table.name)) == 1
    assert table.get("p", "r")["v"] == "small now"
    rows = table.query_inline("p").items
    table.batch([TableOp(OpKind.DELETE, rows[0], rows[0].etag)])  # a listed row names its blobs
    assert table.query_all("p") is not None and list(table.query_all("p")) == []


def test_inline_reads_download_no_blob_and_name_the_refs(stores, table):
    table.insert(Entity("p", "r", {"v": "d" * (100 * 1024), "small": 1}))
    [key] = _offloaded_blobs(stores, "tables", table.name)
    for entity in (table.get_inline("p", "r"), *table.query_inline("p").items, *table.query_all_inline("p")):
        assert entity.properties == {"small": 1}
        assert entity.offloaded == {"v": "blob:v1:" + key}
    assert table.query_for_delete("p").items[0].offloaded == {"v": "blob:v1:" + key}  # the former name


class _CountingTable:
    """The stored table, counting the calls the offload layer makes on it."""

    def __init__(self, table) -> None:
        self._table = table
        self.name = table.name
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        method = getattr(self._table, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return counted


def test_blind_writes_cost_one_request_each_and_no_read(stores, backend_names):
    counting = _CountingTable(stores.backend.table(backend_names.table))
    table = OffloadingTable(counting, stores.blobs(), stores.settings.offload_threshold_bytes)  # type: ignore[arg-type]
    table.insert(Entity("p", "a", {"v": "big" * 20_000}))
    table.upsert(Entity("p", "a", {"v": "big again" * 20_000}))
    table.update(Entity("p", "a", {"v": "small"}))
    table.batch([TableOp.upsert(Entity("p", f"r{i}", {"v": i})) for i in range(10)])
    table.batch([TableOp.update(Entity("p", f"r{i}", {"v": -i})) for i in range(10)])
    table.delete("p", "a")
    table.batch([TableOp.delete("p", f"r{i}") for i in range(10)])
    assert counting.calls == ["insert", "upsert", "update", "batch", "batch", "delete", "batch"]


class _RacingBlobs:
    """The real blob store; the first blob read runs ``action`` first (a writer between the
    reader's row read and its blob read)."""

    def __init__(self, blobs, action) -> None:
        self._blobs, self._action = blobs, action
        self.fired = False

    def __getattr__(self, name: str):
        return getattr(self._blobs, name)

    def get(self, key: str):
        if not self.fired:
            self.fired = True
            self._action()
        return self._blobs.get(key)


def _racing_reader(stores, table, action) -> tuple[OffloadingTable, _RacingBlobs]:
    racing = _RacingBlobs(stores.blobs(), action)
    reader = OffloadingTable(table.table, racing, table.threshold)  # type: ignore[arg-type]
    return reader, racing


def _overwrite(table, row_key: str, value: str):
    def action() -> None:
        current = table.get_inline("p", row_key)
        table.update(Entity("p", row_key, {"v": value}, current.etag, current.offloaded), if_match=current.etag)
    return action


def test_a_read_racing_an_overwrite_returns_the_new_value_not_not_found(stores, table):
    old, new = "o" * (100 * 1024), "n" * (100 * 1024)
    table.insert(Entity("p", "r", {"v": old}))
    reader, racing = _racing_reader(stores, table, _overwrite(table, "r", new))
    assert reader.get("p", "r")["v"] == new
    assert racing.fired

    table.insert(Entity("p", "s", {"v": old}))
    reader, racing = _racing_reader(stores, table, _overwrite(table, "r", old))
    assert [e["v"] for e in reader.query("p").items] == [old, old]
    reader, racing = _racing_reader(stores, table, _overwrite(table, "s", new))
    assert [e["v"] for e in reader.query_all("p")] == [old, new]
    reader, racing = _racing_reader(stores, table, _overwrite(table, "r", new))
    assert sorted(e["v"] for e in reader.scan().items) == [new, new]


def test_a_read_racing_a_delete_reads_as_gone(stores, table):
    table.insert(Entity("p", "r", {"v": "o" * (100 * 1024)}))
    table.insert(Entity("p", "s", {"v": "kept"}))

    def delete() -> None:
        current = table.get_inline("p", "r")
        table.delete("p", "r", if_match=current.etag, offloaded=current.offloaded)

    reader, _ = _racing_reader(stores, table, delete)
    assert [e.row_key for e in reader.query("p").items] == ["s"]  # deleted meanwhile: left out
    table.insert(Entity("p", "r", {"v": "o" * (100 * 1024)}))
    reader, _ = _racing_reader(stores, table, delete)
    with pytest.raises(NotFound):
        reader.get("p", "r")


def test_a_row_naming_a_missing_blob_is_reported_as_damaged_not_as_missing(stores, table):
    table.insert(Entity("p", "r", {"v": "o" * (100 * 1024)}))
    [key] = _offloaded_blobs(stores, "tables", table.name)
    stores.blobs().delete(key)  # lost outside the rules: the row is unchanged
    with pytest.raises(OffloadedValueMissing) as caught:
        table.get("p", "r")
    assert caught.value.status == 500 and not isinstance(caught.value, NotFound)
    with pytest.raises(OffloadedValueMissing):
        list(table.query_all("p"))


def test_the_platform_sweep_job_runs_over_every_table(stores, monkeypatch):
    from shared import platform_jobs

    assert platform_jobs.sweep_offloaded_blobs in [job.run for job in platform_jobs.PLATFORM_JOBS]
    monkeypatch.setattr(platform_jobs, "SWEEP_BLOBS_PER_TABLE", 50)  # Azurite's tables are shared by the session
    checkpoints = stores.table(names.TABLE_CHECKPOINTS)
    pk = f"sweep-job-{os.urandom(4).hex()}"
    checkpoints.insert(Entity(pk, "job", {"v": "a" * (100 * 1024)}))
    [first] = checkpoints.get_inline(pk, "job").offloaded.values()
    checkpoints.upsert(Entity(pk, "job", {"v": "b" * (100 * 1024)}))  # the first blob is unreferenced, but young
    assert platform_jobs.sweep_offloaded_blobs(stores) >= 1
    assert stores.blobs().exists(first.removeprefix("blob:v1:"))  # young: kept
    current = checkpoints.get_inline(pk, "job")
    checkpoints.delete(pk, "job", offloaded={"old": first, **current.offloaded})


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
