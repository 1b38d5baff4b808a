"""Read caches of immutable blobs, on every backend: offloaded table values and object version content.

Blob reads are counted by a wrapper around the real blob store of the test's
backend, so a hit is a read that never reached the store. What the caches must
never do: serve a value its row no longer names, a version that was deleted or
expired (here or in another process), or one tenant's content to another.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest

from shared import names
from shared.backends import Entity
from shared.backends.base import BlobStore
from shared.backends.offload import BlobReadCache, OffloadingTable
from shared.domains.objects.service import CONTENT_CACHE_MAX_ITEM_BYTES, INLINE_MAX_BYTES, ObjectService
from shared.errors import NotFound
from shared.stores import Stores

KB = 1024


class CountingBlobs:
    """The real blob store of the test's backend; counts the keys it was asked to get."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.gets: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.blobs, name)

    def get(self, key: str) -> Any:
        self.gets.append(key)
        return self.blobs.get(key)


class CountingStores(Stores):
    """The test's Stores, except that every blob store it hands out counts its gets."""

    def __init__(self, stores: Stores) -> None:
        super().__init__(stores.backend, stores.settings)
        self.counted: dict[str, CountingBlobs] = {}

    def blobs(self, container: str = names.CONTAINER_DATA) -> Any:
        if container not in self.counted:
            self.counted[container] = CountingBlobs(super().blobs(container))
        return self.counted[container]

    @property
    def gets(self) -> list[str]:
        return self.counted[names.CONTAINER_DATA].gets


# --------------------------------------------------------------------------- the cache itself


def test_the_cache_is_bounded_in_bytes_and_drops_the_least_recently_used():
    cache = BlobReadCache(max_bytes=100 * KB, max_item_bytes=40 * KB)
    for name in ("a", "b"):
        cache.put(name, b"x" * (40 * KB))
    assert cache.get("a") is not None  # "a" is now more recent than "b"
    cache.put("c", b"y" * (40 * KB))  # 120 KB > 100 KB: the least recently used ("b") goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.size_bytes <= 100 * KB
    cache.put("big", b"z" * (40 * KB + 1))  # over the item limit: never kept
    assert cache.get("big") is None
    cache.discard("a")
    assert cache.get("a") is None and len(cache) == 1
    assert (cache.hits, cache.misses) == (3, 3)
    with pytest.raises(ValueError):
        BlobReadCache(max_bytes=10, max_item_bytes=11)


# --------------------------------------------------------------------------- offloaded table values


@pytest.fixture
def counted(stores) -> CountingStores:
    return CountingStores(stores)


@pytest.fixture
def offloading(counted, backend_names) -> OffloadingTable:
    return counted.table(backend_names.table)


def test_an_offloaded_value_is_fetched_once_then_served_from_the_cache(counted, offloading):
    value = os.urandom(100 * KB)
    offloading.insert(Entity("p", "r", {"v": value, "n": 1}))
    assert counted.gets == []  # a write does not fill the cache
    for _ in range(3):
        assert offloading.get("p", "r")["v"] == value
    assert [e["v"] for e in offloading.query_all("p")] == [value]
    assert len(counted.gets) == 1
    cache = offloading.read_cache
    assert cache is not None and cache.hits == 3 and cache.misses == 1


def test_every_table_on_one_blob_store_shares_one_cache(counted, backend_names):
    first, second = counted.table(backend_names.table), counted.table(names.TABLE_OBJECTS)
    assert first.read_cache is second.read_cache is not None
    assert Stores(counted.backend, counted.settings).table(names.TABLE_OBJECTS).read_cache is not first.read_cache


def test_a_rewritten_value_is_read_fresh_and_the_replaced_one_leaves_the_cache(counted, offloading):
    old, new = os.urandom(100 * KB), os.urandom(100 * KB)
    offloading.insert(Entity("p", "r", {"v": old}))
    current = offloading.get("p", "r")
    assert current["v"] == old
    offloading.update(Entity("p", "r", {"v": new}, current.etag, current.offloaded), if_match=current.etag)
    assert offloading.read_cache is not None and len(offloading.read_cache) == 0  # discarded with its blob
    assert offloading.get("p", "r")["v"] == new
    assert len(counted.gets) == 2


def test_a_value_deleted_by_another_process_is_gone_although_this_one_cached_it(counted, offloading, stores):
    offloading.insert(Entity("p", "r", {"v": os.urandom(100 * KB)}))
    offloading.get("p", "r")  # cached here
    elsewhere = OffloadingTable(stores.backend.table(offloading.name), CountingBlobs(stores.blobs()),  # type: ignore[arg-type]
                                offloading.threshold)  # another process: its own cache
    current = elsewhere.get_inline("p", "r")
    elsewhere.delete("p", "r", if_match=current.etag, offloaded=current.offloaded)
    with pytest.raises(NotFound):
        offloading.get("p", "r")
    assert list(offloading.query_all("p")) == []


def test_a_value_over_the_item_limit_is_not_kept(counted, offloading):
    cache = offloading.read_cache
    assert cache is not None
    value = os.urandom(cache.max_item_bytes + 1)
    offloading.insert(Entity("p", "r", {"v": value}))
    assert offloading.get("p", "r")["v"] == value
    assert offloading.get("p", "r")["v"] == value
    assert len(counted.gets) == 2 and len(cache) == 0


