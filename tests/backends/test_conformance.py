"""One conformance suite for the backend contract (shared.backends.base), run on every backend.

Each test runs three times: local (SQLite), azure (Azurite) and aws (moto server).
The tests know only the contract: a backend passes when it behaves exactly like
the contract says, whatever its storage does underneath.

Time-based waits appear only where the contract is time-based (visibility
timeouts, send delays), always as polls with a deadline.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from shared.backends import Backend, BlobStore, Entity, QueueMessage, QueueStore, TableOp, TableStore, create_backend
from shared.backends.base import (
    MAX_BATCH_OPERATIONS,
    MAX_BLOB_KEY_BYTES,
    MAX_ENTITY_BYTES,
    MAX_PROPERTY_BYTES,
    MAX_QUEUE_BODY_BYTES,
    MAX_RECEIVE_MESSAGES,
    MAX_SEND_DELAY,
    MAX_VISIBILITY_TIMEOUT,
    entity_size,
    property_size,
)
from shared.errors import AlreadyExists, InvalidInput, InvalidKey, NotFound, PreconditionFailed, TooLarge

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


def poll(fetch: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.1, what: str = "a result") -> T:
    """Call ``fetch`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def receive_one(queue: QueueStore, *, visibility_timeout: int = 30, timeout: float = 10.0) -> QueueMessage:
    messages = poll(
        lambda: queue.receive(max_messages=1, visibility_timeout=visibility_timeout), timeout=timeout, what="a message"
    )
    assert len(messages) == 1, f"receive(max_messages=1) returned {len(messages)} messages"
    return messages[0]


def assert_nothing_received_for(queue: QueueStore, seconds: float) -> None:
    """Keep receiving for ``seconds``; any message that shows up is a failure."""
    deadline = time.monotonic() + seconds
    while True:
        got = queue.receive(max_messages=MAX_RECEIVE_MESSAGES, visibility_timeout=1)
        assert got == [], f"expected no visible message, got {[(m.body, m.dequeue_count) for m in got]}"
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)


def wait_for_length(queue: QueueStore, expected: int, timeout: float = 10.0) -> None:
    seen: list[int] = []

    def matches() -> bool:
        seen.append(queue.approximate_length())
        return seen[-1] == expected

    deadline = time.monotonic() + timeout
    while not matches():
        if time.monotonic() > deadline:
            pytest.fail(f"approximate_length() never became {expected}; last values {seen[-5:]}")
        time.sleep(0.1)


def drain(queue: QueueStore, count: int, *, timeout: float = 15.0) -> list[QueueMessage]:
    """Receive (hidden for 60 s) until ``count`` distinct messages arrived; fail on a duplicate."""
    received: dict[str, QueueMessage] = {}
    deadline = time.monotonic() + timeout
    while len(received) < count:
        batch = queue.receive(max_messages=MAX_RECEIVE_MESSAGES, visibility_timeout=60)
        assert len(batch) <= MAX_RECEIVE_MESSAGES
        for message in batch:
            assert message.id not in received, f"message {message.id} delivered twice while it was hidden"
            received[message.id] = message
        if time.monotonic() > deadline:
            pytest.fail(f"received {len(received)} of {count} messages within {timeout:.0f} s")
        if not batch:
            time.sleep(0.1)
    return list(received.values())


def all_pages(fetch: Callable[[str | None], Any], limit: int, max_pages: int) -> tuple[list[Any], int]:
    """Follow continuation tokens from the first page to None; returns (items, pages)."""
    items: list[Any] = []
    token: str | None = None
    pages = 0
    while True:
        page = fetch(token)
        pages += 1
        assert len(page.items) <= limit, f"page {pages} has {len(page.items)} items; limit was {limit}"
        items.extend(page.items)
        token = page.continuation
        if token is None:
            return items, pages
        assert isinstance(token, str) and token, f"continuation must be None or a non-empty string, got {token!r}"
        assert pages < max_pages, f"still paging after {pages} pages (limit {limit}); continuation never ends"


def rks(entities: list[Entity]) -> list[str]:
    return [entity.row_key for entity in entities]


def snapshot(table: TableStore, pk: str, rk: str) -> tuple[dict[str, Any], str | None] | None:
    """An entity's properties and ETag, or None when absent."""
    try:
        entity = table.get(pk, rk)
    except NotFound:
        return None
    return dict(entity.properties), entity.etag


# --------------------------------------------------------------------------- backend and resources


def test_ping_answers(backend: Backend, backend_kind: str) -> None:
    assert backend.kind == backend_kind
    assert backend.ping() is None


def test_ensure_is_idempotent_and_keeps_data(backend: Backend, names) -> None:
    backend.ensure(containers=[names.container], tables=[names.table], queues=[names.queue])
    backend.blobs(names.container).put("k", b"v")
    backend.table(names.table).insert(Entity("p", "r", {"n": 1}))
    backend.queue(names.queue).send("m")

    backend.ensure(containers=[names.container], tables=[names.table], queues=[names.queue])
    backend.ensure(containers=[names.container], tables=[names.table], queues=[names.queue])

    assert backend.blobs(names.container).get("k").data == b"v"
    assert backend.table(names.table).get("p", "r")["n"] == 1
    assert receive_one(backend.queue(names.queue)).body == "m"


def test_second_backend_on_same_settings_sees_same_data(backend: Backend, settings, resources) -> None:
    backend.blobs(resources.container).put("shared", b"one")
    backend.table(resources.table).insert(Entity("p", "r", {"v": "x"}))
    backend.queue(resources.queue).send("hello")
    with create_backend(settings) as other:
        assert other.blobs(resources.container).get("shared").data == b"one"
        assert other.table(resources.table).get("p", "r")["v"] == "x"
        assert receive_one(other.queue(resources.queue)).body == "hello"


def test_resources_with_overlapping_names_are_isolated(backend: Backend) -> None:
    tag = uuid.uuid4().hex[:10]
    c1, c2 = f"c-{tag}", f"c-{tag}x"  # one name is a prefix of the other
    t1, t2 = f"t{tag}", f"t{tag}x"
    q1, q2 = f"q-{tag}", f"q-{tag}x"
    backend.ensure(containers=[c1, c2], tables=[t1, t2], queues=[q1, q2])

    backend.blobs(c1).put("k", b"one")
    backend.blobs(c2).put("k", b"two")
    backend.blobs(c2).put("only-in-2", b"x")
    assert backend.blobs(c1).get("k").data == b"one"
    assert [p.key for p in backend.blobs(c1).list_all()] == ["k"]
    assert [p.key for p in backend.blobs(c2).list_all()] == ["k", "only-in-2"]

    backend.table(t1).insert(Entity("p", "r", {"v": 1}))
    backend.table(t2).insert(Entity("p", "r", {"v": 2}))
    backend.table(t2).insert(Entity("p", "r2", {"v": 3}))
    assert backend.table(t1).get("p", "r")["v"] == 1
    assert rks(list(backend.table(t1).query_all("p"))) == ["r"]
    assert [(e.partition_key, e.row_key) for e in backend.table(t1).scan().items] == [("p", "r")]

    backend.queue(q2).send("for q2")
    assert backend.queue(q1).receive(max_messages=32) == []
    assert backend.queue(q1).peek() == []
    assert receive_one(backend.queue(q2)).body == "for q2"


@pytest.mark.parametrize("name", ["ab", "AB", "Abc", "a_b", "-ab", "1ab", "a b", "a" * 64, "", "ab\u00e9", "ab."])
def test_bad_resource_names_are_rejected(backend: Backend, name: str) -> None:
    with pytest.raises(InvalidKey):
        backend.blobs(name)
    with pytest.raises(InvalidKey):
        backend.table(name)
    with pytest.raises(InvalidKey):
        backend.queue(name)
    with pytest.raises(InvalidKey):
        backend.ensure(containers=[name])


def test_table_names_may_not_have_hyphens(backend: Backend) -> None:
    with pytest.raises(InvalidKey):
        backend.table("my-table")
    with pytest.raises(InvalidKey):
        backend.ensure(tables=["my-table"])


# --------------------------------------------------------------------------- blobs

ODD_KEYS = [
    "plain",
    "with space",
    "two  spaces and trailing space ",
    "caf\u00e9",
    "emoji-\U0001f600",
    "a/b/c",
    "100%",
    "%2F-looks-encoded",
    "a+b",
    "k=v",
    "q?x&y=1#frag",
    "~tilde!$'()*,;@[]{}^`|",
    "\u4e2d\u6587/\u00fcn\u00efc\u00f6d\u00e9/\u00dftra\u00dfe",
    "dir/file.tar.gz",
    ".hidden/x",
]


