"""Objects service: the same tests on local, Azurite and moto (moved from tests/services/test_objects.py)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

from shared import names
from shared.errors import Busy, InvalidInput, InvalidKey, NotFound, PreconditionFailed, TooLarge
from shared.storage.idempotency import IdempotencyKeyReused
from shared.manager import StorageManager
from shared.domains.objects.service import INLINE_MAX_BYTES, ObjectService


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def objects(stores) -> ObjectService:
    return ObjectService(stores)


def test_round_trip_json_text_binary_keeps_content_type(objects, tenant):
    objects.put(tenant, "agent_configs/ceo", b'{"name":"CEO"}', "application/json")
    objects.put(tenant, "notes/é 🚀", "héllo".encode(), "text/plain; charset=utf-8")
    binary = bytes(range(256)) * 100  # over the inline limit: stored as a blob
    objects.put(tenant, "models/ceo_adapter", binary, "application/octet-stream")
    assert objects.get(tenant, "agent_configs/ceo").data == b'{"name":"CEO"}'
    assert objects.get(tenant, "agent_configs/ceo").info.content_type == "application/json"
    text = objects.get(tenant, "notes/é 🚀")
    assert text.data.decode() == "héllo" and text.info.content_type == "text/plain; charset=utf-8"
    stored = objects.get(tenant, "models/ceo_adapter")
    assert stored.data == binary and stored.info.size == len(binary)


def test_every_overwrite_keeps_the_previous_version_unchanged(objects, tenant):
    first = objects.put(tenant, "cfg", b"one", "text/plain")
    second = objects.put(tenant, "cfg", b"two" * 5000, "text/plain")  # blob-backed version
    third = objects.put(tenant, "cfg", b"three", "text/plain")
    assert len({first.version_id, second.version_id, third.version_id}) == 3
    listed = objects.versions(tenant, "cfg").items
    assert [v.version_id for v in listed] == [third.version_id, second.version_id, first.version_id]
    assert [v.is_current for v in listed] == [True, False, False]
    assert objects.get(tenant, "cfg", first.version_id).data == b"one"
    assert objects.get(tenant, "cfg", second.version_id).data == b"two" * 5000
    assert objects.get(tenant, "cfg").data == b"three"
    with pytest.raises(NotFound):
        objects.get(tenant, "cfg", "0" * 24)


def test_if_match_and_if_none_match(objects, tenant):
    created = objects.put(tenant, "k", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):  # RFC 9110: a failed If-None-Match on a write is 412
        objects.put(tenant, "k", b"2", if_none_match=True)
    updated = objects.put(tenant, "k", b"2", if_match=created.version_id)
    with pytest.raises(PreconditionFailed):
        objects.put(tenant, "k", b"3", if_match=created.version_id)
    with pytest.raises(PreconditionFailed):
        objects.put(tenant, "missing", b"3", if_match=created.version_id)
    with pytest.raises(PreconditionFailed):
        objects.delete(tenant, "k", if_match=created.version_id)
    assert objects.get(tenant, "k").data == b"2"
    objects.delete(tenant, "k", if_match=updated.version_id)
    with pytest.raises(NotFound):
        objects.get(tenant, "k")


def test_concurrent_conditional_writers_lose_nothing(objects, tenant):
    """Each writer re-reads and writes with If-Match; every increment lands exactly once."""
    objects.put(tenant, "counter", b"0")

    def add(times: int) -> None:
        for _ in range(times):
            while True:
                current = objects.get(tenant, "counter")
                try:
                    objects.put(tenant, "counter", str(int(current.data) + 1).encode(),
                                if_match=current.info.version_id)
                    break
                except PreconditionFailed:
                    continue

    threads = [threading.Thread(target=add, args=(5,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert objects.get(tenant, "counter").data == b"20"
    assert len(objects.versions(tenant, "counter", limit=1000).items) == 21


def test_list_by_prefix_is_paged_in_key_order(objects, tenant):
    keys = [f"agents/{i:02d}" for i in range(7)] + ["agentsX", "other/1"]
    for key in keys:
        objects.put(tenant, key, b"x")
    seen, token = [], None
    while True:
        page = objects.list(tenant, "agents/", limit=3, continuation=token)
        assert len(page.items) <= 3
        seen += [i.key for i in page.items]
        token = page.continuation
        if not token:
            break
    assert seen == [f"agents/{i:02d}" for i in range(7)]


def test_delete_removes_every_version_and_blob(objects, stores, tenant):
    for i in range(3):
        objects.put(tenant, "big", bytes([i]) * (INLINE_MAX_BYTES + 1))
    blobs = stores.blobs(names.CONTAINER_DATA)
    assert len(list(blobs.list_all(f"tenants/{tenant}/"))) == 3
    objects.delete(tenant, "big")
    assert list(blobs.list_all(f"tenants/{tenant}/")) == []
    with pytest.raises(NotFound):
        objects.versions(tenant, "big")
    with pytest.raises(NotFound):
        objects.delete(tenant, "big")


def test_tenants_never_see_each_other(objects, tenant):
    other = tenant + "x"
    objects.put(tenant, "secret", b"mine")
    with pytest.raises(NotFound):
        objects.get(other, "secret")
    with pytest.raises(NotFound):
        objects.versions(other, "secret")
    with pytest.raises(NotFound):
        objects.delete(other, "secret")
    assert objects.list(other).items == []
    objects.put(other, "secret", b"theirs")
    assert objects.get(tenant, "secret").data == b"mine"


@pytest.mark.parametrize("key", ["", "a/../b", "../a", "a//b", "/a", "a/", "a/./b", "a\x00b", "a\\b", "x" * 257, "a."])
def test_bad_keys_are_rejected_before_anything_is_written(objects, tenant, key):
    with pytest.raises(InvalidKey):
        objects.put(tenant, key, b"x")
    assert objects.list(tenant).items == []


def test_size_limit_is_checked_before_anything_is_written(stores, tenant):
    small = ObjectService(stores)
    small.max_bytes = 1024
    with pytest.raises(TooLarge):
        small.put(tenant, "big", b"x" * 1025)
    assert small.list(tenant).items == []
    assert list(stores.blobs(names.CONTAINER_DATA).list_all(f"tenants/{tenant}/")) == []


def test_idempotency_key_applies_a_write_once(objects, tenant):
    first = objects.put(tenant, "k", b"1", idempotency_key="req-1")
    again = objects.put(tenant, "k", b"1", idempotency_key="req-1")
    assert again.version_id == first.version_id
    assert len(objects.versions(tenant, "k").items) == 1


def test_a_replay_after_the_object_was_deleted_answers_the_first_result(objects, tenant):
    first = objects.put(tenant, "gone", b"123", "text/plain", idempotency_key="req-2")
    objects.delete(tenant, "gone")
    again = objects.put(tenant, "gone", b"123", "text/plain", idempotency_key="req-2")
    assert again == first  # the first answer, from the marker: no 500, no new write
    with pytest.raises(NotFound):
        objects.get(tenant, "gone")


def test_ttl_expires_reads_at_once_and_the_purge_deletes(objects, tenant):
    import time

    info = objects.put(tenant, "short", b"x", ttl_seconds=60)
    objects.put(tenant, "long", b"y")
    assert info.expires_at is not None
    assert objects.purge_expired(now=time.time()) == 0  # not due yet
    later = time.time() + 120
    assert objects.purge_expired(now=later) == 1
    with pytest.raises(NotFound):
        objects.get(tenant, "short")
    assert objects.get(tenant, "long").data == b"y"
    assert objects.purge_expired(now=later) == 0  # idempotent


def test_invalid_arguments_are_clear(objects, tenant):
    with pytest.raises(InvalidInput):
        objects.put(tenant, "k", b"x", if_match="v", if_none_match=True)
    with pytest.raises(InvalidInput):
        objects.put(tenant, "k", b"x", ttl_seconds=0)
    with pytest.raises(InvalidInput):
        objects.put("Not A Tenant", "k", b"x")


def test_storage_manager_facade(stores, tenant):
    storage = StorageManager(stores, tenant)
    storage.objects.save("agent_configs/ceo", {"name": "CEO", "role": "executive"})
    storage.objects.save("notes/today", "plain text")
    storage.objects.save("models/blob", b"\x00\x01")
    assert storage.objects.load("agent_configs/ceo") == {"name": "CEO", "role": "executive"}
    assert storage.objects.load("notes/today") == "plain text"
    assert storage.objects.load("models/blob") == b"\x00\x01"
    assert storage.objects.list_keys("agent_configs/") == ["agent_configs/ceo"]
    assert storage.objects.exists("notes/today") and not storage.objects.exists("nope")
    storage.objects.save("notes/today", "edited")
    assert [v.is_current for v in storage.objects.versions("notes/today")] == [True, False]
    storage.objects.delete("notes/today")
    assert not storage.objects.exists("notes/today")


def test_expiry_is_filed_per_tenant_and_purged_in_bounded_runs(objects, stores, tenant):
    import time

    from shared.domains.objects._layout import EXPIRES_INDEX

    for i in range(40):
        objects.put(tenant, f"temp/{i}", b"x", ttl_seconds=30)
    objects.put(tenant, "keep", b"y")
    raw = stores.backend.table(names.TABLE_OBJECTS)
    assert len(list(raw.query_all(EXPIRES_INDEX + tenant))) == 40  # the tenant's own partition of the due index
    later = time.time() + 60
    for _ in range(20):
        objects.purge_expired(now=later, limit=10)
        if not objects.list(tenant, "temp/").items:
            break
    assert objects.list(tenant, "temp/").items == []
    assert [i.key for i in objects.list(tenant).items] == ["keep"]
    assert list(raw.query_all(EXPIRES_INDEX + tenant)) == []


def test_one_tenants_backlog_does_not_delay_another_tenants_expiry(stores, clock, tenant):
    """Round-robin: a run that handles the first quantum of every tenant purges the quiet tenant's object."""
    from shared.domains.objects._layout import EXPIRES_INDEX
    from shared.storage.due import Budget, DueIndex

    noisy, quiet = tenant + "n", tenant + "q"
    service = ObjectService(stores, clock=clock)
    for i in range(120):
        service.put(noisy, f"wait/{i}", b"x", ttl_seconds=30)
    service.put(quiet, "timeout", b"x", ttl_seconds=30)
    clock.advance(31)
    index = DueIndex(stores.table(names.TABLE_OBJECTS), EXPIRES_INDEX, clock=clock)
    due: dict[str, int] = {}
    for entry in index.due(clock.now, Budget(seconds=60)):  # read only: nothing is done
        due[entry.tenant] = due.get(entry.tenant, 0) + 1
    first_round = sum(min(index.quantum, n) for n in due.values())  # every tenant's first turn (others' too)
    assert due[noisy] == 120 and due[quiet] == 1
    service.purge_expired(budget=Budget(seconds=60, items=first_round))
    with pytest.raises(NotFound):
        ObjectService(stores).get(quiet, "timeout")  # gone on a real clock too: purged, not just expired
    assert _rows(stores, quiet) == []
    assert len([rk for rk in _rows(stores, noisy) if rk.startswith("h|")]) >= 120 - index.quantum
    service.purge_expired()  # the rest, within the default time budget
    assert _rows(stores, noisy) == []


