"""Checkpoints service: the same tests on local, Azurite and moto (was tests/services/test_checkpoints.py)."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest

from shared import commands, names
from shared.backends import Entity
from shared.domains.checkpoints import _layout
from shared.domains.checkpoints.service import (
    VALUE_GRACE_SECONDS,
    CheckpointService,
    PendingWrite,
    PruneStrategy,
    TypedValue,
)
from shared.errors import InvalidInput, InvalidKey, NotFound, TooLarge
from shared.manager import StorageManager
from shared.storage.changefeed import OUTBOX_PREFIX
from shared.storage.idempotency import IdempotencyKeyReused, marker_row

LATER = 10 * VALUE_GRACE_SECONDS  # seconds: "now" for maintenance that should collect garbage values


def cp(label: str) -> TypedValue:
    return TypedValue("json", json.dumps({"checkpoint": label}).encode())


def val(text: str | bytes) -> TypedValue:
    return TypedValue("bytes", text if isinstance(text, bytes) else text.encode())


#: Above the largest value kept inline in a checkpoint row: such values have value rows.
LARGE = 20_000


def big(text: str) -> TypedValue:
    """A value too large to be held inline: stored in its own value row (once per version)."""
    return val(text.encode() + b"." * LARGE)


def checkpoint_id(n: int) -> str:
    """Time-ordered ids like LangGraph's UUIDv6 ones: a larger n is newer."""
    return f"1ef{n:05x}-0000-6000-8000-{uuid.uuid4().hex[:12]}"


def rows(stores, tenant: str, thread_id: str, prefix: str) -> list:
    """The stored rows of a thread under a row-key prefix (the layout the module docstring describes)."""
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    return list(raw.query_all(f"{tenant}|t|{thread_id}", prefix=prefix))


def offloaded_blobs(stores) -> set[str]:
    return {b.key for b in stores.blobs().list_all(f"offload/tables/{names.TABLE_CHECKPOINTS}/")}


def put_chain(service, tenant, thread_id, count, *, ns="", run_id=None, source=lambda i: "loop", make=None):
    """``count`` checkpoints, each the child of the previous one; channel 'n' changes every step."""
    val = make or globals()["val"]
    ids, parent = [], None
    for i in range(count):
        cid = checkpoint_id(i + 1)
        metadata = {"source": source(i), "step": i, **({"run_id": run_id} if run_id else {})}
        service.put(tenant, thread_id, ns, cid, cp(cid), channel_versions={"n": str(i + 1), "fixed": "1"},
                    new_values={"n": val(str(i)), **({"fixed": val("F")} if i == 0 else {})},
                    metadata=metadata, parent_checkpoint_id=parent)
        ids.append(cid)
        parent = cid
    return ids


# --------------------------------------------------------------------------- layout


def test_inverted_ids_sort_newest_first_for_any_ids():
    alphabet = _layout.ALPHABET
    ids = {"".join(random.choice(alphabet) for _ in range(random.randint(1, 12))) for _ in range(2000)}
    ids |= {"a", "ab", "abc", "b", "1ef0", "1ef0-1", "Z", "_", "-", "."}  # prefixes of each other
    assert sorted(ids, key=_layout.inverted) == sorted(ids, reverse=True)


def test_latest_is_the_first_row_of_its_namespace_prefix(service, stores, tenant):
    ids = [checkpoint_id(n) for n in range(1, 41)]
    for cid in random.sample(ids, len(ids)):  # stored in random order
        service.put(tenant, "th", "", cid, cp(cid))
    other = checkpoint_id(99)
    service.put(tenant, "th", "sub:1", other, cp("other namespace"))
    first = stores.table(names.TABLE_CHECKPOINTS).table.query(f"{tenant}|t|th", prefix="c||", limit=1).items
    assert first[0]["id"] == ids[-1]  # a one-row prefix query, whatever the history's length
    assert service.get(tenant, "th").checkpoint_id == ids[-1]
    assert service.get(tenant, "th", "sub:1").checkpoint_id == other


# --------------------------------------------------------------------------- put and get


def test_put_and_get_round_trip_with_parent_metadata_and_values(service, tenant):
    first = service.put(tenant, "th", "", "c1", cp("one"), channel_versions={"a": "1", "b": "1"},
                        new_values={"a": val("A1"), "b": val("B1")},
                        metadata={"source": "input", "step": -1, "run_id": "run-1", "user": {"x": [1, 2]}})
    assert first.created and first.parent_checkpoint_id is None
    service.put(tenant, "th", "", "c2", cp("two"), channel_versions={"a": "2", "b": "1"},
                new_values={"a": val("A2")}, metadata={"source": "loop", "step": 0}, parent_checkpoint_id="c1")
    latest = service.get(tenant, "th")
    assert (latest.checkpoint_id, latest.parent_checkpoint_id) == ("c2", "c1")
    assert latest.checkpoint == cp("two")
    assert latest.values == {"a": val("A2"), "b": val("B1")}  # b comes from c1's write
    assert latest.channel_versions == {"a": "2", "b": "1"}
    older = service.get(tenant, "th", "", "c1")
    assert older.values == {"a": val("A1"), "b": val("B1")}
    assert older.metadata == {"source": "input", "step": -1, "run_id": "run-1", "user": {"x": [1, 2]}}
    assert older.created_at.endswith("+00:00")
    with pytest.raises(NotFound):
        service.get(tenant, "th", "", "c3")
    with pytest.raises(NotFound):
        service.get(tenant, "th", "other")
    with pytest.raises(NotFound):
        service.get(tenant, "nobody")


