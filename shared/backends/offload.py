"""Claim check: one rule, for every backend, that moves large values to blobs.

Table properties and queue messages above ``threshold`` bytes are written to the
blob store, and a reference takes their place. Readers get the value back
transparently; deleting or replacing the entity (or deleting the message)
deletes the blob too. No SDK is involved: the rule sits above the primitives.

Formats (versioned, so they can evolve):

* entity: the property is removed and ``_offload`` holds JSON
  ``{"name": {"ref": "blob:v1:<key>", "type": "str" | "bytes"}}``;
* message: the body is JSON ``{"$claimCheck": "blob:v1:<key>"}``.

Where the blobs live, and what a reader accepts: table values under
``offload/tables/<table>/``, queue messages under ``offload/queues/<queue>/``
(:func:`queue_offload_prefix`). A claim check is resolved only when its key is
under the receiving queue's own prefix (:func:`check_ref`): a message that names
any other blob is delivered as the text it is, and deleting it deletes no blob,
so a message cannot make a reader fetch, or destroy, data it does not own.

Write order keeps readers safe: the blob is written before the entity or
message that points at it, and an old blob is deleted only after the entity no
longer points at it. A crash in between leaves an unreferenced blob, never a
dangling reference.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from shared.backends.base import (
    MAX_ENTITY_BYTES,
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
from shared.errors import InvalidKey, NotFound

log = logging.getLogger(__name__)

REF_PREFIX = "blob:v1:"
OFFLOAD_PROPERTY = "_offload"
CLAIM_CHECK_FIELD = "$claimCheck"
# Keep entities well under the strictest item limit once references are added.
_ENTITY_BUDGET = MAX_ENTITY_BYTES - 16 * 1024


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


class _BlobSide:
    """Writes and deletes the offloaded blobs under one key prefix."""

    def __init__(self, blobs: BlobStore, prefix: str) -> None:
        self.blobs = blobs
        self.prefix = prefix

    def write(self, data: bytes, content_type: str) -> str:
        key = f"{self.prefix}/{uuid.uuid4().hex}"
        self.blobs.put(key, data, content_type=content_type, if_none_match=True)
        return make_ref(key)

    def read(self, ref: str) -> bytes:
        return self.blobs.get(parse_ref(ref)).data

    def discard(self, refs: Sequence[str]) -> None:
        """Delete blobs no longer referenced. Already gone is fine (a retry, or a racing writer)."""
        for ref in refs:
            try:
                self.blobs.delete(parse_ref(ref))
            except NotFound:
                pass


class OffloadingTable:
    """A :class:`TableStore` with the claim-check rule applied to every property.

    Same methods as the table it wraps; values of any size are accepted (up to
    what one blob holds). Replacing or deleting an entity deletes its old blobs:
    when the write is conditional on the ETag the entity was read with, the old
    references are known; otherwise the entity is read once first.
    """

    def __init__(self, table: TableStore, blobs: BlobStore, threshold: int) -> None:
        self.table = table
        self.name = table.name
        self.threshold = threshold
        self._side = _BlobSide(blobs, f"offload/tables/{table.name}")

    # -- encoding

    def _pack(self, entity: Entity) -> tuple[Entity, list[str]]:
        """The entity as stored, and the references of the blobs written for it."""
        properties: dict[str, PropertyValue] = {k: v for k, v in entity.properties.items() if v is not None}
        big = [name for name, value in properties.items() if property_size(value) > self.threshold]
        total = sum(len(k) * 2 + property_size(v) for k, v in properties.items())
        if total - sum(property_size(properties[n]) for n in big) > _ENTITY_BUDGET:
            # Many medium values: move the largest out until the rest fits.
            rest = sorted((n for n in properties if n not in big), key=lambda n: -property_size(properties[n]))
            while total - sum(property_size(properties[n]) for n in big) > _ENTITY_BUDGET and rest:
                big.append(rest.pop(0))
        if not big:
            return Entity(entity.partition_key, entity.row_key, properties, entity.etag), []
        manifest: dict[str, dict[str, str]] = {}
        written: list[str] = []
        try:
            for name in big:
                value = properties.pop(name)
                if isinstance(value, str):
                    ref, kind = self._side.write(value.encode("utf-8"), "text/plain; charset=utf-8"), "str"
                elif isinstance(value, bytes):
                    ref, kind = self._side.write(value, "application/octet-stream"), "bytes"
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

    def _unpack(self, stored: Entity) -> Entity:
        properties = dict(stored.properties)
        manifest_text = properties.pop(OFFLOAD_PROPERTY, None)
        refs: dict[str, str] = {}
        if isinstance(manifest_text, str):
            for name, entry in json.loads(manifest_text).items():
                data = self._side.read(entry["ref"])
                properties[name] = data.decode("utf-8") if entry["type"] == "str" else data
                refs[name] = entry["ref"]
        return Entity(stored.partition_key, stored.row_key, properties, stored.etag, refs)

    @staticmethod
    def _refs_of(stored: Entity) -> list[str]:
        manifest_text = stored.properties.get(OFFLOAD_PROPERTY)
        if not isinstance(manifest_text, str):
            return []
        return [entry["ref"] for entry in json.loads(manifest_text).values()]

    def _old_refs(self, entity: Entity, if_match: str | None) -> list[str]:
        """Blob references of the state a write will replace."""
        if if_match is not None and entity.etag == if_match:
            return list(entity.offloaded.values())
        try:
            return self._refs_of(self.table.get(entity.partition_key, entity.row_key))
        except NotFound:
            return []

    # -- reads

    def get(self, partition_key: str, row_key: str) -> Entity:
        return self._unpack(self.table.get(partition_key, row_key))

    def query(self, partition_key: str, **kwargs: Any) -> Page[Entity]:
        page = self.table.query(partition_key, **kwargs)
        return Page([self._unpack(e) for e in page.items], page.continuation)

    def query_all(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]:
        for entity in self.table.query_all(partition_key, **kwargs):
            yield self._unpack(entity)

    def sign_continuation(self, partition_key: str, state: dict[str, Any], *, purpose: str) -> str:
        """A service's own signed paging token (see :meth:`TableStore.sign_continuation`)."""
        return self.table.sign_continuation(partition_key, state, purpose=purpose)

    def verify_continuation(self, partition_key: str, token: str, *, purpose: str) -> dict[str, Any]:
        """The state of a token :meth:`sign_continuation` made for this partition and purpose; 400 otherwise."""
        return self.table.verify_continuation(partition_key, token, purpose=purpose)

    def query_for_delete(self, partition_key: str, **kwargs: Any) -> Page[Entity]:
        """Rows to delete: large values are not downloaded (their properties are left out),
        and each entity's ``offloaded`` names its blobs, so a delete conditional on the
        entity's ETag removes them without reading anything again."""
        page = self.table.query(partition_key, **kwargs)
        return Page([self._without_values(e) for e in page.items], page.continuation)

    @staticmethod
    def _without_values(stored: Entity) -> Entity:
        properties = dict(stored.properties)
        manifest_text = properties.pop(OFFLOAD_PROPERTY, None)
        refs = ({name: entry["ref"] for name, entry in json.loads(manifest_text).items()}
                if isinstance(manifest_text, str) else {})
        return Entity(stored.partition_key, stored.row_key, properties, stored.etag, refs)

    def scan(self, **kwargs: Any) -> Page[Entity]:
        page = self.table.scan(**kwargs)
        return Page([self._unpack(e) for e in page.items], page.continuation)

    # -- writes

    def _write(self, kind: OpKind, entity: Entity, if_match: str | None) -> str:
        old = [] if kind is OpKind.INSERT else self._old_refs(entity, if_match)
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
        return self._write(OpKind.UPSERT, entity, None)

    def update(self, entity: Entity, *, if_match: str | None = None) -> str:
        return self._write(OpKind.UPDATE, entity, if_match)

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None,
               offloaded: dict[str, str] | None = None) -> None:
        """Delete; pass the ``offloaded`` refs of the entity read with ``if_match`` to skip a read."""
        probe = Entity(partition_key, row_key, etag=if_match, offloaded=offloaded or {})
        old = self._old_refs(probe, if_match if offloaded is not None else None)
        self.table.delete(partition_key, row_key, if_match=if_match)
        self._side.discard(old)

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        """Atomic batch; blobs of the new values are written first and removed if it fails."""
        stored_ops: list[TableOp] = []
        written: list[str] = []
        old: list[str] = []
        try:
            for op in operations:
                if op.kind is not OpKind.INSERT:
                    old.extend(self._old_refs(op.entity, op.if_match))
                if op.kind is OpKind.DELETE:
                    stored_ops.append(op)
                    continue
                stored, refs = self._pack(op.entity)
                written.extend(refs)
                stored_ops.append(replace(op, entity=stored))
            etags = self.table.batch(stored_ops)
        except BaseException:
            self._side.discard(written)
            raise
        self._side.discard(old)
        return etags


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
