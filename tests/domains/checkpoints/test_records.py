"""Change records of the checkpoint service where batches fill up, merge or are cut short, on every backend.

The per-domain scenario (every op records once, reads and replays none, the feed in
order) is in tests/domains/test_change_records.py; here: the record's slot in a batch
at the 100-operation limit (puts, pending writes, group commits), the record in the
batch that completes a change spanning several, and crashes before and after it.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shared import names
from shared.domains.checkpoints.service import CheckpointService
from shared.storage.changefeed import OUTBOX_PREFIX
from tests.domains.checkpoints.batches import Batches, val
from tests.domains.checkpoints.test_batching import _QueuedSignal
from tests.domains.checkpoints.test_service import checkpoint_id, cp, put_chain, rows

#: Values a checkpoint row holds inline at most: the next ones get value rows of their own.
INLINE_ROW_VALUES = 64


def recorded(stores, tenant: str, thread_id: str) -> list[str]:
    """The ops of the thread's pending change records (outbox rows), oldest first."""
    return [str(row["op"]) for row in rows(stores, tenant, thread_id, OUTBOX_PREFIX)]


def put_wide(service: CheckpointService, tenant: str, thread_id: str, cid: str, value_rows: int,
             parent: str | None = None) -> None:
    """A checkpoint whose batch holds ``value_rows`` value rows and its checkpoint row."""
    count = INLINE_ROW_VALUES + value_rows
    service.put(tenant, thread_id, "", cid, cp(cid), channel_versions={f"c{i}": "1" for i in range(count)},
                new_values={f"c{i}": val(str(i)) for i in range(count)}, parent_checkpoint_id=parent)


class Crash(Exception):
    """Stands for the process dying between two batches."""