def test_entries_of_the_earlier_expiry_index_are_still_purged(timed, stores, clock, tenant):
    from shared.backends import Entity
    from shared.domains.objects._layout import EXPIRES_INDEX, expiry_partition, expiry_rk

    old = timed.put(tenant, "old", b"x", ttl_seconds=30)
    table = stores.table(names.TABLE_OBJECTS)
    for entry in list(table.query_all(EXPIRES_INDEX + tenant)):  # as the earlier release filed it instead
        table.delete(entry.partition_key, entry.row_key)
    legacy = Entity(expiry_partition(tenant, "old"), expiry_rk(clock.now + 30, tenant, "old", old.version_id),
                    {"key": "old"})
    table.upsert(legacy)
    timed.purge_expired()
    assert table.get(legacy.partition_key, legacy.row_key)  # not due yet: kept
    clock.advance(31)
    assert timed.purge_expired() >= 1
    assert _rows(stores, tenant) == []
    with pytest.raises(NotFound):
        table.get(legacy.partition_key, legacy.row_key)


# --------------------------------------------------------------------------- If-Match: * (RFC 9110)


def test_if_match_star_needs_the_object_and_if_none_match_star_its_absence(objects, tenant):
    with pytest.raises(PreconditionFailed):
        objects.put(tenant, "k", b"1", if_match="*")
    with pytest.raises(PreconditionFailed):
        objects.delete(tenant, "k", if_match="*")
    with pytest.raises(NotFound):
        objects.get(tenant, "k")
    created = objects.put(tenant, "k", b"1", if_none_match=True)
    updated = objects.put(tenant, "k", b"2", if_match="*")
    assert updated.version_id != created.version_id and objects.get(tenant, "k").data == b"2"
    with pytest.raises(PreconditionFailed):
        objects.put(tenant, "k", b"3", if_none_match=True)
    objects.delete(tenant, "k", if_match="*")
    with pytest.raises(NotFound):
        objects.get(tenant, "k")
    with pytest.raises(PreconditionFailed):
        objects.delete(tenant, "k", if_match="*")