def test_a_step_that_changes_one_channel_writes_one_value(service, stores, tenant):
    versions = {"messages": "1", "plan": "1", "notes": "1"}
    service.put(tenant, "th", "", "c1", cp("1"), channel_versions=versions,
                new_values={name: val(name * 100) for name in versions})
    service.put(tenant, "th", "", "c2", cp("2"), channel_versions={**versions, "messages": "2"},
                new_values={"messages": val("more")}, parent_checkpoint_id="c1")
    # Small values live in their checkpoint row: one row per step, no value rows.
    assert len(rows(stores, tenant, "th", "c|")) == 2
    assert rows(stores, tenant, "th", "v|") == []
    assert service.get(tenant, "th").values == {"messages": val("more"), "plan": val("plan" * 100),
                                                  "notes": val("notes" * 100)}
    # A large value is a value row, written once per version: a step that keeps it writes nothing for it.
    big = val(b"x" * 40_000)
    service.put(tenant, "th", "", "c3", cp("3"), channel_versions={**versions, "messages": "3", "plan": "2"},
                new_values={"messages": val("again"), "plan": big}, parent_checkpoint_id="c2")
    service.put(tenant, "th", "", "c4", cp("4"), channel_versions={**versions, "messages": "4", "plan": "2"},
                new_values={"messages": val("and again")}, parent_checkpoint_id="c3")
    assert [row.row_key.split("|")[2:] for row in rows(stores, tenant, "th", "v|")] == [["plan", "2"]]
    assert service.get(tenant, "th").values["plan"] == big
    assert service.get(tenant, "th", "", "c3").values["plan"] == big


def test_a_medium_value_moves_to_its_value_row_once_it_is_unchanged(service, stores, tenant):
    medium = val(b"m" * 5000)  # inline while new, too large to carry along
    service.put(tenant, "th", "", "c1", cp("1"), channel_versions={"doc": "1", "n": "1"},
                new_values={"doc": medium, "n": val("0")})
    assert rows(stores, tenant, "th", "v|") == []
    for step in range(2, 5):
        service.put(tenant, "th", "", f"c{step}", cp(str(step)), channel_versions={"doc": "1", "n": str(step)},
                    new_values={"n": val(str(step))}, parent_checkpoint_id=f"c{step - 1}")
    assert [row.row_key.split("|")[2:] for row in rows(stores, tenant, "th", "v|")] == [["doc", "1"]]
    for step in range(1, 5):
        assert service.get(tenant, "th", "", f"c{step}").values["doc"] == medium
    # Every checkpoint stands on its own: deleting the one that introduced the value loses nothing.
    stores.table(names.TABLE_CHECKPOINTS).table.delete(f"{tenant}|t|th", _layout.checkpoint_rk("", "c1"))
    assert service.get(tenant, "th").values == {"doc": medium, "n": val("4")}


def test_a_put_whose_parent_was_written_by_another_process_reads_the_parent_once(stores, tenant):
    writer, other = CheckpointService(stores), CheckpointService(stores)  # two processes, two caches
    writer.put(tenant, "th", "", "c1", cp("1"), channel_versions={"a": "1", "b": "1"},
               new_values={"a": val("A"), "b": val("B")})
    other.put(tenant, "th", "", "c2", cp("2"), channel_versions={"a": "2", "b": "1"},
              new_values={"a": val("A2")}, parent_checkpoint_id="c1")
    assert other.cache_stats()["misses"] == 1
    other.put(tenant, "th", "", "c3", cp("3"), channel_versions={"a": "3", "b": "1"},
              new_values={"a": val("A3")}, parent_checkpoint_id="c2")
    assert other.cache_stats()["hits"] == 1  # its own last put
    assert writer.get(tenant, "th").values == {"a": val("A3"), "b": val("B")}
    stores.table(names.TABLE_CHECKPOINTS).table.delete(f"{tenant}|t|th", _layout.checkpoint_rk("", "c1"))
    assert writer.get(tenant, "th", "", "c2").values == {"a": val("A2"), "b": val("B")}


