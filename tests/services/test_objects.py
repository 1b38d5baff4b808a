"""Objects service: the same tests on local, Azurite and moto."""

from __future__ import annotations

import threading
import uuid

import pytest

from shared import names
from shared.errors import AlreadyExists, InvalidInput, InvalidKey, NotFound, PreconditionFailed, TooLarge
from shared.manager import StorageManager
from shared.objects import INLINE_MAX_BYTES, ObjectService


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
    with pytest.raises(AlreadyExists):
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


def test_expiry_is_spread_over_shards_and_purged_in_bounded_runs(objects, stores, tenant):
    import time

    from shared.objects import EXPIRY_PREFIX, EXPIRY_SHARDS

    for i in range(40):
        objects.put(tenant, f"temp/{i}", b"x", ttl_seconds=30)
    objects.put(tenant, "keep", b"y")
    raw = stores.backend.table(names.TABLE_OBJECTS)
    used = [shard for shard in range(EXPIRY_SHARDS)
            if any(tenant in e.row_key for e in raw.query_all(f"{EXPIRY_PREFIX}{shard:02d}"))]
    assert len(used) > 4, "40 keys should land in many of the 16 shards"
    later = time.time() + 60
    for _ in range(20):
        objects.purge_expired(now=later, limit=10)
        if not objects.list(tenant, "temp/").items:
            break
    assert objects.list(tenant, "temp/").items == []
    assert [i.key for i in objects.list(tenant).items] == ["keep"]
