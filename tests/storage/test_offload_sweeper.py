"""The offload sweeper: unreferenced value blobs go, referenced, young and unattributable ones stay.

Every test runs on the three backends, with the real blob store and table; wrappers
around them only inject a concurrent action at a chosen moment. Time is injected:
``now`` past the grace period makes the blobs old enough, the wall clock keeps them young.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shared.backends import BlobStore, Entity, TableOp, TableStore
from shared.backends.offload import (
    DEFAULT_SWEEP_GRACE,
    LONG_OWNER_SUFFIX,
    OFFLOAD_PROPERTY,
    OWNER_METADATA,
    SIDECAR_SUFFIX,
    OffloadingTable,
    decode_owner,
    sweep_cursor_key,
    sweep_unreferenced_blobs,
    table_offload_prefix,
)
from shared.errors import AlreadyExists, BackendUnavailable
from shared.storage.due import Budget

THRESHOLD = 1024
BIG = "x" * 4096  # offloaded at THRESHOLD


def _later() -> datetime:
    """A moment past the grace period of every blob written so far."""
    return datetime.now(timezone.utc) + DEFAULT_SWEEP_GRACE + timedelta(minutes=5)


def _budget(items: int | None = None) -> Budget:
    return Budget(seconds=600, items=items)


def _keys(blobs: BlobStore, table: TableStore) -> list[str]:
    return [b.key for b in blobs.list_all(table_offload_prefix(table.name))]


def _values(blobs: BlobStore, table: TableStore) -> list[str]:
    return [key for key in _keys(blobs, table) if not key.endswith(SIDECAR_SUFFIX)]


def _refs(table: TableStore, pk: str, rk: str) -> set[str]:
    manifest = json.loads(str(table.get(pk, rk)[OFFLOAD_PROPERTY]))
    return {entry["ref"].removeprefix("blob:v1:") for entry in manifest.values()}


def _sweep(table: TableStore, blobs: BlobStore, **kwargs: Any):
    kwargs.setdefault("budget", _budget())
    kwargs.setdefault("now", _later())
    return sweep_unreferenced_blobs(table, blobs, **kwargs)


@pytest.fixture
def offloading(table: TableStore, blobs: BlobStore) -> OffloadingTable:
    return OffloadingTable(table, blobs, THRESHOLD)


def test_value_blobs_record_their_owner_row(offloading, table, blobs):
    offloading.insert(Entity("tenant|a", "row|1", {"v": BIG}))
    [key] = _values(blobs, table)
    assert decode_owner(blobs.head(key).metadata[OWNER_METADATA]) == ("tenant|a", "row|1")


def test_a_blind_upsert_leaves_the_old_blob_which_the_sweeper_deletes(offloading, table, blobs):
    offloading.insert(Entity("p", "r", {"v": BIG}))
    first = set(_values(blobs, table))
    offloading.upsert(Entity("p", "r", {"v": BIG + "2"}))  # blind: reads nothing, frees nothing
    assert first < set(_values(blobs, table))
    current = _refs(table, "p", "r")

    young = _sweep(table, blobs, now=datetime.now(timezone.utc))
    assert (young.deleted, young.young) == (0, 2) and set(_values(blobs, table)) == first | current

    stats = _sweep(table, blobs)
    assert (stats.examined, stats.deleted, stats.referenced, stats.finished) == (2, 1, 1, True)
    assert set(_values(blobs, table)) == current
    assert offloading.get("p", "r")["v"] == BIG + "2"


def test_blind_update_and_delete_leave_blobs_to_the_sweeper(offloading, table, blobs):
    offloading.insert(Entity("p", "u", {"v": BIG}))
    offloading.insert(Entity("p", "d", {"v": BIG}))
    offloading.update(Entity("p", "u", {"v": "small"}))  # no if_match: prior state unknown
    offloading.delete("p", "d")
    assert len(_values(blobs, table)) == 2
    assert _sweep(table, blobs).deleted == 2
    assert _values(blobs, table) == []
    assert offloading.get("p", "u")["v"] == "small"


def test_the_sweeper_never_deletes_a_referenced_blob(offloading, table, blobs):
    for i in range(5):
        offloading.insert(Entity("p", f"r{i}", {"a": BIG, "b": BIG.encode(), "small": i}))
    offloading.batch([TableOp.insert(Entity("q", f"r{i}", {"v": BIG})) for i in range(3)])
    before = set(_keys(blobs, table))
    stats = _sweep(table, blobs)
    assert (stats.examined, stats.referenced, stats.deleted) == (13, 13, 0)
    assert set(_keys(blobs, table)) == before
    assert all(offloading.get("p", f"r{i}")["b"] == BIG.encode() for i in range(5))


def test_a_young_unreferenced_blob_is_kept(offloading, table, blobs):
    offloading.insert(Entity("p", "r", {"v": BIG}))
    offloading.delete("p", "r")  # blind: the blob is unreferenced now, but young
    stats = _sweep(table, blobs, now=datetime.now(timezone.utc) + DEFAULT_SWEEP_GRACE - timedelta(minutes=5))
    assert (stats.young, stats.deleted) == (1, 0) and len(_values(blobs, table)) == 1
    assert _sweep(table, blobs).deleted == 1


class _RewriteOnOwnerRead:
    """The stored table, but the first owner-row read rewrites ``key`` first (between the
    sweeper's look at the blob and its delete)."""

    def __init__(self, table: TableStore, blobs: BlobStore, key: str) -> None:
        self._table, self._blobs, self._key = table, blobs, key
        self.name = table.name
        self.fired = False

    def get(self, partition_key: str, row_key: str) -> Entity:
        if not self.fired:
            self.fired = True
            current = self._blobs.head(self._key)
            self._blobs.put(self._key, b"rewritten", metadata=current.metadata)
        return self._table.get(partition_key, row_key)


def test_a_blob_rewritten_after_the_sweeper_looked_at_it_is_not_deleted(offloading, table, blobs):
    offloading.insert(Entity("p", "r", {"v": BIG}))
    offloading.delete("p", "r")
    [key] = _values(blobs, table)
    racing = _RewriteOnOwnerRead(table, blobs, key)
    stats = sweep_unreferenced_blobs(racing, blobs, budget=_budget(), now=_later())  # type: ignore[arg-type]
    assert racing.fired and stats.deleted == 0
    assert blobs.get(key).data == b"rewritten"


def test_long_keys_keep_their_owner_in_a_sidecar(offloading, table, blobs):
    pk, rk = "é" * 500, "ü" * 500  # 1000 bytes each: too long for 2 KiB of metadata together
    offloading.insert(Entity(pk, rk, {"v": BIG}))
    [first] = _values(blobs, table)
    assert first.endswith(LONG_OWNER_SUFFIX)
    assert set(_keys(blobs, table)) == {first, first + SIDECAR_SUFFIX}
    assert offloading.get(pk, rk)["v"] == BIG

    current = offloading.get(pk, rk)
    current.properties["v"] = BIG + "2"
    offloading.update(current, if_match=current.etag)  # conditional: value and sidecar go at once
    [second] = _values(blobs, table)
    assert set(_keys(blobs, table)) == {second, second + SIDECAR_SUFFIX}

    offloading.upsert(Entity(pk, rk, {"v": BIG + "3"}))  # blind: the sweeper finds the owner in the sidecar
    stats = _sweep(table, blobs)
    assert (stats.deleted, stats.referenced, stats.unattributable) == (1, 1, 0)
    [third] = _values(blobs, table)
    assert set(_keys(blobs, table)) == {third, third + SIDECAR_SUFFIX}
    assert offloading.get(pk, rk)["v"] == BIG + "3"


def test_a_sidecar_left_alone_by_a_crash_is_swept(table, blobs):
    prefix = table_offload_prefix(table.name)
    orphan = f"{prefix}{'0' * 32}{LONG_OWNER_SUFFIX}{SIDECAR_SUFFIX}"  # a writer died before its value blob
    blobs.put(orphan, json.dumps({"v": 1, "owner": ["p", "r"]}).encode())
    assert _sweep(table, blobs, now=datetime.now(timezone.utc)).young == 1
    _sweep(table, blobs)
    assert _keys(blobs, table) == []


def test_blobs_without_an_owner_are_kept_and_counted(offloading, table, blobs):
    prefix = table_offload_prefix(table.name)
    blobs.put(f"{prefix}{'1' * 32}", b"written before owners were recorded")
    blobs.put(f"{prefix}{'2' * 32}", b"owner not decodable", metadata={OWNER_METADATA: "!!"})
    stats = _sweep(table, blobs)
    assert (stats.unattributable, stats.deleted) == (2, 0)
    assert len(_keys(blobs, table)) == 2


class _FailingCleanup:
    """The real blob store, except that deleting fails: a writer that crashes before its cleanup."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        raise BackendUnavailable("the process died before it cleaned up")


def test_a_failed_batch_leaves_no_blob_behind_after_a_sweep(table, blobs):
    crashing = OffloadingTable(table, _FailingCleanup(blobs), THRESHOLD)  # type: ignore[arg-type]
    crashing.insert(Entity("p", "taken", {"v": "small"}))
    with pytest.raises((AlreadyExists, BackendUnavailable)):
        crashing.batch([TableOp.insert(Entity("p", "new", {"v": BIG})),
                        TableOp.insert(Entity("p", "taken", {"v": BIG}))])
    assert len(_values(blobs, table)) == 2  # written for the batch, never referenced
    assert _sweep(table, blobs).deleted == 2
    assert _keys(blobs, table) == []


def test_a_run_stops_at_its_budget_and_the_next_resumes_where_it_stopped(offloading, table, blobs):
    for i in range(7):
        offloading.upsert(Entity("p", f"r{i}", {"v": BIG}))
        offloading.upsert(Entity("p", f"r{i}", {"v": BIG + "new"}))  # leaves the first blob behind
    assert len(_values(blobs, table)) == 14
    now = _later()
    runs = []
    for _ in range(10):
        stats = sweep_unreferenced_blobs(table, blobs, budget=_budget(items=3), now=now, page_size=4)
        runs.append(stats)
        assert stats.examined <= 3
        if stats.finished:
            break
    # Every blob examined exactly once across the runs: nothing skipped, nothing repeated.
    assert [s.examined for s in runs] == [3, 3, 3, 3, 2]
    assert sum(s.deleted for s in runs) == 7 and sum(s.referenced for s in runs) == 7
    assert len(_values(blobs, table)) == 7
    assert not blobs.exists(sweep_cursor_key(table.name))  # finished: the next run starts over
    assert all(offloading.get("p", f"r{i}")["v"] == BIG + "new" for i in range(7))


def test_a_time_budget_bounds_a_run(offloading, table, blobs):
    for i in range(4):
        offloading.insert(Entity("p", f"r{i}", {"v": BIG}))
    ticks = iter(range(1000))
    budget = Budget(seconds=2.5, clock=lambda: float(next(ticks)))  # one second passes per check
    stats = sweep_unreferenced_blobs(table, blobs, budget=budget, now=_later())
    assert 1 <= stats.examined < 4 and not stats.finished
    assert blobs.exists(sweep_cursor_key(table.name))


def test_a_cursor_that_no_longer_opens_its_listing_starts_over(offloading, table, blobs):
    offloading.insert(Entity("p", "r", {"v": BIG}))
    blobs.put(sweep_cursor_key(table.name), json.dumps({"v": 1, "page": "forged.token", "after": ""}).encode())
    stats = _sweep(table, blobs)
    assert (stats.examined, stats.referenced, stats.finished) == (1, 1, True)
