"""Memory service (threads and messages): the same tests on local, Azurite and moto."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import names
from shared.backends import Entity
from shared.backends.offload import OFFLOAD_PROPERTY, parse_ref
from shared.commands import CommandProcessor
from shared.domains.memory import MessageNotFound, ThreadAlreadyExists, ThreadNotFound
from shared.domains.memory.service import (
    DELETION_GRACE_SECONDS,
    MAX_CONTENT_BYTES,
    MAX_MESSAGES_PER_CALL,
    MemoryService,
    NewMessage,
    Role,
)
from shared.errors import AlreadyExists, Busy, InvalidInput, InvalidKey, NotFound, PreconditionFailed, TooLarge
from shared.manager import StorageManager
from shared.storage.idempotency import IdempotencyKeyReused, marker_row

MB = 1024 * 1024


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def memory(stores) -> MemoryService:
    return MemoryService(stores)


def _partition(stores, tenant: str, thread_id: str) -> list[str]:
    """Row keys stored for a thread, straight from the table, once its change records are sequenced."""
    stores.changes.sequence(tenant)
    raw = stores.table(names.TABLE_MEMORY).table
    return [e.row_key for e in raw.query_all(f"{tenant}|t|{thread_id}")]


def _index(stores, tenant: str, resource: str) -> list[str]:
    raw = stores.table(names.TABLE_MEMORY).table
    return [e.row_key for e in raw.query_all(f"{tenant}|r|{resource}")]


def _marks_deleting(ops) -> bool:
    """Whether a batch is a thread delete's first: the ``deleting`` mark with its change record."""
    return any(op.entity.row_key.startswith("~outbox|") for op in ops) and any(
        op.entity.row_key == "thread" and op.entity.get("deleting") for op in ops)


def _crash_after_marking(memory, monkeypatch) -> None:
    """Thread deletes crash right after marking the thread ``deleting``."""
    real_batch = memory._table.batch

    def crash(ops):
        if _marks_deleting(ops):
            return real_batch(ops)
        raise Crash("killed")

    monkeypatch.setattr(memory._table, "batch", crash)


def _say(count: int, prefix: str = "m") -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{prefix}{i}"} for i in range(count)]


def _all_pages(read, **kwargs) -> list[list[int]]:
    pages, token = [], None
    while True:
        page = read(continuation=token, **kwargs) if token else read(**kwargs)
        pages.append([m.seq for m in page.items])
        token = page.continuation
        if not token:
            return pages


class Crash(Exception):
    """Stands for the process dying in the middle of a write."""


# --------------------------------------------------------------------------- threads


def test_thread_round_trip_with_conditional_update(stores, memory, tenant):
    created = memory.create_thread(tenant, "user_123", title="Trip", metadata={"project": "apollo", "n": 1})
    assert created.thread_id.startswith("thread_") and created.message_count == 0
    assert created.created_at == created.updated_at
    got = memory.get_thread(tenant, created.thread_id)
    assert (got.resource, got.title, got.metadata, got.etag) == ("user_123", "Trip", {"project": "apollo", "n": 1},
                                                                created.etag)

    renamed = memory.update_thread(tenant, created.thread_id, title="Trip to Rome", if_match=created.etag)
    assert renamed.title == "Trip to Rome" and renamed.metadata == {"project": "apollo", "n": 1}
    assert renamed.etag != created.etag and renamed.updated_at >= created.updated_at
    with pytest.raises(PreconditionFailed):
        memory.update_thread(tenant, created.thread_id, title="stale", if_match=created.etag)
    cleared = memory.update_thread(tenant, created.thread_id, title=None, metadata={"project": "zeus"})
    assert cleared.title is None and cleared.metadata == {"project": "zeus"}
    assert memory.get_thread(tenant, created.thread_id) == cleared

    memory.delete_thread(tenant, created.thread_id)
    with pytest.raises(NotFound):
        memory.get_thread(tenant, created.thread_id)
    with pytest.raises(NotFound):
        memory.delete_thread(tenant, created.thread_id)
    assert _index(stores, tenant, "user_123") == []


def test_given_thread_ids_are_unique_per_tenant(memory, tenant):
    memory.create_thread(tenant, "user_1", thread_id="session-42")
    with pytest.raises(AlreadyExists):
        memory.create_thread(tenant, "user_2", thread_id="session-42")
    assert memory.get_thread(tenant, "session-42").resource == "user_1"
    memory.create_thread(tenant + "x", "user_2", thread_id="session-42")  # another tenant: its own namespace
    generated = {memory.create_thread(tenant, "user_1").thread_id for _ in range(3)}
    assert len(generated) == 3
    # The same idempotency key returns the first thread instead of failing or making another.
    first = memory.create_thread(tenant, "user_1", idempotency_key="req-1")
    again = memory.create_thread(tenant, "user_1", idempotency_key="req-1")
    assert again.thread_id == first.thread_id and again.created_at == first.created_at


