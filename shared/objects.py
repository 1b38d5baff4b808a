"""Objects: versioned key/value data (JSON, text, binary) per tenant, with TTL.

Layout, all in table ``stowageobjects``, partition = tenant, so that an object's
head, its new version and its idempotency marker change in one atomic batch:

* ``h|<key>``: the head (current version, size, type, timestamps);
* ``v|<key>|<version>``: one entity per version, newest first (version ids count down);
* ``i|<idempotency key>``: which version a retried write already produced.

Content up to 8 KiB lives in the entities; larger content is one immutable blob
per version, written create-only before the entities that point at it. Expiring
objects get an index entry in one of the partitions ``!expiry|00`` to ``!expiry|15``
(``!`` cannot start a tenant; a hash of tenant and key picks the shard, so TTL writes
of all tenants do not pile onto one partition), row key ``<expiry, epoch s>|...``,
which the retention timer reads up to now; reads treat an expired object as gone at once.

One partition per tenant caps one tenant's object writes at the table's
partition throughput (about 2,000 entities/s on Azure): fine for configuration,
agent state and documents, the workloads objects are for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from shared import names
from shared.backends import Entity, OpKind, Page, TableOp
from shared.backends.base import MAX_BATCH_OPERATIONS
from shared.command_ops import CommandOp, CommandPayload, Outcome
from shared.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.keys import check_path_key, check_tenant, escape, unescape
from shared.stores import Stores

INLINE_MAX_BYTES = 8 * 1024
MAX_KEY_LENGTH = 256
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
EXPIRY_SHARDS = 16  # expiry entries of every tenant, spread so no one partition takes all TTL writes
_WRITE_ATTEMPTS = 8
_VERSION_SPAN = 10**20


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


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


def _new_version_id() -> str:
    # Counts down with time, so ascending row keys list the newest version first.
    return f"{_VERSION_SPAN - 1 - time.time_ns():020d}{secrets.token_hex(2)}"


class ObjectService:
    """Objects of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_OBJECTS)
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self.max_bytes = stores.settings.max_object_bytes

    # -- keys

    @staticmethod
    def _head_rk(key: str) -> str:
        return "h|" + escape(key)

    @staticmethod
    def _versions_prefix(key: str) -> str:
        return "v|" + escape(key) + "|"

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

        ``if_match``: only if the current version id is this (PreconditionFailed).
        ``if_none_match``: only if the object does not exist (AlreadyExists).
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
            marker_rk = "i|" + escape(idempotency_key)
            done = self._replayed(tenant, marker_rk)
            if done is not None:
                return done

        now = time.time()
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
            if expires_at:
                self._table.upsert(Entity(_expiry_partition(tenant, key),
                                          f"{int(now + ttl_seconds):012d}|{tenant}|{escape(key)}|{version_id}"))
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
                raise AlreadyExists(f"object {key!r} already exists")
            if if_match is not None and (not exists or head["version"] != if_match):
                raise PreconditionFailed(f"object {key!r} is not at version {if_match}")
            head_props = {**version, "version": version_id, "updated_at": stamp,
                          "created_at": head["created_at"] if exists else stamp}
            head_entity = Entity(tenant, head_rk, head_props)
            ops = [
                TableOp.insert(head_entity) if head is None else TableOp.update(head_entity, if_match=head.etag),
                TableOp.insert(Entity(tenant, self._versions_prefix(key) + version_id, version)),
            ]
            if marker_rk:
                ops.append(TableOp.insert(Entity(tenant, marker_rk, {"key": key, "version": version_id})))
            try:
                self._table.batch(ops)
            except (AlreadyExists, PreconditionFailed, NotFound):
                if marker_rk:
                    done = self._replayed(tenant, marker_rk)
                    if done is not None:
                        return done
                if if_match is not None or if_none_match:
                    raise PreconditionFailed(f"object {key!r} changed during the write") if if_match else \
                        AlreadyExists(f"object {key!r} already exists")
                continue  # an unconditional write lost a race: read the new head and go again
            return self._info(key, head_entity, current=True)
        raise PreconditionFailed(f"object {key!r} is being written too often to win a write; retry")

    def _replayed(self, tenant: str, marker_rk: str) -> ObjectInfo | None:
        marker = self._find(tenant, marker_rk)
        if marker is None:
            return None
        key, version_id = str(marker["key"]), str(marker["version"])
        version = self._find(tenant, self._versions_prefix(key) + version_id)
        if version is None:  # written, then deleted since: report what was written
            return ObjectInfo(key, version_id, 0, "", "", "", None, False)
        return self._info(key, version, current=False, version_id=version_id)

    def delete(self, tenant: str, key: str, *, if_match: str | None = None) -> None:
        """Delete the object and every version. Safe to retry after a crash halfway."""
        self._check(tenant, key)
        head = self._find(tenant, self._head_rk(key))
        if head is not None and if_match is not None and head["version"] != if_match:
            raise PreconditionFailed(f"object {key!r} is not at version {if_match}")
        versions = list(self._table.query_all(tenant, prefix=self._versions_prefix(key)))
        if head is None and not versions:
            raise NotFound(f"object {key!r} does not exist")
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
    def _expired(entity: Entity, now: float | None = None) -> bool:
        expires = entity.get("expires_at")
        if not expires:
            return False
        return datetime.fromisoformat(str(expires)).timestamp() <= (time.time() if now is None else now)

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

    def _entity(self, tenant: str, key: str, version_id: str | None) -> tuple[Entity, ObjectInfo]:
        self._check(tenant, key)
        if version_id is None:
            head = self._find(tenant, self._head_rk(key))
            if head is None or self._expired(head):
                raise NotFound(f"object {key!r} does not exist")
            return head, self._info(key, head, current=True)
        if not version_id.isalnum() or len(version_id) > 40:
            raise NotFound(f"object {key!r} has no version {version_id!r}")
        entity = self._find(tenant, self._versions_prefix(key) + version_id)
        if entity is None:
            raise NotFound(f"object {key!r} has no version {version_id!r}")
        head = self._find(tenant, self._head_rk(key))
        current = head is not None and head["version"] == version_id
        return entity, self._info(key, entity, current=current, version_id=version_id)

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
        """Current objects whose key starts with ``prefix``, in key order."""
        check_tenant(tenant)
        if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH:
            raise InvalidInput("prefix must be a string of at most 256 characters")
        page = self._table.query(tenant, prefix="h|" + escape(prefix), limit=limit, continuation=continuation)
        now = time.time()
        items = [
            self._info(unescape(e.row_key[2:]), e, current=True) for e in page.items if not self._expired(e, now)
        ]
        return Page(items, page.continuation)

    def versions(self, tenant: str, key: str, *, limit: int = 100,
                 continuation: str | None = None) -> Page[ObjectInfo]:
        """Every version of an object, newest first."""
        self._check(tenant, key)
        prefix = self._versions_prefix(key)
        page = self._table.query(tenant, prefix=prefix, limit=limit, continuation=continuation)
        if not page.items and continuation is None:
            raise NotFound(f"object {key!r} does not exist")
        head = self._find(tenant, self._head_rk(key))
        current = str(head["version"]) if head is not None else None
        items = [
            self._info(key, e, current=e.row_key[len(prefix):] == current, version_id=e.row_key[len(prefix):])
            for e in page.items
        ]
        return Page(items, page.continuation)

    # -- retention

    def purge_expired(self, *, now: float | None = None, limit: int = 500) -> int:
        """Delete objects whose TTL has passed; returns how many. Idempotent and resumable.

        Reads each expiry shard's due row keys (at most ``limit`` entries per run in
        all), starting from a shard that rotates with time so a backlog starves none.
        """
        now = time.time() if now is None else now
        purged, budget = 0, limit
        first = int(now // 60) % EXPIRY_SHARDS
        for step in range(EXPIRY_SHARDS):
            if budget <= 0:
                break
            partition = f"{EXPIRY_PREFIX}{(first + step) % EXPIRY_SHARDS:02d}"
            due = self._table.query(partition, end=f"{int(now):012d}|~", limit=min(budget, 1000))
            budget -= len(due.items)
            for entry in due.items:
                purged += self._purge_entry(partition, entry.row_key, now)
        return purged

    def _purge_entry(self, partition: str, row_key: str, now: float) -> int:
        _, tenant, escaped_key, version_id = row_key.split("|")
        key = unescape(escaped_key)
        head = self._find(tenant, self._head_rk(key))
        purged = 0
        if head is not None and head["version"] == version_id and self._expired(head, now):
            try:
                self.delete(tenant, key, if_match=version_id)
                purged = 1
            except (NotFound, PreconditionFailed):
                pass  # rewritten or deleted meanwhile: the new version has its own entry
        try:
            self._table.delete(partition, row_key)
        except NotFound:
            pass  # another timer instance got here first
        return purged

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


def _apply_put(stores: Stores, tenant: str, payload: ObjectsPutPayload, idempotency_key: str) -> Outcome:
    data, content_type = payload.content()
    info = ObjectService(stores).put(tenant, payload.key, data, content_type, if_match=payload.if_match,
                                     ttl_seconds=payload.ttl_seconds, idempotency_key=idempotency_key)
    return Outcome("applied", f"{payload.key} at version {info.version_id}")


def _apply_delete(stores: Stores, tenant: str, payload: ObjectsDeletePayload, idempotency_key: str) -> Outcome:
    try:
        ObjectService(stores).delete(tenant, payload.key, if_match=payload.if_match)
    except NotFound:
        return Outcome("duplicate", f"{payload.key} already gone")
    return Outcome("applied", f"{payload.key} deleted")


COMMANDS = (
    CommandOp("objects.put", ObjectsPutPayload, _apply_put, "Write an object (a new version)."),
    CommandOp("objects.delete", ObjectsDeletePayload, _apply_delete, "Delete an object and all its versions."),
)