def crash_at(service: CheckpointService, monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Make the service's ``batch``-th table batch from now on (1-based) fail before it is written."""
    real = service._table.batch
    calls = [0]

    def failing(operations):
        calls[0] += 1
        if calls[0] == batch:
            raise Crash(f"batch {batch}")
        return real(operations)

    monkeypatch.setattr(service._table, "batch", failing)


def test_a_put_of_100_rows_leaves_the_record_a_slot_in_its_last_batch(service, stores, tenant, monkeypatch):
    batches = Batches(service, monkeypatch)
    put_wide(service, tenant, "th", checkpoint_id(1), value_rows=99)  # 99 value rows + the checkpoint row
    assert batches.sizes == [99, 1] and batches.records == [0, 1]  # not 100 rows + a record: 101 operations
    assert recorded(stores, tenant, "th") == ["checkpoints.put"]
    assert len(service.get(tenant, "th").values) == INLINE_ROW_VALUES + 99


def test_put_writes_of_100_rows_records_once_and_a_repeat_records_nothing(service, stores, tenant, monkeypatch):
    batches = Batches(service, monkeypatch)
    writes = [(i, "ch", val(str(i))) for i in range(100)]
    assert service.put_writes(tenant, "th", "", "c1", "task", writes).written == 100
    assert batches.sizes == [99, 1] and batches.records == [0, 1]
    assert service.put_writes(tenant, "th", "", "c1", "task", writes).kept == 100  # stored already
    assert recorded(stores, tenant, "th") == ["checkpoints.put_writes"]
    assert max(batches.operations) <= 100


@pytest.mark.parametrize(("writes", "merged"), [(49, True), (50, False)])
def test_group_commit_counts_each_changes_record_against_the_limit(service, stores, tenant, monkeypatch,
                                                                   writes, merged):
    """Lingering writes ride in the next put's batch only when their rows and both records fit 100 operations.

    Not merged, the writes go alone once their linger ends (short: the figures do not depend on it)."""
    put_chain(service, tenant, "th", 1)
    parent = checkpoint_id(1)
    _QueuedSignal.waiting = threading.Event()
    service._group.make_event = _QueuedSignal
    batches = Batches(service, monkeypatch)
    result: dict[str, Any] = {}
    writer = threading.Thread(target=lambda: result.update(w=service._put_writes(
        tenant, "th", "", parent, "task", [(i, "ch", val(str(i))) for i in range(writes)], linger=60 if merged else 0.2)))
    writer.start()
    assert _QueuedSignal.waiting.wait(30)
    put_wide(service, tenant, "th", checkpoint_id(2), value_rows=48, parent=parent)  # 49 rows
    writer.join(30)
    assert not writer.is_alive() and result["w"].written == writes
    assert max(batches.operations) <= 100
    if merged:  # 49 + 49 rows and two records: exactly 100
        assert batches.operations == [100] and batches.records == [2]
    else:
        assert sorted(batches.operations) == [50, 51] and batches.records == [1, 1]
    assert sorted(recorded(stores, tenant, "th")) == ["checkpoints.put", "checkpoints.put", "checkpoints.put_writes"]


def test_deleting_a_thread_of_many_batches_records_with_its_last_checkpoints(service, stores, tenant, monkeypatch):
    put_chain(service, tenant, "th", 120)
    stores.changes.sequence(tenant)  # the puts' records
    crash_at(service, monkeypatch, 2)  # checkpoints go in batches of 99 and 21: die before the second
    with pytest.raises(Crash):
        service.delete_thread(tenant, "th")
    assert recorded(stores, tenant, "th") == []  # the change is not complete: no record yet
    assert len(rows(stores, tenant, "th", "c|")) == 21
    monkeypatch.undo()
    batches = Batches(service, monkeypatch)
    assert service.delete_thread(tenant, "th") == 21  # the re-run finishes it, and records it
    assert recorded(stores, tenant, "th") == ["checkpoints.delete_thread"]
    assert batches.records[0] == 1 and batches.sizes[0] == 21  # with the last checkpoints
    assert [r.row_key for r in stores.table(names.TABLE_CHECKPOINTS).table.query_all(f"{tenant}|t|th")] == [
        r.row_key for r in rows(stores, tenant, "th", OUTBOX_PREFIX)]
    stores.changes.sequence(tenant)
    last = stores.changes.changes(tenant, limit=1000).items[-1]
    assert (last.op, last.target_type, last.target_id, last.audited) == ("checkpoints.delete_thread", "thread",
                                                                         "th", True)
    assert last.details == {"checkpoints": 21}


def test_a_delete_that_crashed_after_its_record_records_nothing_when_finished(service, stores, tenant, monkeypatch):
    put_chain(service, tenant, "th", 3)
    service.put_writes(tenant, "th", "", checkpoint_id(3), "task", [(0, "ch", val("w"))])
    stores.changes.sequence(tenant)
    crash_at(service, monkeypatch, 2)  # the checkpoints and the record, then die before the writes
    with pytest.raises(Crash):
        service.delete_thread(tenant, "th")
    assert recorded(stores, tenant, "th") == ["checkpoints.delete_thread"]
    monkeypatch.undo()
    assert service.delete_thread(tenant, "th") == 0  # finishes the clean-up
    assert rows(stores, tenant, "th", "w|") == [] and service.threads(tenant).items == []
    assert recorded(stores, tenant, "th") == ["checkpoints.delete_thread"]  # still the one


def test_prune_records_with_the_last_checkpoints_it_deletes(service, stores, tenant, monkeypatch):
    put_chain(service, tenant, "th", 105)
    stores.changes.sequence(tenant)
    batches = Batches(service, monkeypatch)
    assert service.prune(tenant, ["th"]) == 104
    assert batches.records[:2] == [0, 1] and batches.sizes[:2] == [99, 5]
    assert max(batches.operations) <= 100
    assert recorded(stores, tenant, "th") == ["checkpoints.prune"]
    assert service.prune(tenant, ["th"]) == 0
    assert recorded(stores, tenant, "th") == ["checkpoints.prune"]


def test_a_copy_that_wrote_earlier_pages_records_even_when_its_last_page_was_there(service, stores, tenant):
    ids = put_chain(service, tenant, "src", 20)  # checkpoints are copied 16 a page, newest first
    assert service.copy_thread(tenant, "src", "dst") == 20
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    newest = rows(stores, tenant, "dst", "c|")[0]
    assert newest["id"] == ids[-1]
    raw.delete(newest.partition_key, newest.row_key)  # the first page misses one row; the last has all
    assert service.copy_thread(tenant, "src", "dst") == 1
    assert recorded(stores, tenant, "dst") == ["checkpoints.copy_thread", "checkpoints.copy_thread"]
    assert service.copy_thread(tenant, "src", "dst") == 0  # nothing to write: nothing recorded
    assert recorded(stores, tenant, "dst") == ["checkpoints.copy_thread", "checkpoints.copy_thread"]
    assert recorded(stores, tenant, "src") == ["checkpoints.put"] * 20  # the source's own, nothing more
    assert service.get(tenant, "dst").checkpoint_id == ids[-1]