def test_list_threads_by_resource_newest_first_paged_and_filtered(memory, tenant):
    made = []
    for i in range(7):
        made.append(memory.create_thread(tenant, "team_ml", title=f"t{i}",
                                         metadata={"project": "apollo" if i % 2 else "zeus", "i": i}).thread_id)
    memory.create_thread(tenant, "team_ops", title="other resource")
    newest_first = list(reversed(made))

    pages, token, seen = 0, None, []
    while True:
        page = memory.list_threads(tenant, "team_ml", limit=3, continuation=token)
        assert len(page.items) <= 3
        seen += [t.thread_id for t in page.items]
        pages += 1
        token = page.continuation
        if not token:
            break
    assert seen == newest_first and pages == 3

    apollo = memory.list_threads(tenant, "team_ml", metadata={"project": "apollo"}).items
    assert [t.thread_id for t in apollo] == [made[5], made[3], made[1]]
    assert [t.thread_id for t in memory.list_threads(tenant, "team_ml", metadata={"i": 4}).items] == [made[4]]
    assert memory.list_threads(tenant, "team_ml", metadata={"i": "4"}).items == []  # JSON equality, not text
    assert memory.list_threads(tenant, "team_ml", metadata={"absent": None}).items == []

    memory.add_message(tenant, made[0], "user", "hello")
    listed = {t.thread_id: t for t in memory.list_threads(tenant, "team_ml").items}
    assert listed[made[0]].message_count == 1  # live counts, not a copy in the index
    memory.delete_thread(tenant, made[2])
    assert made[2] not in [t.thread_id for t in memory.list_threads(tenant, "team_ml").items]
    token = memory.list_threads(tenant, "team_ml", limit=1).continuation
    with pytest.raises(InvalidInput):
        memory.list_threads(tenant, "team_ops", continuation=token)


def test_listing_skips_an_entry_left_by_a_crashed_create_and_removes_it_once_old(stores, memory, tenant):
    live = memory.create_thread(tenant, "user_1")
    raw = stores.table(names.TABLE_MEMORY).table
    old = time.time() - DELETION_GRACE_SECONDS - 60
    recent = time.time()
    raw.insert(Entity(f"{tenant}|r|user_1", f"{10**19 - int(old * 1e6):019d}|ghost-old|00000000",
                      {"thread_id": "ghost-old", "created_at": old}))
    raw.insert(Entity(f"{tenant}|r|user_1", f"{10**19 - int(recent * 1e6):019d}|ghost-new|00000000",
                      {"thread_id": "ghost-new", "created_at": recent}))
    assert [t.thread_id for t in memory.list_threads(tenant, "user_1").items] == [live.thread_id]
    remaining = _index(stores, tenant, "user_1")
    assert len(remaining) == 2 and not any("ghost-old" in rk for rk in remaining)  # a recent one may be in flight


# --------------------------------------------------------------------------- messages


