"""Objects: versioned key/value data (JSON, text, binary) per tenant, with TTL.

Layout, all in table ``stowageobjects``, partition = tenant, so that an object's
head, its new version and its idempotency marker change in one atomic batch:

* ``h|<key part>``: the head (current version, size, type, timestamps);
* ``v|<key part>|<version>``: one entity per version, newest first (version ids count down);
* ``i|<idempotency key part>``: which version a retried write already produced.

A key part is :func:`shared.keys.key_part` of the key: the escaped key, or for the
rare keys whose escaped form is too long for a table key (many ``%``, ``/`` or emoji
in 256 characters), its first characters, ``%~`` and a hash; such a head also holds
the full key (``key``), which listings report and filter by. So every key of up to
256 characters is stored, and prefix listings stay exact (see shared.keys for the
order of hashed keys).

Content up to 8 KiB lives in the entities; larger content is one immutable blob
per version, written create-only before the entities that point at it.

TTL: a version written with ``ttl_seconds`` carries ``expires_at``. Reads judge it
with the service's clock at read time: an expired current version makes the whole
object gone (every read and every version 404, as if deleted at that instant), and
an expired older version is gone on its own (404 by ``version_id``, not listed). The
next write over an expired object first deletes what is left of it, so nothing
comes back. Each expiring version gets an index entry in one of the partitions
``!expiry|00`` to ``!expiry|15`` (``!`` cannot start a tenant; a hash of tenant and
key picks the shard, so TTL writes of all tenants do not pile onto one partition),
row key ``<expiry, epoch s rounded up>|<tenant>|<key hash>|<version>`` with the key
as a property, which the retention timer reads up to now: it deletes the object
when that version is still current, otherwise that version's row and blob, then
the entry. Entries of the earlier format (escaped key instead of its hash) are read too.

One partition per tenant caps one tenant's object writes at the table's
partition throughput (about 2,000 entities/s on Azure): fine for configuration,
agent state and documents, the workloads objects are for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from shared import names
from shared.backends import Entity, OpKind, Page, TableOp
from shared.backends.base import MAX_BATCH_OPERATIONS
from shared.command_ops import CommandOp, CommandPayload, Outcome
from shared.errors import AlreadyExists, Busy, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.keys import check_path_key, check_tenant, is_hashed, key_part, key_part_prefix, unescape
from shared.stores import Stores

INLINE_MAX_BYTES = 8 * 1024
MAX_KEY_LENGTH = 256
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
EXPIRY_SHARDS = 16  # expiry entries of every tenant, spread so no one partition takes all TTL writes
_WRITE_ATTEMPTS = 8
_VERSION_SPAN = 10**20
#: ``If-Match: *``: any current version (RFC 9110).
ANY = "*"


@dataclass(frozen=True)
class ObjectInfo:
    """An object version's description, without content."""

    key: str
    #: Also the object's ETag (quoted in the ETag header); it changes on every write.
    version_id: str
    size: int
    content_type: str
    created_at: str
    updated_at: str
    expires_at: str | None = None
    is_current: bool = True

    @property
    def etag(self) -> str:
        """The object's ETag is its version id: it changes on every write."""
        return self.version_id


@dataclass(frozen=True)
class StoredObject:
    """An object version with its content."""

    info: ObjectInfo
    data: bytes


EXPIRY_PREFIX = "!expiry|"


def _expiry_partition(tenant: str, key: str) -> str:
    shard = int.from_bytes(hashlib.sha256(f"{tenant}|{key}".encode()).digest()[:4], "big") % EXPIRY_SHARDS
    return f"{EXPIRY_PREFIX}{shard:02d}"


def _expiry_rk(expires: float, tenant: str, key: str, version_id: str) -> str:
    # Rounded up, so an entry that is due (row key <= now) is for a version that has expired.
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"{math.ceil(expires):012d}|{tenant}|{digest}|{version_id}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


def _new_version_id() -> str:
    # Counts down with time, so ascending row keys list the newest version first.
    return f"{_VERSION_SPAN - 1 - time.time_ns():020d}{secrets.token_hex(2)}"