# --------------------------------------------------------------------------- TTL, with a clock the test moves


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(stores, clock) -> ObjectService:
    return ObjectService(stores, clock=clock)


def _rows(stores, tenant: str) -> list[str]:
    """The tenant's rows once its change records have been sequenced (which takes its outbox rows away)."""
    stores.changes.sequence(tenant)
    return [e.row_key for e in stores.backend.table(names.TABLE_OBJECTS).query_all(tenant)]


def _blob_keys(stores, tenant: str) -> list[str]:
    return [b.key for b in stores.blobs(names.CONTAINER_DATA).list_all(f"tenants/{tenant}/")]


BIG = b"b" * (INLINE_MAX_BYTES + 1)  # stored as a blob


def test_an_expired_old_version_is_gone_from_every_read_and_the_purge_deletes_it(timed, stores, clock, tenant):
    old = timed.put(tenant, "k", BIG, ttl_seconds=60)
    new = timed.put(tenant, "k", b"new")  # rewritten before the TTL passes
    assert [v.version_id for v in timed.versions(tenant, "k").items] == [new.version_id, old.version_id]
    assert timed.get(tenant, "k", old.version_id).data == BIG
    clock.advance(61)
    for read in (timed.get, timed.head):
        with pytest.raises(NotFound):
            read(tenant, "k", old.version_id)
    assert [v.version_id for v in timed.versions(tenant, "k").items] == [new.version_id]
    assert timed.get(tenant, "k").data == b"new"
    assert len(_blob_keys(stores, tenant)) == 1
    assert timed.purge_expired() >= 1
    assert not any(old.version_id in rk for rk in _rows(stores, tenant))
    assert _blob_keys(stores, tenant) == []
    assert timed.get(tenant, "k").data == b"new"
    assert [v.version_id for v in timed.versions(tenant, "k").items] == [new.version_id]