def test_blob_round_trips_odd_keys(blobs: BlobStore) -> None:
    failures = []
    for index, key in enumerate(ODD_KEYS):
        data = f"{index}:{key}".encode()
        try:
            written = blobs.put(key, data)
            assert written.key == key
            assert blobs.get(key).data == data
            assert blobs.get(key).properties.key == key
            head = blobs.head(key)
            assert (head.key, head.size, head.etag) == (key, len(data), written.etag)
            assert blobs.exists(key)
        except Exception as exc:  # collect every failing key, not just the first
            failures.append(f"{key!r}: {type(exc).__name__}: {exc}")
    assert failures == []
    listed = [p.key for p in blobs.list_all()]
    assert listed == sorted(ODD_KEYS), "list must return every key exactly as written, in key order"
    for key in ODD_KEYS:
        blobs.delete(key)
        assert not blobs.exists(key), f"{key!r} still exists after delete"
    assert blobs.list().items == []


def test_blob_key_at_max_length(blobs: BlobStore) -> None:
    ascii_key = "k" * MAX_BLOB_KEY_BYTES
    emoji_key = "\U0001f600" * (MAX_BLOB_KEY_BYTES // 4)
    for key in (ascii_key, "d/" + "x" * (MAX_BLOB_KEY_BYTES - 2), emoji_key):
        assert len(key.encode()) == MAX_BLOB_KEY_BYTES
        blobs.put(key, b"long")
        assert blobs.get(key).data == b"long"
    assert sorted(p.key for p in blobs.list_all()) == sorted([ascii_key, "d/" + "x" * (MAX_BLOB_KEY_BYTES - 2), emoji_key])


def test_blob_content_type_and_metadata_preserved(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 4
    metadata = {"author": "alice", "n": "1", "with_space": "a b-c_d.e/f=g"}
    written = blobs.put("doc", data, content_type="text/plain; charset=utf-8", metadata=metadata)
    assert written.size == len(data)
    blob = blobs.get("doc")
    assert blob.data == data
    assert blob.properties.content_type == "text/plain; charset=utf-8"
    assert blob.properties.metadata == metadata
    assert blob.properties.size == len(data)
    assert blob.properties.etag == written.etag
    head = blobs.head("doc")
    assert head.content_type == "text/plain; charset=utf-8"
    assert head.metadata == metadata
    if head.last_modified is not None:
        assert isinstance(head.last_modified, datetime)
        assert head.last_modified.tzinfo is not None, "last_modified must be timezone-aware"
        assert abs((datetime.now(timezone.utc) - head.last_modified).total_seconds()) < 300

    # A put replaces the whole blob: content type back to the default, metadata gone.
    blobs.put("doc", b"")
    head = blobs.head("doc")
    assert (head.size, head.content_type, head.metadata) == (0, "application/octet-stream", {})
    assert blobs.get("doc").data == b""


def test_blob_large_binary_round_trip(blobs: BlobStore) -> None:
    data = (bytes(range(256)) * 4096 * 3)[: 3 * 1024 * 1024 + 7]
    blobs.put("big", data)
    assert blobs.get("big").data == data
    assert blobs.head("big").size == len(data)


def test_blob_etag_changes_on_every_write(blobs: BlobStore) -> None:
    etags = [blobs.put("k", body).etag for body in (b"one", b"two", b"three", b"", b"one")]
    assert all(isinstance(e, str) and e for e in etags)
    for before, after in zip(etags, etags[1:]):
        assert before != after, f"the ETag must change when the content changes: {etags}"
    assert blobs.head("k").etag == etags[-1]
    assert blobs.get("k").properties.etag == etags[-1]
    # Rewriting identical bytes may keep the ETag (S3 digests content), but it must
    # still be the blob's current ETag, good for the next conditional write.
    same = blobs.put("k", b"one").etag
    assert blobs.head("k").etag == same
    blobs.put("k", b"next", if_match=same)
    with pytest.raises(PreconditionFailed):
        blobs.put("k", b"stale", if_match=same)


def test_blob_conditional_put(blobs: BlobStore) -> None:
    first = blobs.put("k", b"v1")
    second = blobs.put("k", b"v2", if_match=first.etag)
    assert blobs.get("k").data == b"v2"
    assert second.etag != first.etag

    with pytest.raises(PreconditionFailed):
        blobs.put("k", b"stale", if_match=first.etag)
    assert blobs.get("k").data == b"v2"
    assert blobs.head("k").etag == second.etag

    with pytest.raises(NotFound):
        blobs.put("missing", b"x", if_match=first.etag)
    assert not blobs.exists("missing")

    with pytest.raises(AlreadyExists):
        blobs.put("k", b"create-only", if_none_match=True)
    assert blobs.get("k").data == b"v2"

    created = blobs.put("fresh", b"new", if_none_match=True)
    assert blobs.get("fresh").data == b"new"
    assert blobs.head("fresh").etag == created.etag

    with pytest.raises(InvalidInput):
        blobs.put("k", b"x", if_match=second.etag, if_none_match=True)


def test_blob_missing_and_delete(blobs: BlobStore) -> None:
    with pytest.raises(NotFound):
        blobs.get("nope")
    with pytest.raises(NotFound):
        blobs.head("nope")
    with pytest.raises(NotFound):
        blobs.delete("nope")
    assert not blobs.exists("nope")

    blobs.put("k", b"v")
    blobs.delete("k")
    assert not blobs.exists("k")
    with pytest.raises(NotFound):
        blobs.get("k")
    with pytest.raises(NotFound):
        blobs.delete("k")


def test_blob_conditional_delete(blobs: BlobStore) -> None:
    old = blobs.put("k", b"v1").etag
    current = blobs.put("k", b"v2").etag
    with pytest.raises(PreconditionFailed):
        blobs.delete("k", if_match=old)
    assert blobs.get("k").data == b"v2"
    blobs.delete("k", if_match=current)
    assert not blobs.exists("k")
    with pytest.raises(NotFound):
        blobs.delete("k", if_match=current)


def test_blob_list_prefix_order_and_paging(blobs: BlobStore) -> None:
    inside = ["p/5", "p/1", "p/3", "p/2", "p/4"]
    outside = ["p", "p0", "o/x", "q/x", "P/1"]
    for key in inside + outside:
        blobs.put(key, key.encode())

    items, pages = all_pages(lambda token: blobs.list("p/", limit=2, continuation=token), limit=2, max_pages=10)
    assert [p.key for p in items] == sorted(inside)
    assert pages >= 3, "5 blobs with limit=2 cannot fit in fewer than 3 pages"
    assert [p.size for p in items] == [3] * 5

    assert [p.key for p in blobs.list_all()] == sorted(inside + outside)
    assert [p.key for p in blobs.list_all("p")] == sorted(["p", "p0", *inside])
    empty = blobs.list("zzz")
    assert (empty.items, empty.continuation) == ([], None)


def test_blob_list_reports_key_etag_and_size(blobs: BlobStore) -> None:
    blobs.put("l/a", b"alpha", content_type="text/plain", metadata={"who": "a"})
    blobs.put("l/b", b"")
    blobs.put("l/a", b"alpha2", content_type="text/csv", metadata={"who": "a2"})  # listed after a rewrite
    listed = blobs.list("l/").items
    assert [p.key for p in listed] == ["l/a", "l/b"]
    for item in listed:
        head = blobs.head(item.key)
        assert (item.key, item.etag, item.size) == (head.key, head.etag, head.size)
        # The contract: listings carry no content type or metadata on any backend (use head).
        assert (item.content_type, item.metadata) == ("", {})
        if item.last_modified is not None:
            assert item.last_modified.tzinfo is not None
    # A listed ETag is good for a conditional delete.
    blobs.delete("l/a", if_match=listed[0].etag)
    assert not blobs.exists("l/a")


def test_blob_list_unicode_key_order(blobs: BlobStore) -> None:
    keys = ["u/a", "u/B", "u/z", "u/\u00e9", "u/\u4e2d", "u/\U0001f600", "u/a b", "u/a-b", "u/a.b", "u/a/b"]
    for key in keys:
        blobs.put(key, b"")
    assert [p.key for p in blobs.list_all("u/")] == sorted(keys)  # code point order (= UTF-8 byte order)
    assert [p.key for p in blobs.list_all("u/\u00e9")] == ["u/\u00e9"]


def test_blob_bad_continuation_is_invalid_input(blobs: BlobStore) -> None:
    blobs.put("a", b"")
    with pytest.raises(InvalidInput):
        blobs.list(continuation="not a token!")


BAD_BLOB_KEYS = [
    "",
    "..",
    ".",
    "a/../b",
    "a/./b",
    "a//b",
    "/a",
    "a/",
    "dot.",
    "a\x00b",
    "a\nb",
    "tab\there",
    "del\x7f",
    "a\\b",
    "x" * (MAX_BLOB_KEY_BYTES + 1),
    "\u00e9" * (MAX_BLOB_KEY_BYTES // 2 + 1),
    "lone\ud800surrogate",
]


@pytest.mark.parametrize("key", BAD_BLOB_KEYS, ids=lambda k: repr(k)[:24])
def test_blob_invalid_keys_rejected(blobs: BlobStore, key: str) -> None:
    for call in (
        lambda: blobs.put(key, b"x"),
        lambda: blobs.get(key),
        lambda: blobs.head(key),
        lambda: blobs.delete(key),
        lambda: blobs.exists(key),
    ):
        with pytest.raises(InvalidKey):
            call()
    assert blobs.list().items == []


def test_blob_invalid_arguments(blobs: BlobStore) -> None:
    for bad in (
        lambda: blobs.put("k", "text, not bytes"),  # type: ignore[arg-type]
        lambda: blobs.put("k", b"x", content_type=""),
        lambda: blobs.put("k", b"x", metadata={"Upper": "x"}),
        lambda: blobs.put("k", b"x", metadata={"ok": "caf\u00e9"}),
        lambda: blobs.put("k", b"x", metadata={"ok": "line\nbreak"}),
        lambda: blobs.list(limit=0),
        lambda: blobs.list(limit=1001),
    ):
        with pytest.raises(InvalidInput):
            bad()
    with pytest.raises(TooLarge):
        blobs.put("k", b"x", metadata={"big": "v" * 2100})
    assert not blobs.exists("k")


# --------------------------------------------------------------------------- tables: single entities


def test_table_insert_get(table: TableStore) -> None:
    etag = table.insert(Entity("p", "r", {"name": "alice", "n": 1}))
    assert isinstance(etag, str) and etag
    entity = table.get("p", "r")
    assert (entity.partition_key, entity.row_key) == ("p", "r")
    assert entity.properties == {"name": "alice", "n": 1}
    assert entity.etag == etag
    assert entity["name"] == "alice"


def test_table_insert_existing_is_already_exists(table: TableStore) -> None:
    etag = table.insert(Entity("p", "r", {"v": 1}))
    with pytest.raises(AlreadyExists):
        table.insert(Entity("p", "r", {"v": 2}))
    assert snapshot(table, "p", "r") == ({"v": 1}, etag)


def test_table_upsert_creates_and_replaces_whole_entity(table: TableStore) -> None:
    e1 = table.upsert(Entity("p", "r", {"a": 1, "b": "x"}))
    assert table.get("p", "r").properties == {"a": 1, "b": "x"}
    e2 = table.upsert(Entity("p", "r", {"c": True}))
    assert e2 != e1
    assert snapshot(table, "p", "r") == ({"c": True}, e2), "upsert replaces; it does not merge"


def test_table_update(table: TableStore) -> None:
    e1 = table.insert(Entity("p", "r", {"a": 1, "b": "x"}))
    e2 = table.update(Entity("p", "r", {"a": 2}))
    assert e2 != e1
    assert snapshot(table, "p", "r") == ({"a": 2}, e2), "update replaces; it does not merge"

    e3 = table.update(Entity("p", "r", {"a": 3}), if_match=e2)
    assert e3 not in (e1, e2)
    assert table.get("p", "r")["a"] == 3

    with pytest.raises(PreconditionFailed):
        table.update(Entity("p", "r", {"a": 99}), if_match=e2)
    assert snapshot(table, "p", "r") == ({"a": 3}, e3)

    with pytest.raises(NotFound):
        table.update(Entity("p", "missing", {"a": 1}))
    with pytest.raises(NotFound):
        table.update(Entity("p", "missing", {"a": 1}), if_match=e3)
    assert snapshot(table, "p", "missing") is None, "a failed update must not create the entity"


def test_table_delete(table: TableStore) -> None:
    with pytest.raises(NotFound):
        table.get("p", "r")
    with pytest.raises(NotFound):
        table.delete("p", "r")

    old = table.insert(Entity("p", "r", {"v": 1}))
    current = table.update(Entity("p", "r", {"v": 2}))
    with pytest.raises(PreconditionFailed):
        table.delete("p", "r", if_match=old)
    assert snapshot(table, "p", "r") == ({"v": 2}, current)

    table.delete("p", "r", if_match=current)
    assert snapshot(table, "p", "r") is None
    with pytest.raises(NotFound):
        table.delete("p", "r", if_match=current)

    table.insert(Entity("p", "r2"))
    table.delete("p", "r2")
    assert snapshot(table, "p", "r2") is None
    # A deleted key can be inserted again.
    table.insert(Entity("p", "r2", {"again": True}))
    assert table.get("p", "r2")["again"] is True


def test_table_entity_without_properties(table: TableStore) -> None:
    etag = table.insert(Entity("p", "empty"))
    assert snapshot(table, "p", "empty") == ({}, etag)
    assert table.query("p").items[0].properties == {}


ODD_TABLE_KEYS = [
    "it's",
    "''",
    "100%",
    "a+b",
    "a b",
    "k=v&x=y",
    "caf\u00e9",
    "\U0001f600 emoji",
    "\u4e2d\u6587",
    "~!@$^*()[]{}|;:,.<>\"`",
    "-",
    "0",
]


def test_table_odd_keys_round_trip(table: TableStore) -> None:
    failures = []
    for index, key in enumerate(ODD_TABLE_KEYS):
        try:
            etag = table.insert(Entity(key, key, {"i": index}))
            got = table.get(key, key)
            assert (got.partition_key, got.row_key, got["i"], got.etag) == (key, key, index, etag)
            assert [(e.partition_key, e.row_key) for e in table.query(key).items] == [(key, key)]
            assert rks(table.query(key, prefix=key).items) == [key]
            assert rks(table.query(key, start=key, end=key + "~").items) == [key]
            etag = table.update(Entity(key, key, {"i": -index}), if_match=etag)
            table.delete(key, key, if_match=etag)
            assert snapshot(table, key, key) is None
        except Exception as exc:  # report every failing key
            failures.append(f"{key!r}: {type(exc).__name__}: {exc}")
    assert failures == []


def test_table_key_at_max_length(table: TableStore) -> None:
    pk = "p" * 512  # 1 KiB as UTF-16
    rk = "\u00e9" * 512  # 1 KiB as UTF-8 and as UTF-16
    table.insert(Entity(pk, rk, {"v": 1}))
    assert table.get(pk, rk)["v"] == 1
    assert rks(table.query(pk).items) == [rk]


ALL_TYPES: dict[str, Any] = {
    "s": "h\u00e9llo w\u00f6rld \U0001f600 \u4e2d\u6587",
    "s_empty": "",
    "s_number": "123",
    "s_bool": "true",
    "s_space": "  padded \t\n ",
    "s_json": '{"a": [1, 2]}',
    "i_zero": 0,
    "i_neg": -1,
    "i_one": 1,
    "i_2_31": 2**31,
    "i_2_53_plus_1": 2**53 + 1,
    "i_max": 2**63 - 1,
    "i_min": -(2**63),
    "f_one": 1.0,
    "f_zero": 0.0,
    "f_tenth": 0.1,
    "f_huge": -2.5e300,
    "f_tiny": 1e-300,
    "f_third": 1 / 3,
    "t": True,
    "f": False,
    "b_two": b"\x00\xff",
    "b_empty": b"",
    "b_all": bytes(range(256)),
    "b_text": b"true",
}


def assert_same_typed(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    assert set(actual) == set(expected), f"{where}: property names differ: {set(actual) ^ set(expected)}"
    wrong = {
        name: (expected[name], actual[name])
        for name in expected
        if type(actual[name]) is not type(expected[name]) or actual[name] != expected[name]
    }
    assert wrong == {}, f"{where}: (expected, got) differ in value or type"


def test_table_every_type_round_trips_exactly(table: TableStore) -> None:
    etag = table.insert(Entity("types", "r", {**ALL_TYPES, "gone": None}))
    got = table.get("types", "r")
    assert got.etag == etag
    assert "gone" not in got.properties, "None means no such property"
    assert_same_typed(got.properties, ALL_TYPES, "get")

    [queried] = table.query("types").items
    assert_same_typed(queried.properties, ALL_TYPES, "query")
    assert queried.etag == etag
    [scanned] = table.scan().items
    assert_same_typed(scanned.properties, ALL_TYPES, "scan")

    table.upsert(Entity("types", "r2", dict(ALL_TYPES)))
    assert_same_typed(table.get("types", "r2").properties, ALL_TYPES, "upsert")
    table.batch([TableOp.insert(Entity("types", "r3", dict(ALL_TYPES)))])
    assert_same_typed(table.get("types", "r3").properties, ALL_TYPES, "batch insert")


def test_table_string_values_with_control_characters(table: TableStore) -> None:
    value = "nul\x00 bell\x07 esc\x1b del\x7f c1\x85 \ufffe\uffff end"
    table.insert(Entity("p", "r", {"s": value}))
    assert table.get("p", "r")["s"] == value


def test_table_none_removes_property_on_update(table: TableStore) -> None:
    table.insert(Entity("p", "r", {"a": 1, "b": 2}))
    table.update(Entity("p", "r", {"a": 1, "b": None}))
    assert table.get("p", "r").properties == {"a": 1}


def test_table_largest_values_are_accepted(table: TableStore) -> None:
    biggest_bytes = bytes(range(256)) * (MAX_PROPERTY_BYTES // 256)
    biggest_cjk = "\u4e2d" * (MAX_PROPERTY_BYTES // 3)  # just under 64 KiB as UTF-8 (the larger encoding here)
    assert property_size(biggest_cjk) == MAX_PROPERTY_BYTES - 1
    table.insert(Entity("p", "bytes", {"v": biggest_bytes}))
    table.insert(Entity("p", "cjk", {"v": biggest_cjk}))
    assert table.get("p", "bytes")["v"] == biggest_bytes
    assert table.get("p", "cjk")["v"] == biggest_cjk

    # An entity just under the entity limit, with the longest keys.
    props: dict[str, Any] = {f"b{i}": bytes([i]) * MAX_PROPERTY_BYTES for i in range(6)}
    props["rest"] = b"r" * (MAX_ENTITY_BYTES - entity_size(props) - 1000)
    assert MAX_ENTITY_BYTES - 1000 <= entity_size(props) <= MAX_ENTITY_BYTES
    pk, rk = "P" * 512, "R" * 512
    table.insert(Entity(pk, rk, props))
    assert table.get(pk, rk).properties == props


BAD_TABLE_KEYS = [
    "",
    "a/b",
    "a#b",
    "a?b",
    "a\\b",
    "a\x00b",
    "line\nbreak",
    "del\x7f",
    "x" * 513,  # over 1 KiB as UTF-16
    "\u4e2d" * 342,  # over 1 KiB as UTF-8
    "lone\udc00",
]


@pytest.mark.parametrize("key", BAD_TABLE_KEYS, ids=lambda k: repr(k)[:24])
def test_table_invalid_keys_rejected(table: TableStore, key: str) -> None:
    for call in (
        lambda: table.get(key, "r"),
        lambda: table.get("p", key),
        lambda: table.insert(Entity(key, "r")),
        lambda: table.insert(Entity("p", key)),
        lambda: table.upsert(Entity("p", key)),
        lambda: table.update(Entity("p", key)),
        lambda: table.delete("p", key),
        lambda: table.query(key),
        lambda: table.batch([TableOp.insert(Entity("p", key))]),
        lambda: table.batch([TableOp.delete("p", key)]),
    ):
        with pytest.raises(InvalidKey):
            call()
    if key:
        with pytest.raises(InvalidKey):
            table.query("p", prefix=key)
        with pytest.raises(InvalidKey):
            table.query("p", start=key)
    assert table.scan().items == []


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "a-b", "a b", "\u00e9", "a.b", "PartitionKey", "RowKey", "Timestamp", "etag", "ETag", "pk", "RK",
     "odata", "a" * 101],
)  # fmt: skip
def test_table_bad_property_names_rejected(table: TableStore, name: str) -> None:
    with pytest.raises(InvalidInput):
        table.insert(Entity("p", "r", {name: 1}))
    with pytest.raises(InvalidInput):
        table.upsert(Entity("p", "r", {name: "x"}))
    assert snapshot(table, "p", "r") is None


@pytest.mark.parametrize(
    "value",
    [{}, [1], (1,), {1}, datetime(2024, 1, 1, tzinfo=timezone.utc), Decimal("1.5"), 1j, object(), bytearray(b"x"),
     2**63, -(2**63) - 1, math.nan, math.inf, -math.inf],
    ids=lambda v: type(v).__name__ + ("" if not isinstance(v, (int, float)) else f"({v})"),
)  # fmt: skip
def test_table_unsupported_values_rejected(table: TableStore, value: Any) -> None:
    with pytest.raises(InvalidInput):
        table.insert(Entity("p", "r", {"v": value}))
    assert snapshot(table, "p", "r") is None


def test_table_size_limits(table: TableStore) -> None:
    too_big = [
        {"v": b"x" * (MAX_PROPERTY_BYTES + 1)},
        {"v": "x" * (MAX_PROPERTY_BYTES // 2 + 1)},  # ASCII counts as UTF-16
        {"v": "\u4e2d" * (MAX_PROPERTY_BYTES // 3 + 1)},  # CJK counts as UTF-8
        {f"b{i}": b"x" * 60_000 for i in range(7)},  # 420,000 bytes in all
    ]
    for props in too_big:
        with pytest.raises(TooLarge):
            table.insert(Entity("p", "r", props))
        with pytest.raises(TooLarge):
            table.upsert(Entity("p", "r", props))
        with pytest.raises(TooLarge):
            table.batch([TableOp.insert(Entity("p", "r", props))])
    with pytest.raises(InvalidInput):
        table.insert(Entity("p", "r", {f"p{i}": i for i in range(201)}))
    with pytest.raises(InvalidInput):
        table.insert(Entity("p", "r", [("a", 1)]))  # type: ignore[arg-type]
    assert snapshot(table, "p", "r") is None


# --------------------------------------------------------------------------- tables: queries


def test_query_prefix_and_ranges(table: TableStore) -> None:
    keys = ["a", "ab", "abc", "abd", "ac", "b", "ba", "c"]
    for key in reversed(keys):
        table.insert(Entity("p", key, {"k": key}))
    for key in keys:
        table.insert(Entity("other", key))  # same row keys in another partition
    table.insert(Entity("p2", "ab"))

    def q(**kwargs: Any) -> list[str]:
        return rks(table.query("p", **kwargs).items)

    assert q() == keys
    assert q(prefix="ab") == ["ab", "abc", "abd"]
    assert q(prefix="") == keys
    assert q(prefix="zz") == []
    assert q(start="ab", end="b") == ["ab", "abc", "abd", "ac"], "end is exclusive"
    assert q(start="abc") == ["abc", "abd", "ac", "b", "ba", "c"], "start is inclusive"
    assert q(start="abca") == ["abd", "ac", "b", "ba", "c"]
    assert q(end="ab") == ["a"]
    assert q(start="b", end="b") == []
    assert q(start="c", end="a") == []
    assert all(e.partition_key == "p" and e["k"] == e.row_key for e in table.query("p").items)
    assert all(e.etag for e in table.query("p").items), "queried entities carry their ETag"
    empty = table.query("nobody")
    assert (empty.items, empty.continuation) == ([], None)
    with pytest.raises(InvalidInput):
        table.query("p", prefix="a", start="a")


def test_query_order_is_ordinal_with_unicode(table: TableStore) -> None:
    keys = ["a", "B", "b", "Z", "aa", "a b", "a-", "a.", "a_", "a~", "it's", "0", "10", "9", "\u00e9", "\u00ff",
            "\u0100", "\u4e2d", "\u4e2d\u6587", "\U0001f600", "e\u0301"]  # fmt: skip
    for key in keys:
        table.insert(Entity("p", key))
    assert rks(table.query("p").items) == sorted(keys)
    assert rks(table.query("p", prefix="a").items) == sorted(k for k in keys if k.startswith("a"))
    assert rks(table.query("p", prefix="it's").items) == ["it's"]
    assert rks(table.query("p", prefix="\u4e2d").items) == ["\u4e2d", "\u4e2d\u6587"]
    assert rks(table.query("p", start="\u00e9", end="\u4e2d\u6587").items) == ["\u00e9", "\u00ff", "\u0100", "\u4e2d"]


def test_query_order_is_by_code_point_beyond_the_bmp(table: TableStore) -> None:
    """Code point order, not UTF-16 order: U+E000..U+FFFF sort below supplementary characters."""
    keys = ["x\ue000", "x\uff01", "x\uffff", "x\U00010000", "x\U0001f600", "x\U0010fffd"]
    for key in keys:
        table.insert(Entity("p", key))
    assert rks(table.query("p").items) == keys  # already in code point order
    assert rks(table.query("p", prefix="x").items) == keys
    assert rks(table.query("p", start="x\uff01", end="x\U0001f600").items) == ["x\uff01", "x\uffff", "x\U00010000"]


def insert_many(table: TableStore, partition: str, count: int) -> list[str]:
    keys = [f"{i:05d}" for i in range(count)]
    for start in range(0, count, 100):
        chunk = keys[start : start + 100]
        etags = table.batch([TableOp.insert(Entity(partition, key, {"i": int(key)})) for key in chunk])
        assert len(etags) == len(chunk) and all(etags)
    return keys


@pytest.mark.slow
def test_query_paging_over_more_than_1000_entities(table: TableStore) -> None:
    keys = insert_many(table, "big", 1050)
    table.insert(Entity("big0", "00000"))  # a neighbouring partition must not leak in

    for limit in (1000, 100):
        items, pages = all_pages(
            lambda token, limit=limit: table.query("big", limit=limit, continuation=token),
            limit=limit,
            max_pages=2 * math.ceil(len(keys) / limit) + 2,
        )
        assert rks(items) == keys, f"limit={limit}: wrong, duplicated or missing row keys"
        assert pages >= math.ceil(len(keys) / limit)
        assert all(e.partition_key == "big" and e["i"] == int(e.row_key) for e in items)

    assert rks(list(table.query_all("big"))) == keys
    # Paging within a range.
    ranged, _ = all_pages(
        lambda token: table.query("big", start="00010", end="01040", limit=250, continuation=token), 250, 20
    )
    assert rks(ranged) == keys[10:1040]
    prefixed, _ = all_pages(lambda token: table.query("big", prefix="00", limit=300, continuation=token), 300, 20)
    assert rks(prefixed) == keys[:1000]


def test_query_bad_continuation_is_invalid_input(table: TableStore) -> None:
    table.insert(Entity("p", "r"))
    with pytest.raises(InvalidInput):
        table.query("p", continuation="not a token!")
    with pytest.raises(InvalidInput):
        table.query("p", limit=0)
    with pytest.raises(InvalidInput):
        table.query("p", limit=1001)


def test_scan_covers_every_partition(table: TableStore) -> None:
    expected = set()
    for pk in ("p1", "p2", "p3 \u00e9"):
        for rk in ("a", "b", "c"):
            table.insert(Entity(pk, rk, {"part": pk}))
            expected.add((pk, rk))
    items, _ = all_pages(lambda token: table.scan(limit=2, continuation=token), limit=2, max_pages=20)
    seen = [(e.partition_key, e.row_key) for e in items]
    assert len(seen) == len(set(seen)), "scan returned an entity twice"
    assert set(seen) == expected
    assert all(e["part"] == e.partition_key and e.etag for e in items)
    assert {(e.partition_key, e.row_key) for e in table.scan().items} == expected


# --------------------------------------------------------------------------- tables: batches


def _stale_etag(table: TableStore, pk: str, rk: str) -> str:
    stale = table.insert(Entity(pk, rk, {"v": "original"}))
    table.upsert(Entity(pk, rk, {"v": "current"}))
    return stale


FAILING_THIRD_OPS: dict[str, tuple[Callable[[str], TableOp], type[Exception]]] = {
    # Each builder takes a stale ETag of entity "x".
    "insert-existing": (lambda stale: TableOp.insert(Entity("p", "x", {"v": "clobbered"})), AlreadyExists),
    "update-missing": (lambda stale: TableOp.update(Entity("p", "missing", {"v": 1})), NotFound),
    "update-stale": (lambda stale: TableOp.update(Entity("p", "x", {"v": "clobbered"}), if_match=stale), PreconditionFailed),
    "delete-missing": (lambda stale: TableOp.delete("p", "missing"), NotFound),
    "delete-stale": (lambda stale: TableOp.delete("p", "x", if_match=stale), PreconditionFailed),
}


@pytest.mark.parametrize("case", list(FAILING_THIRD_OPS))
def test_batch_is_all_or_nothing(table: TableStore, case: str) -> None:
    stale = _stale_etag(table, "p", "x")
    table.insert(Entity("p", "kept", {"v": 1}))
    table.insert(Entity("p", "doomed", {"v": 1}))
    before = {rk: snapshot(table, "p", rk) for rk in ("x", "kept", "doomed", "new", "missing")}

    make_op, error = FAILING_THIRD_OPS[case]
    with pytest.raises(error):
        table.batch([
            TableOp.insert(Entity("p", "new", {"v": 1})),
            TableOp.update(Entity("p", "kept", {"v": 2})),
            make_op(stale),
        ])
    after = {rk: snapshot(table, "p", rk) for rk in before}
    assert after == before, "a failed batch must leave every entity as it was"

    # The failing operation first, a delete after it: the delete is not applied either.
    with pytest.raises(error):
        table.batch([make_op(stale), TableOp.delete("p", "doomed")])
    assert snapshot(table, "p", "doomed") == before["doomed"]

    # Without the failing operation the same writes go through.
    table.batch([TableOp.insert(Entity("p", "new", {"v": 1})), TableOp.update(Entity("p", "kept", {"v": 2}))])
    assert table.get("p", "new")["v"] == 1 and table.get("p", "kept")["v"] == 2


def test_batch_rules_are_invalid_input(table: TableStore) -> None:
    with pytest.raises(InvalidInput):
        table.batch([TableOp.insert(Entity("p", "a")), TableOp.insert(Entity("q", "b"))])
    with pytest.raises(InvalidInput):
        table.batch([TableOp.insert(Entity("p", "a")), TableOp.upsert(Entity("p", "a"))])
    with pytest.raises(InvalidInput):
        table.batch([TableOp.insert(Entity("p", "a")), TableOp.delete("p", "a")])
    with pytest.raises(InvalidInput):
        table.batch([TableOp.insert(Entity("p", f"r{i:03d}")) for i in range(MAX_BATCH_OPERATIONS + 1)])
    with pytest.raises(TooLarge):  # over 4 MiB in all
        table.batch([TableOp.insert(Entity("p", f"r{i:03d}", {"v": b"x" * MAX_PROPERTY_BYTES})) for i in range(70)])
    assert table.scan().items == [], "a rejected batch writes nothing"
    assert table.batch([]) == []


def test_batch_of_100_operations(table: TableStore) -> None:
    etags = table.batch([TableOp.insert(Entity("p", f"r{i:03d}", {"i": i})) for i in range(MAX_BATCH_OPERATIONS)])
    assert len(etags) == MAX_BATCH_OPERATIONS and all(isinstance(e, str) and e for e in etags)
    entities = list(table.query_all("p"))
    assert [e["i"] for e in entities] == list(range(MAX_BATCH_OPERATIONS))
    assert [e.etag for e in entities] == etags


def test_batch_near_the_size_limit_is_accepted(table: TableStore) -> None:
    # 44 x 64 KiB binary = 3.84 MB once base64-encoded on the wire: just under the limit.
    ops = [TableOp.upsert(Entity("p", f"r{i:02d}", {"v": bytes([i]) * MAX_PROPERTY_BYTES})) for i in range(44)]
    table.batch(ops)
    assert [e["v"][:1] for e in table.query_all("p")] == [bytes([i]) for i in range(44)]


def test_batch_over_the_wire_limit_is_refused_before_sending(table: TableStore) -> None:
    ops = [TableOp.upsert(Entity("p", f"r{i:02d}", {"v": bytes([i]) * MAX_PROPERTY_BYTES})) for i in range(60)]
    with pytest.raises(TooLarge):
        table.batch(ops)  # 3.9 MB of bytes, 5.2 MB as base64
    assert list(table.query_all("p")) == []


def test_batch_mixed_operations_return_etags(table: TableStore) -> None:
    upsert_old = table.insert(Entity("p", "u", {"v": "old"}))
    update_old = table.insert(Entity("p", "m", {"v": "old", "dropped": 1}))
    delete_old = table.insert(Entity("p", "d", {"v": "old"}))

    etags = table.batch([
        TableOp.insert(Entity("p", "n", {"v": "new"})),
        TableOp.upsert(Entity("p", "u", {"v": "upserted"})),
        TableOp.update(Entity("p", "m", {"v": "updated"}), if_match=update_old),
        TableOp.delete("p", "d", if_match=delete_old),
        TableOp.upsert(Entity("p", "fresh", {"v": "created by upsert"})),
    ])
    assert len(etags) == 5
    assert etags[3] is None
    assert all(isinstance(e, str) and e for i, e in enumerate(etags) if i != 3)
    assert etags[1] != upsert_old and etags[2] != update_old

    assert snapshot(table, "p", "n") == ({"v": "new"}, etags[0])
    assert snapshot(table, "p", "u") == ({"v": "upserted"}, etags[1])
    assert snapshot(table, "p", "m") == ({"v": "updated"}, etags[2]), "batch update replaces; it does not merge"
    assert snapshot(table, "p", "d") is None
    assert snapshot(table, "p", "fresh") == ({"v": "created by upsert"}, etags[4])

    # The returned ETags are usable for the next conditional write.
    table.update(Entity("p", "m", {"v": "again"}), if_match=etags[2])
    table.delete("p", "n", if_match=etags[0])


def test_concurrent_compare_and_swap(table: TableStore) -> None:
    table.insert(Entity("counter", "c", {"v": 0}))
    threads, increments = 4, 25
    errors: list[BaseException] = []
    conflicts = [0] * threads
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        try:
            start.wait()
            for _ in range(increments):
                for _attempt in range(1000):
                    current = table.get("counter", "c")
                    try:
                        table.update(Entity("counter", "c", {"v": current["v"] + 1}), if_match=current.etag)
                        break
                    except PreconditionFailed:
                        conflicts[index] += 1
                else:
                    raise AssertionError("no update succeeded in 1000 attempts")
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in pool), "a worker hung"
    assert errors == []
    assert table.get("counter", "c")["v"] == threads * increments, f"lost updates ({sum(conflicts)} conflicts seen)"


# --------------------------------------------------------------------------- queues


def test_queue_send_receive_delete(queue: QueueStore) -> None:
    body = "h\u00e9llo \U0001f600 <xml> & \"quotes\""
    message_id = queue.send(body)
    assert isinstance(message_id, str) and message_id
    message = receive_one(queue)
    assert (message.id, message.body, message.dequeue_count) == (message_id, body, 1)
    assert isinstance(message.receipt, str) and message.receipt
    if message.enqueued_at is not None:
        assert message.enqueued_at.tzinfo is not None
        assert abs((datetime.now(timezone.utc) - message.enqueued_at).total_seconds()) < 300
    assert queue.receive(max_messages=MAX_RECEIVE_MESSAGES) == [], "a received message is hidden"
    queue.delete(message.receipt)
    wait_for_length(queue, 0)
    assert queue.peek() == []


def test_queue_receive_from_empty_queue(queue: QueueStore) -> None:
    started = time.monotonic()
    assert queue.receive(max_messages=MAX_RECEIVE_MESSAGES) == []
    assert queue.peek() == []
    assert time.monotonic() - started < 5, "receiving from an empty queue must not long-poll"


def test_queue_receive_returns_at_most_max_messages(queue: QueueStore) -> None:
    sent = {queue.send(f"m{i}") for i in range(5)}
    first = poll(lambda: queue.receive(max_messages=2, visibility_timeout=60), what="messages")
    assert 1 <= len(first) <= 2
    rest = drain(queue, 5 - len(first))
    assert {m.id for m in first} | {m.id for m in rest} == sent
    assert sorted(m.body for m in first + rest) == [f"m{i}" for i in range(5)]


def test_queue_receive_more_than_ten(queue: QueueStore) -> None:
    bodies = {f"bulk-{i}" for i in range(40)}
    for body in bodies:
        queue.send(body)
    first = poll(lambda: queue.receive(max_messages=MAX_RECEIVE_MESSAGES, visibility_timeout=60), what="messages")
    assert 1 <= len(first) <= MAX_RECEIVE_MESSAGES
    rest = drain(queue, len(bodies) - len(first))
    assert sorted(m.body for m in first + rest) == sorted(bodies)
    assert all(m.dequeue_count == 1 for m in first + rest)


def test_queue_body_any_text_round_trips(queue: QueueStore) -> None:
    bodies = [
        "",
        " ",
        "nul\x00 bell\x07 vt\x0b esc\x1b del\x7f c1\x85",
        "<?xml version='1.0'?><a>&amp;&lt;</a> ]]> \"'",
        "\ufffe\uffff noncharacters",
        "\U0001f600\U0010fffd astral",
        "line\r\nbreaks\n\ttab",
        "=?utf-8?b?not-really?=",
        "eyJiYXNlNjQiOiJsb29raW5nIn0=",
    ]
    for body in bodies:
        queue.send(body)
    got = drain(queue, len(bodies))
    assert sorted(m.body for m in got) == sorted(bodies)


def test_queue_largest_body_and_too_large(queue: QueueStore) -> None:
    ascii_max = "a" * MAX_QUEUE_BODY_BYTES
    cjk_max = "\u4e2d" * (MAX_QUEUE_BODY_BYTES // 3)  # 48 KiB of UTF-8
    assert len(cjk_max.encode()) == MAX_QUEUE_BODY_BYTES
    with pytest.raises(TooLarge):
        queue.send("a" * (MAX_QUEUE_BODY_BYTES + 1))
    with pytest.raises(TooLarge):
        queue.send("\u00e9" * (MAX_QUEUE_BODY_BYTES // 2 + 1))
    queue.send(ascii_max)
    queue.send(cjk_max)
    wait_for_length(queue, 2)  # the oversize sends enqueued nothing
    got = drain(queue, 2)
    assert sorted(m.body for m in got) == sorted([ascii_max, cjk_max])


@pytest.mark.slow
def test_queue_redelivery_after_visibility_timeout(queue: QueueStore) -> None:
    message_id = queue.send("again")
    first = receive_one(queue, visibility_timeout=1)
    assert (first.id, first.dequeue_count) == (message_id, 1)
    assert queue.receive(max_messages=MAX_RECEIVE_MESSAGES, visibility_timeout=1) == [], "hidden right after receive"

    second = receive_one(queue, visibility_timeout=1, timeout=15)
    assert (second.id, second.body, second.dequeue_count) == (message_id, "again", 2)
    assert second.receipt != first.receipt

    third = receive_one(queue, visibility_timeout=30, timeout=15)
    assert (third.id, third.dequeue_count) == (message_id, 3)

    # Deleting by the latest receipt is final: it never comes back.
    queue.delete(third.receipt)
    queue.delete(third.receipt)  # deleting twice is not an error
    wait_for_length(queue, 0)
    assert_nothing_received_for(queue, 1.5)


@pytest.mark.slow
def test_queue_delete_is_final(queue: QueueStore) -> None:
    queue.send("once")
    message = receive_one(queue, visibility_timeout=1)
    queue.delete(message.receipt)
    assert_nothing_received_for(queue, 2.0)  # past the visibility timeout
    assert queue.peek() == []
    wait_for_length(queue, 0)
    queue.delete(message.receipt)  # already gone: not an error


@pytest.mark.slow
def test_queue_extend_keeps_message_hidden(queue: QueueStore) -> None:
    message_id = queue.send("working on it")
    message = receive_one(queue, visibility_timeout=1)
    receipt = queue.extend(message.receipt, 30)
    assert isinstance(receipt, str) and receipt
    assert_nothing_received_for(queue, 2.5)  # well past the original 1 s
    assert queue.peek() == []
    wait_for_length(queue, 1)
    queue.delete(receipt)  # the new receipt deletes it
    wait_for_length(queue, 0)
    assert message_id == message.id


def test_queue_extend_to_zero_makes_message_visible(queue: QueueStore) -> None:
    message_id = queue.send("give it back")
    message = receive_one(queue, visibility_timeout=60)
    assert queue.receive(max_messages=MAX_RECEIVE_MESSAGES) == []
    queue.extend(message.receipt, 0)
    again = receive_one(queue, visibility_timeout=60)
    assert (again.id, again.body, again.dequeue_count) == (message_id, "give it back", 2)


@pytest.mark.slow
def test_queue_delay_hides_message_at_first(queue: QueueStore) -> None:
    message_id = queue.send("later", delay_seconds=3)
    queue.send("now")
    assert [m.body for m in queue.peek()] == ["now"]
    got = receive_one(queue, visibility_timeout=60)
    assert got.body == "now"
    assert queue.receive(max_messages=MAX_RECEIVE_MESSAGES, visibility_timeout=60) == [], "the delayed one is hidden"
    wait_for_length(queue, 2)  # delayed messages count: "visible or not"
    later = receive_one(queue, visibility_timeout=60, timeout=15)
    assert (later.id, later.body, later.dequeue_count) == (message_id, "later", 1)


def test_queue_peek_does_not_hide(queue: QueueStore) -> None:
    queue.send("one")
    queue.send("two")
    peeked = poll(lambda: (lambda seen: seen if len(seen) == 2 else [])(queue.peek()), what="two peekable messages")
    assert sorted(m.body for m in peeked) == ["one", "two"]
    assert all(not m.receipt for m in peeked), "peeked messages carry no receipt"
    assert sorted(m.body for m in queue.peek()) == ["one", "two"], "peeking again still sees both"
    assert len(queue.peek(max_messages=1)) == 1

    got = drain(queue, 2)
    assert sorted(m.body for m in got) == ["one", "two"]
    assert all(m.dequeue_count >= 1 for m in got)
    assert queue.peek() == [], "received (hidden) messages are not peekable"


def test_queue_approximate_length(queue: QueueStore) -> None:
    wait_for_length(queue, 0)
    for i in range(3):
        queue.send(f"m{i}")
    wait_for_length(queue, 3)
    message = receive_one(queue, visibility_timeout=60)
    wait_for_length(queue, 3)  # hidden messages still count
    queue.delete(message.receipt)
    wait_for_length(queue, 2)


def post_undecodable(backend: Backend, settings: Any, queue_name: str) -> list[str]:
    """Post messages ``backend`` cannot decode with its storage's own client, as a foreign producer
    would; returns the bodies a receive must hand back for them.

    Azure: raw text, not base64 (the SDK's default policy encodes nothing), and base64 of bytes
    that are not UTF-8: both come back as the raw text. SQS bodies are always text; what the backend
    decodes is a body flagged with its base64 attribute, so: flagged but not base64, and base64 of
    bytes that are not UTF-8, both raw. Local: another writer of the SQLite file can store bytes that
    are not UTF-8, as TEXT or as a BLOB; they come back decoded with errors="replace".
    """
    raw = ["not base64!! <&>", "//79"]  # "//79" is base64 of b"\xff\xfe\xfd"
    if backend.kind == "azure":
        from azure.storage.queue import QueueClient

        with QueueClient.from_connection_string(settings.azure_connection_string, queue_name) as client:
            for text in raw:
                client.send_message(text)
        return raw
    if backend.kind == "aws":
        flagged = {"stowage-encoding": {"DataType": "String", "StringValue": "base64"}}
        for text in raw:
            backend._sqs.send_message(  # type: ignore[attr-defined]
                QueueUrl=backend._queue_url(queue_name), MessageBody=text, MessageAttributes=flagged  # type: ignore[attr-defined]
            )
        return raw
    assert backend.kind == "local"
    now = time.time()
    with contextlib.closing(sqlite3.connect(backend.table_db.path)) as conn, conn:  # type: ignore[attr-defined]
        for value in ("CAST(? AS TEXT)", "?"):
            conn.execute(
                f"INSERT INTO messages (queue, id, body, visible_at, enqueued_at) VALUES (?, ?, {value}, ?, ?)",
                (queue_name, uuid.uuid4().hex, b"not utf-8 \xff\xfe!!", now, now),
            )
    return ["not utf-8 \ufffd\ufffd!!"] * 2


def test_queue_undecodable_messages_come_back_raw_and_marked(backend: Backend, settings, queue: QueueStore) -> None:
    queue.send("fine")
    expected = post_undecodable(backend, settings, queue.name)
    queue.send("eyJiYXNlNjQiOiJsb29raW5nIn0=")
    count = len(expected) + 2

    def peek_all() -> list[QueueMessage]:
        seen = queue.peek()
        return seen if len(seen) == count else []

    peeked = poll(peek_all, what="every message, peeked")
    received = drain(queue, count)
    for got in (peeked, received):
        good = sorted((m.body, m.decode_error, m.undecodable) for m in got if m.decode_error is None)
        assert good == [("eyJiYXNlNjQiOiJsb29raW5nIn0=", None, False), ("fine", None, False)]
        bad = [m for m in got if m.decode_error is not None]
        assert sorted(m.body for m in bad) == sorted(expected)
        assert all(m.undecodable and isinstance(m.decode_error, str) and m.decode_error for m in bad)
    assert all(m.receipt for m in received)
    for message in received:
        queue.delete(message.receipt)
    wait_for_length(queue, 0)


def test_queue_invalid_arguments(queue: QueueStore) -> None:
    for bad in (
        lambda: queue.send(b"bytes"),  # type: ignore[arg-type]
        lambda: queue.send("x", delay_seconds=-1),
        lambda: queue.send("x", delay_seconds=MAX_SEND_DELAY + 1),
        lambda: queue.send("x", delay_seconds=1.5),  # type: ignore[arg-type]
        lambda: queue.receive(max_messages=0),
        lambda: queue.receive(max_messages=MAX_RECEIVE_MESSAGES + 1),
        lambda: queue.receive(visibility_timeout=-1),
        lambda: queue.receive(visibility_timeout=MAX_VISIBILITY_TIMEOUT + 1),
        lambda: queue.peek(max_messages=0),
        lambda: queue.peek(max_messages=MAX_RECEIVE_MESSAGES + 1),
        lambda: queue.delete(""),
        lambda: queue.extend("", 10),
        lambda: queue.extend("receipt", -1),
        lambda: queue.extend("receipt", MAX_VISIBILITY_TIMEOUT + 1),
    ):
        with pytest.raises(InvalidInput):
            bad()
    with pytest.raises(InvalidKey):
        queue.send("lone \ud800 surrogate")
    assert queue.peek() == []
    wait_for_length(queue, 0)