def test_rows_of_the_first_format_still_load_and_continue(service, stores, tenant):
    """Format 1: every value in a value row, no inline values (rows written before format 2)."""
    table = stores.table(names.TABLE_CHECKPOINTS)
    partition = _layout.thread_pk(tenant, "old")
    for channel, version, text in (("a", "1", "A1"), ("b", "1", "B1"), ("a", "2", "A2")):
        table.insert(_layout.value_row(partition, "", channel, version, val(text), time.time(), 32 * 1024))
    for checkpoint_id, versions, parent in (("c1", {"a": "1", "b": "1"}, None), ("c2", {"a": "2", "b": "1"}, "c1")):
        entity = _layout.checkpoint_row(partition, "", checkpoint_id, cp(checkpoint_id), metadata_text="{}",
                                        versions=versions, parent=parent, run=None, at=time.time(),
                                        threshold=32 * 1024)
        entity.properties["fmt"] = 1
        table.insert(entity)
    table.insert(Entity(partition, _layout.write_rk("", "c2", "task", 0),
                        {"task": "task", "path": "p", "idx": 0, "ch": "a", "type": "bytes", "at": time.time(),
                         "data": b"written"}))
    assert "inl" not in rows(stores, tenant, "old", "c|")[0].properties
    assert service.get(tenant, "old").pending_writes == [PendingWrite("task", "a", val("written"), 0, "p")]
    assert service.get(tenant, "old").values == {"a": val("A2"), "b": val("B1")}
    assert [c.values for c in service.list(tenant, "old").items] == [{"a": val("A2"), "b": val("B1")},
                                                                     {"a": val("A1"), "b": val("B1")}]
    service.put(tenant, "old", "", "c3", cp("3"), channel_versions={"a": "3", "b": "1"},
                new_values={"a": val("A3")}, parent_checkpoint_id="c2")
    assert service.get(tenant, "old").values == {"a": val("A3"), "b": val("B1")}


def test_repeating_a_put_replaces_the_checkpoint_and_keeps_values(service, stores, tenant):
    args = {"channel_versions": {"a": "1"}, "new_values": {"a": val("A")}, "metadata": {"step": 1}}
    assert service.put(tenant, "th", "", "c1", cp("x"), **args).created
    again = service.put(tenant, "th", "", "c1", cp("y"), **args)
    assert not again.created
    assert len(rows(stores, tenant, "th", "c|")) == 1
    assert service.get(tenant, "th").checkpoint == cp("y")
    # Repeated without its values (they were new the first time, and are inline in the row it
    # replaces): the values stay, from this process or from another one (no cache).
    for writer in (service, CheckpointService(stores)):
        writer.put(tenant, "th", "", "c1", cp("z"), channel_versions={"a": "1", "b": "1"},
                   new_values={"b": val("B")}, metadata={"step": 1})
        assert writer.get(tenant, "th").values == {"a": val("A"), "b": val("B")}
    service.put(tenant, "th", "", "c2", cp("2"), channel_versions={"a": "1", "b": "2"},
                new_values={"b": val("B2")}, parent_checkpoint_id="c1")
    assert service.get(tenant, "th").values == {"a": val("A"), "b": val("B2")}
    # A value at another version than the row it replaces held is not kept.
    service.put(tenant, "th", "", "c1", cp("w"), channel_versions={"a": "9"}, metadata={"step": 1})
    assert service.get(tenant, "th", "", "c1").values == {}


def test_more_channels_than_one_batch_holds(service, tenant):
    versions = {f"channel_{i}": "1" for i in range(250)}
    service.put(tenant, "th", "", "c1", cp("wide"), channel_versions=versions,
                new_values={name: val(name) for name in versions})
    assert service.get(tenant, "th").values == {name: val(name) for name in versions}


def test_large_values_round_trip_through_the_offload_mechanism(service, stores, tenant):
    before = offloaded_blobs(stores)
    big = random.randbytes(5 * 1024 * 1024)
    medium = random.randbytes(200 * 1024)  # kept inline, split over properties
    several = {f"m{i}": val(random.randbytes(300 * 1024)) for i in range(12)}  # more than one batch's bytes
    versions = {"big": "1", "medium": "1", **dict.fromkeys(several, "1")}
    service.put(tenant, "th", "", "c1", cp("big"), channel_versions=versions,
                new_values={"big": val(big), "medium": val(medium), **several})
    screenshot = random.randbytes(3 * 1024 * 1024)
    assert service.put_writes(tenant, "th", "", "c1", "task", [(0, "screenshot", val(screenshot))]).written == 1
    stored = service.get(tenant, "th")
    assert stored.values["big"].data == big
    assert stored.values["medium"].data == medium
    assert all(stored.values[name] == value for name, value in several.items())
    assert stored.pending_writes[0].value.data == screenshot
    made = offloaded_blobs(stores) - before
    assert len(made) >= 2  # the 5 MB value and the screenshot went to blobs
    service.delete_thread(tenant, "th")
    assert not (offloaded_blobs(stores) & made)  # and deleting the thread freed them