def test_messages_get_strictly_increasing_seqs_and_keep_their_content(memory, tenant):
    thread = memory.create_thread(tenant, "user_1")
    question = memory.add_message(tenant, thread.thread_id, "user", "What is in this picture?",
                                  metadata={"client": "web"})
    parts = [{"type": "text", "text": "A cat"}, {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]
    answer, tool = memory.add_messages(tenant, thread.thread_id, [
        NewMessage(Role.assistant, parts, {"tokens": 12}, question.message_id),
        {"role": "tool", "content": {"name": "vision", "result": [1, 2.5, None, True]}},
    ])
    assert [question.seq, answer.seq, tool.seq] == [1, 2, 3]
    assert len({question.message_id, answer.message_id, tool.message_id}) == 3
    got = memory.get_message(tenant, thread.thread_id, answer.message_id)
    assert got.content == parts and got.role == Role.assistant and got.role == "assistant"
    assert got.metadata == {"tokens": 12} and got.parent_message_id == question.message_id
    assert memory.get_message(tenant, thread.thread_id, tool.message_id).content == tool.content
    assert memory.get_message(tenant, thread.thread_id, question.message_id).metadata == {"client": "web"}
    after = memory.get_thread(tenant, thread.thread_id)
    assert after.message_count == 3 and after.updated_at == tool.created_at
    assert memory.add_message(tenant, thread.thread_id, "system", "").content == ""

    with pytest.raises(InvalidInput):
        memory.add_message(tenant, thread.thread_id, "user", "x", parent_message_id="msg_000000000999_00000000")
    with pytest.raises(InvalidInput):
        memory.add_message(tenant, thread.thread_id, "robot", "x")
    with pytest.raises(InvalidInput):
        memory.add_messages(tenant, thread.thread_id, [{"role": "user", "content": "x", "extra": 1}])
    with pytest.raises(InvalidInput):
        memory.add_message(tenant, thread.thread_id, "user", 42)
    with pytest.raises(NotFound):
        memory.get_message(tenant, thread.thread_id, "msg_000000000002_00000000")  # right seq, wrong id
    with pytest.raises(NotFound):
        memory.add_message(tenant, "no-such-thread", "user", "x")
    assert memory.get_thread(tenant, thread.thread_id).message_count == 4  # the refused calls wrote nothing


def test_history_reads_last_n_and_pages_both_ways_from_cursors(memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    added = memory.add_messages(tenant, thread, _say(30))
    ids = {m.seq: m.message_id for m in added}

    last = memory.history(tenant, thread, last=5)
    assert [m.seq for m in last.items] == [26, 27, 28, 29, 30] and last.items[-1].content == "m29"
    assert [m.seq for m in memory.history(tenant, thread, last=5, order="desc").items] == [30, 29, 28, 27, 26]
    # Each "last" page is chronological; the continuation walks back to older messages.
    assert _all_pages(lambda **k: memory.history(tenant, thread, **k), last=12) == [
        list(range(19, 31)), list(range(7, 19)), list(range(1, 7))]
    assert _all_pages(lambda **k: memory.history(tenant, thread, **k), limit=11) == [
        list(range(1, 12)), list(range(12, 23)), list(range(23, 31))]
    assert _all_pages(lambda **k: memory.history(tenant, thread, **k), limit=20, order="desc") == [
        list(range(30, 10, -1)), list(range(10, 0, -1))]

    # Cursors are exclusive, by seq or by message id.
    assert [m.seq for m in memory.history(tenant, thread, before=10, last=3).items] == [7, 8, 9]
    assert [m.seq for m in memory.history(tenant, thread, after=ids[20], limit=3).items] == [21, 22, 23]
    assert [m.seq for m in memory.history(tenant, thread, after=5, before=ids[9]).items] == [6, 7, 8]
    assert [m.seq for m in memory.history(tenant, thread, after="27").items] == [28, 29, 30]
    assert memory.history(tenant, thread, after=30).items == []
    assert memory.history(tenant, thread, before=1, last=5).items == []

    # Deleted messages leave gaps that paging steps over; seqs are never reused.
    for seq in range(3, 15):
        memory.delete_message(tenant, thread, ids[seq])
    assert _all_pages(lambda **k: memory.history(tenant, thread, **k), limit=4) == [
        [1, 2, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24], [25, 26, 27, 28], [29, 30]]
    assert [m.seq for m in memory.history(tenant, thread, before=16, last=4).items] == [1, 2, 15]
    assert memory.add_message(tenant, thread, "user", "new").seq == 31

    # A forward token issued before new messages arrived finds them too.
    forward = memory.history(tenant, thread, after=26, limit=3)
    assert [m.seq for m in forward.items] == [27, 28, 29] and forward.continuation
    memory.add_message(tenant, thread, "user", "newer")
    assert [m.seq for m in memory.history(tenant, thread, continuation=forward.continuation).items] == [30, 31, 32]

    with pytest.raises(InvalidInput):
        memory.history(tenant, thread, before="not-a-cursor")
    with pytest.raises(InvalidInput):
        memory.history(tenant, thread, last=0)
    with pytest.raises(InvalidInput):
        memory.history(tenant, thread, order="sideways")
    other = memory.create_thread(tenant, "user_1").thread_id
    with pytest.raises(InvalidInput):
        memory.history(tenant, other, continuation=forward.continuation)


def test_edit_and_delete_messages_keep_count_and_updated_at_exact(memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    first, second = memory.add_messages(tenant, thread, _say(2))
    edited = memory.update_message(tenant, thread, first.message_id, content=[{"type": "text", "text": "fixed"}],
                                   if_match=first.etag)
    assert edited.content == [{"type": "text", "text": "fixed"}] and edited.metadata == {}
    assert edited.etag != first.etag and edited.updated_at >= first.created_at
    assert edited.created_at == first.created_at and edited.seq == 1
    with pytest.raises(PreconditionFailed):
        memory.update_message(tenant, thread, first.message_id, content="again", if_match=first.etag)
    tagged = memory.update_message(tenant, thread, first.message_id, metadata={"flag": True})
    assert tagged.content == [{"type": "text", "text": "fixed"}] and tagged.metadata == {"flag": True}
    assert memory.get_thread(tenant, thread).updated_at == tagged.updated_at

    # A stale ETag of this message (not another message's: entities written in one Azure
    # batch may share one timestamp ETag, so those can legitimately be equal).
    second_now = memory.update_message(tenant, thread, second.message_id, metadata={"seen": True})
    assert second_now.etag != second.etag
    with pytest.raises(PreconditionFailed):
        memory.delete_message(tenant, thread, second.message_id, if_match=second.etag)
    memory.delete_message(tenant, thread, second.message_id, if_match=second_now.etag)
    after = memory.get_thread(tenant, thread)
    assert after.message_count == 1
    with pytest.raises(NotFound):
        memory.get_message(tenant, thread, second.message_id)
    with pytest.raises(NotFound):
        memory.delete_message(tenant, thread, second.message_id)
    with pytest.raises(NotFound):
        memory.update_message(tenant, thread, second.message_id, content="gone")
    assert memory.get_thread(tenant, thread).message_count == 1


def test_concurrent_appends_keep_count_seqs_and_updated_at_exact(memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    writers, calls = 6, 5
    start = threading.Barrier(writers)

    def write(index: int) -> None:
        start.wait(timeout=60)
        for call in range(calls):
            batch = [{"role": "user", "content": f"w{index}-c{call}-{k}"} for k in range(1 + call % 2)]
            memory.add_messages(tenant, thread, batch)

    with ThreadPoolExecutor(max_workers=writers) as pool:
        for done in [pool.submit(write, i) for i in range(writers)]:
            done.result(timeout=180)  # re-raises a writer's error
    per_writer = sum(1 + call % 2 for call in range(calls))
    expected = writers * per_writer
    history = memory.history(tenant, thread, limit=1000).items
    assert [m.seq for m in history] == list(range(1, expected + 1))
    assert sorted(m.content for m in history) == sorted(
        f"w{i}-c{c}-{k}" for i in range(writers) for c in range(calls) for k in range(1 + c % 2))
    for i in range(writers):  # each writer's messages are in the order it wrote them
        mine = [m.content for m in history if m.content.startswith(f"w{i}-")]
        assert mine == sorted(mine, key=lambda text: (int(text.split("-")[1][1:]), text))
    final = memory.get_thread(tenant, thread)
    assert final.message_count == expected
    assert final.updated_at == history[-1].created_at
    assert [m.created_at for m in history] == sorted(m.created_at for m in history)


def test_an_idempotency_key_appends_once(memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    first = memory.add_messages(tenant, thread, _say(3), idempotency_key="turn-7")
    again = memory.add_messages(tenant, thread, _say(3), idempotency_key="turn-7")
    assert [m.message_id for m in again] == [m.message_id for m in first]
    assert memory.get_thread(tenant, thread).message_count == 3
    assert [m.seq for m in memory.add_messages(tenant, thread, _say(1), idempotency_key="turn-8")] == [4]


# --------------------------------------------------------------------------- scale and limits


def test_deleting_a_thread_works_in_chunks_and_a_retry_after_a_crash_finishes(stores, memory, tenant, monkeypatch):
    thread = memory.create_thread(tenant, "user_1").thread_id
    for start in range(0, 250, MAX_MESSAGES_PER_CALL):
        memory.add_messages(tenant, thread, _say(min(MAX_MESSAGES_PER_CALL, 250 - start)),
                            idempotency_key=f"chunk-{start}")
    big = memory.add_message(tenant, thread, "user", "x" * (200 * 1024))  # offloaded to a blob
    ref = json.loads(stores.table(names.TABLE_MEMORY).table.get(f"{tenant}|t|{thread}", f"m|{10**12 - 1 - big.seq:012d}")
                     [OFFLOAD_PROPERTY])["text"]["ref"]
    blobs = stores.blobs(names.CONTAINER_DATA)
    assert blobs.exists(parse_ref(ref))

    real_batch, sizes = memory._table.batch, []

    def crash_after_one_chunk(ops):
        if _marks_deleting(ops):
            return real_batch(ops)
        if sizes:
            raise Crash("killed")
        sizes.append(len(ops))
        return real_batch(ops)

    monkeypatch.setattr(memory._table, "batch", crash_after_one_chunk)
    with pytest.raises(Crash):
        memory.delete_thread(tenant, thread)
    monkeypatch.undo()
    assert sizes == [100]  # chunks respect the batch limit
    left = _partition(stores, tenant, thread)
    assert 100 < len(left) < 256  # halfway: thread, markers and some messages remain
    with pytest.raises(NotFound):
        memory.get_thread(tenant, thread)  # reads see it gone at once
    with pytest.raises(NotFound):
        memory.history(tenant, thread, last=5)
    with pytest.raises(NotFound):
        memory.add_message(tenant, thread, "user", "too late")
    assert thread not in [t.thread_id for t in memory.list_threads(tenant, "user_1").items]

    memory.delete_thread(tenant, thread)  # the retry finishes the job
    assert _partition(stores, tenant, thread) == []
    assert _index(stores, tenant, "user_1") == []
    assert not blobs.exists(parse_ref(ref))
    with pytest.raises(NotFound):
        memory.delete_thread(tenant, thread)
    # The id can be used again, for a new, empty thread.
    assert memory.create_thread(tenant, "user_1", thread_id=thread).message_count == 0


def test_the_timer_finishes_an_interrupted_delete_after_the_grace_period(stores, memory, tenant, monkeypatch):
    thread = memory.create_thread(tenant, "user_1").thread_id
    memory.add_messages(tenant, thread, _say(5))
    _crash_after_marking(memory, monkeypatch)
    with pytest.raises(Crash):
        memory.delete_thread(tenant, thread)
    monkeypatch.undo()
    assert len(_partition(stores, tenant, thread)) == 6
    assert memory.finish_deletions(now=time.time()) == 0  # it might still be running
    assert len(_partition(stores, tenant, thread)) == 6
    later = time.time() + DELETION_GRACE_SECONDS + 5
    assert memory.finish_deletions(now=later) >= 1
    assert _partition(stores, tenant, thread) == [] and _index(stores, tenant, "user_1") == []
    assert memory.finish_deletions(now=later) == 0  # idempotent


def test_a_pasted_2mb_document_is_stored_whole_through_offload(stores, memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    document = "Chapter ✓ lorem ipsum dolor sit amet. " * (2 * MB // 38)
    pasted = memory.add_messages(tenant, thread, [{"role": "user", "content": document},
                                                  {"role": "assistant", "content": "Summary: ..."}])[0]
    raw = stores.table(names.TABLE_MEMORY).table.get(f"{tenant}|t|{thread}", f"m|{10**12 - 1 - pasted.seq:012d}")
    assert "text" not in raw.properties  # in a blob, not the entity
    blob_key = parse_ref(json.loads(raw[OFFLOAD_PROPERTY])["text"]["ref"])
    assert memory.get_message(tenant, thread, pasted.message_id).content == document
    assert memory.history(tenant, thread, last=2).items[0].content == document
    memory.update_message(tenant, thread, pasted.message_id, content="shortened")
    blobs = stores.blobs(names.CONTAINER_DATA)
    assert not blobs.exists(blob_key)  # replaced content: its blob is gone
    assert memory.get_message(tenant, thread, pasted.message_id).content == "shortened"


def test_limits_are_checked_before_anything_is_written(stores, memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    offloaded_before = len(list(stores.blobs(names.CONTAINER_DATA).list_all(f"offload/tables/{names.TABLE_MEMORY}/")))
    with pytest.raises(TooLarge):
        memory.add_messages(tenant, thread, [{"role": "user", "content": "ok"},
                                             {"role": "user", "content": "x" * (MAX_CONTENT_BYTES + 1)}])
    with pytest.raises(TooLarge):
        memory.add_message(tenant, thread, "tool", {"blob": "é" * (MAX_CONTENT_BYTES // 2)})
    with pytest.raises(TooLarge):
        memory.add_message(tenant, thread, "user", "x", metadata={"big": "y" * 10_000})
    with pytest.raises(TooLarge):  # many medium messages: more than one atomic batch can carry
        # Each value stays under the offload threshold (32 KiB), so all of them would travel inline.
        memory.add_messages(tenant, thread, [{"role": "user", "content": "中" * 10_900,
                                              "metadata": {"m": "文" * 2_700}} for _ in range(MAX_MESSAGES_PER_CALL)])
    with pytest.raises(InvalidInput):
        memory.add_messages(tenant, thread, _say(MAX_MESSAGES_PER_CALL + 1))
    with pytest.raises(InvalidInput):
        memory.add_messages(tenant, thread, [])
    with pytest.raises(TooLarge):
        memory.create_thread(tenant, "user_1", metadata={"big": "y" * 10_000})
    assert memory.get_thread(tenant, thread).message_count == 0
    assert memory.history(tenant, thread).items == []
    offloaded_after = len(list(stores.blobs(names.CONTAINER_DATA).list_all(f"offload/tables/{names.TABLE_MEMORY}/")))
    if stores.backend.kind == "local":  # the other emulators are shared by concurrent tests' blobs
        assert offloaded_after == offloaded_before
    assert len(memory.add_messages(tenant, thread, _say(MAX_MESSAGES_PER_CALL))) == MAX_MESSAGES_PER_CALL


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "a|b", "x" * 129, "é", "a#b"])
def test_bad_ids_are_invalid_keys(memory, tenant, bad):
    with pytest.raises(InvalidKey):
        memory.create_thread(tenant, "user_1", thread_id=bad)
    with pytest.raises(InvalidKey):
        memory.create_thread(tenant, bad)
    with pytest.raises(InvalidKey):
        memory.get_thread(tenant, bad)
    with pytest.raises(InvalidKey):
        memory.list_threads(tenant, bad)


def test_tenants_never_see_each_other(memory, tenant):
    other = tenant + "x"
    thread = memory.create_thread(tenant, "user_1", thread_id="shared-name", title="mine").thread_id
    message = memory.add_message(tenant, thread, "user", "secret")
    calls = [
        lambda: memory.get_thread(other, thread),
        lambda: memory.update_thread(other, thread, title="hijack"),
        lambda: memory.delete_thread(other, thread),
        lambda: memory.add_message(other, thread, "user", "intrusion"),
        lambda: memory.history(other, thread, last=10),
        lambda: memory.get_message(other, thread, message.message_id),
        lambda: memory.update_message(other, thread, message.message_id, content="changed"),
        lambda: memory.delete_message(other, thread, message.message_id),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    assert memory.list_threads(other, "user_1").items == []
    mine = memory.get_thread(tenant, thread)
    assert mine.title == "mine" and mine.message_count == 1
    assert memory.get_message(tenant, thread, message.message_id).content == "secret"


def _tampered(token: str) -> list[str]:
    """Variants of a signed token: its state changed (tag kept), its tag changed, the tag dropped."""
    inner, _, tag = token.rpartition(".")
    state = json.loads(base64.urlsafe_b64decode(inner + "=" * (-len(inner) % 4)))
    state = {key: (value + 1 if isinstance(value, int) and not isinstance(value, bool) else value)
             for key, value in state.items()}
    if "after" in state:
        state["after"] = "0"
    forged = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
    flipped = tag[:-1] + ("A" if tag[-1] != "A" else "B")
    return [f"{forged}.{tag}", f"{inner}.{flipped}", inner, forged, ""]


def _deep_json_token(depth: int = 5000) -> str:
    """A base64 token holding JSON nested ``depth`` deep: json.loads of it would recurse too far."""
    text = "[" * depth + "]" * depth
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_thread_listing_tokens_open_only_in_the_listing_that_issued_them(memory, tenant):
    other = tenant + "x"
    for owner in (tenant, other):
        for _ in range(3):
            memory.create_thread(owner, "user_1")
    token = memory.list_threads(tenant, "user_1", limit=1).continuation
    assert token and len(memory.list_threads(tenant, "user_1", continuation=token).items) == 2
    # Tenant B cannot page on with tenant A's token, though it lists the same resource name.
    with pytest.raises(InvalidInput):
        memory.list_threads(other, "user_1", continuation=token)
    with pytest.raises(InvalidInput):
        memory.list_threads(tenant, "user_2", continuation=token)
    for bad in [*_tampered(token), _deep_json_token(), _deep_json_token() + ".AAAAAAAAAAAAAAAAAAAAAA"]:
        with pytest.raises(InvalidInput):
            memory.list_threads(tenant, "user_1", continuation=bad)


def test_history_tokens_open_only_for_the_thread_that_issued_them(memory, tenant):
    other = tenant + "x"
    thread_x = memory.create_thread(tenant, "user_1", thread_id="x").thread_id
    thread_y = memory.create_thread(tenant, "user_1", thread_id="y").thread_id
    memory.create_thread(other, "user_1", thread_id="x")
    for owner, thread in ((tenant, thread_x), (tenant, thread_y), (other, thread_x)):
        memory.add_messages(owner, thread, _say(5))
    for kwargs in ({"limit": 2}, {"last": 2}, {"limit": 2, "order": "desc"}):
        token = memory.history(tenant, thread_x, **kwargs).continuation
        assert token and memory.history(tenant, thread_x, continuation=token).items
        with pytest.raises(InvalidInput):
            memory.history(tenant, thread_y, continuation=token)  # another thread of the tenant
        with pytest.raises(InvalidInput):
            memory.history(other, thread_x, continuation=token)  # the same thread id of another tenant
        for bad in [*_tampered(token), _deep_json_token(), _deep_json_token() + ".AAAAAAAAAAAAAAAAAAAAAA"]:
            with pytest.raises(InvalidInput):
                memory.history(tenant, thread_x, continuation=bad)


# --------------------------------------------------------------------------- commands and facade


def _envelope(op: str, tenant: str, payload: dict, key: str | None = None) -> str:
    return json.dumps({"version": 1, "op": op, "tenant": tenant, "idempotency_key": key or uuid.uuid4().hex,
                       "payload": payload})


def test_redelivered_commands_are_applied_once(stores, memory, tenant):
    processor = CommandProcessor(stores)
    create = _envelope("memory.create_thread", tenant, {"resource": "user_1", "title": "queued"})
    assert processor.process(create).status == "applied"
    assert processor.process(create, dequeue_count=2).status == "duplicate"
    threads = memory.list_threads(tenant, "user_1").items
    assert len(threads) == 1 and threads[0].title == "queued"
    thread = threads[0].thread_id

    add = _envelope("memory.add_messages", tenant, {"thread_id": thread, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}]})
    assert processor.process(add).status == "applied"
    assert processor.process(add, dequeue_count=2).status == "duplicate"
    history = memory.history(tenant, thread).items
    assert [m.seq for m in history] == [1, 2] and history[1].content == [{"type": "text", "text": "hello"}]

    edit = _envelope("memory.update_message", tenant, {"thread_id": thread, "message_id": history[0].message_id,
                                                       "content": "hi there"})
    assert processor.process(edit).status == "applied"
    assert processor.process(edit).status == "duplicate"  # its marker was written with the edit
    assert memory.get_message(tenant, thread, history[0].message_id).content == "hi there"
    rename = _envelope("memory.update_thread", tenant, {"thread_id": thread, "metadata": {"k": 1}})
    assert processor.process(rename).status == "applied"
    assert memory.get_thread(tenant, thread).metadata == {"k": 1} and memory.get_thread(tenant, thread).title == "queued"

    drop = _envelope("memory.delete_message", tenant, {"thread_id": thread, "message_id": history[1].message_id})
    assert processor.process(drop).status == "applied"
    assert processor.process(drop).status == "duplicate"
    assert memory.get_thread(tenant, thread).message_count == 1

    delete = _envelope("memory.delete_thread", tenant, {"thread_id": thread})
    assert processor.process(delete).status == "applied"
    assert processor.process(delete).status == "duplicate"
    # Only the markers of the create and of the delete stay, so that their redeliveries stay duplicates.
    assert len(_partition(stores, tenant, thread)) == 2
    assert all(rk.startswith("i|") for rk in _partition(stores, tenant, thread))
    assert processor.process(create, dequeue_count=3).status == "duplicate"
    assert memory.list_threads(tenant, "user_1").items == []
    # The id taken again, by a new thread: a late redelivery of the old delete leaves it alone.
    memory.create_thread(tenant, "user_1", thread_id=thread)
    assert processor.process(delete, dequeue_count=4).status == "duplicate"
    assert memory.get_thread(tenant, thread).message_count == 0


def test_rejected_commands_are_poisoned_with_their_reason(stores, memory, tenant):
    processor = CommandProcessor(stores)
    memory.create_thread(tenant, "user_1", thread_id="taken")
    taken = processor.process(_envelope("memory.create_thread", tenant, {"resource": "user_1", "thread_id": "taken"}))
    assert taken.status == "poisoned" and "AlreadyExists" in taken.detail
    bad_role = processor.process(_envelope("memory.add_messages", tenant, {
        "thread_id": "taken", "messages": [{"role": "robot", "content": "x"}]}))
    assert bad_role.status == "poisoned" and "role" in bad_role.detail
    assert memory.get_thread(tenant, "taken").message_count == 0


def test_storage_manager_facade(stores, tenant):
    storage = StorageManager(stores, tenant)
    thread = storage.memory.create_thread("user_123", title="via facade")
    storage.memory.add_message(thread.thread_id, "user", "hello")
    storage.memory.add_messages(thread.thread_id, [{"role": "assistant", "content": "hi"}])
    assert [m.content for m in storage.memory.history(thread.thread_id, last=10).items] == ["hello", "hi"]
    assert storage.memory.get_thread(thread.thread_id).message_count == 2
    assert "finish_deletions" not in dir(storage.memory)  # cross-tenant maintenance is not offered per tenant
    storage.memory.delete_thread(thread.thread_id)
    with pytest.raises(NotFound):
        storage.memory.get_thread(thread.thread_id)


# --------------------------------------------------------------------------- shared mechanics (issue #9)


def _raw_rows(stores, partition: str) -> list[Entity]:
    """A partition's rows but the change feed's outbox rows."""
    return [row for row in stores.table(names.TABLE_MEMORY).table.query_all(partition)
            if not row.row_key.startswith("~outbox|")]


def test_a_redelivered_older_edit_does_not_revert_a_newer_one(stores, memory, tenant):
    processor = CommandProcessor(stores)
    thread = memory.create_thread(tenant, "user_1", title="t").thread_id
    message = memory.add_message(tenant, thread, "user", "original")
    edit_a = _envelope("memory.update_message", tenant, {"thread_id": thread, "message_id": message.message_id,
                                                         "content": "A"}, key="k1")
    edit_b = _envelope("memory.update_message", tenant, {"thread_id": thread, "message_id": message.message_id,
                                                         "content": "B"}, key="k2")
    assert processor.process(edit_a).status == "applied"
    assert processor.process(edit_b).status == "applied"
    assert processor.process(edit_a, dequeue_count=2).status == "duplicate"
    assert memory.get_message(tenant, thread, message.message_id).content == "B"

    rename_a = _envelope("memory.update_thread", tenant, {"thread_id": thread, "title": "A"}, key="k3")
    rename_b = _envelope("memory.update_thread", tenant, {"thread_id": thread, "title": "B"}, key="k4")
    assert processor.process(rename_a).status == "applied"
    assert processor.process(rename_b).status == "applied"
    assert processor.process(rename_a, dequeue_count=2).status == "duplicate"
    assert memory.get_thread(tenant, thread).title == "B"


def test_every_keyed_write_puts_its_marker_in_the_batch_of_its_change(stores, memory, tenant, monkeypatch):
    thread = memory.create_thread(tenant, "user_1").thread_id
    first, second = memory.add_messages(tenant, thread, _say(2))
    batches: list[list[str]] = []
    real_batch = memory._table.batch

    def record(ops):
        batches.append([op.entity.row_key for op in ops])
        return real_batch(ops)

    monkeypatch.setattr(memory._table, "batch", record)
    memory.update_thread(tenant, thread, title="x", idempotency_key="u1")
    memory.update_message(tenant, thread, first.message_id, content="y", idempotency_key="u2")
    memory.delete_message(tenant, thread, second.message_id, idempotency_key="u3")
    memory.add_messages(tenant, thread, _say(1), idempotency_key="u4")
    monkeypatch.undo()
    assert len(batches) == 4
    for rows in batches:
        assert "thread" in rows and sum(rk.startswith("i|") for rk in rows) == 1, rows
    # A replay writes nothing and answers the first result.
    monkeypatch.setattr(memory._table, "batch", lambda ops: pytest.fail("a replay must not write"))
    assert memory.update_thread(tenant, thread, title="x", idempotency_key="u1").title == "x"
    memory.delete_message(tenant, thread, second.message_id, idempotency_key="u3")  # gone, but a replay: no 404
    assert memory.update_message_outcome(tenant, thread, first.message_id, content="y",
                                         idempotency_key="u2").replayed


def test_a_reused_key_with_another_request_is_refused(memory, tenant):
    created = memory.create_thread_outcome(tenant, "user_1", title="A", idempotency_key="c1")
    assert (created.replayed, created.status) == (False, 201)
    again = memory.create_thread_outcome(tenant, "user_1", title="A", idempotency_key="c1")
    assert (again.replayed, again.status, again.result.thread_id) == (True, 201, created.result.thread_id)
    with pytest.raises(IdempotencyKeyReused):
        memory.create_thread(tenant, "user_1", title="B", idempotency_key="c1")
    thread = created.result.thread_id
    memory.add_messages(tenant, thread, _say(2), idempotency_key="a1")
    with pytest.raises(IdempotencyKeyReused):
        memory.add_messages(tenant, thread, _say(2, prefix="other"), idempotency_key="a1")
    with pytest.raises(IdempotencyKeyReused):
        memory.update_thread(tenant, thread, title="x", idempotency_key="a1")
    assert memory.get_thread(tenant, thread).message_count == 2
    assert [t.title for t in memory.list_threads(tenant, "user_1").items] == ["A"]


def test_a_replay_after_the_target_was_deleted_is_not_a_server_error(memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    message = memory.add_message(tenant, thread, "user", "hi")
    edited = memory.update_message(tenant, thread, message.message_id, content="edited", idempotency_key="e1")
    memory.delete_message(tenant, thread, message.message_id)
    replayed = memory.update_message_outcome(tenant, thread, message.message_id, content="edited",
                                             idempotency_key="e1")
    assert replayed.replayed and replayed.result.content == "edited" and replayed.result.seq == edited.seq
    memory.delete_thread(tenant, thread)
    with pytest.raises(NotFound):
        memory.update_message(tenant, thread, message.message_id, content="edited", idempotency_key="e1")


def test_lost_races_that_never_end_are_busy_not_conflict(memory, tenant, monkeypatch):
    thread = memory.create_thread(tenant, "user_1").thread_id
    message = memory.add_message(tenant, thread, "user", "hi")
    def lose(*args, **kwargs):
        raise PreconditionFailed("someone else won")

    monkeypatch.setattr(memory._table, "batch", lose)
    monkeypatch.setattr(memory._table, "update", lose)
    with pytest.raises(Busy):
        memory.add_message(tenant, thread, "user", "again")
    with pytest.raises(Busy):
        memory.update_message(tenant, thread, message.message_id, content="x")
    with pytest.raises(Busy):
        memory.update_thread(tenant, thread, title="x")
    monkeypatch.undo()
    # A client's stale If-Match stays a 412, decided, never retried into a 503.
    with pytest.raises(PreconditionFailed):
        memory.update_thread(tenant, thread, title="x", if_match="0" * 32)
    assert memory.get_thread(tenant, thread).message_count == 1


def test_every_row_carries_fmt_and_rows_without_it_are_still_read(stores, memory, tenant, monkeypatch):
    thread = memory.create_thread(tenant, "user_1", idempotency_key="f1").thread_id
    memory.add_messages(tenant, thread, _say(2), idempotency_key="f2")
    rows = _raw_rows(stores, f"{tenant}|t|{thread}") + _raw_rows(stores, f"{tenant}|r|user_1")
    assert len(rows) == 6 and all(row.get("fmt") == 1 for row in rows), [(r.row_key, r.get("fmt")) for r in rows]

    # Rows of the earlier format: no fmt, the created key on the thread, an append marker with seqs.
    raw = stores.table(names.TABLE_MEMORY).table
    old = "legacy"
    pk = f"{tenant}|t|{old}"
    now = time.time()
    index_rk = f"{10**19 - int(now * 1e6):019d}|{old}|00000000"
    raw.insert(Entity(f"{tenant}|r|user_2", index_rk, {"thread_id": old, "created_at": now}))
    raw.insert(Entity(pk, "thread", {"resource": "user_2", "created_at": now, "updated_at": now,
                                     "message_count": 1, "last_seq": 1, "index_rk": index_rk}))
    raw.insert(Entity(pk, f"m|{10**12 - 2:012d}", {"role": "user", "text": "old", "message_id": "msg_000000000001_abcdef01",
                                                   "seq": 1, "created_at": now, "updated_at": now}))
    raw.insert(Entity(pk, marker_row("old-turn"), {"first_seq": 1, "last_seq": 1}))
    assert [m.content for m in memory.history(tenant, old).items] == ["old"]
    replay = memory.add_messages_outcome(tenant, old, _say(1), idempotency_key="old-turn")
    assert replay.replayed and [m.message_id for m in replay.result] == ["msg_000000000001_abcdef01"]
    assert [t.thread_id for t in memory.list_threads(tenant, "user_2").items] == [old]
    memory.delete_thread(tenant, old)
    assert _partition(stores, tenant, old) == []


def _interrupted_deletes(memory, tenant: str, count: int, monkeypatch) -> list[str]:
    threads = [memory.create_thread(tenant, "user_1").thread_id for _ in range(count)]
    for thread in threads:
        memory.add_message(tenant, thread, "user", "hi")
    _crash_after_marking(memory, monkeypatch)
    for thread in threads:
        with pytest.raises(Crash):
            memory.delete_thread(tenant, thread)
    monkeypatch.undo()
    return threads


def test_the_timer_keeps_finishing_deletions_while_they_remain_and_is_fair_across_tenants(stores, memory, tenant,
                                                                                        monkeypatch):
    busy = _interrupted_deletes(memory, tenant, 12, monkeypatch)
    other_tenant = tenant + "b"
    other = _interrupted_deletes(memory, other_tenant, 1, monkeypatch)
    later = time.time() + DELETION_GRACE_SECONDS + 5
    # One run of 11 records: the busy tenant's backlog takes its turn, the other tenant is served too.
    assert memory.finish_deletions(now=later, limit=11) == 11
    assert _partition(stores, other_tenant, other[0]) == []
    assert sum(bool(_partition(stores, tenant, t)) for t in busy) == 2
    # Without a limit the run keeps going while work remains.
    assert memory.finish_deletions(now=later) >= 2
    assert all(_partition(stores, tenant, t) == [] for t in busy) and _index(stores, tenant, "user_1") == []
    assert memory.finish_deletions(now=later) == 0


def test_deletion_records_of_the_earlier_layout_are_still_finished(stores, memory, tenant):
    thread = memory.create_thread(tenant, "user_1").thread_id
    memory.add_message(tenant, thread, "user", "hi")
    raw = stores.table(names.TABLE_MEMORY).table
    filed = time.time()
    record = f"{int(filed):012d}|{tenant}|{thread}|0badf00d"
    raw.insert(Entity("!deleting", record, {"tenant": tenant, "thread_id": thread}))
    row = raw.get(f"{tenant}|t|{thread}", "thread")
    raw.update(Entity(row.partition_key, row.row_key, {**row.properties, "deleting": True,
                                                       "deleting_record": record}), if_match=row.etag)
    with pytest.raises(NotFound):
        memory.get_thread(tenant, thread)
    assert memory.finish_deletions(now=filed + DELETION_GRACE_SECONDS + 5) >= 1
    assert _partition(stores, tenant, thread) == [] and _index(stores, tenant, "user_1") == []
    assert [e.row_key for e in raw.query_all("!deleting") if e.row_key == record] == []


def test_memory_errors_have_their_own_types_and_members(memory, tenant):
    thread = memory.create_thread(tenant, "user_1", thread_id="mine").thread_id
    with pytest.raises(ThreadAlreadyExists) as taken:
        memory.create_thread(tenant, "user_1", thread_id=thread)
    assert taken.value.thread_id == thread and taken.value.status == 409
    with pytest.raises(ThreadNotFound) as missing:
        memory.get_thread(tenant, "nope")
    assert missing.value.thread_id == "nope" and missing.value.title == "Thread not found"
    with pytest.raises(MessageNotFound) as gone:
        memory.get_message(tenant, thread, "msg_000000000001_00000000")
    assert (gone.value.thread_id, gone.value.message_id) == (thread, "msg_000000000001_00000000")


def test_concurrent_first_applications_of_one_request_apply_once(stores, memory, tenant):
    barrier = threading.Barrier(4)

    def create(_: int):
        barrier.wait()
        return memory.create_thread_outcome(tenant, "user_1", title="once", idempotency_key="race-create")

    with ThreadPoolExecutor(4) as pool:
        created = list(pool.map(create, range(4)))
    assert len({o.result.thread_id for o in created}) == 1 and sum(not o.replayed for o in created) == 1
    assert len(_index(stores, tenant, "user_1")) == 1  # the losers removed the index entries they wrote
    thread = created[0].result.thread_id

    barrier = threading.Barrier(4)

    def append(_: int):
        barrier.wait()
        return memory.add_messages_outcome(tenant, thread, _say(2), idempotency_key="race-append")

    with ThreadPoolExecutor(4) as pool:
        appended = list(pool.map(append, range(4)))
    assert {tuple(m.seq for m in o.result) for o in appended} == {(1, 2)}
    assert sum(not o.replayed for o in appended) == 1
    assert memory.get_thread(tenant, thread).message_count == 2


def test_a_delete_key_cannot_be_reused_to_delete_another_thread(memory, tenant):
    first = memory.create_thread(tenant, "user_1").thread_id
    second = memory.create_thread(tenant, "user_1").thread_id
    assert not memory.delete_thread_outcome(tenant, first, idempotency_key="d1").replayed
    assert memory.delete_thread_outcome(tenant, first, idempotency_key="d1").replayed
    with pytest.raises(IdempotencyKeyReused):
        memory.delete_thread(tenant, second, idempotency_key="d1")
    assert memory.get_thread(tenant, second).thread_id == second
    memory.delete_thread(tenant, second, idempotency_key="d2")