class ObjectService:
    """Objects of every tenant; each call names its tenant.

    ``clock`` gives the time in epoch seconds for timestamps and TTL (default
    :func:`time.time`); tests pass their own to move time.
    """

    def __init__(self, stores: Stores, *, clock: Callable[[], float] = time.time) -> None:
        self._table = stores.table(names.TABLE_OBJECTS)
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self.max_bytes = stores.settings.max_object_bytes
        self._clock = clock

    # -- keys

    @staticmethod
    def _head_rk(key: str) -> str:
        return "h|" + key_part(key)

    @staticmethod
    def _versions_prefix(key: str) -> str:
        return "v|" + key_part(key) + "|"

    @staticmethod
    def _blob_key(tenant: str, key: str, version_id: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
        return f"tenants/{tenant}/objects/{digest}/{version_id}"

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
        """Write a new version and make it current.

        ``if_match``: only if the current version id is this, or with ``"*"`` only if
        the object exists (PreconditionFailed otherwise). ``if_none_match``: only if the
        object does not exist (PreconditionFailed otherwise, as RFC 9110 has it).
        ``idempotency_key``: a retry with the same key returns the first result.
        Size is checked before anything is written (TooLarge).
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
        marker_rk = None
        if idempotency_key is not None:
            if not idempotency_key or len(idempotency_key) > 200:
                raise InvalidInput("idempotency key must be 1-200 characters")
            marker_rk = "i|" + key_part(idempotency_key)
            done = self._replayed(tenant, marker_rk)
            if done is not None:
                return done

        now = self._clock()
        version_id = _new_version_id()
        expires_at = _iso(now + ttl_seconds) if ttl_seconds else None
        content: dict[str, bytes | str] = {}
        blob_key = None
        if len(data) <= INLINE_MAX_BYTES:
            content["data"] = bytes(data)
        else:
            blob_key = self._blob_key(tenant, key, version_id)
            self._blobs.put(blob_key, bytes(data), content_type=content_type, if_none_match=True)
            content["blob"] = blob_key
        try:
            if ttl_seconds:
                self._table.upsert(Entity(_expiry_partition(tenant, key),
                                          _expiry_rk(now + ttl_seconds, tenant, key, version_id), {"key": key}))
            return self._commit(tenant, key, version_id, len(data), content_type, content, now, expires_at,
                                if_match, if_none_match, marker_rk)
        except BaseException:
            if blob_key:
                self._discard_blob(blob_key)
            raise

    def _commit(self, tenant, key, version_id, size, content_type, content, now, expires_at,
                if_match, if_none_match, marker_rk) -> ObjectInfo:
        head_rk = self._head_rk(key)
        stamp = _iso(now)
        version = {"size": size, "content_type": content_type, "created_at": stamp, **content}
        if expires_at:
            version["expires_at"] = expires_at
        for _ in range(_WRITE_ATTEMPTS):
            head = self._find(tenant, head_rk)
            exists = head is not None and not self._expired(head, now)
            if if_none_match and exists:
                raise PreconditionFailed(f"object {key!r} already exists (If-None-Match: *)")
            if if_match is not None and (not exists or (if_match != ANY and head["version"] != if_match)):
                what = "does not exist" if not exists else f"is not at version {if_match}"
                raise PreconditionFailed(f"object {key!r} {what}")
            if head is not None and not exists:
                # Expired: gone since it expired. Delete what is left first, so no old version comes back.
                try:
                    self._remove(tenant, key, head)
                except (NotFound, PreconditionFailed):
                    pass  # someone else is at it: read again
                continue
            head_props = {**version, "version": version_id, "updated_at": stamp,
                          "created_at": head["created_at"] if exists else stamp}
            if is_hashed(head_rk):
                head_props["key"] = key
            head_entity = Entity(tenant, head_rk, head_props)
            ops = [
                TableOp.insert(head_entity) if head is None else TableOp.update(head_entity, if_match=head.etag),
                TableOp.insert(Entity(tenant, self._versions_prefix(key) + version_id, version)),
            ]
            if marker_rk:
                # The marker keeps the answer itself, so a replay needs no version that may be gone by then.
                answer = {"key": key, "version": version_id, "size": size, "content_type": content_type,
                          "created_at": head_props["created_at"], "updated_at": stamp, "expires_at": expires_at}
                ops.append(TableOp.insert(Entity(tenant, marker_rk, answer)))
            try:
                self._table.batch(ops)
            except (AlreadyExists, PreconditionFailed, NotFound):
                if marker_rk:
                    done = self._replayed(tenant, marker_rk)
                    if done is not None:
                        return done
                if if_none_match:
                    raise PreconditionFailed(f"object {key!r} already exists (If-None-Match: *)") from None
                if if_match is not None and if_match != ANY:
                    raise PreconditionFailed(f"object {key!r} changed during the write") from None
                continue  # lost a race that does not decide the condition: read the new head and go again
            return self._info(key, head_entity, current=True)
        raise Busy(f"object {key!r} is being written too often to win a write; retry")

    def _replayed(self, tenant: str, marker_rk: str) -> ObjectInfo | None:
        marker = self._find(tenant, marker_rk)
        if marker is None:
            return None
        key, version_id = str(marker["key"]), str(marker["version"])
        if marker.get("size") is not None:
            return ObjectInfo(key, version_id, int(marker["size"]), str(marker["content_type"]),
                              str(marker["created_at"]), str(marker["updated_at"]), marker.get("expires_at"),
                              is_current=True)  # as the first answer said
        # A marker from before markers kept the answer: describe the version, if it is still there.
        version = self._find(tenant, self._versions_prefix(key) + version_id)
        if version is None:
            raise NotFound(f"the write with this idempotency key made version {version_id} of {key!r}, "
                           "which has been deleted since")
        return self._info(key, version, current=False, version_id=version_id)

    def delete(self, tenant: str, key: str, *, if_match: str | None = None) -> None:
        """Delete the object and every version. Safe to retry after a crash halfway.

        ``if_match``: only if the current version id is this (PreconditionFailed), or
        with ``"*"`` only if the object exists (PreconditionFailed when it does not).
        NotFound when there is no object, an expired one included (whose rows go now).
        """
        self._check(tenant, key)
        head = self._find(tenant, self._head_rk(key))
        live = head is not None and not self._expired(head, self._clock())
        if if_match == ANY and not live:
            raise PreconditionFailed(f"object {key!r} does not exist (If-Match: *)")
        if live and if_match not in (None, ANY) and head["version"] != if_match:
            raise PreconditionFailed(f"object {key!r} is not at version {if_match}")
        removed = self._remove(tenant, key, head)
        if not removed or (head is not None and not live):  # nothing, or an expired object's remains
            raise NotFound(f"object {key!r} does not exist")

    def _remove(self, tenant: str, key: str, head: Entity | None) -> bool:
        """Delete ``head`` (as read) and every version of ``key``; False when there was nothing."""
        versions = list(self._table.query_all(tenant, prefix=self._versions_prefix(key)))
        if head is None and not versions:
            return False
        # Conditional on the ETags just read, so the offload layer knows their blobs without re-reading.
        ops = [TableOp(OpKind.DELETE, e, e.etag) for e in ([head] if head is not None else []) + versions]
        for start in range(0, len(ops), MAX_BATCH_OPERATIONS):
            try:
                self._table.batch(ops[start:start + MAX_BATCH_OPERATIONS])
            except PreconditionFailed:
                raise PreconditionFailed(f"object {key!r} changed during the delete; retry") from None
        for version in versions:
            blob_key = version.get("blob")
            if blob_key:
                self._discard_blob(str(blob_key))
        return True

    def _discard_blob(self, blob_key: str) -> None:
        try:
            self._blobs.delete(blob_key)
        except NotFound:
            pass

    # -- reads

    def _find(self, tenant: str, row_key: str) -> Entity | None:
        try:
            return self._table.get(tenant, row_key)
        except NotFound:
            return None

    @staticmethod
    def _expired(entity: Entity, now: float) -> bool:
        expires = entity.get("expires_at")
        if not expires:
            return False
        return datetime.fromisoformat(str(expires)).timestamp() <= now

    def _info(self, key: str, entity: Entity, *, current: bool, version_id: str | None = None) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            version_id=version_id or str(entity["version"]),
            size=int(entity["size"]),
            content_type=str(entity["content_type"]),
            created_at=str(entity["created_at"]),
            updated_at=str(entity.get("updated_at") or entity["created_at"]),
            expires_at=entity.get("expires_at"),
            is_current=current,
        )

    def _live_head(self, tenant: str, key: str, now: float) -> Entity:
        head = self._find(tenant, self._head_rk(key))
        if head is None or self._expired(head, now):
            raise NotFound(f"object {key!r} does not exist")
        return head

    def _entity(self, tenant: str, key: str, version_id: str | None) -> tuple[Entity, ObjectInfo]:
        self._check(tenant, key)
        now = self._clock()
        head = self._live_head(tenant, key, now)
        if version_id is None:
            return head, self._info(key, head, current=True)
        if not version_id.isalnum() or len(version_id) > 40:
            raise NotFound(f"object {key!r} has no version {version_id!r}")
        entity = self._find(tenant, self._versions_prefix(key) + version_id)
        if entity is None or self._expired(entity, now):
            raise NotFound(f"object {key!r} has no version {version_id!r}")
        return entity, self._info(key, entity, current=head["version"] == version_id, version_id=version_id)

    def head(self, tenant: str, key: str, version_id: str | None = None) -> ObjectInfo:
        return self._entity(tenant, key, version_id)[1]

    def get(self, tenant: str, key: str, version_id: str | None = None) -> StoredObject:
        entity, info = self._entity(tenant, key, version_id)
        data = entity.get("data")
        if data is None:
            data = self._blobs.get(str(entity["blob"])).data
        return StoredObject(info, bytes(data))

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
        page = self._table.query(tenant, prefix="h|" + part, limit=limit, continuation=continuation)
        now = self._clock()
        items = []
        for entity in page.items:
            key = str(entity["key"]) if "key" in entity.properties else unescape(entity.row_key[2:])
            if self._expired(entity, now) or not (exact or key.startswith(prefix)):
                continue
            items.append(self._info(key, entity, current=True))
        return Page(items, page.continuation)

    def versions(self, tenant: str, key: str, *, limit: int = 100,
                 continuation: str | None = None) -> Page[ObjectInfo]:
        """Every version of an object that has not expired, newest first (NotFound when the
        object does not exist). A page may hold fewer than ``limit`` and still continue."""
        self._check(tenant, key)
        now = self._clock()
        current = str(self._live_head(tenant, key, now)["version"])
        prefix = self._versions_prefix(key)
        page = self._table.query(tenant, prefix=prefix, limit=limit, continuation=continuation)
        items = [
            self._info(key, e, current=e.row_key[len(prefix):] == current, version_id=e.row_key[len(prefix):])
            for e in page.items
            if not self._expired(e, now)
        ]
        return Page(items, page.continuation)

    # -- retention

    def purge_expired(self, *, now: float | None = None, limit: int = 500) -> int:
        """Delete what has expired: an object whose current version expired (every
        version), and each expired older version (its row and blob). Returns how many
        expiry entries deleted something. Idempotent and resumable.

        Reads each expiry shard's due row keys (at most ``limit`` entries per run in
        all), starting from a shard that rotates with time so a backlog starves none.
        """
        now = self._clock() if now is None else now
        purged, budget = 0, limit
        first = int(now // 60) % EXPIRY_SHARDS
        for step in range(EXPIRY_SHARDS):
            if budget <= 0:
                break
            partition = f"{EXPIRY_PREFIX}{(first + step) % EXPIRY_SHARDS:02d}"
            due = self._table.query(partition, end=f"{int(now):012d}|~", limit=min(budget, 1000))
            budget -= len(due.items)
            for entry in due.items:
                purged += self._purge_entry(entry, now)
        return purged

    def _purge_entry(self, entry: Entity, now: float) -> int:
        _, tenant, key_field, version_id = entry.row_key.split("|")
        key = str(entry["key"]) if "key" in entry.properties else unescape(key_field)  # earlier entries: escaped key
        head = self._find(tenant, self._head_rk(key))
        purged = 0
        if head is not None and head["version"] == version_id:
            if not self._expired(head, now):
                return 0  # not due after all (an entry of the earlier format, rounded down): keep it
            try:
                purged = int(self._remove(tenant, key, head))
            except (NotFound, PreconditionFailed):  # rewritten meanwhile: this version is an old one now
                purged = self._purge_version(tenant, key, version_id, now)
        else:
            purged = self._purge_version(tenant, key, version_id, now)
        if purged < 0:
            return 0  # the version has not expired: keep the entry
        try:
            self._table.delete(entry.partition_key, entry.row_key)
        except NotFound:
            pass  # another timer instance got here first
        return purged

    def _purge_version(self, tenant: str, key: str, version_id: str, now: float) -> int:
        """Delete one old version if it expired: 1 when deleted, 0 when gone, -1 when not expired."""
        version = self._find(tenant, self._versions_prefix(key) + version_id)
        if version is None:
            return 0
        if not self._expired(version, now):
            return -1
        try:
            self._table.delete(tenant, version.row_key, if_match=version.etag)
        except (NotFound, PreconditionFailed):
            return 0  # deleted meanwhile, with its object
        blob_key = version.get("blob")
        if blob_key:
            self._discard_blob(str(blob_key))
        return 1

    def iter_keys(self, tenant: str, prefix: str = "") -> Iterator[str]:
        token = None
        while True:
            page = self.list(tenant, prefix, limit=1000, continuation=token)
            yield from (info.key for info in page.items)
            token = page.continuation
            if not token:
                return


# --------------------------------------------------------------------------- queue commands


class ObjectsPutPayload(CommandPayload):
    """Write an object. Give exactly one of ``json``, ``text`` or ``base64``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "oneOf": [{"required": ["json"]}, {"required": ["text"]}, {"required": ["base64"]}]})

    key: str = Field(description="Object key, e.g. 'agent_configs/ceo'.")
    json_value: Any = Field(default=None, alias="json", description="A JSON value, stored as application/json.")
    text: str | None = Field(default=None, description="Text, stored as text/plain; charset=utf-8.")
    base64: str | None = Field(default=None, description="Binary content, base64-encoded.")
    content_type: str | None = Field(default=None, description="Overrides the content type implied above.")
    if_match: str | None = Field(default=None, description="Apply only if the object is at this version.")
    ttl_seconds: int | None = Field(default=None, ge=1, description="Expire the object this many seconds after.")

    @model_validator(mode="after")
    def _one_content(self) -> ObjectsPutPayload:
        given = [f for f in ("json_value", "text", "base64") if f in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of 'json', 'text' or 'base64'")
        return self

    def content(self) -> tuple[bytes, str]:
        if "json_value" in self.model_fields_set:
            data = json.dumps(self.json_value, ensure_ascii=False).encode("utf-8")
            return data, self.content_type or "application/json"
        if self.text is not None:
            return self.text.encode("utf-8"), self.content_type or "text/plain; charset=utf-8"
        try:
            data = base64.b64decode(self.base64 or "", validate=True)
        except binascii.Error as exc:
            raise InvalidInput("'base64' is not valid base64") from exc
        return data, self.content_type or "application/octet-stream"


class ObjectsDeletePayload(CommandPayload):
    """Delete an object and all its versions."""

    key: str
    if_match: str | None = None


def _apply_put(service: ObjectService, tenant: str, payload: ObjectsPutPayload, idempotency_key: str) -> Outcome:
    data, content_type = payload.content()
    info = service.put(tenant, payload.key, data, content_type, if_match=payload.if_match,
                                     ttl_seconds=payload.ttl_seconds, idempotency_key=idempotency_key)
    return Outcome("applied", f"{payload.key} at version {info.version_id}")


def _apply_delete(service: ObjectService, tenant: str, payload: ObjectsDeletePayload, idempotency_key: str) -> Outcome:
    try:
        service.delete(tenant, payload.key, if_match=payload.if_match)
    except NotFound:
        return Outcome("duplicate", f"{payload.key} already gone")
    return Outcome("applied", f"{payload.key} deleted")


COMMANDS = (
    CommandOp("objects.put", ObjectsPutPayload, _apply_put, "Write an object (a new version)."),
    CommandOp("objects.delete", ObjectsDeletePayload, _apply_delete, "Delete an object and all its versions."),
)