def test_an_expired_current_version_takes_the_whole_object_even_when_rewritten_before_the_purge(
        timed, stores, clock, tenant):
    first = timed.put(tenant, "k", BIG)  # no TTL of its own
    timed.put(tenant, "k", BIG, ttl_seconds=60)
    clock.advance(60.01)
    for read in (lambda: timed.get(tenant, "k"), lambda: timed.head(tenant, "k"),
                 lambda: timed.get(tenant, "k", first.version_id), lambda: timed.versions(tenant, "k")):
        with pytest.raises(NotFound):
            read()
    assert timed.list(tenant).items == []
    with pytest.raises(PreconditionFailed):  # it does not exist
        timed.put(tenant, "k", b"x", if_match="*")
    again = timed.put(tenant, "k", b"again", if_none_match=True)  # creates it anew
    assert again.created_at == again.updated_at
    assert [v.version_id for v in timed.versions(tenant, "k").items] == [again.version_id]  # nothing came back
    assert _blob_keys(stores, tenant) == []
    timed.purge_expired()
    assert timed.get(tenant, "k").data == b"again"
    assert len([rk for rk in _rows(stores, tenant) if rk.startswith("v|")]) == 1


def test_the_purge_deletes_an_expired_current_version_with_every_older_one(timed, stores, clock, tenant):
    timed.put(tenant, "k", BIG)
    timed.put(tenant, "k", b"short-lived", ttl_seconds=30)
    timed.put(tenant, "other", b"stays")
    assert timed.purge_expired() == 0  # nothing due
    clock.advance(31)
    assert timed.purge_expired() >= 1
    assert [rk for rk in _rows(stores, tenant) if "other" not in rk] == []
    assert _blob_keys(stores, tenant) == []
    assert timed.get(tenant, "other").data == b"stays"