# --------------------------------------------------------------------------- list


def test_list_newest_first_with_before_limit_filter_and_pages(service, tenant):
    ids = put_chain(service, tenant, "th", 7, source=lambda i: "input" if i % 3 == 0 else "loop")
    child = checkpoint_id(50)
    service.put(tenant, "th", "child:1", child, cp("child"), metadata={"source": "loop", "step": 9})
    root = service.list(tenant, "th", checkpoint_ns="")
    assert [c.checkpoint_id for c in root.items] == ids[::-1] and root.continuation is None
    assert root.items[0].values == {"n": val("6"), "fixed": val("F")}
    everything = service.list(tenant, "th").items
    assert [c.checkpoint_id for c in everything] == [child] + ids[::-1]
    assert [c.checkpoint_id for c in service.list(tenant, "th", checkpoint_ns="", before=ids[3]).items] == ids[2::-1]
    inputs = service.list(tenant, "th", checkpoint_ns="", metadata_filter={"source": "input"}).items
    assert [c.checkpoint_id for c in inputs] == [ids[6], ids[3], ids[0]]
    assert service.list(tenant, "th", metadata_filter={"source": "loop", "step": 9}).items[0].checkpoint_ns == "child:1"
    assert service.list(tenant, "th", checkpoint_ns="", metadata_filter={"source": "update"}).items == []
    pages, token = [], None
    while True:
        page = service.list(tenant, "th", checkpoint_ns="", limit=3, continuation=token)
        pages.append([c.checkpoint_id for c in page.items])
        token = page.continuation
        if not token:
            break
    assert [cid for page in pages for cid in page] == ids[::-1] and all(len(p) <= 3 for p in pages)
    filtered_pages, token = [], None
    while True:  # filtered pages skip non-matching rows between pages
        page = service.list(tenant, "th", checkpoint_ns="", metadata_filter={"source": "loop"}, limit=2,
                            continuation=token)
        filtered_pages.extend(c.checkpoint_id for c in page.items)
        token = page.continuation
        if not token:
            break
    assert filtered_pages == [ids[5], ids[4], ids[2], ids[1]]
    with pytest.raises(NotFound):
        service.list(tenant, "no-such-thread")


def test_threads_are_listed_from_their_index(service, tenant):
    for thread_id in ("b-thread", "a-thread", "c-thread"):
        put_chain(service, tenant, thread_id, 2)
    assert [t.thread_id for t in service.threads(tenant).items] == ["a-thread", "b-thread", "c-thread"]
    service.delete_thread(tenant, "b-thread")
    assert [t.thread_id for t in service.threads(tenant).items] == ["a-thread", "c-thread"]


# --------------------------------------------------------------------------- pending writes


def test_pending_writes_never_duplicate_and_special_channels_are_replaced(service, tenant):
    service.put(tenant, "th", "", "c1", cp("1"))
    first = service.put_writes(tenant, "th", "", "c1", "task-b", [(0, "x", val("1")), (1, "y", val("2")),
                                                                 (-3, "__interrupt__", val("ask"))], task_path="b")
    assert (first.written, first.kept) == (3, 0)
    again = service.put_writes(tenant, "th", "", "c1", "task-b", [(0, "x", val("changed")), (1, "y", val("2")),
                                                                 (-3, "__interrupt__", val("ask again"))], task_path="b")
    assert (again.written, again.kept) == (1, 2)  # the regular ones kept, the special one replaced
    service.put_writes(tenant, "th", "", "c1", "task-a", [(0, "x", val("from a"))], task_path="a")
    writes = service.get(tenant, "th").pending_writes
    assert [(w.task_path, w.task_id, w.idx, w.value.data) for w in writes] == [
        ("a", "task-a", 0, b"from a"), ("b", "task-b", -3, b"ask again"), ("b", "task-b", 0, b"1"),
        ("b", "task-b", 1, b"2")]
    service.put(tenant, "th", "", "c2", cp("2"), parent_checkpoint_id="c1")
    assert service.get(tenant, "th").pending_writes == []  # a new checkpoint starts with none


def test_concurrent_writers_of_the_same_task_store_each_write_once(service, tenant):
    service.put(tenant, "th", "", "c1", cp("1"))
    writes = [(i, f"channel{i}", val(f"value {i}")) for i in range(30)]
    barrier = threading.Barrier(8)
    errors = []

    def writer() -> None:
        try:
            barrier.wait()
            service.put_writes(tenant, "th", "", "c1", "task", random.sample(writes, len(writes)))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = service.get(tenant, "th").pending_writes
    assert sorted((w.idx, w.value.data) for w in stored) == [(i, f"value {i}".encode()) for i in range(30)]