def test_equal_values_of_two_partitions_are_separate_entries(counted, offloading):
    value = os.urandom(100 * KB)
    offloading.insert(Entity("tenant-a", "r", {"v": value}))
    offloading.insert(Entity("tenant-b", "r", {"v": value}))
    assert offloading.get("tenant-a", "r")["v"] == value
    assert offloading.get("tenant-b", "r")["v"] == value
    assert len(set(counted.gets)) == 2  # one blob per write, so one entry per row
    current = offloading.get_inline("tenant-a", "r")
    offloading.delete("tenant-a", "r", if_match=current.etag, offloaded=current.offloaded)
    with pytest.raises(NotFound):
        offloading.get("tenant-a", "r")
    assert offloading.get("tenant-b", "r")["v"] == value
    assert len(counted.gets) == 2


# --------------------------------------------------------------------------- object versions


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def objects(counted, clock) -> ObjectService:
    return ObjectService(counted, clock=clock)


def test_version_content_is_fetched_once_then_served_from_the_cache(objects, counted, tenant):
    content = os.urandom(INLINE_MAX_BYTES + 1)
    info = objects.put(tenant, "doc", content)
    for _ in range(3):
        assert objects.get(tenant, "doc").data == content
    assert objects.get(tenant, "doc", version_id=info.version_id).data == content
    assert len(counted.gets) == 1
    assert (objects.content_cache_hits, objects.content_cache_misses) == (3, 1)


def test_the_head_is_read_every_time_so_a_new_version_is_seen_at_once(objects, counted, tenant):
    first, second = os.urandom(20 * KB), os.urandom(20 * KB)
    old = objects.put(tenant, "doc", first)
    assert objects.get(tenant, "doc").data == first
    objects.put(tenant, "doc", second)
    assert objects.get(tenant, "doc").data == second
    assert objects.get(tenant, "doc", version_id=old.version_id).data == first  # still cached, still there
    assert len(counted.gets) == 2


def test_a_version_deleted_here_is_not_served_from_the_cache(objects, tenant):
    info = objects.put(tenant, "doc", os.urandom(20 * KB))
    objects.get(tenant, "doc", version_id=info.version_id)
    objects.delete(tenant, "doc")
    with pytest.raises(NotFound):
        objects.get(tenant, "doc", version_id=info.version_id)
    with pytest.raises(NotFound):
        objects.get(tenant, "doc")


def test_a_version_deleted_by_another_process_is_not_served_from_the_cache(objects, counted, stores, tenant):
    info = objects.put(tenant, "doc", os.urandom(20 * KB))
    objects.get(tenant, "doc", version_id=info.version_id)  # cached in this process
    ObjectService(Stores(stores.backend, stores.settings)).delete(tenant, "doc")  # another process's service
    with pytest.raises(NotFound):
        objects.get(tenant, "doc", version_id=info.version_id)
    with pytest.raises(NotFound):
        objects.get(tenant, "doc")
    assert len(counted.gets) == 1  # judged on the rows: no blob read was needed to say so


def test_an_expired_version_is_not_served_from_the_cache(objects, clock, tenant):
    # A day in the past, so the expiry entry is due long before any other test's (Azurite and
    # moto live for the session and the expiry index is shared by every tenant); purged below.
    clock.now -= 86400
    old = objects.put(tenant, "doc", os.urandom(20 * KB), ttl_seconds=30)
    current = objects.put(tenant, "doc", os.urandom(20 * KB))
    objects.get(tenant, "doc", version_id=old.version_id)
    clock.now += 31
    with pytest.raises(NotFound):
        objects.get(tenant, "doc", version_id=old.version_id)
    assert objects.get(tenant, "doc").info.version_id == current.version_id
    objects.purge_expired(now=clock.now)
    with pytest.raises(NotFound):
        objects.get(tenant, "doc", version_id=old.version_id)


def test_one_tenant_cannot_reach_another_tenants_cached_content(objects, counted, tenant):
    other = tenant + "x"
    content = os.urandom(20 * KB)
    theirs = objects.put(other, "doc", content)
    assert objects.get(other, "doc").data == content  # cached for the other tenant
    with pytest.raises(NotFound):
        objects.get(tenant, "doc")
    with pytest.raises(NotFound):
        objects.get(tenant, "doc", version_id=theirs.version_id)
    mine = objects.put(tenant, "doc", content)  # the same key and bytes: a blob of its own
    assert objects.get(tenant, "doc").data == content
    assert len(counted.gets) == 2 and len(set(counted.gets)) == 2
    objects.delete(other, "doc")
    assert objects.get(tenant, "doc", version_id=mine.version_id).data == content


def test_content_over_the_item_limit_is_read_from_the_store_each_time(objects, counted, tenant):
    if objects.max_bytes <= CONTENT_CACHE_MAX_ITEM_BYTES:
        pytest.skip(f"objects are limited to {objects.max_bytes} bytes here: none is over the cache's item limit")
    content = os.urandom(CONTENT_CACHE_MAX_ITEM_BYTES + 1)
    objects.put(tenant, "big", content)
    assert objects.get(tenant, "big").data == content
    assert objects.get(tenant, "big").data == content
    assert len(counted.gets) == 2