def test_a_deleted_expired_object_is_not_found_and_leaves_nothing(timed, stores, clock, tenant):
    timed.put(tenant, "k", BIG, ttl_seconds=10)
    clock.advance(10.01)
    with pytest.raises(NotFound):
        timed.delete(tenant, "k")
    assert _rows(stores, tenant) == [] and _blob_keys(stores, tenant) == []
    timed.purge_expired()  # the entry of a version already gone is dropped
    assert timed.purge_expired() == 0


def test_ttl_reads_follow_the_clock_to_the_instant(timed, clock, tenant):
    info = timed.put(tenant, "k", b"x", ttl_seconds=5)
    clock.advance(4.99)
    assert timed.get(tenant, "k", info.version_id).data == b"x"
    assert [v.version_id for v in timed.versions(tenant, "k").items] == [info.version_id]
    clock.advance(0.02)
    with pytest.raises(NotFound):
        timed.get(tenant, "k", info.version_id)


# --------------------------------------------------------------------------- keys: every documented key fits


LONG_KEYS = [
    "%" * 256,
    "/".join(["%%"] + ["%"] * 127),
    "\U0001f680" * 256,
    "/".join(["\U0001f680"] * 128) + "x",
    "\ue000" * 256,  # a character the Azure backend stores as two
    "".join("%/\U0001f680x"[i % 4] for i in range(255)) + "y",
]


@pytest.mark.parametrize("key", LONG_KEYS, ids=["percent", "percent-slash", "emoji", "emoji-slash", "private-use",
                                                "mixed"])
def test_every_key_of_256_characters_works(timed, stores, clock, tenant, key):
    assert len(key) == 256
    first = timed.put(tenant, key, b"first", "text/plain")
    second = timed.put(tenant, key, BIG, ttl_seconds=60, idempotency_key="%" * 200)
    assert timed.put(tenant, key, BIG, ttl_seconds=60, idempotency_key="%" * 200).version_id == second.version_id
    assert timed.get(tenant, key).data == BIG
    assert timed.head(tenant, key).version_id == second.version_id
    assert timed.get(tenant, key, first.version_id).data == b"first"
    assert [v.version_id for v in timed.versions(tenant, key).items] == [second.version_id, first.version_id]
    for prefix in ("", key[:1], key[:100], key[:255], key):
        assert [i.key for i in timed.list(tenant, prefix).items] == [key], prefix
    timed.put(tenant, key, b"third", if_match=second.version_id)
    clock.advance(61)
    assert timed.purge_expired() >= 1  # the second version expired; the third stays
    assert [v.size for v in timed.versions(tenant, key).items] == [5, 5]
    timed.delete(tenant, key)
    with pytest.raises(NotFound):
        timed.get(tenant, key)
    assert timed.list(tenant).items == []
    assert [rk for rk in _rows(stores, tenant) if not rk.startswith("i|")] == []  # idempotency markers stay
    assert _blob_keys(stores, tenant) == []


def test_long_keys_that_share_their_beginning_list_by_prefix_exactly(objects, tenant):
    base = "p/" + "%" * 200
    keys = [base + tail for tail in ("%" * 54, "%" * 53 + "a", "a" * 54, "%" * 10)]
    for key in keys + ["p/short", "q/" + "%" * 254]:
        objects.put(tenant, key, b"x")
    assert sorted(i.key for i in objects.list(tenant, "p/").items) == sorted(keys + ["p/short"])
    assert sorted(i.key for i in objects.list(tenant, base).items) == sorted(keys)
    assert sorted(i.key for i in objects.list(tenant, base + "%" * 50).items) == sorted(keys[:2])
    assert [i.key for i in objects.list(tenant, base + "%" * 53 + "a").items] == [keys[1]]
    # Paged one at a time (long prefixes filter, so a page may come back empty), the same keys.
    seen, token = [], None
    while True:
        page = objects.list(tenant, base + "%" * 50, limit=1, continuation=token)
        seen += [i.key for i in page.items]
        token = page.continuation
        if not token:
            break
    assert sorted(seen) == sorted(keys[:2])