def test_simultaneous_writers_of_one_thread_share_batches_and_each_gets_its_own_result(service, tenant):
    service.put(tenant, "th", "", "c1", cp("1"))
    service.put_writes(tenant, "th", "", "c1", "task-0-0", [(0, "x", val("first"))])
    barrier = threading.Barrier(8)
    results: dict[str, tuple[int, int]] = {}

    def writer(worker: int) -> None:
        barrier.wait()
        for i in range(6):
            task = f"task-{worker}-{i}"
            done = service.put_writes(tenant, "th", "", "c1", task, [(0, "x", val(task)), (1, "y", val(task))])
            results[task] = (done.written, done.kept)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.pop("task-0-0") == (1, 1)  # its idx 0 was already there: kept, in a group or not
    assert set(results.values()) == {(2, 0)} and len(results) == 47
    stored = service.get(tenant, "th").pending_writes
    assert len(stored) == 96
    assert {(w.task_id, w.idx): w.value.data for w in stored}[("task-0-0", 0)] == b"first"


def test_concurrent_puts_on_one_thread_lose_nothing(service, tenant):
    barrier = threading.Barrier(6)
    made: list[str] = []

    def writer(worker: int) -> None:
        barrier.wait()
        for step in range(5):
            cid = checkpoint_id(worker * 100 + step)
            service.put(tenant, "th", "", cid, cp(cid), channel_versions={f"w{worker}": str(step)},
                        new_values={f"w{worker}": val(f"{worker}.{step}")}, metadata={"run_id": f"run-{worker}"})
            made.append(cid)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = [c.checkpoint_id for c in service.list(tenant, "th", checkpoint_ns="", limit=1000).items]
    assert listed == sorted(made, reverse=True)
    assert service.get(tenant, "th").checkpoint_id == max(made)
    assert service.delete_for_runs(tenant, ["run-3"]) == 5


# --------------------------------------------------------------------------- maintenance


def test_delete_thread_removes_every_row_and_index_and_is_safe_to_repeat(service, stores, tenant):
    put_chain(service, tenant, "doomed", 4, run_id="run-1")
    service.put_writes(tenant, "doomed", "", checkpoint_id(4), "task", [(0, "x", val(random.randbytes(400_000)))])
    put_chain(service, tenant, "kept", 2, run_id="run-1")
    assert service.delete_thread(tenant, "doomed") == 4
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    # Only the change records are left, for the sequencer, which removes them.
    assert {r.row_key.startswith(OUTBOX_PREFIX) for r in raw.query_all(f"{tenant}|t|doomed")} == {True}
    stores.changes.sequence(tenant)
    assert raw.query(f"{tenant}|t|doomed").items == []
    assert [r.row_key for r in raw.query_all(f"{tenant}|r|run-1")] == ["kept"]
    with pytest.raises(NotFound):
        service.delete_thread(tenant, "doomed")
    assert len(service.list(tenant, "kept").items) == 2


def test_delete_thread_finishes_what_a_crashed_delete_left(service, stores, tenant):
    put_chain(service, tenant, "th", 3, run_id="run-1")
    table = stores.table(names.TABLE_CHECKPOINTS)
    for row in rows(stores, tenant, "th", "c|") + rows(stores, tenant, "th", "w|"):  # the first steps, then a crash
        table.delete(row.partition_key, row.row_key)
    assert service.delete_thread(tenant, "th") == 0
    stores.changes.sequence(tenant)  # the puts' change records
    assert table.table.query(f"{tenant}|t|th").items == []
    assert table.table.query(f"{tenant}|r|run-1").items == []  # found through the run rows left behind
    assert service.threads(tenant).items == []


def test_delete_for_runs_keeps_values_later_checkpoints_share(service, stores, tenant):
    service.put(tenant, "th", "", "c1", cp("1"), channel_versions={"a": "1", "b": "1"},
                new_values={"a": big("A1"), "b": big("B1")}, metadata={"run_id": "run-1"})
    service.put_writes(tenant, "th", "", "c1", "task", [(0, "a", val("w"))])
    service.put(tenant, "th", "", "c2", cp("2"), channel_versions={"a": "2", "b": "1"},
                new_values={"a": big("A2")}, metadata={"run_id": "run-2"}, parent_checkpoint_id="c1")
    put_chain(service, tenant, "other", 2, run_id="run-1")
    assert service.delete_for_runs(tenant, ["run-1", "run-unknown"], now=time.time() + LATER) == 3
    assert [c.checkpoint_id for c in service.list(tenant, "th").items] == ["c2"]
    assert service.get(tenant, "th").values == {"a": big("A2"), "b": big("B1")}  # b@1 was c1's, c2 needs it
    assert {r["ch"] + "@" + r["ver"] for r in rows(stores, tenant, "th", "v|")} == {"a@2", "b@1"}
    assert rows(stores, tenant, "th", "w|") == []
    with pytest.raises(NotFound):
        service.list(tenant, "other")
    assert service.delete_for_runs(tenant, ["run-1"]) == 0  # repeatable
    with pytest.raises(NotFound):
        service.delete_for_runs(tenant, ["never-ran"])


