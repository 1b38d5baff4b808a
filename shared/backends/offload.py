"""Claim check: one rule, for every backend, that moves large values to blobs.

Table properties and queue messages above ``threshold`` bytes are written to the
blob store, and a reference takes their place. Readers get the value back
transparently. No SDK is involved: the rule sits above the primitives.

Formats (versioned, so they can evolve):

* entity: the property is removed and ``_offload`` holds JSON
  ``{"name": {"ref": "blob:v1:<key>", "type": "str" | "bytes"}}``;
* table value blob: ``offload/tables/<table>/<32 hex digits>``, created once and never
  rewritten, with metadata ``owner``: base64url (unpadded) of the UTF-8 JSON
  ``["<partition key>", "<row key>"]`` of the row it was written for. When that does not
  fit the 2 KiB metadata budget of the strictest cloud (keys near their 1 KiB limit),
  the key ends in ``-s`` and the owner is in a sidecar blob ``<key>.owner`` holding JSON
  ``{"v": 1, "owner": [pk, rk]}``, written before the value blob and deleted after it;
* message: the body is JSON ``{"$claimCheck": "blob:v1:<key>"}``, its blob under
  ``offload/queues/<queue>/`` (:func:`queue_offload_prefix`).

A claim check is resolved only when its key is under the receiving queue's own
prefix (:func:`check_ref`): a message that names any other blob is delivered as
the text it is, and deleting it deletes no blob, so a message cannot make a
reader fetch, or destroy, data it does not own.

Write order (the one invariant): a blob is written before the row or message that
points at it, and deleted only after nothing points at it. A crash anywhere leaves
at worst an unreferenced blob, never a dangling reference.

Who deletes a table value's blob once its row no longer names it:

* a write conditional on the ETag the entity was read with (``update`` or a batch
  op with ``if_match == entity.etag``; the entity carries its ``offloaded`` refs
  from that read): the writer, right after the write succeeds, with no extra read;
* a delete that names the row's refs (``delete(..., offloaded=...)``, or a batch
  DELETE whose entity carries ``offloaded``, as the rows of :meth:`OffloadingTable.query_inline`
  do): the deleter, right after the delete;
* a blind write (``upsert``, or ``update``/``delete`` without a known prior state): nobody
  at once. It costs no read; the blobs it replaced become unreferenced and
  :func:`sweep_unreferenced_blobs` deletes them later;
* a write that fails: the writer deletes the blobs it wrote for it. A crash before
  that (or between a write and its deletes) leaves them to the sweeper too.

Reads racing a writer: a reader reads the row, then its blobs. A writer that
replaces the row and deletes the old blobs in between makes a blob read NotFound;
the reader then reads the row again (up to :data:`READ_ATTEMPTS` times in all)
and resolves the fresh version. A row gone by then reads as gone (``get``:
NotFound; query and scan: left out), as if the read came after the delete. A row
read again unchanged (same ETag) that still names the missing blob is damaged:
:class:`OffloadedValueMissing` (500), logged, never NotFound for data that exists.
A row that keeps changing under the reader is Busy (503, send again).

Read cache: table value blobs are read through a bounded per-process cache
(:class:`BlobReadCache`, one per blob store, 32 MiB, values up to 1 MiB; LRU). No
entry is ever stale: a value blob's key is a fresh uuid per write and the blob is
never rewritten, and a reader only looks a blob up after reading a row that names
it, which it does only while the blob is that row's value. A row rewritten or
deleted by another process simply stops naming the blob, and the entry is never
asked for again; the deletes this process makes (``discard``) drop theirs at once.
Queue claim checks are not cached: each is read about once, and a blob gone means
"handled by another receiver".

The sweeper (:func:`sweep_unreferenced_blobs`, a platform timer job) finds
unreferenced table blobs from the blob side: it lists ``offload/tables/<table>/``
in key order from a cursor kept in the blob ``offload/sweep/<table>`` (the listing's
signed token and the last key examined; deleted when the listing reaches its end,
so the next run starts over), within a :class:`SweepBudget`. A blob younger than
``grace`` (default one hour) is left alone, because a write in flight writes its
blob before its row. An older one is deleted, conditional on the ETag it was seen
with, only when its owner row does not exist or its ``_offload`` does not name
it. A blob without an owner (written before owners were recorded) cannot be
attributed: it is left and counted, never deleted, since a row may still name it.
Two sweepers at once are safe: each delete is conditional, and already gone is fine.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from cachetools import LRUCache

from shared.backends.base import (
    MAX_ENTITY_BYTES,
    MAX_METADATA_BYTES,
    BlobProperties,
    BlobStore,
    Entity,
    OpKind,
    Page,
    PropertyValue,
    QueueMessage,
    QueueStore,
    TableOp,
    TableStore,
    property_size,
    validate_blob_key,
)
from shared.errors import Busy, InvalidInput, InvalidKey, NotFound, PreconditionFailed, StowageError

log = logging.getLogger(__name__)

REF_PREFIX = "blob:v1:"
OFFLOAD_PROPERTY = "_offload"
CLAIM_CHECK_FIELD = "$claimCheck"
#: Blob metadata naming the row a table value blob was written for.
OWNER_METADATA = "owner"
#: Ends the key of a value blob whose owner is in its sidecar ``<key>.owner``.
LONG_OWNER_SUFFIX = "-s"
SIDECAR_SUFFIX = ".owner"
#: How many times a read resolves a row whose blob went missing before giving up.
READ_ATTEMPTS = 3
#: Blobs younger than this are never swept: a write in flight writes its blob before its row.
DEFAULT_SWEEP_GRACE = timedelta(hours=1)
# Keep entities well under the strictest item limit once references are added.
_ENTITY_BUDGET = MAX_ENTITY_BYTES - 16 * 1024
_SWEEP_PAGE = 100


class OffloadedValueMissing(StowageError):
    """A row names an offloaded value whose blob is gone, and the row has not changed: damaged data."""

    status = 500
    title = "Stored value missing"


def make_ref(key: str) -> str:
    return REF_PREFIX + key


def parse_ref(ref: str) -> str:
    if not isinstance(ref, str) or not ref.startswith(REF_PREFIX):
        raise ValueError(f"not a blob reference: {ref!r}")
    return ref[len(REF_PREFIX):]
def check_ref(ref: object, prefix: str) -> str:
    """The blob key ``ref`` names, if it is a well-formed reference to a blob under ``prefix``.

    The one rule for references that arrive from outside (queue messages): the
    text must be ``blob:v1:<key>``, the key a valid blob key (no empty, ``.`` or
    ``..`` segment, no backslash or control character) and strictly under
    ``prefix``, which ends with ``/``. ValueError says which part failed; nothing
    is read.
    """
    if not prefix.endswith("/"):
        raise ValueError(f"allowed prefix {prefix!r} must end with '/'")
    shown = ref if not isinstance(ref, str) or len(ref) <= 200 else ref[:200] + "…"
    if not isinstance(ref, str) or not ref.startswith(REF_PREFIX):
        raise ValueError(f"{shown!r} is not a '{REF_PREFIX}<key>' reference")
    key = ref[len(REF_PREFIX):]
    try:
        validate_blob_key(key)
    except InvalidKey as exc:
        raise ValueError(f"{shown!r} is not a valid blob key: {exc}") from None
    if not key.startswith(prefix) or len(key) == len(prefix):
        raise ValueError(f"{shown!r} is outside {REF_PREFIX}{prefix}, the only place it may point")
    return key


def queue_offload_prefix(queue_name: str) -> str:
    """Where the claim-check blobs of ``queue_name`` live (and the only place its claim checks may point)."""
    return f"offload/queues/{queue_name}/"


def table_offload_prefix(table_name: str) -> str:
    """Where the value blobs of ``table_name`` live (what the sweeper lists)."""
    return f"offload/tables/{table_name}/"


def sweep_cursor_key(table_name: str) -> str:
    """The blob that keeps where the sweep of ``table_name`` stopped (outside the swept prefix)."""
    return f"offload/sweep/{table_name}"


def encode_owner(partition_key: str, row_key: str) -> str:
    """The ``owner`` metadata value for a row: base64url, unpadded, of JSON ``[pk, rk]``."""
    text = json.dumps([partition_key, row_key], ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _owner_from_json(document: object) -> tuple[str, str] | None:
    if (isinstance(document, list) and len(document) == 2
            and all(isinstance(key, str) and key for key in document)):
        return document[0], document[1]
    return None


def decode_owner(value: str) -> tuple[str, str] | None:
    """The (partition key, row key) an ``owner`` metadata value names, or None when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return _owner_from_json(json.loads(raw.decode("utf-8")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        return None


def _fits_metadata(owner: str) -> bool:
    return len(OWNER_METADATA) + len(owner) <= MAX_METADATA_BYTES


#: Bytes of offloaded table values one blob store's read cache holds (LRU), and the largest value it keeps.
READ_CACHE_MAX_BYTES = 32 * 1024 * 1024
READ_CACHE_MAX_ITEM_BYTES = 1024 * 1024


class BlobReadCache:
    """Contents of immutable blobs by key: least recently used out first, bounded in bytes; thread-safe.

    Only for blobs written once under a key never reused (the table value blobs:
    a uuid per write, create-only). Such a blob's bytes are right for as long as
    anything names it, so an entry needs no validation; the module docstring ("Read
    cache") says why a reader is never handed the bytes of a value it no longer names.
    ``hits`` and ``misses`` count lookups since creation.
    """

    def __init__(self, max_bytes: int = READ_CACHE_MAX_BYTES, max_item_bytes: int = READ_CACHE_MAX_ITEM_BYTES) -> None:
        if max_item_bytes > max_bytes:
            raise ValueError("max_item_bytes cannot exceed max_bytes")
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._entries: LRUCache[str, bytes] = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_item_bytes:
            return
        with self._lock:
            self._entries[key] = data

    def discard(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes held now (at most ``max_bytes``)."""
        return int(self._entries.currsize)


# One read cache per blob store object (a backend hands out one per container), so every
# table of one Stores shares one budget, and the cache goes when the store does.
_READ_CACHES: weakref.WeakKeyDictionary[BlobStore, BlobReadCache] = weakref.WeakKeyDictionary()
_READ_CACHES_LOCK = threading.Lock()


def read_cache_of(blobs: BlobStore) -> BlobReadCache:
    """The read cache of table value blobs kept for ``blobs`` in this process (made on first use)."""
    with _READ_CACHES_LOCK:
        cache = _READ_CACHES.get(blobs)
        if cache is None:
            cache = _READ_CACHES[blobs] = BlobReadCache()
        return cache


class _BlobSide:
    """Writes and deletes the offloaded blobs under one key prefix; reads through ``cache`` when given."""

    def __init__(self, blobs: BlobStore, prefix: str, cache: BlobReadCache | None = None) -> None:
        self.blobs = blobs
        self.prefix = prefix
        self.cache = cache

    def write(self, data: bytes, content_type: str, owner: tuple[str, str] | None = None) -> str:
        """A new blob holding ``data``, recording ``owner`` (the row's keys) when given; its reference."""
        key = f"{self.prefix}/{uuid.uuid4().hex}"
        if owner is None:
            self.blobs.put(key, data, content_type=content_type, if_none_match=True)
            return make_ref(key)
        encoded = encode_owner(*owner)
        if _fits_metadata(encoded):
            self.blobs.put(key, data, content_type=content_type, metadata={OWNER_METADATA: encoded},
                           if_none_match=True)
            return make_ref(key)
        key += LONG_OWNER_SUFFIX
        sidecar = key + SIDECAR_SUFFIX
        document = json.dumps({"v": 1, "owner": list(owner)}, ensure_ascii=False, separators=(",", ":"))
        self.blobs.put(sidecar, document.encode("utf-8"), content_type="application/json", if_none_match=True)
        try:
            self.blobs.put(key, data, content_type=content_type, if_none_match=True)
        except BaseException:
            self._delete_quietly(sidecar)
            raise
        return make_ref(key)

    def read(self, ref: str) -> bytes:
        key = parse_ref(ref)
        if self.cache is None:
            return self.blobs.get(key).data
        data = self.cache.get(key)
        if data is None:
            data = bytes(self.blobs.get(key).data)
            self.cache.put(key, data)
        return data

    def discard(self, refs: Sequence[str]) -> None:
        """Delete blobs no longer referenced (a sidecar after its value). Already gone is fine
        (a retry, or a racing writer)."""
        for ref in refs:
            key = parse_ref(ref)
            if self.cache is not None:
                self.cache.discard(key)
            self._delete_quietly(key)
            if key.endswith(LONG_OWNER_SUFFIX):
                self._delete_quietly(key + SIDECAR_SUFFIX)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except NotFound:
            pass


class _MissingBlob(Exception):
    """A blob a row names was not there when read (internal: the read is retried)."""

    def __init__(self, ref: str) -> None:
        super().__init__(ref)
        self.ref = ref


def _manifest(stored: Entity) -> dict[str, dict[str, str]]:
    manifest_text = stored.properties.get(OFFLOAD_PROPERTY)
    if not isinstance(manifest_text, str):
        return {}
    manifest: dict[str, dict[str, str]] = json.loads(manifest_text)
    return manifest


class OffloadingTable:
    """A :class:`TableStore` with the claim-check rule applied to every property.

    Same methods as the table it wraps; values of any size are accepted (up to
    what one blob holds). No write reads the entity first: see the module
    docstring for who deletes replaced blobs, and when.
    """

    def __init__(self, table: TableStore, blobs: BlobStore, threshold: int) -> None:
        self.table = table
        self.name = table.name
        self.threshold = threshold
        self._side = _BlobSide(blobs, table_offload_prefix(table.name).rstrip("/"), read_cache_of(blobs))

    @property
    def read_cache(self) -> BlobReadCache | None:
        """The cache this table's value blobs are read through (shared by every table on the same blob store)."""
        return self._side.cache

    # -- encoding

    def _pack(self, entity: Entity) -> tuple[Entity, list[str]]:
        """The entity as stored, and the references of the blobs written for it."""
        properties: dict[str, PropertyValue] = {k: v for k, v in entity.properties.items() if v is not None}
        # The common case in one pass: every value inline and the entity within budget.
        total = largest = 0
        for name, value in properties.items():
            size = property_size(value)
            total += len(name) * 2 + size
            if size > largest:
                largest = size
        if largest <= self.threshold and total <= _ENTITY_BUDGET:
            return Entity(entity.partition_key, entity.row_key, properties, entity.etag), []
        sizes = {name: property_size(value) for name, value in properties.items()}
        big = [name for name, size in sizes.items() if size > self.threshold]
        total = sum(len(name) * 2 + size for name, size in sizes.items())
        kept = total - sum(sizes[name] for name in big)
        if kept > _ENTITY_BUDGET:
            # Many medium values: move the largest out until the rest fits.
            rest = sorted((n for n in properties if n not in big), key=lambda n: -sizes[n])
            while kept > _ENTITY_BUDGET and rest:
                name = rest.pop(0)
                big.append(name)
                kept -= sizes[name]
        if not big:
            return Entity(entity.partition_key, entity.row_key, properties, entity.etag), []
        owner = (entity.partition_key, entity.row_key)
        manifest: dict[str, dict[str, str]] = {}
        written: list[str] = []
        try:
            for name in big:
                value = properties.pop(name)
                if isinstance(value, str):
                    ref, kind = self._side.write(value.encode("utf-8"), "text/plain; charset=utf-8", owner), "str"
                elif isinstance(value, bytes):
                    ref, kind = self._side.write(value, "application/octet-stream", owner), "bytes"
                else:  # numbers and bools are never large; kept for completeness
                    properties[name] = value
                    continue
                written.append(ref)
                manifest[name] = {"ref": ref, "type": kind}
        except BaseException:
            self._side.discard(written)
            raise
        properties[OFFLOAD_PROPERTY] = json.dumps(manifest, separators=(",", ":"))
        return Entity(entity.partition_key, entity.row_key, properties, entity.etag), written

    def _unpack_once(self, stored: Entity) -> Entity:
        properties = dict(stored.properties)
        manifest = _manifest(stored)
        properties.pop(OFFLOAD_PROPERTY, None)
        refs: dict[str, str] = {}
        for name, entry in manifest.items():
            try:
                data = self._side.read(entry["ref"])
            except NotFound:
                raise _MissingBlob(entry["ref"]) from None
            properties[name] = data.decode("utf-8") if entry["type"] == "str" else data
            refs[name] = entry["ref"]
        return Entity(stored.partition_key, stored.row_key, properties, stored.etag, refs)

    def _unpack(self, stored: Entity) -> Entity | None:
        """The entity with its values, read again when a blob went missing under a writer;
        None when the entity was deleted meanwhile (see "Reads racing a writer")."""
        for _ in range(READ_ATTEMPTS):
            try:
                return self._unpack_once(stored)
            except _MissingBlob as missing:
                try:
                    fresh = self.table.get(stored.partition_key, stored.row_key)
                except NotFound:
                    return None  # deleted since it was read: as if read after the delete
                if fresh.etag == stored.etag:
                    log.error("table %s, entity (%r, %r) at ETag %s names blob %s, which does not exist",
                              self.name, stored.partition_key, stored.row_key, stored.etag, missing.ref)
                    raise OffloadedValueMissing(
                        f"entity ({stored.partition_key!r}, {stored.row_key!r}) of table {self.name!r} names an "
                        f"offloaded value that is missing from blob storage ({missing.ref}); the row is damaged"
                    ) from None
                stored = fresh  # replaced meanwhile: resolve the new version
        raise Busy(f"entity ({stored.partition_key!r}, {stored.row_key!r}) of table {self.name!r} kept changing "
                   "while it was read; read it again")

    def _unpacked(self, stored: Sequence[Entity]) -> list[Entity]:
        return [entity for entity in map(self._unpack, stored) if entity is not None]

    @staticmethod
    def _refs_of(stored: Entity) -> list[str]:
        return [entry["ref"] for entry in _manifest(stored).values()]

    @staticmethod
    def _replaced_refs(entity: Entity, if_match: str | None) -> list[str]:
        """Blobs a write replaces, when known without a read: those of the entity read at the
        ETag the write is conditional on. A blind write frees nothing (the sweeper will)."""
        if if_match is not None and entity.etag == if_match:
            return list(entity.offloaded.values())
        return []

    # -- reads

    def get(self, partition_key: str, row_key: str) -> Entity:
        entity = self._unpack(self.table.get(partition_key, row_key))
        if entity is None:
            raise NotFound(f"entity ({partition_key!r}, {row_key!r}) does not exist in table {self.name!r}")
        return entity

    def query(self, partition_key: str, **kwargs: Any) -> Page[Entity]:
        page = self.table.query(partition_key, **kwargs)
        return Page(self._unpacked(page.items), page.continuation)

    def query_all(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]:
        for stored in self.table.query_all(partition_key, **kwargs):
            entity = self._unpack(stored)
            if entity is not None:
                yield entity

    def scan(self, **kwargs: Any) -> Page[Entity]:
        page = self.table.scan(**kwargs)
        return Page(self._unpacked(page.items), page.continuation)

    def sign_continuation(self, partition_key: str, state: dict[str, Any], *, purpose: str) -> str:
        """A service's own signed paging token (see :meth:`TableStore.sign_continuation`)."""
        return self.table.sign_continuation(partition_key, state, purpose=purpose)

    def verify_continuation(self, partition_key: str, token: str, *, purpose: str) -> dict[str, Any]:
        """The state of a token :meth:`sign_continuation` made for this partition and purpose; 400 otherwise."""
        return self.table.verify_continuation(partition_key, token, purpose=purpose)

    # -- reads of what is stored inline (no blob is downloaded)

    def get_inline(self, partition_key: str, row_key: str) -> Entity:
        """The entity without its offloaded values (left out; ``offloaded`` names their blobs).

        One table read, nothing more: for existence checks, keys and small fields. A
        conditional write or delete of it frees its blobs without reading again.
        """
        return self._inline(self.table.get(partition_key, row_key))

    def query_inline(self, partition_key: str, **kwargs: Any) -> Page[Entity]:
        """:meth:`query` without downloading offloaded values (see :meth:`get_inline`)."""
        page = self.table.query(partition_key, **kwargs)
        return Page([self._inline(e) for e in page.items], page.continuation)

    def query_all_inline(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]:
        """:meth:`query_all` without downloading offloaded values (see :meth:`get_inline`)."""
        for stored in self.table.query_all(partition_key, **kwargs):
            yield self._inline(stored)

    #: The name services used first (rows listed to be deleted).
    query_for_delete = query_inline

    @staticmethod
    def _inline(stored: Entity) -> Entity:
        properties = dict(stored.properties)
        manifest = _manifest(stored)
        properties.pop(OFFLOAD_PROPERTY, None)
        refs = {name: entry["ref"] for name, entry in manifest.items()}
        return Entity(stored.partition_key, stored.row_key, properties, stored.etag, refs)

    # -- writes

    def _write(self, kind: OpKind, entity: Entity, if_match: str | None) -> str:
        old = [] if kind is OpKind.INSERT else self._replaced_refs(entity, if_match)
        stored, written = self._pack(entity)
        try:
            if kind is OpKind.INSERT:
                etag = self.table.insert(stored)
            elif kind is OpKind.UPSERT:
                etag = self.table.upsert(stored)
            else:
                etag = self.table.update(stored, if_match=if_match)
        except BaseException:
            self._side.discard(written)
            raise
        self._side.discard(old)
        return etag

    def insert(self, entity: Entity) -> str:
        return self._write(OpKind.INSERT, entity, None)

    def upsert(self, entity: Entity) -> str:
        """Create or replace without reading: blobs of a replaced version are left to the sweeper."""
        return self._write(OpKind.UPSERT, entity, None)

    def update(self, entity: Entity, *, if_match: str | None = None) -> str:
        """Replace; with ``if_match == entity.etag`` the blobs of the version read (``entity.offloaded``)
        are deleted right after, otherwise they are left to the sweeper."""
        return self._write(OpKind.UPDATE, entity, if_match)

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None,
               offloaded: dict[str, str] | None = None) -> None:
        """Delete; ``offloaded``: the refs of the row as read (its blobs are deleted right after).
        Without it nothing is read and the row's blobs are left to the sweeper."""
        self.table.delete(partition_key, row_key, if_match=if_match)
        self._side.discard(list((offloaded or {}).values()))

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        """Atomic batch; blobs of the new values are written first and removed if it fails.

        Blobs a write replaces are deleted after it as :meth:`update` and :meth:`delete` say.
        """
        stored_ops: list[TableOp] = []
        written: list[str] = []
        old: list[str] = []
        try:
            for op in operations:
                if op.kind is OpKind.DELETE:
                    old.extend(op.entity.offloaded.values())
                    stored_ops.append(op)
                    continue
                if op.kind is not OpKind.INSERT:
                    old.extend(self._replaced_refs(op.entity, op.if_match))
                stored, refs = self._pack(op.entity)
                written.extend(refs)
                stored_ops.append(TableOp(op.kind, stored, op.if_match))
            etags = self.table.batch(stored_ops)
        except BaseException:
            self._side.discard(written)
            raise
        self._side.discard(old)
        return etags

    # -- maintenance

    def sweep_unreferenced(self, *, budget: SweepBudget, now: datetime | None = None,
                           grace: timedelta = DEFAULT_SWEEP_GRACE) -> SweepStats:
        """One bounded run of :func:`sweep_unreferenced_blobs` over this table's blobs."""
        return sweep_unreferenced_blobs(self.table, self._side.blobs, budget=budget, now=now, grace=grace)


# --------------------------------------------------------------------------- the sweeper


class SweepBudget(Protocol):
    """How much one sweep may do (``shared.storage.due.Budget`` is one): checked before each blob."""

    @property
    def exhausted(self) -> bool: ...

    def spend(self) -> None: ...


@dataclass
class SweepStats:
    """What one sweep run saw."""

    #: Blobs looked at (each spends one unit of the budget).
    examined: int = 0
    #: Unreferenced value blobs deleted (sidecars deleted with them are not counted).
    deleted: int = 0
    #: Blobs still named by their owner row.
    referenced: int = 0
    #: Blobs younger than the grace period, left for a later run.
    young: int = 0
    #: Blobs with no owner recorded (written before owners were): left, never deleted.
    unattributable: int = 0
    #: True when the listing reached its end (the next run starts from the beginning).
    finished: bool = False


@dataclass
class _Cursor:
    """Where a sweep stopped: the listing token of the page it was in, and the last key it examined."""

    page: str | None = None
    after: str = ""
    #: Whether a cursor blob was there when the run began (so finishing must delete it).
    stored: bool = False

    @classmethod
    def load(cls, blobs: BlobStore, key: str) -> _Cursor:
        try:
            document = json.loads(blobs.get(key).data)
        except NotFound:
            return cls()
        except (ValueError, UnicodeError):
            log.warning("sweep cursor %s is not readable; starting from the beginning", key)
            return cls(stored=True)
        page, after = (document.get("page"), document.get("after")) if isinstance(document, dict) else (None, None)
        if not (page is None or isinstance(page, str)) or not isinstance(after, str):
            log.warning("sweep cursor %s is not one the sweeper wrote; starting from the beginning", key)
            return cls(stored=True)
        return cls(page, after, stored=True)

    def save(self, blobs: BlobStore, key: str) -> None:
        if self.page is None and not self.after:
            if self.stored:  # finished: the next run starts over
                try:
                    blobs.delete(key)
                except NotFound:
                    pass
            return
        document = {"v": 1, "page": self.page, "after": self.after}
        blobs.put(key, json.dumps(document).encode("utf-8"), content_type="application/json")


def sweep_unreferenced_blobs(table: TableStore, blobs: BlobStore, *, budget: SweepBudget,
                             now: datetime | None = None, grace: timedelta = DEFAULT_SWEEP_GRACE,
                             page_size: int = _SWEEP_PAGE) -> SweepStats:
    """Delete value blobs of ``table`` that no row names any more; one bounded, resumable run.

    ``table`` is the stored table (not the offloading one), ``blobs`` the container
    the offload layer writes to. ``now`` (timezone-aware; default: the current time)
    judges age against ``grace``. Continues from where the last run stopped; see
    the module docstring for what is deleted and why it is safe.
    """
    moment = datetime.now(timezone.utc) if now is None else now
    sweep = _Sweep(table, blobs, moment, grace)
    prefix = table_offload_prefix(table.name)
    cursor_key = sweep_cursor_key(table.name)
    cursor = _Cursor.load(blobs, cursor_key)
    while not budget.exhausted:
        try:
            page = blobs.list(prefix, limit=page_size, continuation=cursor.page)
        except InvalidInput:
            if cursor.page is None:
                raise
            log.warning("sweep cursor of %s no longer opens its listing; starting from the beginning", table.name)
            cursor = _Cursor(stored=True)
            continue
        for item in page.items:
            if item.key <= cursor.after:
                continue  # examined by an earlier run that stopped inside this page
            if budget.exhausted:
                cursor.save(blobs, cursor_key)
                return sweep.stats
            budget.spend()
            sweep.examine(item)
            cursor.after = item.key
        if page.continuation is None:
            sweep.stats.finished = True
            _Cursor(stored=cursor.stored).save(blobs, cursor_key)
            return sweep.stats
        cursor = _Cursor(page.continuation, stored=True)
    cursor.save(blobs, cursor_key)
    return sweep.stats


class _Sweep:
    """The decisions of one sweep run, blob by blob."""

    def __init__(self, table: TableStore, blobs: BlobStore, now: datetime, grace: timedelta) -> None:
        if now.tzinfo is None:
            raise InvalidInput("now must be timezone-aware")
        self.table = table
        self.blobs = blobs
        self.now = now
        self.grace = grace
        self.stats = SweepStats()

    def examine(self, listed: BlobProperties) -> None:
        self.stats.examined += 1
        try:
            blob = self.blobs.head(listed.key)  # metadata, and the ETag the delete is conditional on
        except NotFound:
            return  # deleted since it was listed
        if blob.last_modified is None or self.now - blob.last_modified < self.grace:
            self.stats.young += 1
            return
        if blob.key.endswith(SIDECAR_SUFFIX):
            self._examine_sidecar(blob)
            return
        owner = self._owner_of(blob)
        if owner is None:
            self.stats.unattributable += 1
            return
        try:
            row: Entity | None = self.table.get(*owner)
        except NotFound:
            row = None
        except InvalidKey:
            self.stats.unattributable += 1
            return
        if row is not None:
            try:
                named = make_ref(blob.key) in OffloadingTable._refs_of(row)
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("table %s, entity %r: unreadable %s; blob %s kept", self.table.name, owner,
                            OFFLOAD_PROPERTY, blob.key)
                named = True
            if named:
                self.stats.referenced += 1
                return
        if self._delete(blob):
            self.stats.deleted += 1
            if blob.key.endswith(LONG_OWNER_SUFFIX):
                try:
                    self.blobs.delete(blob.key + SIDECAR_SUFFIX)
                except NotFound:
                    pass

    def _owner_of(self, blob: BlobProperties) -> tuple[str, str] | None:
        if blob.key.endswith(LONG_OWNER_SUFFIX):
            try:
                document = json.loads(self.blobs.get(blob.key + SIDECAR_SUFFIX).data)
            except NotFound:
                return None
            except (ValueError, UnicodeError, RecursionError):
                return None
            return _owner_from_json(document.get("owner")) if isinstance(document, dict) else None
        value = blob.metadata.get(OWNER_METADATA)
        return decode_owner(value) if value else None

    def _examine_sidecar(self, sidecar: BlobProperties) -> None:
        """A sidecar is deleted with its value blob; alone (its value gone, or never written) it is deleted here."""
        if self.blobs.exists(sidecar.key[:-len(SIDECAR_SUFFIX)]):
            return
        self._delete(sidecar)

    def _delete(self, blob: BlobProperties) -> bool:
        """Delete ``blob`` unless it changed since it was seen; whether it was deleted here."""
        try:
            self.blobs.delete(blob.key, if_match=blob.etag)
        except (NotFound, PreconditionFailed):
            return False  # gone already (another sweeper), or rewritten since: not ours to judge now
        return True


class OffloadingQueue:
    """A :class:`QueueStore` whose messages may be of any size.

    A body above ``threshold`` bytes goes to a blob under
    :func:`queue_offload_prefix`; the message carries
    ``{"$claimCheck": "blob:v1:<key>"}``. Receiving resolves it, and deleting the
    message by its receipt deletes the blob. A claim check that points anywhere
    else is not resolved: the message comes back as it is, and deleting it
    deletes only the message.
    """

    def __init__(self, queue: QueueStore, blobs: BlobStore, threshold: int) -> None:
        self.queue = queue
        self.name = queue.name
        self.threshold = threshold
        self.prefix = queue_offload_prefix(queue.name)
        self._side = _BlobSide(blobs, self.prefix.rstrip("/"))

    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        data = body.encode("utf-8")
        if len(data) <= self.threshold:
            return self.queue.send(body, delay_seconds=delay_seconds)
        ref = self._side.write(data, "application/json")
        try:
            return self.queue.send(json.dumps({CLAIM_CHECK_FIELD: ref}), delay_seconds=delay_seconds)
        except BaseException:
            self._side.discard([ref])
            raise

    def _resolve(self, message: QueueMessage) -> QueueMessage:
        if message.undecodable:
            return message  # shown raw as it is; a reference inside it is never followed
        ref = claim_check_ref(message.body)
        if ref is None:
            return message
        try:
            check_ref(ref, self.prefix)
        except ValueError as exc:
            log.warning("message %s of %s: claim check not resolved: %s", message.id, self.name, exc)
            return message
        try:
            body = self._side.read(ref).decode("utf-8")
        except NotFound:
            # Its blob is gone: the message was handled and deleted by another receiver.
            return replace(message, body="")
        return replace(message, body=body, receipt=f"{message.receipt}\n{ref}")

    def receive(self, **kwargs: Any) -> list[QueueMessage]:
        return [self._resolve(m) for m in self.queue.receive(**kwargs)]

    def peek(self, **kwargs: Any) -> list[QueueMessage]:
        return [self._resolve(m) for m in self.queue.peek(**kwargs)]

    def delete(self, receipt: str) -> None:
        inner, _, ref = receipt.partition("\n")
        self.queue.delete(inner)
        if ref:
            self._side.discard([ref])

    def extend(self, receipt: str, visibility_timeout: int) -> str:
        inner, sep, ref = receipt.partition("\n")
        return self.queue.extend(inner, visibility_timeout) + sep + ref

    def approximate_length(self) -> int:
        return self.queue.approximate_length()


def claim_check_ref(body: str) -> str | None:
    """The blob reference a claim-check message carries, or None for an ordinary message."""
    if not body.startswith("{") or CLAIM_CHECK_FIELD not in body:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse: not a claim check
        return None
    if isinstance(document, dict) and len(document) == 1 and isinstance(document.get(CLAIM_CHECK_FIELD), str):
        ref: str = document[CLAIM_CHECK_FIELD]
        return ref
    return None