# --------------------------------------------------------------------------- U+10FFFF, continuation tokens


def test_keys_holding_the_largest_code_point_are_listed(objects, tenant):
    top = "\U0010ffff"
    keys = ["u/a", "u/" + top, "u/" + top + "/x", "u/" + top + top]
    for key in keys + ["v"]:
        objects.put(tenant, key, b"x")
    assert [i.key for i in objects.list(tenant, "u/").items] == keys
    assert [i.key for i in objects.list(tenant, "u/" + top).items] == keys[1:]
    assert [i.key for i in objects.list(tenant).items] == keys + ["v"]


def test_a_listing_token_works_only_for_its_tenant_and_prefix(objects, tenant):
    other = tenant + "x"
    for owner in (tenant, other):
        for i in range(3):
            objects.put(owner, f"a/{i}", b"x")
    token = objects.list(tenant, "a/", limit=1).continuation
    assert token is not None
    assert [i.key for i in objects.list(tenant, "a/", limit=1, continuation=token).items] == ["a/1"]
    for bad in (token[:-2], token + "x", "garbage!", token.replace(".", "")):
        with pytest.raises(InvalidInput):
            objects.list(tenant, "a/", limit=1, continuation=bad)
    with pytest.raises(InvalidInput):
        objects.list(other, "a/", limit=1, continuation=token)
    with pytest.raises(InvalidInput):
        objects.list(tenant, "a/1", limit=1, continuation=token)
    versions_token = objects.versions(tenant, "a/0", limit=1).continuation
    assert versions_token is None  # one version: no token


# --------------------------------------------------------------------------- idempotency (issue 9: one marker format)


def test_a_replay_answers_the_first_result_and_status(objects, tenant):
    first = objects.put_outcome(tenant, "k", b"1", "text/plain", idempotency_key="once")
    assert (first.status, first.replayed) == (201, False)
    again = objects.put_outcome(tenant, "k", b"1", "text/plain", idempotency_key="once")
    assert (again.status, again.replayed, again.result) == (201, True, first.result)
    second = objects.put_outcome(tenant, "k", b"2", "text/plain", idempotency_key="twice")
    assert (second.status, second.replayed) == (200, False)
    assert objects.put_outcome(tenant, "k", b"2", "text/plain", idempotency_key="twice").status == 200
    assert len(objects.versions(tenant, "k").items) == 2


@pytest.mark.parametrize("other", [
    {"key": "other"}, {"data": b"another body"}, {"data": BIG}, {"content_type": "application/json"},
    {"ttl_seconds": 60}, {"if_match": "*"},
], ids=["key", "body", "big-body", "content-type", "ttl", "condition"])
def test_a_key_reused_with_another_put_is_refused_and_writes_nothing(objects, stores, tenant, other):
    request = {"key": "k", "data": b"body", "content_type": "text/plain"}
    first = objects.put(tenant, idempotency_key="reused", **request)
    rows, blobs = _rows(stores, tenant), _blob_keys(stores, tenant)
    with pytest.raises(IdempotencyKeyReused) as refused:
        objects.put(tenant, idempotency_key="reused", **(request | other))
    assert refused.value.status == 422
    assert _rows(stores, tenant) == rows and _blob_keys(stores, tenant) == blobs
    assert objects.head(tenant, "k") == first


def test_a_delete_with_a_key_replays_after_the_object_is_gone(objects, tenant):
    objects.put(tenant, "k", b"1")
    first = objects.delete_outcome(tenant, "k", idempotency_key="del")
    assert (first.replayed, first.status) == (False, 204)
    again = objects.delete_outcome(tenant, "k", idempotency_key="del")  # not NotFound: the marker answers
    assert (again.replayed, again.status) == (True, 204)
    objects.put(tenant, "k", b"2")
    objects.delete(tenant, "k", idempotency_key="del")  # a replay: the new object stays
    assert objects.get(tenant, "k").data == b"2"
    with pytest.raises(IdempotencyKeyReused):
        objects.delete(tenant, "other", idempotency_key="del")
    with pytest.raises(IdempotencyKeyReused):  # the same key for a put is another request too
        objects.put(tenant, "k", b"2", idempotency_key="del")