def test_copy_thread_copies_everything_and_stands_alone(service, stores, tenant):
    ids = put_chain(service, tenant, "src", 3, run_id="run-1")
    service.put(tenant, "src", "child:1", checkpoint_id(90), cp("child"), channel_versions={"big": "1"},
                new_values={"big": val(random.randbytes(2 * 1024 * 1024))})
    service.put_writes(tenant, "src", "", ids[-1], "task", [(0, "x", val("pending"))])
    assert service.copy_thread(tenant, "src", "dst") == 4
    source = service.list(tenant, "src").items
    copy = service.list(tenant, "dst").items
    assert [(c.checkpoint_id, c.checkpoint_ns, c.values, c.metadata, c.pending_writes) for c in copy] == [
        (c.checkpoint_id, c.checkpoint_ns, c.values, c.metadata, c.pending_writes) for c in source]
    assert service.copy_thread(tenant, "src", "dst") == 0  # repeating adds nothing
    assert len(rows(stores, tenant, "dst", "c|")) == 4
    service.delete_thread(tenant, "src")
    assert service.get(tenant, "dst", "child:1").values["big"] == source[0].values["big"]  # its own blobs
    assert service.delete_for_runs(tenant, ["run-1"]) == 3  # the copy's run rows were indexed too
    with pytest.raises(NotFound):
        service.copy_thread(tenant, "src", "elsewhere")
    with pytest.raises(InvalidInput):
        service.copy_thread(tenant, "dst", "dst")


def test_prune_keep_latest_per_namespace_keeps_its_values_and_writes(service, stores, tenant):
    ids = put_chain(service, tenant, "th", 5, make=big)
    child = put_chain(service, tenant, "th", 3, ns="child:1", make=big)
    service.put_writes(tenant, "th", "", ids[-1], "task", [(0, "x", val("latest's write"))])
    service.put_writes(tenant, "th", "", ids[1], "task", [(0, "x", val("old write"))])
    assert service.prune(tenant, ["th"], now=time.time()) == 6
    assert [c.checkpoint_id for c in service.list(tenant, "th").items] == [ids[-1], child[-1]]
    assert len(rows(stores, tenant, "th", "v|")) == 10  # values are young: the grace period keeps them
    assert service.prune(tenant, ["th"], PruneStrategy.KEEP_LATEST, now=time.time() + LATER) == 0
    assert len(rows(stores, tenant, "th", "v|")) == 4  # n and fixed of each kept checkpoint
    latest = service.get(tenant, "th")
    assert latest.values == {"n": big("4"), "fixed": big("F")}
    assert [w.value.data for w in latest.pending_writes] == [b"latest's write"]
    assert len(rows(stores, tenant, "th", "w|")) == 1


def test_prune_delete_strategy_and_unknown_threads(service, tenant):
    put_chain(service, tenant, "a", 3)
    put_chain(service, tenant, "b", 2)
    assert service.prune(tenant, ["a", "ghost"], "delete") == 3
    with pytest.raises(NotFound):
        service.list(tenant, "a")
    with pytest.raises(NotFound):
        service.prune(tenant, ["ghost"])
    with pytest.raises(InvalidInput):
        service.prune(tenant, ["b"], "keep_some")
    assert len(service.list(tenant, "b").items) == 2


# --------------------------------------------------------------------------- validation and tenancy


def test_inputs_are_validated_before_anything_is_written(service, stores, tenant):
    with pytest.raises(InvalidKey):
        service.put(tenant, "bad thread", "", "c1", cp("x"))
    with pytest.raises(InvalidKey):
        service.put(tenant, "th", "", "c/1", cp("x"))
    with pytest.raises(InvalidKey):
        service.put(tenant, "th", "bad\x00ns", "c1", cp("x"))
    with pytest.raises(InvalidInput):
        service.put(tenant, "th", "", "c1", cp("x"), new_values={"a": val("no version")})
    with pytest.raises(InvalidInput):
        service.put(tenant, "th", "", "c1", cp("x"), metadata={"when": object()})
    with pytest.raises(InvalidInput):
        service.put(tenant, "th", "", "c1", TypedValue("", b"x"))
    with pytest.raises(InvalidInput):
        service.put_writes(tenant, "th", "", "c1", "task", [(0, "a", val("1")), (0, "b", val("2"))])
    service.max_bytes = 1000
    with pytest.raises(TooLarge):
        service.put(tenant, "th", "", "c1", cp("x"), channel_versions={"a": "1"}, new_values={"a": val(b"x" * 1001)})
    with pytest.raises(TooLarge):
        service.put_writes(tenant, "th", "", "c1", "task", [(0, "a", val(b"x" * 1001))])
    assert rows(stores, tenant, "th", "") == []
    assert service.threads(tenant).items == []


