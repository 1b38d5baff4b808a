"""Memory: conversation threads and their messages, per tenant.

The stored layout (keys, rows, the ``!deleting`` records) is drawn in
:mod:`shared.domains.memory._layout`. One partition per thread caps one thread's
writes at a partition's throughput (about 2,000 entities/s on Azure), far above
the pace of a conversation.

Guarantees:

* An append is ONE batch: the thread entity, updated on the condition of the
  ETag it was read with (count, last seq, updated_at), plus the new messages (and
  the idempotency marker). Concurrent appenders that lose re-read and retry
  (:func:`shared.storage.retry.retry_races`: bounded, with jitter; out of tries,
  :class:`~shared.errors.Busy`), so seqs are strictly increasing without gaps,
  ``message_count`` is exact and ``updated_at`` is the newest message's time
  (never moving backwards, whatever the writers' clocks). Editing or deleting
  a message changes the thread entity in the same batch too.
* Every write that carries an idempotency key (create, append, update and delete
  of threads and messages) writes its marker (:mod:`shared.storage.idempotency`,
  with the request's fingerprint) create-only in the same batch as its change
  (a thread delete: with its ``deleting`` mark): a replay answers the first status
  without writing, and finds the target as it is now (the stored result when it
  is gone); the key with another request is a 422; a redelivered older edit never
  reverts a newer one. Deleting a thread's rows keeps the markers of its create
  and of its delete, so their replays stay replays after the thread is gone (and
  leave a thread created again under the id alone); a keyed thread delete also
  claims its key in the tenant's claims partition, so the key cannot delete
  another thread. Other markers go with the thread.
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
* Deleting a thread files a record in the due index of deletes, marks the thread
  ``deleting`` (it reads as 404 at once and takes no more writes), deletes
  messages and markers in batches of at most 100
  (conditional on the ETags read, offloaded blobs deleted after, without
  downloading them), then the index entry, the thread entity and the
  record. Any step may crash: a repeated delete, a create of the same id, or the
  timer (:mod:`shared.domains.memory.jobs`, fair across tenants) finishes the job;
  a record filed by a delete that then lost its race is removed again (a crash
  in between leaves a record the timer drops, finding no thread marked with it).
* Change records (:mod:`shared.storage.changefeed`): every change writes one in
  its own batch, in the thread's partition: ``memory.create_thread``,
  ``memory.update_thread``, ``memory.add_messages`` (the seqs and a SHA-256 of the
  messages, never their content), ``memory.update_message``, ``memory.delete_message``,
  and ``memory.delete_thread`` in the batch that marks the thread ``deleting`` (the
  chunks after it record nothing). Replays and refused writes record nothing.
  Outbox rows (``~outbox|``) sort after ``thread``, so a thread delete (rows before
  ``thread``) and every read (message ranges, markers by key) leave them to the
  sequencer, which deletes them once sequenced.
* Content of any size up to :data:`MAX_CONTENT_BYTES` is stored whole: the
  offload layer moves values over its threshold to blobs, written before the
  batch that refers to them. Sizes and values (valid Unicode, nesting bounded:
  :mod:`shared.jsonvalues`) are checked before anything is written, the thread's
  index entry included, so refused input leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shared import names
from shared.backends import Entity, OpKind, Page, TableOp
from shared.backends.base import (
    MAX_BATCH_BYTES,
    MAX_BATCH_OPERATIONS,
    MAX_PAGE_SIZE,
    TableStore,
    property_size,
    wire_size,
)
from shared.domains.domain import change_record
from shared.domains.memory._layout import (
    DELETING_PREFIX,
    FMT,
    LEGACY_DELETING_PARTITION,
    MAX_SEQ,
    THREAD_ROW,
    claims_pk,
    deletion_item,
    index_pk,
    index_rk,
    integer,
    is_legacy_record,
    legacy_deleting_end,
    message_from_json,
    message_json,
    message_of,
    message_rk,
    new_message_id,
    public_etag,
    seconds,
    seq_of_message_id,
    thread_from_json,
    thread_json,
    thread_of,
    thread_pk,
)
from shared.domains.memory.models import (
    DELETION_GRACE_SECONDS,
    MAX_CONTENT_BYTES,
    MAX_MESSAGES_PER_CALL,
    MAX_METADATA_BYTES,
    MAX_TITLE_LENGTH,
    Content,
    Message,
    MessageChanged,
    MessageInput,
    MessageNotFound,
    NewMessage,
    Order,
    Role,
    Thread,
    ThreadAlreadyExists,
    ThreadChanged,
    ThreadFull,
    ThreadNotFound,
)
from shared.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.jsonvalues import check_json_value
from shared.keys import check_id, check_tenant
from shared.storage.changefeed import ChangeRecord, canonical_digest
from shared.storage.due import Budget, DueIndex
from shared.storage.idempotency import Idempotency, IdempotencyKeyReused, lookup, marker_op
from shared.storage.mutate import Outbox, Outcome, find
from shared.storage.retry import LostRace, conditional, retry_races
from shared.storage.rows import json_field, stamped, stored_time
from shared.stores import Stores

R = TypeVar("R")
S = TypeVar("S")

_LIST_EXAMINED = 1000  # index entries one list call looks at, at most
# Purposes the continuation tokens of list_threads and history are signed for (with table and partition).
_THREADS_TOKEN = "threads"
_HISTORY_TOKEN = "history"
_READERS = 8
_OFFLOADED_ENTITY_WIRE = 400  # a property moved to a blob leaves a reference of about this size
_BATCH_BUDGET = MAX_BATCH_BYTES - 64 * 1024  # room for the thread entity and the marker
_ABSENT = object()
#: Deletes one tenant may have finished per round of the timer before the next tenant's turn.
_DELETION_QUANTUM = 10
#: Wall time :meth:`MemoryService.finish_deletions` works by default.
_FINISH_SECONDS = 30.0

__all__ = [
    "DELETION_GRACE_SECONDS", "MAX_CONTENT_BYTES", "MAX_MESSAGES_PER_CALL", "MAX_METADATA_BYTES",
    "MAX_TITLE_LENGTH", "MemoryService", "Message", "MessageInput", "NewMessage", "Order", "Role", "Thread",
]


def _metadata_text(metadata: Any, what: str) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return json_field(metadata, what, max_bytes=MAX_METADATA_BYTES) if metadata else None


def _check_title(title: Any) -> str | None:
    if title is not None and (not isinstance(title, str) or len(title) > MAX_TITLE_LENGTH):
        raise InvalidInput(f"title must be text of at most {MAX_TITLE_LENGTH} characters")
    checked: str | None = check_json_value(title, "title")
    return checked


def _now_after(row: Entity) -> float:
    """Now, but never before the row's ``updated_at`` (whatever the writers' clocks)."""
    return stored_time(max(time.time(), seconds(row, "updated_at")))


@dataclass(frozen=True)
class _Prepared:
    """A validated new message, as entity properties without seq and times."""

    role: Role
    properties: dict[str, Any]
    parent_seq: int | None
    #: The message as asked for, for the idempotency fingerprint.
    request: dict[str, Any]


@dataclass(frozen=True)
class _Write(Generic[R]):
    """A decision: the operations (on one partition), the result once written, what a marker keeps."""

    ops: Sequence[TableOp]
    #: The result, given the ETags the batch returned (one per operation).
    result: Callable[[list[str | None]], R]
    #: The result as the idempotency marker keeps it (JSON).
    stored: Any
    status: int = 200
    #: The change record written with the operations.
    record: ChangeRecord | None = None


class MemoryService:
    """Threads and messages of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        #: Every row goes through the offload layer (index entries and deletion records
        #: never hold large values, so it passes them through as they are).
        self._table = stores.table(names.TABLE_MEMORY)
        self._stores = stores
        self._offload_threshold = stores.settings.offload_threshold_bytes
        #: Thread deletes in progress, for the timer that finishes interrupted ones.
        self._deletions = DueIndex(self._table, DELETING_PREFIX, quantum=_DELETION_QUANTUM,
                                   grace=DELETION_GRACE_SECONDS)
        self._readers: ThreadPoolExecutor | None = None

    # -- the one write path

    def _outbox(self, tenant: str) -> Outbox:
        return self._stores.outbox(tenant, names.TABLE_MEMORY)

    def _write(self, tenant: str, partition: str, *, read: Callable[[], S], decide: Callable[[S], _Write[R]],
               what: str, idempotency: Idempotency | None, replay: Callable[[Any], R],
               looked_up: bool = False) -> Outcome[R]:
        """Read, decide, write ``decide(read())`` with the marker as one conditional batch, retrying lost races.

        Like :func:`shared.storage.mutate.mutate`, but the result is made from the
        ETags the batch returns (callers see them and send them back as If-Match).
        A replay is ``replay(stored result)``: the target as it is now. ``looked_up``: the
        caller found no marker just now, so the first attempt does not look again.
        """
        skip = [looked_up]

        def attempt() -> Outcome[R]:
            if idempotency is not None and not (skip and skip.pop()):
                found = self._lookup(partition, idempotency)
                if found is not None:
                    return Outcome(replay(found[1]), replayed=True, status=found[0])
            write = decide(read())
            ops = list(write.ops)
            if ops:
                ops += self._outbox(tenant).ops(partition, write.record)
            if idempotency is not None:
                ops.append(marker_op(partition, idempotency, write.stored, status=write.status))
            with conditional():
                etags = self._put(ops)
            return Outcome(write.result(etags), replayed=False, status=write.status)

        return retry_races(attempt, what=what)

    def _put(self, ops: Sequence[TableOp]) -> list[str | None]:
        """Write ``ops`` atomically: one insert or update as a plain write (a transaction costs
        twice as much on DynamoDB), several as one batch. The ETags written, one per operation."""
        if len(ops) == 1 and ops[0].kind is OpKind.INSERT:
            return [self._table.insert(ops[0].entity)]
        if len(ops) == 1 and ops[0].kind is OpKind.UPDATE:
            return [self._table.update(ops[0].entity, if_match=ops[0].if_match)]
        return self._table.batch(ops)

    def _lookup(self, partition: str, idempotency: Idempotency) -> tuple[int, Any] | None:
        """The status and stored result of an earlier application of this request, or None."""
        try:
            found = lookup(self._table, partition, idempotency)
        except IdempotencyKeyReused:
            legacy = find(self._table, partition, idempotency.row_key)
            if legacy is None or legacy.get("fp") is not None or legacy.get("first_seq") is None:
                raise
            # A marker an append wrote before the shared format: it keeps the seqs only.
            return 201, {"first": integer(legacy, "first_seq"), "last": integer(legacy, "last_seq")}
        return None if found is None else (found.status, found.result)

    # -- reads

    def _live_thread(self, tenant: str, thread_id: str) -> Entity:
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        thread = find(self._table, thread_pk(tenant, thread_id), THREAD_ROW)
        if thread is None or thread.get("deleting"):
            raise ThreadNotFound(thread_id)
        return thread

    def _message_entity(self, tenant: str, thread_id: str, message_id: str) -> tuple[Entity, Entity]:
        thread = self._live_thread(tenant, thread_id)
        check_id(message_id, "message id")
        seq = seq_of_message_id(message_id)
        message = find(self._table, thread.partition_key, message_rk(seq)) if seq is not None else None
        if message is None or message["message_id"] != message_id:
            raise MessageNotFound(thread_id, message_id)
        return thread, message

    # -- validation

    @staticmethod
    def _content_properties(content: Any) -> dict[str, Any]:
        if isinstance(content, str):
            size = len(check_json_value(content, "message content").encode("utf-8"))
            if size > MAX_CONTENT_BYTES:
                raise TooLarge(f"message content is {size} bytes; the limit is {MAX_CONTENT_BYTES}")
            return {"text": content}
        if isinstance(content, (list, dict)):
            return {"parts": json_field(content, "message content", max_bytes=MAX_CONTENT_BYTES)}
        raise InvalidInput("message content must be text, or JSON parts (a list or an object)")

    def _prepare(self, message: NewMessage | dict[str, Any]) -> _Prepared:
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
            parent_seq = seq_of_message_id(message.parent_message_id)
            if parent_seq is None:
                raise InvalidInput(f"parent message {message.parent_message_id!r} is not in this thread")
            properties["parent_message_id"] = message.parent_message_id
        request = {"role": role.value, "content": message.content, "metadata": message.metadata,
                   "parent_message_id": message.parent_message_id}
        return _Prepared(role, properties, parent_seq, request)

    def _stored_wire_size(self, properties: dict[str, Any]) -> int:
        """About what an entity takes in a batch once the offload layer has moved its large values."""
        present = {k: v for k, v in properties.items() if v is not None}
        inline = {k: v for k, v in present.items() if property_size(v) <= self._offload_threshold}
        return wire_size(inline) + _OFFLOADED_ENTITY_WIRE * (len(present) - len(inline)) + 200

    # -- threads

    def create_thread(self, tenant: str, resource: str, *, thread_id: str | None = None, title: str | None = None,
                      metadata: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Thread:
        """Create a thread owned by ``resource``; AlreadyExists if ``thread_id`` is taken.

        Without ``thread_id`` one is generated (derived from ``idempotency_key``
        when given). With ``idempotency_key``, a retry returns the thread the
        first call created instead of AlreadyExists (the key with another request: 422).
        """
        return self.create_thread_outcome(tenant, resource, thread_id=thread_id, title=title, metadata=metadata,
                                          idempotency_key=idempotency_key).result

    def create_thread_outcome(self, tenant: str, resource: str, *, thread_id: str | None = None,
                              title: str | None = None, metadata: dict[str, Any] | None = None,
                              idempotency_key: str | None = None) -> Outcome[Thread]:
        """:meth:`create_thread`, and whether an earlier call with this idempotency key created it (status 201)."""
        check_tenant(tenant)
        check_id(resource, "resource")
        _check_title(title)
        metadata_text = _metadata_text(metadata, "thread metadata")
        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency.of(idempotency_key, "memory.create_thread", {
                "resource": resource, "thread_id": thread_id, "title": title, "metadata": metadata})
        created_key = idempotency.row_key[2:] if idempotency is not None else None
        if thread_id is None:
            thread_id = ("thread_" + hashlib.sha256(f"{tenant}|{created_key}".encode()).hexdigest()[:32]
                         if created_key else f"thread_{uuid.uuid4().hex}")
        check_id(thread_id, "thread id")
        new_id: str = thread_id
        pk = thread_pk(tenant, new_id)

        def current(thread_row: Entity) -> Thread:
            return thread_of(new_id, thread_row)

        def replay(stored: Any) -> Thread:
            row = find(self._table, pk, THREAD_ROW)
            return current(row) if row is not None and not row.get("deleting") else thread_from_json(stored)

        if idempotency is not None:
            found = self._lookup(pk, idempotency)
            if found is not None:
                return Outcome(replay(found[1]), replayed=True, status=found[0])
        existing = find(self._table, pk, THREAD_ROW)
        if existing is not None and existing.get("deleting"):
            self._purge(tenant, new_id, existing)
        elif existing is not None:
            if created_key is not None and existing.get("created_key") == created_key:
                return Outcome(current(existing), replayed=True, status=201)  # created before markers had a format
            if idempotency is not None:
                # A concurrent first application of this request may have committed since the lookup above.
                found = self._lookup(pk, idempotency)
                if found is not None:
                    return Outcome(replay(found[1]), replayed=True, status=found[0])
            raise ThreadAlreadyExists(new_id)
        now = stored_time(time.time())
        entry_pk, entry_rk = index_pk(tenant, resource), index_rk(now, new_id)
        properties = stamped({"resource": resource, "title": title, "metadata": metadata_text, "created_at": now,
                              "updated_at": now, "message_count": 0, "last_seq": 0, "index_rk": entry_rk,
                              "created_marker": idempotency.row_key if idempotency is not None else None}, FMT)
        row = Entity(pk, THREAD_ROW, properties)

        def decide(found_row: Entity | None) -> _Write[Thread]:
            if found_row is not None:
                if found_row.get("deleting"):
                    raise LostRace(f"thread {new_id!r} is being deleted")
                raise ThreadAlreadyExists(new_id)
            details: dict[str, Any] = {"resource": resource}
            if title is not None:
                details["title_sha256"] = canonical_digest(title)
            if metadata:
                details["metadata_sha256"] = canonical_digest(metadata)
            return _Write([TableOp.insert(row)], lambda etags: thread_of(new_id, row, etags[0]),
                          thread_json(thread_of(new_id, row, "")), status=201,
                          record=change_record("memory", "memory.create_thread", "thread", new_id, details))

        # The first attempt decides on the read above (nothing there, or purged just now).
        first_read: list[Entity | None] = [None]
        # Index first: a crash before the thread leaves an entry listings skip, never an unlisted thread.
        self._table.insert(Entity(entry_pk, entry_rk, stamped({"thread_id": new_id, "created_at": now}, FMT)))
        try:
            outcome = self._write(tenant, pk,
                                  read=lambda: first_read.pop() if first_read else find(self._table, pk, THREAD_ROW),
                                  decide=decide, what=f"thread {new_id!r}", idempotency=idempotency, replay=replay,
                                  looked_up=True)
        except AlreadyExists:
            self._discard(entry_pk, entry_rk)
            if idempotency is not None:  # a concurrent first application of this very request won
                found = self._lookup(pk, idempotency)
                if found is not None:
                    return Outcome(replay(found[1]), replayed=True, status=found[0])
            raise
        except BaseException:
            self._discard(entry_pk, entry_rk)
            raise
        if outcome.replayed:
            self._discard(entry_pk, entry_rk)
        return outcome

    def get_thread(self, tenant: str, thread_id: str) -> Thread:
        """The thread with its exact message count; NotFound when absent or being deleted."""
        return thread_of(thread_id, self._live_thread(tenant, thread_id))

    def update_thread(self, tenant: str, thread_id: str, *, title: Any = ..., metadata: Any = ...,
                      if_match: str | None = None, idempotency_key: str | None = None) -> Thread:
        """Set the title and/or replace the metadata (None clears; ``...`` keeps); ``if_match``: only at this ETag."""
        return self.update_thread_outcome(tenant, thread_id, title=title, metadata=metadata, if_match=if_match,
                                          idempotency_key=idempotency_key).result

    def update_thread_outcome(self, tenant: str, thread_id: str, *, title: Any = ..., metadata: Any = ...,
                              if_match: str | None = None, idempotency_key: str | None = None) -> Outcome[Thread]:
        """:meth:`update_thread`, and whether an earlier call with this idempotency key applied it."""
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        changes: dict[str, Any] = {}
        if title is not ...:
            changes["title"] = _check_title(title)
        if metadata is not ...:
            changes["metadata"] = _metadata_text(metadata, "thread metadata")
        idempotency = None
        if idempotency_key is not None:
            request = {"thread_id": thread_id, "if_match": if_match,
                       **({"title": title} if title is not ... else {}),
                       **({"metadata": metadata} if metadata is not ... else {})}
            idempotency = Idempotency.of(idempotency_key, "memory.update_thread", request)

        def decide(thread: Entity) -> _Write[Thread]:
            if if_match is not None and public_etag(thread.etag) != if_match:
                raise ThreadChanged(thread_id, if_match, public_etag(thread.etag))
            properties = stamped({**thread.properties, **changes, "updated_at": _now_after(thread)}, FMT)
            entity = Entity(thread.partition_key, THREAD_ROW, properties, thread.etag, thread.offloaded)
            details = {f"{name}_sha256": canonical_digest(value) for name, value in
                       (("title", title), ("metadata", metadata)) if value is not ...}
            return _Write([TableOp.update(entity, if_match=thread.etag)],
                          lambda etags: thread_of(thread_id, entity, etags[0]),
                          thread_json(thread_of(thread_id, entity, "")),
                          record=change_record("memory", "memory.update_thread", "thread", thread_id, details))

        def replay(stored: Any) -> Thread:
            try:
                return self.get_thread(tenant, thread_id)
            except NotFound:
                return thread_from_json(stored)

        return self._write(tenant, thread_pk(tenant, thread_id), read=lambda: self._live_thread(tenant, thread_id),
                           decide=decide, what=f"thread {thread_id!r}", idempotency=idempotency, replay=replay)

    def delete_thread(self, tenant: str, thread_id: str, *, idempotency_key: str | None = None) -> None:
        """Delete the thread and all its messages, in chunks. Safe to retry after a crash halfway:
        a thread whose delete was interrupted is still found (and reads as 404 meanwhile)."""
        self.delete_thread_outcome(tenant, thread_id, idempotency_key=idempotency_key)

    def delete_thread_outcome(self, tenant: str, thread_id: str, *,
                              idempotency_key: str | None = None) -> Outcome[None]:
        """:meth:`delete_thread`, and whether an earlier call with this idempotency key deleted it (status 204).

        The key's marker is written with the ``deleting`` mark and outlives the thread's
        rows (so does the marker of the create), so a redelivery after the delete is a
        replay, and never deletes a thread created again under the same id since.
        """
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        pk = thread_pk(tenant, thread_id)
        idempotency = (Idempotency.of(idempotency_key, "memory.delete_thread", {"thread_id": thread_id})
                       if idempotency_key is not None else None)
        if idempotency is not None:
            self._claim(tenant, idempotency)
        found = self._lookup(pk, idempotency) if idempotency is not None else None
        thread = find(self._table, pk, THREAD_ROW)
        if found is not None:
            if thread is not None and thread.get("deleting"):
                self._purge(tenant, thread_id, thread)  # finish what the first application began
            return Outcome(None, replayed=True, status=found[0])
        if thread is None:
            raise ThreadNotFound(thread_id)
        self._purge(tenant, thread_id, thread, idempotency)
        return Outcome(None, replayed=False, status=204)

    def _claim(self, tenant: str, idempotency: Idempotency) -> None:
        """Hold ``idempotency``'s key for its request in the tenant's claims: the same key with
        a delete of another thread is refused (422) though its marker would be in another partition.
        A claim only refuses; whether the delete was applied is its marker's to say."""
        row = Entity(claims_pk(tenant), idempotency.row_key, stamped({"fp": idempotency.fingerprint}, FMT))
        try:
            self._table.insert(row)
            return
        except AlreadyExists:
            pass
        claim = find(self._table, row.partition_key, row.row_key)
        if claim is not None and claim.get("fp") != idempotency.fingerprint:
            raise IdempotencyKeyReused(idempotency.key, idempotency.op)

    def _purge(self, tenant: str, thread_id: str, thread: Entity, idempotency: Idempotency | None = None) -> None:
        pk = thread_pk(tenant, thread_id)
        seen: list[Entity | None] = [thread]

        def mark() -> tuple[Entity, str | None] | None:
            """The thread marked ``deleting`` and its record's row key; None when it is gone already."""
            current = seen.pop() if seen else find(self._table, pk, THREAD_ROW)
            if current is None:
                return None
            if current.get("deleting"):
                return current, str(current.get("deleting_record") or "") or None
            due, item = int(time.time()) + DELETION_GRACE_SECONDS, deletion_item(thread_id)
            self._deletions.file(tenant, item, due, stamped({"thread_id": thread_id}, FMT))
            record_rk = DueIndex.row_key(due, item)
            properties = {**current.properties, "deleting": True, "deleting_record": record_rk}
            ops = []
            if idempotency is not None:
                properties["deleted_marker"] = idempotency.row_key
                ops.append(marker_op(pk, idempotency, None, status=204))
            marked = Entity(pk, THREAD_ROW, properties, current.etag, current.offloaded)
            record = change_record("memory", "memory.delete_thread", "thread", thread_id, {
                "resource": str(current.get("resource")), "message_count": integer(current, "message_count")})
            ops += self._outbox(tenant).ops(pk, record)
            try:
                with conditional():
                    self._put([TableOp.update(marked, if_match=current.etag), *ops])
            except LostRace:
                self._deletions.remove(tenant, item, due)
                raise
            return marked, record_rk

        marking = retry_races(mark, what=f"thread {thread_id!r}")
        if marking is None:
            return  # another deleter finished meanwhile
        thread, record_rk = marking
        # The markers of the create and of this delete stay: a redelivery of either is then a replay.
        kept = {str(thread.get(name)) for name in ("created_marker", "deleted_marker") if thread.get(name)}

        def delete_chunk() -> bool:
            # Rows as stored: their offloaded blobs are known from the manifest, not downloaded.
            rows = [row for row in self._table.query_for_delete(pk, end=THREAD_ROW, limit=MAX_BATCH_OPERATIONS).items
                    if row.row_key not in kept]
            if not rows:
                return False
            with conditional():  # another deleter took some of these rows: read again
                self._table.batch([TableOp(OpKind.DELETE, Entity(pk, row.row_key, etag=row.etag,
                                                                 offloaded=row.offloaded), row.etag)
                                   for row in rows])
            return True

        while retry_races(delete_chunk, what=f"thread {thread_id!r}"):
            pass
        self._discard(index_pk(tenant, str(thread["resource"])), str(thread["index_rk"]))
        self._discard(pk, THREAD_ROW)
        if record_rk:
            self._forget_record(tenant, record_rk)

    def _forget_record(self, tenant: str, record_rk: str) -> None:
        """Remove a thread delete's record (of either layout); already gone is fine."""
        if is_legacy_record(record_rk):
            self._discard(LEGACY_DELETING_PARTITION, record_rk)
            return
        due, _, item = record_rk.partition("|")
        self._deletions.remove(tenant, item, int(due))

    def _discard(self, partition_key: str, row_key: str, etag: str | None = None) -> None:
        """Delete a row that holds no offloaded value; already gone (or, with ``etag``, rewritten) is fine."""
        try:
            if etag is None:
                self._table.delete(partition_key, row_key)
            else:
                self._table.delete(partition_key, row_key, if_match=etag, offloaded={})
        except (NotFound, PreconditionFailed):
            pass

    def finish_deletions(self, *, now: float | None = None, limit: int | None = None,
                         budget_seconds: float = _FINISH_SECONDS) -> int:
        """Finish thread deletes interrupted at least DELETION_GRACE_SECONDS ago; returns how many records it handled.

        Cross-tenant, for a timer: round-robin over tenants (:class:`~shared.storage.due.DueIndex`),
        so one tenant's backlog never delays another's beyond one run; it keeps going while
        records are due, for up to ``budget_seconds`` and ``limit`` records. Idempotent and
        safe on two instances at once.
        """
        now = time.time() if now is None else now
        budget = Budget(seconds=budget_seconds, items=limit)
        finished = self._finish_legacy_deletions(now, budget)
        for entry in self._deletions.due(now, budget):
            thread_id = str(entry.properties.get("thread_id") or entry.item.partition("|")[0])
            thread = find(self._table, thread_pk(entry.tenant, thread_id), THREAD_ROW)
            if thread is not None and thread.get("deleting") and thread.get("deleting_record") == entry.row_key:
                self._purge(entry.tenant, thread_id, thread)
                finished += 1
            self._deletions.done(entry)
        return finished

    def _finish_legacy_deletions(self, now: float, budget: Budget) -> int:
        """Records of the layout before the due index, oldest first, within ``budget``."""
        finished = 0
        while not budget.exhausted:
            page = self._table.query_for_delete(LEGACY_DELETING_PARTITION,
                                                end=legacy_deleting_end(now - DELETION_GRACE_SECONDS),
                                                limit=_DELETION_QUANTUM)
            for record in page.items:
                if budget.exhausted:
                    return finished
                budget.spend()
                tenant, thread_id = str(record["tenant"]), str(record["thread_id"])
                thread = find(self._table, thread_pk(tenant, thread_id), THREAD_ROW)
                if thread is not None and thread.get("deleting") and thread.get("deleting_record") == record.row_key:
                    self._purge(tenant, thread_id, thread)
                    finished += 1
                self._discard(LEGACY_DELETING_PARTITION, record.row_key, record.etag)
            if len(page.items) < _DELETION_QUANTUM:
                return finished
        return finished

    def list_threads(self, tenant: str, resource: str, *, metadata: dict[str, Any] | None = None, limit: int = 50,
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
        entries_pk = index_pk(tenant, resource)
        if continuation is not None:
            # Signed for this tenant's and resource's index partition: no other listing opens it.
            state = self._tokens.verify_continuation(entries_pk, continuation, purpose=_THREADS_TOKEN)
            if state.get("r") != resource or not isinstance(state.get("after"), str):
                raise InvalidInput("continuation token does not belong to this listing")
            start = state["after"] + " "  # the least row key after it: ' ' sorts below every id character
        items: list[Thread] = []
        examined = 0
        last_rk: str | None = None
        more = True
        now = time.time()
        while len(items) < limit and examined < _LIST_EXAMINED:
            page = self._table.query(entries_pk, start=start, limit=min(limit - len(items), _LIST_EXAMINED - examined))
            if not page.items:
                more = False
                break
            threads = self._read_threads(tenant, [str(e["thread_id"]) for e in page.items])
            for entry, thread in zip(page.items, threads):
                examined += 1
                last_rk = entry.row_key
                if thread is None or thread.get("index_rk") != entry.row_key:
                    if now - seconds(entry, "created_at") > DELETION_GRACE_SECONDS:
                        self._discard(entry.partition_key, entry.row_key, entry.etag)  # left by a create that crashed
                    continue
                if thread.get("deleting"):
                    continue
                found = thread_of(str(entry["thread_id"]), thread)
                if metadata and any(found.metadata.get(k, _ABSENT) != v for k, v in metadata.items()):
                    continue
                items.append(found)
            if page.continuation is None:
                more = False
                break
            start = page.items[-1].row_key + " "
        token = (self._tokens.sign_continuation(entries_pk, {"r": resource, "after": last_rk}, purpose=_THREADS_TOKEN)
                 if more and last_rk is not None else None)
        return Page(items, token)

    @property
    def _tokens(self) -> TableStore:
        """Signs and checks continuation tokens (the store's, under the offload layer, which has none)."""
        return self._table.table

    def _read_threads(self, tenant: str, thread_ids: list[str]) -> list[Entity | None]:
        """The thread entities, read in parallel: one point read each, latency not added up."""
        def read(thread_id: str) -> Entity | None:
            return find(self._table, thread_pk(tenant, thread_id), THREAD_ROW)

        if len(thread_ids) <= 2:
            return [read(t) for t in thread_ids]
        if self._readers is None:
            # Kept for the service's life: backends hold a connection per thread (local SQLite).
            self._readers = ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="memory-read")
        return list(self._readers.map(read, thread_ids))

    # -- messages

    def add_messages(self, tenant: str, thread_id: str, messages: Sequence[dict[str, Any] | NewMessage], *,
                     idempotency_key: str | None = None) -> list[Message]:
        """Append up to 97 messages atomically; they get consecutive seqs after the thread's last.

        A retry with the same ``idempotency_key`` (and the same messages) returns
        the messages the first call appended (those not deleted since) without
        appending again; the key with other messages is refused (422).
        """
        return self.add_messages_outcome(tenant, thread_id, messages, idempotency_key=idempotency_key).result

    def add_messages_outcome(self, tenant: str, thread_id: str, messages: Sequence[dict[str, Any] | NewMessage], *,
                             idempotency_key: str | None = None) -> Outcome[list[Message]]:
        """:meth:`add_messages`, and whether an earlier call with this idempotency key appended them (status 201)."""
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Iterable):
            raise InvalidInput("messages must be a list")
        items = list(messages)
        if not 1 <= len(items) <= MAX_MESSAGES_PER_CALL:
            raise InvalidInput(f"add 1 to {MAX_MESSAGES_PER_CALL} messages per call, got {len(items)}")
        prepared = [self._prepare(m) for m in items]
        size = sum(self._stored_wire_size(p.properties) for p in prepared)
        if size > _BATCH_BUDGET:
            raise TooLarge(f"these messages take about {size} bytes in one atomic write; the limit is "
                           f"{_BATCH_BUDGET}: send fewer per call")
        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency.of(idempotency_key, "memory.add_messages",
                                         {"thread_id": thread_id, "messages": [p.request for p in prepared]})
        pk = thread_pk(tenant, thread_id)
        first_read: list[Entity] = [self._live_thread(tenant, thread_id)]
        parents_checked = False

        def read() -> Entity:
            nonlocal parents_checked
            if not parents_checked:  # once, after the replay check: a replay's parent may be gone since
                self._check_parents(pk, prepared)
                parents_checked = True
            return first_read.pop() if first_read else self._live_thread(tenant, thread_id)

        def decide(thread: Entity) -> _Write[list[Message]]:
            first = integer(thread, "last_seq") + 1
            last = first + len(prepared) - 1
            if last > MAX_SEQ:
                raise ThreadFull(thread_id)
            now = _now_after(thread)
            entities = [Entity(pk, message_rk(seq), stamped({
                **item.properties, "message_id": new_message_id(seq), "seq": seq, "created_at": now,
                "updated_at": now}, FMT)) for seq, item in enumerate(prepared, start=first)]
            head = Entity(pk, THREAD_ROW, stamped({**thread.properties, "last_seq": last, "updated_at": now,
                                                   "message_count": integer(thread, "message_count") + len(prepared)},
                                                  FMT), thread.etag, thread.offloaded)
            record = change_record("memory", "memory.add_messages", "thread", thread_id, {
                "first": first, "last": last, "count": len(prepared),
                "sha256": canonical_digest([p.request for p in prepared])})
            return _Write([TableOp.update(head, if_match=thread.etag)] + [TableOp.insert(e) for e in entities],
                          lambda etags: [message_of(thread_id, e, etag) for e, etag in zip(entities, etags[1:])],
                          {"first": first, "last": last}, status=201, record=record)

        def replay(stored: Any) -> list[Message]:
            return self._messages_between(pk, thread_id, int(stored["first"]), int(stored["last"]))

        return self._write(tenant, pk, read=read, decide=decide, what=f"thread {thread_id!r}",
                           idempotency=idempotency, replay=replay)

    def _check_parents(self, pk: str, prepared: list[_Prepared]) -> None:
        for parent_seq in {p.parent_seq for p in prepared if p.parent_seq is not None}:
            parent = find(self._table, pk, message_rk(parent_seq))
            wanted = next(p.properties["parent_message_id"] for p in prepared if p.parent_seq == parent_seq)
            if parent is None or parent["message_id"] != wanted:
                raise InvalidInput(f"parent message {wanted!r} is not in this thread")

    def _messages_between(self, pk: str, thread_id: str, first: int, last: int) -> list[Message]:
        """The messages with first <= seq <= last still there, in seq order."""
        rows = self._table.query(pk, start=message_rk(last), end=message_rk(first - 1), limit=MAX_PAGE_SIZE)
        return [message_of(thread_id, e) for e in reversed(rows.items)]

    def add_message(self, tenant: str, thread_id: str, role: Role | str, content: Content, *,
                    metadata: dict[str, Any] | None = None, parent_message_id: str | None = None) -> Message:
        """Append one message (see :meth:`add_messages`)."""
        return self.add_messages(tenant, thread_id, [NewMessage(role, content, metadata, parent_message_id)])[0]

    def get_message(self, tenant: str, thread_id: str, message_id: str) -> Message:
        """One message by id; NotFound when absent."""
        return message_of(thread_id, self._message_entity(tenant, thread_id, message_id)[1])

    def update_message(self, tenant: str, thread_id: str, message_id: str, *, content: Any = ...,
                       metadata: Any = ..., if_match: str | None = None, idempotency_key: str | None = None) -> Message:
        """Edit a message's content and/or replace its metadata (None clears); ``if_match``: only at this ETag."""
        return self.update_message_outcome(tenant, thread_id, message_id, content=content, metadata=metadata,
                                           if_match=if_match, idempotency_key=idempotency_key).result

    def update_message_outcome(self, tenant: str, thread_id: str, message_id: str, *, content: Any = ...,
                               metadata: Any = ..., if_match: str | None = None,
                               idempotency_key: str | None = None) -> Outcome[Message]:
        """:meth:`update_message`, and whether an earlier call with this idempotency key applied it."""
        changes: dict[str, Any] = {}
        if content is not ...:
            changes.update({"text": None, "parts": None, **self._content_properties(content)})
        if metadata is not ...:
            changes["metadata"] = _metadata_text(metadata, "message metadata")
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        idempotency = None
        if idempotency_key is not None:
            request = {"thread_id": thread_id, "message_id": message_id, "if_match": if_match,
                       **({"content": content} if content is not ... else {}),
                       **({"metadata": metadata} if metadata is not ... else {})}
            idempotency = Idempotency.of(idempotency_key, "memory.update_message", request)

        def decide(rows: tuple[Entity, Entity]) -> _Write[Message]:
            thread, message = rows
            if if_match is not None and public_etag(message.etag) != if_match:
                raise MessageChanged(thread_id, message_id, if_match, public_etag(message.etag))
            now = _now_after(thread)
            edited = Entity(message.partition_key, message.row_key,
                            stamped({**message.properties, **changes, "updated_at": now}, FMT),
                            message.etag, message.offloaded)
            details: dict[str, Any] = {"thread_id": thread_id, "seq": seq_of_message_id(message_id)}
            details.update({f"{name}_sha256": canonical_digest(value) for name, value in
                            (("content", content), ("metadata", metadata)) if value is not ...})
            return _Write([TableOp.update(edited, if_match=message.etag), self._touch(thread, now, 0)],
                          lambda etags: message_of(thread_id, edited, etags[0]),
                          message_json(message_of(thread_id, edited, "")),
                          record=change_record("memory", "memory.update_message", "message", message_id, details))

        def replay(stored: Any) -> Message:
            try:
                return self.get_message(tenant, thread_id, message_id)
            except NotFound:
                return message_from_json(stored)

        return self._write(tenant, thread_pk(tenant, thread_id),
                           read=lambda: self._message_entity(tenant, thread_id, message_id),
                           decide=decide, what=f"thread {thread_id!r}", idempotency=idempotency, replay=replay)

    @staticmethod
    def _touch(thread: Entity, now: float, count_change: int) -> TableOp:
        properties = stamped({**thread.properties, "updated_at": now,
                              "message_count": integer(thread, "message_count") + count_change}, FMT)
        return TableOp.update(Entity(thread.partition_key, THREAD_ROW, properties, thread.etag, thread.offloaded),
                              if_match=thread.etag)

    def delete_message(self, tenant: str, thread_id: str, message_id: str, *, if_match: str | None = None,
                       idempotency_key: str | None = None) -> None:
        """Delete one message; the thread's count drops by one in the same batch. Its seq is not reused."""
        self.delete_message_outcome(tenant, thread_id, message_id, if_match=if_match, idempotency_key=idempotency_key)

    def delete_message_outcome(self, tenant: str, thread_id: str, message_id: str, *, if_match: str | None = None,
                               idempotency_key: str | None = None) -> Outcome[None]:
        """:meth:`delete_message`, and whether an earlier call with this idempotency key applied it (status 204)."""
        check_tenant(tenant)
        check_id(thread_id, "thread id")
        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency.of(idempotency_key, "memory.delete_message",
                                         {"thread_id": thread_id, "message_id": message_id, "if_match": if_match})

        def decide(rows: tuple[Entity, Entity]) -> _Write[None]:
            thread, message = rows
            if if_match is not None and public_etag(message.etag) != if_match:
                raise MessageChanged(thread_id, message_id, if_match, public_etag(message.etag))
            gone = Entity(message.partition_key, message.row_key, etag=message.etag, offloaded=message.offloaded)
            record = change_record("memory", "memory.delete_message", "message", message_id,
                                   {"thread_id": thread_id, "seq": seq_of_message_id(message_id)})
            return _Write([TableOp(OpKind.DELETE, gone, message.etag), self._touch(thread, _now_after(thread), -1)],
                          lambda etags: None, None, status=204, record=record)

        return self._write(tenant, thread_pk(tenant, thread_id),
                           read=lambda: self._message_entity(tenant, thread_id, message_id),
                           decide=decide, what=f"thread {thread_id!r}", idempotency=idempotency,
                           replay=lambda stored: None)

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
        seq = seq_of_message_id(value) if isinstance(value, str) else None
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
            state = self._tokens.verify_continuation(pk, continuation, purpose=_HISTORY_TOKEN)
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
            rows, more = self._newest(pk, low, min(high, integer(thread, "last_seq") + 1), size)
        else:
            rows, more = self._oldest(pk, low, min(high, integer(thread, "last_seq") + 1), size)
        messages = [message_of(thread_id, e) for e in rows]  # in seq order of the walk
        token = None
        if more and messages:
            edge = messages[-1].seq
            next_low, next_high = (low, edge) if backward else (edge, high)
            token = self._tokens.sign_continuation(pk, {"t": thread_id, "lo": next_low, "hi": next_high, "n": size,
                                                        "back": backward, "o": output.value}, purpose=_HISTORY_TOKEN)
        if backward == (output is Order.asc):
            messages.reverse()
        return Page(messages, token)

    def _newest(self, pk: str, low: int, high: int, size: int) -> tuple[list[Entity], bool]:
        """Up to ``size`` messages with low < seq < high, newest first, and whether more remain."""
        if high - low <= 1:
            return [], False
        page = self._table.query(pk, start=message_rk(high - 1), end=message_rk(low),
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
            rows = self._table.query(pk, start=message_rk(top), end=message_rk(next_seq - 1),
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
        probe = self._table.query(pk, start=message_rk(high - 1), end=message_rk(next_seq - 1), limit=1)
        return found, bool(probe.items)