def test_a_marker_of_the_earlier_format_still_replays(objects, stores, tenant):
    from shared.backends import Entity
    from shared.domains.objects._layout import legacy_marker_rk

    first = objects.put(tenant, "k", b"1", "text/plain")
    answer = {"key": "k", "version": first.version_id, "size": first.size, "content_type": first.content_type,
              "created_at": first.created_at, "updated_at": first.updated_at, "expires_at": None}
    stores.table(names.TABLE_OBJECTS).insert(Entity(tenant, legacy_marker_rk("old-key"), answer))
    assert objects.put(tenant, "k", b"other", idempotency_key="old-key") == first
    assert len(objects.versions(tenant, "k").items) == 1


# --------------------------------------------------------------------------- races: Busy, never a conflict


class _AlwaysLosing:
    """A table whose every batch loses its race, as under a write storm."""

    def __init__(self, table) -> None:
        self._table = table
        self.batches = 0

    def batch(self, operations):
        self.batches += 1
        raise PreconditionFailed("the ETag moved")

    def __getattr__(self, name):
        return getattr(self._table, name)


def test_retries_that_run_out_raise_busy(objects, tenant):
    objects.put(tenant, "k", b"1")
    losing = _AlwaysLosing(objects._table)
    objects._table = losing
    with pytest.raises(Busy) as busy:
        objects.put(tenant, "k", b"2")
    assert busy.value.status == 503 and losing.batches > 1
    with pytest.raises(Busy):
        objects.delete(tenant, "k")
    objects._table = losing._table
    assert objects.get(tenant, "k").data == b"1"


def test_a_delete_of_more_versions_than_one_batch_takes_them_all(objects, stores, tenant):
    for i in range(105):
        objects.put(tenant, "many", str(i).encode())
    objects.put(tenant, "many", BIG)
    objects.delete(tenant, "many")
    assert _rows(stores, tenant) == [] and _blob_keys(stores, tenant) == []
    with pytest.raises(NotFound):
        objects.versions(tenant, "many")


# --------------------------------------------------------------------------- row format


def test_every_row_written_carries_fmt_and_rows_of_the_earlier_format_are_read(objects, stores, tenant):
    """Format 2 stores timestamps as epoch seconds; format 1 (no ``fmt``) stored ISO-8601 text."""
    from shared.domains.objects._layout import EXPIRES_INDEX, ROW_FMT

    objects.put(tenant, "k", b"1", idempotency_key="f")
    current = objects.put(tenant, "k", BIG, ttl_seconds=60)
    table = stores.table(names.TABLE_OBJECTS)
    rows = [row for row in table.query_all(tenant) if not row.row_key.startswith("~outbox|")]  # the feed's
    markers = [row for row in rows if row.row_key.startswith("i|")]
    data_rows = [row for row in rows if not row.row_key.startswith("i|")]
    assert len(markers) == 1 and markers[0].get("fmt") == 1  # the shared marker format
    assert data_rows and all(row.get("fmt") == ROW_FMT == 2 for row in data_rows)
    assert all(isinstance(row["created_at"], float) for row in data_rows)
    assert [e.get("fmt") for e in table.query_all(EXPIRES_INDEX + tenant)] == [ROW_FMT]
    shown = objects.versions(tenant, "k").items
    for row in data_rows:  # as the earlier release wrote them: no fmt, ISO-8601 timestamps
        props = {k: v for k, v in row.properties.items() if k != "fmt"}
        for name in ("created_at", "updated_at", "expires_at"):
            if name in props:
                props[name] = datetime.fromtimestamp(props[name], tz=timezone.utc).isoformat()
        table.upsert(type(row)(row.partition_key, row.row_key, props))
    assert objects.get(tenant, "k").data == BIG
    assert objects.head(tenant, "k") == current
    assert objects.versions(tenant, "k").items == shown
    assert [i.key for i in objects.list(tenant).items] == ["k"]
    assert objects.put(tenant, "k", b"3", if_match=current.version_id).created_at == current.created_at