def test_another_tenant_sees_nothing_and_changes_nothing(service, tenant):
    ids = put_chain(service, tenant, "th", 3, run_id="run-1")
    other = "o" + tenant
    for attempt in (lambda: service.get(other, "th"), lambda: service.get(other, "th", "", ids[0]),
                    lambda: service.list(other, "th"), lambda: service.delete_thread(other, "th"),
                    lambda: service.copy_thread(other, "th", "mine"), lambda: service.prune(other, ["th"]),
                    lambda: service.delete_for_runs(other, ["run-1"])):
        with pytest.raises(NotFound):
            attempt()
    service.put(other, "th", "", ids[-1], cp("theirs"))  # lands in the other tenant only
    assert service.get(tenant, "th").checkpoint == cp(ids[-1])
    assert service.threads(other).items[0].thread_id == "th"
    assert len(service.list(tenant, "th").items) == 3


def test_storage_manager_offers_checkpoints_for_its_tenant(stores, tenant):
    storage = StorageManager(stores, tenant)
    storage.checkpoints.put("th", "", "c1", cp("1"), channel_versions={"a": "1"}, new_values={"a": val("A")})
    assert storage.checkpoints.get("th").values == {"a": val("A")}
    assert "put_writes" in dir(storage.checkpoints) and "delete_for_runs" in dir(storage.checkpoints)


# --------------------------------------------------------------------------- queue commands


@pytest.fixture
def processor(stores) -> commands.CommandProcessor:
    return commands.CommandProcessor(stores)


def envelope(tenant: str, op: str, **payload) -> str:
    return json.dumps({"version": 1, "op": op, "tenant": tenant, "idempotency_key": uuid.uuid4().hex,
                       "payload": payload})


def test_queue_commands_apply_once_when_redelivered(service, processor, tenant):
    put_chain(service, tenant, "src", 3, run_id="run-1")
    copy = envelope(tenant, "checkpoints.copy_thread", source_thread_id="src", target_thread_id="dst")
    assert processor.process(copy).status == "applied"
    newest = checkpoint_id(99)
    service.put(tenant, "dst", "", newest, cp("new"))
    assert processor.process(copy, dequeue_count=2).status == "duplicate"
    assert len(service.list(tenant, "dst").items) == 4
    prune = envelope(tenant, "checkpoints.prune", thread_ids=["dst"])
    assert processor.process(prune).status == "applied"
    assert processor.process(prune, dequeue_count=2).status == "duplicate"
    assert [c.checkpoint_id for c in service.list(tenant, "dst").items] == [newest]
    runs = envelope(tenant, "checkpoints.delete_runs", run_ids=["run-1"])
    assert processor.process(runs).status == "applied"
    assert processor.process(runs, dequeue_count=2).status == "duplicate"
    with pytest.raises(NotFound):
        service.list(tenant, "src")
    delete = envelope(tenant, "checkpoints.delete_thread", thread_id="dst")
    assert processor.process(delete).status == "applied"
    assert processor.process(delete, dequeue_count=2).status == "duplicate"
    with pytest.raises(NotFound):
        service.list(tenant, "dst")
    missing = envelope(tenant, "checkpoints.copy_thread", source_thread_id="ghost", target_thread_id="x")
    outcome = processor.process(missing)
    assert outcome.status == "poisoned" and "ghost" in outcome.detail


# --------------------------------------------------------------------------- idempotency of maintenance (issue #9)


def test_a_key_reused_for_another_request_is_refused_and_changes_nothing(service, processor, tenant):
    put_chain(service, tenant, "a", 2)
    put_chain(service, tenant, "b", 2)
    assert service.delete_thread(tenant, "a", idempotency_key="k1") == 2
    with pytest.raises(IdempotencyKeyReused) as raised:
        service.delete_thread(tenant, "b", idempotency_key="k1")  # same key, other thread
    assert raised.value.status == 422
    with pytest.raises(IdempotencyKeyReused):
        service.prune(tenant, ["b"], idempotency_key="k1")  # same key, other op
    assert len(service.list(tenant, "b").items) == 2
    first = envelope(tenant, "checkpoints.prune", thread_ids=["b"])
    assert processor.process(first).status == "applied"
    reused = json.loads(first)
    reused["payload"] = {"thread_ids": ["b"], "strategy": "delete"}
    outcome = processor.process(json.dumps(reused))
    assert outcome.status == "poisoned" and "different request" in outcome.detail
    assert len(service.list(tenant, "b").items) == 1


