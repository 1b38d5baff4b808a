"""Memory: conversation threads and their messages, per tenant.

Layout, all in table ``stowagememory``:

* partition ``<tenant>|t|<thread_id>``, one per thread, so that a thread and its
  messages change together in one atomic batch:

  - ``thread``: resource, title, metadata, timestamps, ``message_count``,
    ``last_seq`` (the last sequence number handed out), the row key of the
    thread's index entry, and ``deleting`` once a delete has begun;
  - ``m|<999999999999 - seq, 12 digits>``: one entity per message. The sequence
    number is inverted so that ascending row-key order (the only order table
    stores read in) is newest first: "the last 50" is one query of 51 rows;
  - ``i|<sha256 of an idempotency key>``: the seqs a retried append produced.

* partition ``<tenant>|r|<resource>``: the resource's thread index, row keys
  ``<10^19 - created µs, 19 digits>|<thread_id>|<8 hex>``: newest *created* first.
* partition ``!deleting`` (``!`` cannot start a tenant): ``<unix s>|<tenant>|<thread_id>|<8 hex>``
  for each thread delete in progress, which :meth:`MemoryService.finish_deletions`
  (a timer) completes when a crash interrupted it.

One partition per thread caps one thread's writes at a partition's throughput
(about 2,000 entities/s on Azure), far above the pace of a conversation.

Guarantees:

* An append is ONE batch: the thread entity, updated on the condition of the
  ETag it was read with (count, last seq, updated_at), plus the new messages (and
  the idempotency marker). Concurrent appenders that lose re-read and retry
  (bounded, with jitter), so seqs are strictly increasing without gaps,
  ``message_count`` is exact and ``updated_at`` is the newest message's time
  (never moving backwards, whatever the writers' clocks). Editing or deleting
  a message changes the thread entity in the same batch too.
* Message ids embed their seq (``msg_<seq, 12 digits>_<8 hex>``): addressing a
  message by id is one point read, without a second index. The random suffix
  tells a message from one of an earlier thread that had the same id.
* A history read is one point read of the thread and one range query of at
  most ``limit + 1`` rows, whatever the thread's size. Oldest-first reads ask
  for a seq range of ``limit`` (rows come newest first, so the range must hold
  no more than is wanted), widening it over gaps deleted messages left.
* ``updated_at`` changes with every change to the thread or its messages; the
  ETags callers see are derived from the stored ones (same shape on every backend).
* Listing follows the index; each entry is checked against the live thread
  entity (exact counts, metadata filter, threads being deleted skipped), read
  in parallel. "Newest" means newest created: an index by last update would
  need a second-partition write per append, outside the append's batch. The
  index entry is written before the thread, so a crash in between leaves an
  entry pointing at nothing, which listings skip and remove once it is old.
* Deleting a thread marks it ``deleting`` (it reads as 404 at once and takes no
  more writes), deletes messages and markers in batches of at most 100
  (conditional on the ETags read, offloaded blobs deleted after), then the index
  entry, the thread entity and the ``!deleting`` record. Any step may crash: a
  repeated delete, a create of the same id, or the timer finishes the job.
* Content of any size up to :data:`MAX_CONTENT_BYTES` is stored whole: the
  offload layer moves values over its threshold to blobs, written before the
  batch that refers to them. Sizes and values (valid Unicode, nesting bounded:
  :mod:`shared.jsonvalues`) are checked before anything is written, the thread's
  index entry included, so refused input leaves nothing behind.
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared import names
from shared.backends import Entity, OpKind, Page, TableOp
from shared.backends.base import (
    MAX_BATCH_BYTES,
    MAX_BATCH_OPERATIONS,
    MAX_PAGE_SIZE,
    property_size,
    wire_size,
)
from shared.command_ops import CommandOp, CommandPayload, Outcome
from shared.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    TooLarge,
)
from shared.jsonvalues import check_json_value, json_text
from shared.keys import ID_PATTERN, check_id, check_tenant
from shared.stores import Stores

#: Largest content of one message (UTF-8 text, or JSON parts serialised), checked before writing.
MAX_CONTENT_BYTES = 8 * 1024 * 1024
#: Messages per add_messages call: with the thread entity and an idempotency marker, one batch.
MAX_MESSAGES_PER_CALL = MAX_BATCH_OPERATIONS - 2
MAX_METADATA_BYTES = 8 * 1024
MAX_TITLE_LENGTH = 512
MAX_SEQ = 10**12 - 1
#: A thread delete interrupted this long ago is finished by the timer (earlier, it may still be running).
DELETION_GRACE_SECONDS = 600
DELETING_PARTITION = "!deleting"
THREAD_ROW = "thread"

_MESSAGE_ID = re.compile(r"^msg_(\d{12})_[0-9a-f]{8}$")
_WRITE_ATTEMPTS = 64
_INDEX_SPAN = 10**19
_LIST_EXAMINED = 1000  # index entries one list call looks at, at most
# Purposes the continuation tokens of list_threads and history are signed for (with table and partition).
_THREADS_TOKEN = "threads"
_HISTORY_TOKEN = "history"
_READERS = 8
_OFFLOADED_ENTITY_WIRE = 400  # a property moved to a blob leaves a reference of about this size
_BATCH_BUDGET = MAX_BATCH_BYTES - 64 * 1024  # room for the thread entity and the marker


class Role(str, enum.Enum):
    """Who wrote a message."""

    user = "user"
    assistant = "assistant"
    system = "system"
    tool = "tool"


class Order(str, enum.Enum):
    """Order of messages within a history page: chronological or newest first."""

    asc = "asc"
    desc = "desc"


@dataclass(frozen=True)
class Thread:
    """A conversation thread, owned by a resource (a user, a team, an agent) of a tenant."""

    thread_id: str
    resource: str
    title: str | None
    metadata: dict
    created_at: str
    updated_at: str
    message_count: int
    #: Changes on every change to the thread, its messages included.
    etag: str = ""


@dataclass(frozen=True)
class Message:
    """One message of a thread; ``seq`` counts from 1 and only increases."""

    message_id: str
    thread_id: str
    seq: int
    role: Role
    content: str | list | dict
    metadata: dict
    parent_message_id: str | None
    created_at: str
    updated_at: str
    #: Changes when the message is edited.
    etag: str = ""


@dataclass(frozen=True)
class NewMessage:
    """A message to append: role, content (text or JSON parts), metadata, optional parent."""

    role: Role | str
    content: str | list | dict
    metadata: dict | None = None
    parent_message_id: str | None = None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def _json_text(value: Any, what: str, limit: int) -> str:
    text = json_text(value, what)  # InvalidInput for anything not storable as JSON (shared.jsonvalues)
    size = len(text.encode("utf-8"))
    if size > limit:
        raise TooLarge(f"{what} is {size} bytes as JSON; the limit is {limit}")
    return text


def _metadata_text(metadata: Any, what: str) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return _json_text(metadata, what, MAX_METADATA_BYTES) if metadata else None


def _check_title(title: Any) -> str | None:
    if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_LENGTH):
        raise InvalidInput(f"title must be text of at most {MAX_TITLE_LENGTH} characters")
    return check_json_value(title, "title")


def _message_rk(seq: int) -> str:
    return f"m|{MAX_SEQ - seq:012d}"


def _seq_of_message_id(message_id: str) -> int | None:
    match = _MESSAGE_ID.match(message_id)
    if match is None:
        return None
    seq = int(match.group(1))
    return seq if seq >= 1 else None


def _marker_rk(idempotency_key: str) -> str:
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 200:
        raise InvalidInput("idempotency key must be 1-200 characters")
    return "i|" + hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _backoff(attempt: int) -> None:
    # Losers of a race spread out so the next round has fewer contenders.
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _public_etag(etag: str | None) -> str:
    """The ETag callers see: the same shape on every backend, safe in an HTTP header
    (Azure's own are W/"datetime'...'"), and changing exactly when the stored one does."""
    return hashlib.sha256((etag or "").encode()).hexdigest()[:32]


@dataclass(frozen=True)
class _Prepared:
    """A validated new message, as entity properties without seq and times."""

    role: Role
    properties: dict[str, Any]
    parent_seq: int | None


class MemoryService:
    """Threads and messages of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_MEMORY)
        #: The table without the offload layer, for rows that never hold large values
        #: (index entries, deletion records) and for deleting rows without downloading them.
        self._raw = self._table.table
        self._offload_threshold = stores.settings.offload_threshold_bytes
        self._readers: ThreadPoolExecutor | None = None

    # -- keys

    @staticmethod
    def _thread_pk(tenant: str, thread_id: str) -> str:
        return f"{tenant}|t|{thread_id}"

    @staticmethod
    def _index_pk(tenant: str, resource: str) -> str:
        return f"{tenant}|r|{resource}"

    def _find(self, partition_key: str, row_key: str) -> Entity | None:
        try:
            return self._table.get(partition_key, row_key)
        except NotFound:
            return None

    def _live_thread(self, tenant: str, thread_id: str) -> Entity:
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        thread = self._find(self._thread_pk(tenant, thread_id), THREAD_ROW)
        if thread is None or thread.get("deleting"):
            raise NotFound(f"thread {thread_id!r} does not exist")
        return thread

    # -- conversions

    @staticmethod
    def _thread(thread_id: str, entity: Entity, etag: str | None = None) -> Thread:
        metadata = entity.get("metadata")
        return Thread(
            thread_id=thread_id,
            resource=str(entity["resource"]),
            title=entity.get("title"),
            metadata=json.loads(metadata) if metadata else {},
            created_at=_iso(float(entity["created_at"])),
            updated_at=_iso(float(entity["updated_at"])),
            message_count=int(entity["message_count"]),
            etag=_public_etag(etag or entity.etag),
        )

    @staticmethod
    def _message(thread_id: str, entity: Entity, etag: str | None = None) -> Message:
        metadata = entity.get("metadata")
        parts = entity.get("parts")
        return Message(
            message_id=str(entity["message_id"]),
            thread_id=thread_id,
            seq=int(entity["seq"]),
            role=Role(entity["role"]),
            content=json.loads(parts) if parts is not None else str(entity.get("text", "")),
            metadata=json.loads(metadata) if metadata else {},
            parent_message_id=entity.get("parent_message_id"),
            created_at=_iso(float(entity["created_at"])),
            updated_at=_iso(float(entity["updated_at"])),
            etag=_public_etag(etag or entity.etag),
        )

    @staticmethod
    def _content_properties(content: Any) -> dict[str, Any]:
        if isinstance(content, str):
            size = len(check_json_value(content, "message content").encode("utf-8"))
            if size > MAX_CONTENT_BYTES:
                raise TooLarge(f"message content is {size} bytes; the limit is {MAX_CONTENT_BYTES}")
            return {"text": content}
        if isinstance(content, (list, dict)):
            return {"parts": _json_text(content, "message content", MAX_CONTENT_BYTES)}
        raise InvalidInput("message content must be text, or JSON parts (a list or an object)")

    def _prepare(self, message: NewMessage | dict) -> _Prepared:
        if isinstance(message, dict):
            unknown = set(message) - {"role", "content", "metadata", "parent_message_id"}
            if unknown:
                raise InvalidInput(f"a message has no field(s) {sorted(unknown)}")
            if "role" not in message or "content" not in message:
                raise InvalidInput("a message needs 'role' and 'content'")
            message = NewMessage(message["role"], message["content"], message.get("metadata"),
                                 message.get("parent_message_id"))
        elif not isinstance(message, NewMessage):
            raise InvalidInput("each message must be a dict or a NewMessage")
        try:
            role = Role(message.role)
        except ValueError:
            raise InvalidInput(f"role must be one of {', '.join(r.value for r in Role)}; got {message.role!r}") from None
        properties: dict[str, Any] = {"role": role.value, **self._content_properties(message.content),
                                      "metadata": _metadata_text(message.metadata, "message metadata")}
        parent_seq = None
        if message.parent_message_id is not None:
            check_id(message.parent_message_id, "parent message id")
            parent_seq = _seq_of_message_id(message.parent_message_id)
            if parent_seq is None:
                raise InvalidInput(f"parent message {message.parent_message_id!r} is not in this thread")
            properties["parent_message_id"] = message.parent_message_id
        return _Prepared(role, properties, parent_seq)

    def _stored_wire_size(self, properties: dict[str, Any]) -> int:
        """About what an entity takes in a batch once the offload layer has moved its large values."""
        present = {k: v for k, v in properties.items() if v is not None}
        inline = {k: v for k, v in present.items() if property_size(v) <= self._offload_threshold}
        return wire_size(inline) + _OFFLOADED_ENTITY_WIRE * (len(present) - len(inline)) + 200

    # -- threads

    def create_thread(self, tenant: str, resource: str, *, thread_id: str | None = None, title: str | None = None,
                      metadata: dict | None = None, idempotency_key: str | None = None) -> Thread:
        """Create a thread owned by ``resource``; AlreadyExists if ``thread_id`` is taken.

        Without ``thread_id`` one is generated (derived from ``idempotency_key``
        when given). With ``idempotency_key``, a retry returns the thread the
        first call created instead of AlreadyExists.
        """
        return self._create(tenant, resource, thread_id, title, metadata, idempotency_key)[0]

    def _create(self, tenant: str, resource: str, thread_id: str | None, title: str | None, metadata: dict | None,
                idempotency_key: str | None) -> tuple[Thread, bool]:
        """The thread, and whether an earlier call with this idempotency key created it."""
        check_tenant(tenant)
        check_id(resource, "resource")
        _check_title(title)
        metadata_text = _metadata_text(metadata, "thread metadata")
        created_key = _marker_rk(idempotency_key)[2:] if idempotency_key is not None else None
        if thread_id is None:
            thread_id = ("thread_" + hashlib.sha256(f"{tenant}|{created_key}".encode()).hexdigest()[:32]
                         if created_key else f"thread_{uuid.uuid4().hex}")
        check_id(thread_id, "thread id")
        pk = self._thread_pk(tenant, thread_id)
        existing = self._find(pk, THREAD_ROW)
        if existing is not None and existing.get("deleting"):
            self._purge(tenant, thread_id, existing)
        elif existing is not None:
            return self._existing(thread_id, existing, created_key), True
        now = time.time()
        index_pk = self._index_pk(tenant, resource)
        index_rk = f"{_INDEX_SPAN - int(now * 1_000_000):019d}|{thread_id}|{secrets.token_hex(4)}"
        properties = {"resource": resource, "title": title, "metadata": metadata_text, "created_at": now,
                      "updated_at": now, "message_count": 0, "last_seq": 0, "index_rk": index_rk,
                      "created_key": created_key}
        # Index first: a crash before the thread leaves an entry listings skip, never an unlisted thread.
        self._raw.insert(Entity(index_pk, index_rk, {"thread_id": thread_id, "created_at": now}))
        try:
            etag = self._table.insert(Entity(pk, THREAD_ROW, properties))
        except AlreadyExists:
            self._discard(index_pk, index_rk)
            existing = self._find(pk, THREAD_ROW)
            if existing is None or existing.get("deleting"):
                raise Conflict(f"thread {thread_id!r} is being created or deleted concurrently; retry") from None
            return self._existing(thread_id, existing, created_key), True
        return self._thread(thread_id, Entity(pk, THREAD_ROW, properties), etag), False

    def _existing(self, thread_id: str, existing: Entity, created_key: str | None) -> Thread:
        if created_key is not None and existing.get("created_key") == created_key:
            return self._thread(thread_id, existing)
        raise AlreadyExists(f"thread {thread_id!r} already exists")

    def get_thread(self, tenant: str, thread_id: str) -> Thread:
        """The thread with its exact message count; NotFound when absent or being deleted."""
        return self._thread(thread_id, self._live_thread(tenant, thread_id))

    def update_thread(self, tenant: str, thread_id: str, *, title: Any = ..., metadata: Any = ...,
                      if_match: str | None = None) -> Thread:
        """Set the title and/or replace the metadata (None clears); ``if_match``: only at this ETag."""
        if title is not ...:
            _check_title(title)
        metadata_text = _metadata_text(metadata, "thread metadata") if metadata is not ... else ...
        for attempt in range(_WRITE_ATTEMPTS):
            thread = self._live_thread(tenant, thread_id)
            if if_match is not None and _public_etag(thread.etag) != if_match:
                raise PreconditionFailed(f"thread {thread_id!r} is not at ETag {if_match}")
            properties = dict(thread.properties)
            if title is not ...:
                properties["title"] = title
            if metadata_text is not ...:
                properties["metadata"] = metadata_text
            properties["updated_at"] = max(time.time(), float(thread["updated_at"]))
            entity = Entity(thread.partition_key, THREAD_ROW, properties, thread.etag, thread.offloaded)
            try:
                etag = self._table.update(entity, if_match=thread.etag)
            except PreconditionFailed:
                if if_match is not None:
                    raise PreconditionFailed(f"thread {thread_id!r} changed during the update") from None
                _backoff(attempt)
                continue
            return self._thread(thread_id, entity, etag)
        raise Conflict(f"thread {thread_id!r} is changing too often to update; retry")

    def delete_thread(self, tenant: str, thread_id: str) -> None:
        """Delete the thread and all its messages, in chunks. Safe to retry after a crash halfway:
        a thread whose delete was interrupted is still found (and reads as 404 meanwhile)."""
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        thread = self._find(self._thread_pk(tenant, thread_id), THREAD_ROW)
        if thread is None:
            raise NotFound(f"thread {thread_id!r} does not exist")
        self._purge(tenant, thread_id, thread)

    def _purge(self, tenant: str, thread_id: str, thread: Entity) -> None:
        pk = self._thread_pk(tenant, thread_id)
        record_rk = None
        for attempt in range(_WRITE_ATTEMPTS):
            if thread.get("deleting"):
                record_rk = str(thread.get("deleting_record") or "") or None
                break
            record_rk = f"{int(time.time()):012d}|{tenant}|{thread_id}|{secrets.token_hex(4)}"
            self._raw.insert(Entity(DELETING_PARTITION, record_rk, {"tenant": tenant, "thread_id": thread_id}))
            marked = Entity(pk, THREAD_ROW, {**thread.properties, "deleting": True, "deleting_record": record_rk},
                            thread.etag, thread.offloaded)
            try:
                self._table.update(marked, if_match=thread.etag)
                break
            except PreconditionFailed:
                self._discard(DELETING_PARTITION, record_rk)
                _backoff(attempt)
                fresh = self._find(pk, THREAD_ROW)
                if fresh is None:
                    return  # another deleter finished meanwhile
                thread = fresh
        else:
            raise Conflict(f"thread {thread_id!r} is changing too often to delete; retry")
        while True:
            # Raw rows: their offloaded blobs are known from the manifest, not downloaded.
            rows = self._table.query_for_delete(pk, end=THREAD_ROW, limit=MAX_BATCH_OPERATIONS).items
            if not rows:
                break
            ops = [TableOp(OpKind.DELETE, Entity(pk, row.row_key, etag=row.etag, offloaded=row.offloaded),
                           row.etag) for row in rows]
            try:
                self._table.batch(ops)
            except (NotFound, PreconditionFailed, Conflict):
                continue  # another deleter took some of these rows: read again
        self._discard(self._index_pk(tenant, str(thread["resource"])), str(thread["index_rk"]))
        try:
            self._table.delete(pk, THREAD_ROW)
        except NotFound:
            pass
        if record_rk:
            self._discard(DELETING_PARTITION, record_rk)

    def _discard(self, partition_key: str, row_key: str) -> None:
        """Delete a row that holds no offloaded value; already gone is fine."""
        try:
            self._raw.delete(partition_key, row_key)
        except NotFound:
            pass

    def finish_deletions(self, *, now: float | None = None, limit: int = 100) -> int:
        """Finish thread deletes interrupted at least DELETION_GRACE_SECONDS ago; returns how many.

        Cross-tenant, for a timer. Idempotent and safe on two instances at once.
        """
        now = time.time() if now is None else now
        due = self._raw.query(DELETING_PARTITION, end=f"{int(now - DELETION_GRACE_SECONDS):012d}|~", limit=limit)
        finished = 0
        for record in due.items:
            tenant, thread_id = str(record["tenant"]), str(record["thread_id"])
            thread = self._find(self._thread_pk(tenant, thread_id), THREAD_ROW)
            if thread is not None and thread.get("deleting") and thread.get("deleting_record") == record.row_key:
                self._purge(tenant, thread_id, thread)
                finished += 1
            self._discard(DELETING_PARTITION, record.row_key)
        return finished

    def list_threads(self, tenant: str, resource: str, *, metadata: dict | None = None, limit: int = 50,
                     continuation: str | None = None) -> Page[Thread]:
        """Threads of ``resource``, newest created first, paged.

        ``metadata``: only threads whose metadata has each of these keys with an
        equal (JSON) value. The filter looks at up to 1000 threads per call, so a
        page may hold fewer than ``limit`` threads (even none) and still have a
        ``continuation``.
        """
        check_tenant(tenant)
        check_id(resource, "resource")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidInput("metadata filter must be a JSON object")
        check_json_value(metadata, "metadata filter")
        start = None
        index_pk = self._index_pk(tenant, resource)
        if continuation is not None:
            # Signed for this tenant's and resource's index partition: no other listing opens it.
            state = self._raw.verify_continuation(index_pk, continuation, purpose=_THREADS_TOKEN)
            if state.get("r") != resource or not isinstance(state.get("after"), str):
                raise InvalidInput("continuation token does not belong to this listing")
            start = state["after"] + " "  # the least row key after it: ' ' sorts below every id character
        items: list[Thread] = []
        examined = 0
        last_rk: str | None = None
        more = True
        now = time.time()
        while len(items) < limit and examined < _LIST_EXAMINED:
            page = self._raw.query(index_pk, start=start, limit=min(limit - len(items), _LIST_EXAMINED - examined))
            if not page.items:
                more = False
                break
            threads = self._read_threads(tenant, [str(e["thread_id"]) for e in page.items])
            for entry, thread in zip(page.items, threads):
                examined += 1
                last_rk = entry.row_key
                if thread is None or thread.get("index_rk") != entry.row_key:
                    if now - float(entry["created_at"]) > DELETION_GRACE_SECONDS:
                        self._discard_entry(entry)  # left by a create that crashed
                    continue
                if thread.get("deleting"):
                    continue
                found = self._thread(str(entry["thread_id"]), thread)
                if metadata and any(found.metadata.get(k, _ABSENT) != v for k, v in metadata.items()):
                    continue
                items.append(found)
            if page.continuation is None:
                more = False
                break
            start = page.items[-1].row_key + " "
        token = (self._raw.sign_continuation(index_pk, {"r": resource, "after": last_rk}, purpose=_THREADS_TOKEN)
                 if more and last_rk is not None else None)
        return Page(items, token)

    def _discard_entry(self, entry: Entity) -> None:
        try:
            self._raw.delete(entry.partition_key, entry.row_key, if_match=entry.etag)
        except (NotFound, PreconditionFailed):
            pass  # removed by another lister, or rewritten

    def _read_threads(self, tenant: str, thread_ids: list[str]) -> list[Entity | None]:
        """The thread entities, read in parallel: one point read each, latency not added up."""
        def read(thread_id: str) -> Entity | None:
            return self._find(self._thread_pk(tenant, thread_id), THREAD_ROW)

        if len(thread_ids) <= 2:
            return [read(t) for t in thread_ids]
        if self._readers is None:
            # Kept for the service's life: backends hold a connection per thread (local SQLite).
            self._readers = ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="memory-read")
        return list(self._readers.map(read, thread_ids))

    # -- messages

    def add_messages(self, tenant: str, thread_id: str, messages: Sequence[dict | NewMessage], *,
                     idempotency_key: str | None = None) -> list[Message]:
        """Append up to 98 messages atomically; they get consecutive seqs after the thread's last.

        A retry with the same ``idempotency_key`` returns the messages the first
        call appended (those not deleted since) without appending again.
        """
        marker_rk = _marker_rk(idempotency_key) if idempotency_key is not None else None
        return self._add(tenant, thread_id, messages, marker_rk)[0]

    def _add(self, tenant: str, thread_id: str, messages: Sequence[dict | NewMessage],
             marker_rk: str | None) -> tuple[list[Message], bool]:
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Iterable):
            raise InvalidInput("messages must be a list")
        messages = list(messages)
        if not 1 <= len(messages) <= MAX_MESSAGES_PER_CALL:
            raise InvalidInput(f"add 1 to {MAX_MESSAGES_PER_CALL} messages per call, got {len(messages)}")
        prepared = [self._prepare(m) for m in messages]
        size = sum(self._stored_wire_size(p.properties) for p in prepared)
        if size > _BATCH_BUDGET:
            raise TooLarge(f"these messages take about {size} bytes in one atomic write; the limit is "
                           f"{_BATCH_BUDGET}: send fewer per call")
        return self._append(tenant, thread_id, prepared, marker_rk)

    def _append(self, tenant: str, thread_id: str, prepared: list[_Prepared],
                marker_rk: str | None) -> tuple[list[Message], bool]:
        """The appended messages, and whether they were appended by an earlier call."""
        pk = self._thread_pk(tenant, thread_id)
        thread = self._live_thread(tenant, thread_id)
        if marker_rk is not None:
            replayed = self._replayed(thread_id, pk, marker_rk)
            if replayed is not None:
                return replayed, True
        for parent_seq in {p.parent_seq for p in prepared if p.parent_seq is not None}:
            parent = self._find(pk, _message_rk(parent_seq))
            wanted = next(p.properties["parent_message_id"] for p in prepared if p.parent_seq == parent_seq)
            if parent is None or parent["message_id"] != wanted:
                raise InvalidInput(f"parent message {wanted!r} is not in this thread")
        for attempt in range(_WRITE_ATTEMPTS):
            first = int(thread["last_seq"]) + 1
            last = first + len(prepared) - 1
            if last > MAX_SEQ:
                raise Conflict(f"thread {thread_id!r} has reached the maximum number of messages")
            now = max(time.time(), float(thread["updated_at"]))
            entities = []
            for seq, item in enumerate(prepared, start=first):
                properties = {**item.properties, "message_id": f"msg_{seq:012d}_{secrets.token_hex(4)}",
                              "seq": seq, "created_at": now, "updated_at": now}
                entities.append(Entity(pk, _message_rk(seq), properties))
            head = Entity(pk, THREAD_ROW, {**thread.properties, "last_seq": last, "updated_at": now,
                                          "message_count": int(thread["message_count"]) + len(prepared)},
                          thread.etag, thread.offloaded)
            ops = [TableOp.update(head, if_match=thread.etag)] + [TableOp.insert(e) for e in entities]
            if marker_rk is not None:
                ops.append(TableOp.insert(Entity(pk, marker_rk, {"first_seq": first, "last_seq": last})))
            try:
                etags = self._table.batch(ops)
            except (PreconditionFailed, Conflict, NotFound):
                # Lost a race (AlreadyExists is a Conflict): read the new state and go again.
                thread = self._live_thread(tenant, thread_id)
                if marker_rk is not None:
                    replayed = self._replayed(thread_id, pk, marker_rk)
                    if replayed is not None:
                        return replayed, True
                _backoff(attempt)
                continue
            return [self._message(thread_id, e, etag) for e, etag in zip(entities, etags[1:])], False
        raise Conflict(f"thread {thread_id!r} is being appended to too often to win a write; retry")

    def _replayed(self, thread_id: str, pk: str, marker_rk: str) -> list[Message] | None:
        marker = self._find(pk, marker_rk)
        if marker is None:
            return None
        first, last = int(marker["first_seq"]), int(marker["last_seq"])
        rows = self._table.query(pk, start=_message_rk(last), end=_message_rk(first - 1), limit=MAX_PAGE_SIZE)
        return [self._message(thread_id, e) for e in reversed(rows.items)]

    def add_message(self, tenant: str, thread_id: str, role: Role | str, content: str | list | dict, *,
                    metadata: dict | None = None, parent_message_id: str | None = None) -> Message:
        """Append one message (see :meth:`add_messages`)."""
        return self.add_messages(tenant, thread_id, [NewMessage(role, content, metadata, parent_message_id)])[0]

    def _message_entity(self, tenant: str, thread_id: str, message_id: str) -> tuple[Entity, Entity]:
        thread = self._live_thread(tenant, thread_id)
        check_id(message_id, "message id")
        seq = _seq_of_message_id(message_id)
        message = self._find(thread.partition_key, _message_rk(seq)) if seq is not None else None
        if message is None or message["message_id"] != message_id:
            raise NotFound(f"message {message_id!r} does not exist in thread {thread_id!r}")
        return thread, message

    def get_message(self, tenant: str, thread_id: str, message_id: str) -> Message:
        """One message by id; NotFound when absent."""
        return self._message(thread_id, self._message_entity(tenant, thread_id, message_id)[1])

    def update_message(self, tenant: str, thread_id: str, message_id: str, *, content: Any = ...,
                       metadata: Any = ..., if_match: str | None = None) -> Message:
        """Edit a message's content and/or replace its metadata (None clears); ``if_match``: only at this ETag."""
        changes: dict[str, Any] = {}
        if content is not ...:
            changes.update({"text": None, "parts": None, **self._content_properties(content)})
        if metadata is not ...:
            changes["metadata"] = _metadata_text(metadata, "message metadata")
        for attempt in range(_WRITE_ATTEMPTS):
            thread, message = self._message_entity(tenant, thread_id, message_id)
            if if_match is not None and _public_etag(message.etag) != if_match:
                raise PreconditionFailed(f"message {message_id!r} is not at ETag {if_match}")
            now = max(time.time(), float(thread["updated_at"]))
            edited = Entity(message.partition_key, message.row_key,
                            {**message.properties, **changes, "updated_at": now}, message.etag, message.offloaded)
            try:
                etags = self._table.batch([TableOp.update(edited, if_match=message.etag),
                                           self._touch(thread, now, 0)])
            except (PreconditionFailed, Conflict, NotFound):
                _backoff(attempt)
                continue  # re-reading tells a deleted message, a changed one and a busy thread apart
            return self._message(thread_id, edited, etags[0])
        raise Conflict(f"thread {thread_id!r} is changing too often to edit a message; retry")

    @staticmethod
    def _touch(thread: Entity, now: float, count_change: int) -> TableOp:
        properties = {**thread.properties, "updated_at": now,
                      "message_count": int(thread["message_count"]) + count_change}
        return TableOp.update(Entity(thread.partition_key, THREAD_ROW, properties, thread.etag, thread.offloaded),
                              if_match=thread.etag)

    def delete_message(self, tenant: str, thread_id: str, message_id: str, *, if_match: str | None = None) -> None:
        """Delete one message; the thread's count drops by one in the same batch. Its seq is not reused."""
        for attempt in range(_WRITE_ATTEMPTS):
            thread, message = self._message_entity(tenant, thread_id, message_id)
            if if_match is not None and _public_etag(message.etag) != if_match:
                raise PreconditionFailed(f"message {message_id!r} is not at ETag {if_match}")
            now = max(time.time(), float(thread["updated_at"]))
            gone = Entity(message.partition_key, message.row_key, etag=message.etag, offloaded=message.offloaded)
            try:
                self._table.batch([TableOp(OpKind.DELETE, gone, message.etag), self._touch(thread, now, -1)])
            except (PreconditionFailed, Conflict, NotFound):
                _backoff(attempt)
                continue  # re-reading tells a concurrent delete (NotFound) from a concurrent change
            return
        raise Conflict(f"thread {thread_id!r} is changing too often to delete a message; retry")

    # -- history

    @staticmethod
    def _cursor(value: Any, what: str) -> int:
        """A cursor: a seq number (int, or digits) or a message id (its seq)."""
        if isinstance(value, bool):
            raise InvalidInput(f"{what} must be a seq number or a message id")
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int):
            if not 0 <= value <= MAX_SEQ + 1:
                raise InvalidInput(f"{what} must be a seq from 0 to {MAX_SEQ + 1}")
            return value
        seq = _seq_of_message_id(value) if isinstance(value, str) else None
        if seq is None:
            raise InvalidInput(f"{what} must be a seq number or a message id like 'msg_000000000042_1a2b3c4d'")
        return seq

    def history(self, tenant: str, thread_id: str, *, last: int | None = None, before: int | str | None = None,
                after: int | str | None = None, limit: int = 50, continuation: str | None = None,
                order: Order | str = Order.asc) -> Page[Message]:
        """Messages of a thread, paged in either direction.

        The window is the messages with ``after < seq < before`` (both exclusive,
        each a seq number or a message id; the message need not still exist).

        * ``last=N``: the newest N messages of the window, in ``order`` (default
          chronological); the continuation gives the N before them.
        * otherwise ``order="asc"`` pages from the oldest message forward, and
          ``order="desc"`` from the newest backward, ``limit`` per page.

        A continuation token carries the window, direction, order and page size
        of the read that issued it; other arguments are ignored when it is given.
        """
        thread = self._live_thread(tenant, thread_id)
        pk = thread.partition_key
        if continuation is not None:
            # Signed for this tenant's thread partition: another thread's or tenant's token is refused.
            state = self._raw.verify_continuation(pk, continuation, purpose=_HISTORY_TOKEN)
            try:
                if state["t"] != thread_id:
                    raise InvalidInput("continuation token belongs to another thread")
                low, high, size = int(state["lo"]), int(state["hi"]), int(state["n"])
                backward, output = bool(state["back"]), Order(state["o"])
            except (KeyError, TypeError, ValueError):
                raise InvalidInput("continuation token is not one this service issued") from None
        else:
            try:
                output = Order(order)
            except ValueError:
                raise InvalidInput("order must be 'asc' or 'desc'") from None
            low = self._cursor(after, "after") if after is not None else 0
            high = self._cursor(before, "before") if before is not None else MAX_SEQ + 1
            if last is not None:
                size, backward = last, True
            else:
                size, backward = limit, output is Order.desc
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidInput(f"last and limit must be integers from 1 to {MAX_PAGE_SIZE}")
        # Exclusive bounds; reads stop at the thread's last seq, tokens keep the asked-for bound
        # so that paging forward later also finds messages appended meanwhile.
        low = max(low, 0)
        if backward:
            rows, more = self._newest(pk, low, min(high, int(thread["last_seq"]) + 1), size)
        else:
            rows, more = self._oldest(pk, low, min(high, int(thread["last_seq"]) + 1), size)
        messages = [self._message(thread_id, e) for e in rows]  # in seq order of the walk
        token = None
        if more and messages:
            edge = messages[-1].seq
            next_low, next_high = (low, edge) if backward else (edge, high)
            token = self._raw.sign_continuation(pk, {"t": thread_id, "lo": next_low, "hi": next_high, "n": size,
                                                     "back": backward, "o": output.value}, purpose=_HISTORY_TOKEN)
        if backward == (output is Order.asc):
            messages.reverse()
        return Page(messages, token)

    def _newest(self, pk: str, low: int, high: int, size: int) -> tuple[list[Entity], bool]:
        """Up to ``size`` messages with low < seq < high, newest first, and whether more remain."""
        if high - low <= 1:
            return [], False
        page = self._table.query(pk, start=_message_rk(high - 1), end=_message_rk(low),
                                 limit=min(size + 1, MAX_PAGE_SIZE))
        rows = page.items
        more = len(rows) > size or (len(rows) == size and page.continuation is not None)
        return rows[:size], more

    def _oldest(self, pk: str, low: int, high: int, size: int) -> tuple[list[Entity], bool]:
        """Up to ``size`` messages with low < seq < high, oldest first, and whether more remain.

        Rows come newest first, so read seq ranges just big enough for what is
        missing (all of a range fits one query), widening them over deleted gaps.
        """
        found: list[Entity] = []
        next_seq, span = low + 1, size
        while len(found) < size and next_seq < high:
            top = min(high - 1, next_seq + span - 1)
            rows = self._table.query(pk, start=_message_rk(top), end=_message_rk(next_seq - 1),
                                     limit=min(top - next_seq + 1, MAX_PAGE_SIZE)).items
            rows.reverse()
            wanted = size - len(found)
            if len(rows) > wanted:
                return found + rows[:wanted], True
            found.extend(rows)
            next_seq = top + 1
            span = min(span * 2, MAX_PAGE_SIZE)
        if next_seq >= high:
            return found, False
        probe = self._table.query(pk, start=_message_rk(high - 1), end=_message_rk(next_seq - 1), limit=1)
        return found, bool(probe.items)


