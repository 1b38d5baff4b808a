"""Objects: versioned key/value data (JSON, text, binary) per tenant, with TTL.

The rows and blobs are laid out as :mod:`shared.domains.objects._layout` says:
partition = tenant, so an object's head, its new version and its idempotency
marker change in one atomic batch.

Writes go through :func:`shared.storage.mutate.mutate`: read the head, decide
(If-Match / If-None-Match are judged there, a stale one is a 412), write head,
version and marker in one batch conditional on the head's ETag. A lost race reads
again; out of attempts, :class:`~shared.errors.Busy` (503). An idempotency key is
fingerprinted over the key, the content's SHA-256, the content type, the TTL and
the conditions: the same request again answers the first result and status (also
after the object was deleted: the marker keeps the answer), another request with
that key is refused (422) and writes nothing.

A put of content over 8 KiB first writes its version's blob (create-only), and an
expiring put first files its expiry entry; a crash before the batch leaves an
orphan blob (never read; nothing collects it) or an entry for a version that never
was, which the retention timer drops. A put that turns out to be a replay deletes
the blob it wrote. A delete removes the oldest versions first and the head with the newest
ones (and the marker) last, so a crash halfway leaves the object readable with
fewer old versions, and a retry finishes it; blobs go after their rows.

TTL: a version written with ``ttl_seconds`` carries ``expires_at`` (epoch seconds). Reads judge it
with the service's clock at read time: an expired current version makes the whole
object gone (every read and every version 404, as if deleted at that instant), and
an expired older version is gone on its own (404 by ``version_id``, not listed). The
next write over an expired object first deletes what is left of it, so nothing
comes back. The retention timer reads the expiry index (a due index, fair across
tenants) up to now: it deletes the object when that version is still current,
otherwise that version's row and blob, then the entry. An entry is filed before
its version is written, so a crash leaves at worst an entry for no version, which
the timer drops.

Read cache: the content blob of a version (content over 8 KiB) is written once
under a key naming the tenant, the object and the version id, and never rewritten,
so each service instance keeps the latest read ones in a bounded LRU cache
(:data:`CONTENT_CACHE_MAX_BYTES`, items up to :data:`CONTENT_CACHE_MAX_ITEM_BYTES`).
Only the content is cached, never a row: every read still reads the head (and, by
``version_id``, the version's row) first, and judges existence and expiry on them,
so a deleted or expired version is a 404 whichever process deleted it, and the
cache is asked only for a version that exists. The cached bytes are valid for as
long as the version exists; this instance drops an entry when it deletes the blob.
A version id is a nanosecond clock reading plus 16 random bits, so a key deleted in
another process is never written again with other content.

Change records (:mod:`shared.storage.changefeed`): a put writes one
(``objects.put``: version id, size, content SHA-256 and type, never the content) in
the batch of its head and version, a delete one (``objects.delete``) in the batch
that deletes the head, and expiry one (``objects.expire``, by whoever acts: the
retention timer as the system, or the write that finds an object expired) in the
batch that deletes the head, or with an expired old version's row. A replay or a
refused write records nothing. Outbox rows (``~outbox|``) share the tenant's
partition; every read here is by a prefix (``h|``, ``v|``, ``i|``), so none sees them.

Audited reads (setting ``audit_reads``, ``STOWAGE_AUDIT_READS``, off by default):
each :meth:`ObjectService.get` that finds its version writes one record
(``objects.read``: version id, size and SHA-256 of the content as returned, never the
content; the SHA-256 is the one the version's ``objects.put`` recorded) as an outbox
insert of its own in the tenant's partition, after the content is read and before it
is returned, also when the content came from the read cache. A read that fails (404)
records nothing; a record that cannot be written (throttled, backend down) fails the
read with that error, so an audited read is never served unrecorded. A crash after
the record and before the answer leaves a record of a read nobody received.
``head``, ``versions`` and ``list`` return no content and record nothing. Cost per
audited read: one more table write (plus the feed's hint at most every ``grace / 2``)
and a SHA-256 pass over the content.

One partition per tenant caps one tenant's object writes at the table's
partition throughput (about 2,000 entities/s on Azure), and with ``audit_reads``
its reads too (each writes its record there): fine for configuration, agent state
and documents, the workloads objects are for.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from cachetools import LRUCache

from shared import names
from shared.backends import Entity, OpKind, Page, TableOp
from shared.backends.base import MAX_BATCH_OPERATIONS
from shared.domains.domain import change_record
from shared.domains.objects import _layout as layout
from shared.domains.objects._layout import EXPIRES_INDEX, EXPIRY_PREFIX, EXPIRY_SHARDS
from shared.domains.objects.models import (
    ANY,
    INLINE_MAX_BYTES,
    MAX_KEY_LENGTH,
    MAX_TTL_SECONDS,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectVersionMismatch,
    ObjectVersionNotFound,
    StoredObject,
)
from shared.errors import InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.keys import check_path_key, check_tenant, key_part_prefix
from shared.storage.changefeed import ChangeRecord
from shared.storage.due import Budget, DueEntry, DueIndex
from shared.storage.idempotency import Idempotency, lookup
from shared.storage.mutate import Change, Codec, Outbox, Outcome, find, mutate
from shared.storage.retry import LostRace, conditional
from shared.stores import Stores

_INFO = Codec(encode=layout.encode_info, decode=layout.decode_info)
_DELETED = Codec[None](encode=lambda result: None, decode=lambda stored: None)
#: Rows one delete batch may take besides the idempotency marker and the change record.
_DELETE_BATCH = MAX_BATCH_OPERATIONS - 2
#: Wall time one retention run may take by default (the timer runs every 5 minutes).
PURGE_BUDGET_SECONDS = 45.0
_LEGACY_PAGE = 100
#: Bytes of version content one service instance keeps in its read cache, and the largest item it keeps.
CONTENT_CACHE_MAX_BYTES = 32 * 1024 * 1024
CONTENT_CACHE_MAX_ITEM_BYTES = 1024 * 1024


class ObjectService:
    """Objects of every tenant; each call names its tenant.

    ``clock`` gives the time in epoch seconds for timestamps and TTL (default
    :func:`time.time`); tests pass their own to move time.
    """

    def __init__(self, stores: Stores, *, clock: Callable[[], float] = time.time) -> None:
        self._table = stores.table(names.TABLE_OBJECTS)
        self._stores = stores
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self.max_bytes = stores.settings.max_object_bytes
        #: Whether :meth:`get` records each read (``STOWAGE_AUDIT_READS``).
        self.audit_reads = stores.settings.audit_reads
        self._clock = clock
        # DueIndex is annotated with TableStore; the offloading table has every method it uses.
        self._expiry = DueIndex(self._table, EXPIRES_INDEX, clock=clock)
        # Version content blobs by key (immutable: see "Read cache" above); LRUCache is not thread-safe.
        self._content: LRUCache[str, bytes] = LRUCache(maxsize=CONTENT_CACHE_MAX_BYTES, getsizeof=len)
        self._content_lock = threading.Lock()
        #: Content reads served from the cache, and those that went to the blob store.
        self.content_cache_hits = 0
        self.content_cache_misses = 0

    def _outbox(self, tenant: str) -> Outbox:
        return self._stores.outbox(tenant, names.TABLE_OBJECTS)

    @staticmethod
    def _record(op: str, key: str, details: dict[str, object]) -> ChangeRecord:
        return change_record("objects", op, "object", key, details)

    @staticmethod
    def _check(tenant: str, key: str) -> None:
        check_tenant(tenant)
        check_path_key(key, max_length=MAX_KEY_LENGTH)

    # -- writes

    def put(
        self,
        tenant: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> ObjectInfo:
        """Write a new version and make it current; see :meth:`put_outcome`."""
        return self.put_outcome(tenant, key, data, content_type, if_match=if_match, if_none_match=if_none_match,
                                ttl_seconds=ttl_seconds, idempotency_key=idempotency_key).result

    def put_outcome(
        self,
        tenant: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> Outcome[ObjectInfo]:
        """Write a new version and make it current; the answer, its status (201 for the
        first version of an object, 200 otherwise) and whether it was a replay.

        ``if_match``: only if the current version id is this, or with ``"*"`` only if
        the object exists (PreconditionFailed otherwise). ``if_none_match``: only if the
        object does not exist (PreconditionFailed otherwise, as RFC 9110 has it).
        ``idempotency_key``: the same request again returns the first answer;
        another request with the key raises IdempotencyKeyReused (422).
        Size is checked before anything is written (TooLarge); Busy when the object
        changes too often to win a write.
        """
        self._check(tenant, key)
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidInput("object data must be bytes")
        if len(data) > self.max_bytes:
            raise TooLarge(f"object is {len(data)} bytes; the limit is {self.max_bytes}")
        if not content_type or len(content_type) > 255:
            raise InvalidInput("content type must be 1-255 characters")
        if if_match is not None and if_none_match:
            raise InvalidInput("If-Match and If-None-Match cannot be combined")
        if ttl_seconds is not None and not (isinstance(ttl_seconds, int) and 0 < ttl_seconds <= MAX_TTL_SECONDS):
            raise InvalidInput(f"ttl_seconds must be from 1 to {MAX_TTL_SECONDS}")
        digest = hashlib.sha256(data).hexdigest()
        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency.of(idempotency_key, "objects.put", {
                "key": key, "sha256": digest, "content_type": content_type,
                "ttl_seconds": ttl_seconds, "if_match": if_match, "if_none_match": if_none_match})
            done = self._replay(tenant, idempotency)
            if done is not None:
                return done

        now = self._clock()
        version_id = layout.new_version_id()
        expires_at = now + ttl_seconds if ttl_seconds else None
        content: dict[str, bytes | str] = {}
        blob_key = None
        if len(data) <= INLINE_MAX_BYTES:
            content["data"] = bytes(data)
        else:
            blob_key = layout.blob_key(tenant, key, version_id)
            self._blobs.put(blob_key, bytes(data), content_type=content_type, if_none_match=True)
            content["blob"] = blob_key
        version = layout.version_props(len(data), content_type, now, content, expires_at)
        head_rk = layout.head_rk(key)

        def decide(head: Entity | None) -> Change[ObjectInfo]:
            exists = head is not None
            if if_none_match and head is not None:
                raise ObjectExists(key, layout.head_version(head))
            if if_match is not None and (head is None or (if_match != ANY and layout.head_version(head) != if_match)):
                raise ObjectVersionMismatch(key, if_match, None if head is None else layout.head_version(head))
            created_at = layout.time_of(head["created_at"]) if head is not None else now
            head_entity = Entity(tenant, head_rk, layout.head_props(key, version, version_id, created_at, now,
                                                                    head_rk))
            ops = [
                TableOp.insert(head_entity) if head is None else TableOp.update(head_entity, if_match=head.etag),
                TableOp.insert(Entity(tenant, layout.version_rk(key, version_id), version)),
            ]
            info = layout.info_of(key, head_entity, current=True)
            return Change(ops, info, status=200 if exists else 201)

        try:
            if ttl_seconds:
                self._expiry.file(tenant, layout.expiry_item(key, version_id), layout.expiry_due(now + ttl_seconds),
                                  layout.expiry_props(key))
            outcome = mutate(self._table, partition=tenant, read=lambda: self._live_or_none(tenant, key, now),
                             decide=decide, what=f"object {key!r}", idempotency=idempotency, codec=_INFO,
                             outbox=self._outbox(tenant),
                             record=lambda info: self._record("objects.put", key, {
                                 "version_id": info.version_id, "size": info.size, "sha256": digest,
                                 "content_type": info.content_type}),
                             clock=self._clock)
        except BaseException:
            if blob_key:
                self._discard_blob(blob_key)
            raise
        if outcome.replayed and blob_key:
            self._discard_blob(blob_key)  # a concurrent first application of this request won
        return outcome

    def _replay(self, tenant: str, idempotency: Idempotency) -> Outcome[ObjectInfo] | None:
        """The first answer to this request, from its marker or from a marker of the earlier format."""
        replay = lookup(self._table, tenant, idempotency)
        if replay is not None:
            return Outcome(layout.decode_info(replay.result), replayed=True, status=replay.status)
        marker = find(self._table, tenant, layout.legacy_marker_rk(idempotency.key))
        if marker is None or "fp" in marker.properties:
            return None
        # The earlier format kept no fingerprint: the key alone identifies the request.
        key, version_id = str(marker["key"]), str(marker["version"])
        if marker.get("size") is not None:
            return Outcome(layout.decode_info(marker.properties), replayed=True)
        # A marker from before markers kept the answer: describe the version, if it is still there.
        version = find(self._table, tenant, layout.version_rk(key, version_id))
        if version is None:
            raise ObjectVersionNotFound(key, version_id, f"the write with this idempotency key made version "
                                                         f"{version_id} of {key!r}, which has been deleted since")
        return Outcome(layout.info_of(key, version, current=False, version_id=version_id), replayed=True)

    def _live_or_none(self, tenant: str, key: str, now: float) -> Entity | None:
        """The head, or None when there is none; an expired object's remains are deleted first,
        so no old version comes back (it has been gone since it expired)."""
        head = find(self._table, tenant, layout.head_rk(key))
        if head is not None and layout.expired(head, now):
            self._remove(tenant, key, head)  # LostRace when someone else is at it: read again
            return None
        return head

    def delete(self, tenant: str, key: str, *, if_match: str | None = None,
               idempotency_key: str | None = None) -> None:
        """Delete the object and every version; see :meth:`delete_outcome`."""
        self.delete_outcome(tenant, key, if_match=if_match, idempotency_key=idempotency_key)

    def delete_outcome(self, tenant: str, key: str, *, if_match: str | None = None,
                       idempotency_key: str | None = None) -> Outcome[None]:
        """Delete the object and every version. Safe to retry after a crash halfway.

        ``if_match``: only if the current version id is this (PreconditionFailed), or
        with ``"*"`` only if the object exists (PreconditionFailed when it does not).
        NotFound when there is no object, an expired one included (whose rows go now).
        ``idempotency_key``: the same request again answers as the first did (a replay,
        not NotFound); another request with the key raises IdempotencyKeyReused (422).
        Busy when the object changes too often to win the delete.
        """
        self._check(tenant, key)
        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency.of(idempotency_key, "objects.delete", {"key": key, "if_match": if_match})
        now = self._clock()
        removed: list[Entity] = []
        deleted: dict[str, object] = {}

        def read() -> tuple[Entity | None, list[Entity]]:
            head = self._live_or_none(tenant, key, now)
            self._check_delete(key, head, if_match)
            versions = list(self._table.query_all(tenant, prefix=layout.versions_prefix(key)))
            keep = _DELETE_BATCH - (1 if head is not None else 0)
            if len(versions) > keep:  # too many for one batch: the oldest go first, the object stays readable
                self._delete_rows(tenant, key, versions[keep:])
                versions = versions[:keep]
            return head, versions

        def decide(state: tuple[Entity | None, list[Entity]]) -> Change[None]:
            head, versions = state
            self._check_delete(key, head, if_match)
            if head is None and not versions:
                raise ObjectNotFound(key)
            rows = ([head] if head is not None else []) + versions
            removed[:] = versions
            deleted.update(version_id=layout.head_version(head) if head is not None else None)
            return Change([TableOp(OpKind.DELETE, row, row.etag) for row in rows], None, status=204)

        outcome = mutate(self._table, partition=tenant, read=read, decide=decide, what=f"object {key!r}",
                         idempotency=idempotency, codec=_DELETED, outbox=self._outbox(tenant),
                         record=lambda _: self._record("objects.delete", key, dict(deleted)), clock=self._clock)
        if not outcome.replayed:
            self._discard_blobs(removed)
        return outcome

    @staticmethod
    def _check_delete(key: str, head: Entity | None, if_match: str | None) -> None:
        if if_match == ANY and head is None:
            raise ObjectVersionMismatch(key, ANY, None)
        if head is not None and if_match not in (None, ANY) and layout.head_version(head) != if_match:
            raise ObjectVersionMismatch(key, if_match, layout.head_version(head))

    def _remove(self, tenant: str, key: str, head: Entity | None) -> bool:
        """Delete an expired object: ``head`` (as read) and every version of ``key``; False when there was nothing.

        The head goes in the first batch, with the oldest versions and the change record
        (``objects.expire``); LostRace when a row changed meanwhile.
        """
        versions = list(self._table.query_all(tenant, prefix=layout.versions_prefix(key)))
        if head is None and not versions:
            return False
        record = self._record("objects.expire", key, {
            "version_id": layout.head_version(head) if head is not None else None, "object": True})
        self._delete_rows(tenant, key, versions + ([head] if head is not None else []), record)
        return True

    def _delete_rows(self, tenant: str, key: str, rows: Sequence[Entity], record: ChangeRecord | None = None) -> None:
        """Delete ``rows`` (newest first, as listed) from the end, a batch at a time, then their blobs.

        Conditional on the ETags read, so the offload layer knows their blobs without
        re-reading; LostRace when one changed or went meanwhile. ``record`` goes with the
        first batch.
        """
        ops = [TableOp(OpKind.DELETE, row, row.etag) for row in rows]
        end = len(ops)
        while end > 0:
            start = max(0, end - MAX_BATCH_OPERATIONS + (1 if record is not None else 0))
            batch = ops[start:end] + self._outbox(tenant).ops(tenant, record)
            with conditional():
                self._table.batch(batch)
            record = None
            end = start
        self._discard_blobs(rows)

    def _discard_blobs(self, rows: Sequence[Entity]) -> None:
        for row in rows:
            if row.row_key.startswith(layout.VERSION) and (blob := layout.blob_of(row)):
                self._discard_blob(blob)

    def _discard_blob(self, blob_key: str) -> None:
        with self._content_lock:
            self._content.pop(blob_key, None)
        try:
            self._blobs.delete(blob_key)
        except NotFound:
            pass

    # -- reads

    def _live_head(self, tenant: str, key: str, now: float) -> Entity:
        head = find(self._table, tenant, layout.head_rk(key))
        if head is None or layout.expired(head, now):
            raise ObjectNotFound(key)
        return head

    def _entity(self, tenant: str, key: str, version_id: str | None) -> tuple[Entity, ObjectInfo]:
        self._check(tenant, key)
        now = self._clock()
        head = self._live_head(tenant, key, now)
        if version_id is None:
            return head, layout.info_of(key, head, current=True)
        if not version_id.isalnum() or len(version_id) > 40:
            raise ObjectVersionNotFound(key, version_id)
        entity = find(self._table, tenant, layout.version_rk(key, version_id))
        if entity is None or layout.expired(entity, now):
            raise ObjectVersionNotFound(key, version_id)
        current = layout.head_version(head) == version_id
        return entity, layout.info_of(key, entity, current=current, version_id=version_id)

    def head(self, tenant: str, key: str, version_id: str | None = None) -> ObjectInfo:
        """The current version's description (or ``version_id``'s); NotFound when gone or expired."""
        return self._entity(tenant, key, version_id)[1]

    def get(self, tenant: str, key: str, version_id: str | None = None) -> StoredObject:
        """The current version with its content (or ``version_id``'s); NotFound when gone or expired.

        With ``audit_reads``, the read is recorded (``objects.read``) before the content is
        returned; when the record cannot be written the read fails with that error.
        """
        entity, info = self._entity(tenant, key, version_id)
        data = layout.inline_data(entity)
        if data is None:
            data = self._content_of(str(entity["blob"]))
        content = bytes(data)
        if self.audit_reads:
            self._outbox(tenant).record_alone(self._table, tenant, self._record("objects.read", key, {
                "version_id": info.version_id, "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest()}))
        return StoredObject(info, content)

    def _content_of(self, blob_key: str) -> bytes:
        """A version's content blob, from the read cache when there; call only after reading its row."""
        with self._content_lock:
            data = self._content.get(blob_key)
            if data is not None:
                self.content_cache_hits += 1
                return data
            self.content_cache_misses += 1
        data = bytes(self._blobs.get(blob_key).data)
        if len(data) <= CONTENT_CACHE_MAX_ITEM_BYTES:
            with self._content_lock:
                self._content[blob_key] = data
        return data

    def list(self, tenant: str, prefix: str = "", *, limit: int = 100,
             continuation: str | None = None) -> Page[ObjectInfo]:
        """Current objects whose key starts with ``prefix``, in key order.

        A page may hold fewer than ``limit`` objects (expired ones are skipped) and
        still have a ``continuation``.
        """
        check_tenant(tenant)
        if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH:
            raise InvalidInput("prefix must be a string of at most 256 characters")
        part, exact = key_part_prefix(prefix)
        page = self._table.query(tenant, prefix=layout.HEAD + part, limit=limit, continuation=continuation)
        now = self._clock()
        items = []
        for entity in page.items:
            key = layout.head_key(entity)
            if layout.expired(entity, now) or not (exact or key.startswith(prefix)):
                continue
            items.append(layout.info_of(key, entity, current=True))
        return Page(items, page.continuation)

    def versions(self, tenant: str, key: str, *, limit: int = 100,
                 continuation: str | None = None) -> Page[ObjectInfo]:
        """Every version of an object that has not expired, newest first (NotFound when the
        object does not exist). A page may hold fewer than ``limit`` and still continue."""
        self._check(tenant, key)
        now = self._clock()
        current = layout.head_version(self._live_head(tenant, key, now))
        prefix = layout.versions_prefix(key)
        page = self._table.query(tenant, prefix=prefix, limit=limit, continuation=continuation)
        items = [
            layout.info_of(key, e, current=e.row_key[len(prefix):] == current, version_id=e.row_key[len(prefix):])
            for e in page.items
            if not layout.expired(e, now)
        ]
        return Page(items, page.continuation)

    def iter_keys(self, tenant: str, prefix: str = "") -> Iterator[str]:
        """Every current key starting with ``prefix``, in key order, page by page."""
        token = None
        while True:
            page = self.list(tenant, prefix, limit=1000, continuation=token)
            yield from (info.key for info in page.items)
            token = page.continuation
            if not token:
                return

    # -- retention

    def purge_expired(self, *, now: float | None = None, limit: int | None = None,
                      budget: Budget | None = None) -> int:
        """Delete what has expired: an object whose current version expired (every
        version), and each expired older version (its row and blob). Returns how many
        expiry entries deleted something. Idempotent, resumable, safe on several
        instances at once.

        Round-robin over the tenants with due entries (:class:`~shared.storage.due.DueIndex`),
        so one tenant's backlog delays no other tenant's expiry beyond one run; works
        while due entries remain, within ``budget`` (default: :data:`PURGE_BUDGET_SECONDS`
        of wall time, and at most ``limit`` entries when given); the next run takes the
        rest. Then, budget left, what remains of the earlier expiry index.
        """
        now = self._clock() if now is None else now
        budget = budget or Budget(seconds=PURGE_BUDGET_SECONDS, items=limit)  # a bad limit is InvalidInput
        purged = 0
        for entry in self._expiry.due(now, budget):
            purged += self._purge_due(entry, now)
        if not budget.exhausted:
            purged += self._drain_legacy(now, budget)
        return purged

    def _purge_due(self, entry: DueEntry, now: float) -> int:
        key, version_id = layout.expiry_target(entry.item, entry.properties)
        purged = self._purge(entry.tenant, key, version_id, now)
        if purged < 0:
            return 0  # the version has not expired: keep the entry
        self._expiry.done(entry)
        return purged

    def _drain_legacy(self, now: float, budget: Budget) -> int:
        """Entries of the earlier index: a page per shard and run, from a shard that rotates with time."""
        purged = 0
        first = int(now // 60) % EXPIRY_SHARDS
        for step in range(EXPIRY_SHARDS):
            partition = f"{EXPIRY_PREFIX}{(first + step) % EXPIRY_SHARDS:02d}"
            for entry in self._table.query(partition, end=f"{int(now):012d}|~", limit=_LEGACY_PAGE).items:
                if budget.exhausted:
                    return purged
                budget.spend()
                purged += self._purge_legacy(entry, now)
        return purged

    def _purge_legacy(self, entry: Entity, now: float) -> int:
        target = layout.expiry_entry(entry)
        purged = self._purge(target.tenant, target.key, target.version_id, now)
        if purged < 0:
            return 0  # not due after all (an entry of the earlier format, rounded down): keep it
        try:
            self._table.delete(entry.partition_key, entry.row_key)
        except NotFound:
            pass  # another timer instance got here first
        return purged

    def _purge(self, tenant: str, key: str, version_id: str, now: float) -> int:
        """Delete ``version_id`` of ``key`` if it expired (the whole object when it is current):
        1 when this deleted something, 0 when it was gone, -1 when it has not expired."""
        head = find(self._table, tenant, layout.head_rk(key))
        if head is not None and layout.head_version(head) == version_id:
            if not layout.expired(head, now):
                return -1
            try:
                return int(self._remove(tenant, key, head))
            except LostRace:  # rewritten meanwhile: this version is an old one now
                pass
        return self._purge_version(tenant, key, version_id, now)

    def _purge_version(self, tenant: str, key: str, version_id: str, now: float) -> int:
        """Delete one old version if it expired: 1 when deleted, 0 when gone, -1 when not expired."""
        version = find(self._table, tenant, layout.version_rk(key, version_id))
        if version is None:
            return 0
        if not layout.expired(version, now):
            return -1
        record = self._record("objects.expire", key, {"version_id": version_id, "object": False})
        try:
            self._table.batch([TableOp(OpKind.DELETE, version, version.etag), *self._outbox(tenant).ops(tenant, record)])
        except (NotFound, PreconditionFailed):
            return 0  # deleted meanwhile, with its object
        self._discard_blobs([version])
        return 1


__all__ = ["ANY", "EXPIRES_INDEX", "INLINE_MAX_BYTES", "MAX_KEY_LENGTH", "MAX_TTL_SECONDS", "PURGE_BUDGET_SECONDS",
           "ObjectInfo", "ObjectService", "StoredObject"]