def test_a_replay_answers_the_first_result_and_does_not_undo_newer_work(service, tenant):
    ids = put_chain(service, tenant, "th", 3)
    first = service.prune_outcome(tenant, ["th"], idempotency_key="p1")
    assert (first.result, first.replayed) == (2, False)
    newer = checkpoint_id(50)
    service.put(tenant, "th", "", newer, cp("newer"), parent_checkpoint_id=ids[-1])
    again = service.prune_outcome(tenant, ["th"], idempotency_key="p1")
    assert (again.result, again.replayed) == (2, True)
    assert [c.checkpoint_id for c in service.list(tenant, "th").items] == [newer, ids[-1]]
    copied = service.copy_thread_outcome(tenant, "th", "copy", idempotency_key="c1")
    service.delete_thread(tenant, "th")  # the source is gone: the replay still answers, no error
    replay = service.copy_thread_outcome(tenant, "th", "copy", idempotency_key="c1")
    assert replay.replayed and replay.result == copied.result == 2


def test_nothing_found_is_not_recorded_so_the_key_stays_usable(service, tenant):
    with pytest.raises(NotFound):
        service.delete_thread(tenant, "ghost", idempotency_key="k")
    put_chain(service, tenant, "ghost", 1)
    assert service.delete_thread_outcome(tenant, "ghost", idempotency_key="k").replayed is False


def test_markers_use_the_one_format_with_a_fingerprint(service, stores, tenant):
    put_chain(service, tenant, "th", 1)
    service.delete_thread(tenant, "th", idempotency_key="k")
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    (marker,) = raw.query_all(f"{tenant}|commands")
    assert marker.row_key == marker_row("k") and marker["fmt"] == 1 and marker["fp"] and marker["status"] == 200


def test_markers_of_the_format_before_are_replayed_and_checked_by_op(service, stores, tenant):
    put_chain(service, tenant, "th", 2)
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    raw.upsert(Entity(f"{tenant}|commands", _layout.part("old-key"),
                      {"op": "checkpoints.delete_thread", "detail": "thread th: 2 checkpoints deleted", "at": 1.0}))
    assert service.delete_thread_outcome(tenant, "th", idempotency_key="old-key").replayed
    assert len(service.list(tenant, "th").items) == 2
    with pytest.raises(IdempotencyKeyReused):
        service.prune(tenant, ["th"], idempotency_key="old-key")


# --------------------------------------------------------------------------- mechanics (issue #9)


def test_every_row_written_carries_fmt_and_rows_without_it_still_read(service, stores, tenant):
    put_chain(service, tenant, "th", 2, run_id="run-1", make=big)
    service.put_writes(tenant, "th", "", checkpoint_id(2), "task", [(0, "x", val("w")), (-1, "__error__", val("e"))])
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    records = rows(stores, tenant, "th", OUTBOX_PREFIX)
    assert len(records) == 3 and all(row["fmt"] == 1 for row in records)  # the change feed's own format
    written = ([row for row in rows(stores, tenant, "th", "") if row not in records]
               + list(raw.query_all(f"{tenant}|threads")) + list(raw.query_all(f"{tenant}|r|run-1")))
    assert len(written) == 2 + 3 + 2 + 2 + 1 + 1  # checkpoints, values, writes, run rows, thread, run index
    assert all(row["fmt"] == (2 if row.row_key.startswith(("c|", "w|")) else 1) for row in written)
    assert all(isinstance(row["at"], float) for row in written if "at" in row.properties)
    before = service.get(tenant, "th")
    for row in written:  # as an older release wrote them
        raw.upsert(Entity(row.partition_key, row.row_key, {k: v for k, v in row.properties.items() if k != "fmt"}))
    assert service.get(tenant, "th") == before
    assert service.delete_for_runs(tenant, ["run-1"]) == 2


def test_rows_that_keep_appearing_end_in_busy_not_conflict(service, tenant, monkeypatch):
    from shared.errors import AlreadyExists, Busy

    def always_there(operations):
        raise AlreadyExists("a concurrent writer got there first")

    monkeypatch.setattr(service._table, "batch", always_there)
    monkeypatch.setattr("shared.storage.retry.time.sleep", lambda seconds: None)
    with pytest.raises(Busy):
        service.put_writes(tenant, "th", "", "c1", "task", [(0, "x", val("w"))])


def test_two_deliveries_racing_under_one_key_answer_alike_and_record_one_marker(service, stores, tenant, monkeypatch):
    put_chain(service, tenant, "th", 3)
    original, inner = service._prune, []

    def racing(*args):
        result = original(*args)
        if not inner:  # the other delivery runs and records its marker while this one is still working
            inner.append(None)
            inner[0] = service.prune_outcome(tenant, ["th"], idempotency_key="k")
        return result

    monkeypatch.setattr(service, "_prune", racing)
    outer = service.prune_outcome(tenant, ["th"], idempotency_key="k")
    assert outer.replayed and not inner[0].replayed and outer.result == inner[0].result
    raw = stores.table(names.TABLE_CHECKPOINTS).table
    assert len(list(raw.query_all(f"{tenant}|commands"))) == 1
    assert len(service.list(tenant, "th").items) == 1