_ABSENT = object()


# --------------------------------------------------------------------------- queue commands


class MessageInput(BaseModel):
    """A message to append."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="Who wrote it: user, assistant, system or tool.")
    content: str | list[Any] | dict[str, Any] = Field(
        description="Text, or structured JSON parts (a list or an object). Up to 8 MiB; long content is "
                    "stored whole in a blob.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 8 KiB.")
    parent_message_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=ID_PATTERN,
        description="A message of the same thread this one answers: its id, e.g. 'msg_000000000042_1a2b3c4d'.")

    def new_message(self) -> NewMessage:
        return NewMessage(self.role, self.content, self.metadata, self.parent_message_id)


class MemoryCreateThreadPayload(CommandPayload):
    """Create a thread. Without ``thread_id``, its id is derived from the idempotency key."""

    resource: str = Field(description="Owner of the thread inside the tenant, e.g. 'user_123' or 'team_ml'.")
    thread_id: str | None = Field(default=None, description="The thread's id; generated when absent.")
    title: str | None = Field(default=None, description="A title.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 8 KiB.")


class MemoryUpdateThreadPayload(CommandPayload):
    """Set a thread's title and/or replace its metadata (fields given only)."""

    thread_id: str
    title: str | None = Field(default=None, description="New title; null clears it.")
    metadata: dict[str, Any] | None = Field(default=None, description="New metadata; null clears it.")


class MemoryDeleteThreadPayload(CommandPayload):
    """Delete a thread and all its messages."""

    thread_id: str


class MemoryAddMessagesPayload(CommandPayload):
    """Append messages to a thread, atomically and once per idempotency key."""

    thread_id: str
    messages: list[MessageInput] = Field(min_length=1, max_length=MAX_MESSAGES_PER_CALL)


class MemoryUpdateMessagePayload(CommandPayload):
    """Edit a message's content and/or replace its metadata (fields given only)."""

    thread_id: str
    message_id: str
    content: str | list[Any] | dict[str, Any] | None = Field(default=None, description="New content.")
    metadata: dict[str, Any] | None = Field(default=None, description="New metadata; null clears it.")


class MemoryDeleteMessagePayload(CommandPayload):
    """Delete one message."""

    thread_id: str
    message_id: str


def _given(payload: BaseModel, name: str) -> Any:
    return getattr(payload, name) if name in payload.model_fields_set else ...


def _apply_create_thread(service: MemoryService, tenant: str, payload: MemoryCreateThreadPayload, key: str) -> Outcome:
    thread, replayed = service._create(tenant, payload.resource, payload.thread_id, payload.title,
                                                     payload.metadata, key)
    return Outcome("duplicate" if replayed else "applied", f"thread {thread.thread_id}")


def _apply_update_thread(service: MemoryService, tenant: str, payload: MemoryUpdateThreadPayload, key: str) -> Outcome:
    service.update_thread(tenant, payload.thread_id, title=_given(payload, "title"),
                                        metadata=_given(payload, "metadata"))
    return Outcome("applied", f"thread {payload.thread_id} updated")


def _apply_delete_thread(service: MemoryService, tenant: str, payload: MemoryDeleteThreadPayload, key: str) -> Outcome:
    try:
        service.delete_thread(tenant, payload.thread_id)
    except NotFound:
        return Outcome("duplicate", f"thread {payload.thread_id} already gone")
    return Outcome("applied", f"thread {payload.thread_id} deleted")


def _apply_add_messages(service: MemoryService, tenant: str, payload: MemoryAddMessagesPayload, key: str) -> Outcome:
    messages, replayed = service._add(tenant, payload.thread_id,
                                                    [m.new_message() for m in payload.messages], _marker_rk(key))
    seqs = f"seq {messages[0].seq}-{messages[-1].seq}" if messages else "no messages left"
    return Outcome("duplicate" if replayed else "applied", f"thread {payload.thread_id}: {seqs}")


def _apply_update_message(service: MemoryService, tenant: str, payload: MemoryUpdateMessagePayload, key: str) -> Outcome:
    service.update_message(tenant, payload.thread_id, payload.message_id,
                                         content=_given(payload, "content"), metadata=_given(payload, "metadata"))
    return Outcome("applied", f"message {payload.message_id} updated")


def _apply_delete_message(service: MemoryService, tenant: str, payload: MemoryDeleteMessagePayload, key: str) -> Outcome:
    try:
        service.delete_message(tenant, payload.thread_id, payload.message_id)
    except NotFound:
        return Outcome("duplicate", f"message {payload.message_id} already gone")
    return Outcome("applied", f"message {payload.message_id} deleted")


COMMANDS = (
    CommandOp("memory.create_thread", MemoryCreateThreadPayload, _apply_create_thread, "Create a thread."),
    CommandOp("memory.update_thread", MemoryUpdateThreadPayload, _apply_update_thread,
              "Set a thread's title and/or metadata."),
    CommandOp("memory.delete_thread", MemoryDeleteThreadPayload, _apply_delete_thread,
              "Delete a thread and all its messages."),
    CommandOp("memory.add_messages", MemoryAddMessagesPayload, _apply_add_messages,
              "Append messages to a thread (once per idempotency key)."),
    CommandOp("memory.update_message", MemoryUpdateMessagePayload, _apply_update_message,
              "Edit a message's content and/or metadata."),
    CommandOp("memory.delete_message", MemoryDeleteMessagePayload, _apply_delete_message, "Delete a message."),
)
