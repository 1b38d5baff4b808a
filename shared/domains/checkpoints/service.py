"""Checkpoints: LangGraph-compatible graph state per tenant, thread and namespace.

A checkpoint is addressed by (tenant, thread_id, checkpoint_ns, checkpoint_id),
links to its parent, carries JSON metadata (``source``, ``step``, ``run_id`` and
any user keys) and names, per channel, the version of the value it holds. Values
are opaque typed bytes (LangGraph's ``dumps_typed`` pairs); this module never
imports LangGraph (see :mod:`shared.domains.checkpoints.savers` for the savers).

The stored layout (one partition per thread, so that a checkpoint and its new
channel values are written in ONE atomic batch; run rows; thread and run indexes;
command markers) is described in :mod:`shared.domains.checkpoints._layout`.

Guarantees:

* ``put`` is one atomic batch (value rows, run row, checkpoint) unless it exceeds
  100 operations or the batch wire size; then values go first and the checkpoint
  last, so a checkpoint is never visible before its values. Repeating a put is
  harmless: existing value rows are kept and the checkpoint row (with its inline
  values) is replaced.
* ``put`` may carry pending writes of its parent checkpoint (``writes``; the remote
  saver sends a step's writes with the next checkpoint in one request): they are
  validated with the rest before anything is written and go first in the same
  batch, so the checkpoint and the writes are stored together or not at all (when
  they fit one batch; past it, writes and values go before the checkpoint, as above).
* Small values (up to 16 KiB each, 96 KiB and 64 values per row) are stored inline
  in the checkpoint row, so a typical step is one checkpoint row plus its pending
  writes. An unchanged value the parent holds inline is carried inline again when
  it is at most 1 KiB, and otherwise written to its value row (once): every
  checkpoint row stands on its own, so deleting any checkpoint never takes a value
  another one needs. To carry values, ``put`` needs its parent's inline values:
  from a bounded per-process LRU cache (32 MiB, ``cachetools``; filled by this
  process's puts and gets, keyed by checkpoint row; hit rate in
  :meth:`CheckpointService.cache_stats`), else one read of the parent row. A cached
  entry holds ``(channel, version) -> value``, which a version never changes; a
  thread deleted here empties the cache.
* Group commit (:mod:`shared.storage.group_commit`): writes to one thread from
  several threads of this process (LangGraph stores a step's pending writes and the
  next checkpoint concurrently) take turns, and the one whose turn it is carries the
  others waiting along in its batch when they fit. The direct saver's pending
  writes *linger* (up to 10 ms) for the next put to carry them: one batch per step.
  Two lingers in a row that no put carried stop a thread's writes lingering for the
  next 50. Each caller returns once its own
  rows are durable, with its own result; if the shared batch fails, each write is
  retried on its own. A write that keeps meeting rows appearing under it is retried
  under :mod:`shared.storage.retry` and ends in :class:`~shared.errors.Busy` (503).
* Values up to 256 KiB are split over properties of their own entity; larger
  ones go through the claim-check rule (:mod:`shared.backends.offload`) to a
  blob, as do multi-megabyte pending writes.
* Index rows (``threads``, ``r|<run_id>``) are written before the data they
  point to, so a crash leaves at worst an index row to nothing, never data the
  index misses. The service remembers which index rows it wrote (per instance;
  a deleted thread is written again from its first parentless checkpoint).
* ``delete_thread``, ``delete_for_runs``, ``copy_thread`` and ``prune`` work in
  batches of at most 100 rows, in an order that keeps every intermediate state
  readable, and can be repeated after a crash halfway. Values no checkpoint
  refers to any more are removed by ``prune`` and ``delete_for_runs`` once they
  are older than ``VALUE_GRACE_SECONDS`` (a put in flight may still need them).
* Change records (:mod:`shared.storage.changefeed`): every change writes one in
  its own atomic batch, as an outbox row of the thread's partition (target type
  ``thread``, the thread id; details are ids, counts and the checkpoint's SHA-256,
  never checkpoint data). ``checkpoints.put`` goes with the batch of the checkpoint
  row (the last one, when the put takes several), ``checkpoints.put_writes`` with
  its writes; the registry marks both as not audited (LangGraph writes them every
  step: the feed carries them, the audit log skips them). Group commit keeps one
  record per change: a batch carrying a step's writes and the next checkpoint holds
  both records. A put always records (a repeated put rewrites its checkpoint row);
  put_writes whose rows are all stored already writes nothing and records nothing.
  Maintenance is audited: ``checkpoints.delete_thread``, ``checkpoints.prune`` and
  ``checkpoints.delete_for_runs`` (one record per thread, with the count of
  checkpoints) go with the batch that deletes the thread's last checkpoints of the
  call; ``checkpoints.copy_thread`` (in the target thread, naming the source) with the
  batch that writes the last checkpoints, when the call wrote anything. The rows
  cleaned up after that batch (pending writes, values, run and index rows) are
  unreachable without their checkpoints and record nothing. A crash before that
  batch leaves the change unrecorded and the operation re-runnable (the re-run
  records it); a crash after it leaves the record, and the re-run, finding no
  checkpoint to delete or copy, records nothing again. Every batch that can fill up
  (puts and writes past 100 rows, group commits, deletes) leaves a slot for the
  record. Replays (idempotency markers), refused writes and reads record nothing.
  Outbox rows (``~outbox|``) sort after every prefix read here (``c|``, ``r|``,
  ``v|``, ``w|``), so no read or delete of a thread sees them; the sequencer
  deletes them once sequenced.
* With an idempotency key (queue commands), those four record a marker of
  :mod:`shared.storage.idempotency` once they are done: a redelivery answers the
  recorded result without doing the work again, and the same key with another
  request is refused (422). The work spans many batches, so the marker follows it
  rather than sharing its batch; a crash in between leaves the work done and no
  marker, and the redelivery repeats the (idempotent) work and records it. Work
  that found nothing (NotFound) records no marker. Markers of the format before
  (no fingerprint) are honoured as replays when they name the same op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from shared import names, request_context
from shared.backends import Entity, OpKind, Page, TableOp
from shared.backends.base import MAX_BATCH_OPERATIONS, MAX_PROPERTY_BYTES, prefix_upper_bound, property_size
from shared.domains.checkpoints import _layout as layout
from shared.domains.checkpoints._layout import CheckpointRow, part
from shared.domains.checkpoints.models import (
    INLINE_VALUE_BYTES,
    LIST_PAGE_BYTES,
    MAX_BULK_IDS,
    MAX_CHANNELS,
    MAX_ID_LENGTH,
    MAX_METADATA_BYTES,
    MAX_PUT_BYTES,
    MAX_TASK_PATH_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_TYPE_LENGTH,
    MAX_WRITES,
    VALUE_GRACE_SECONDS,
    CheckpointNotFound,
    CheckpointRef,
    CheckpointThreadNotFound,
    PendingWrite,
    PruneStrategy,
    RunCheckpointsNotFound,
    StoredCheckpoint,
    TaskWrites,
    ThreadInfo,
    TypedValue,
    WritesResult,
)
from shared.domains.domain import change_record
from shared.errors import AlreadyExists, Busy, InvalidInput, InvalidKey, NotFound, StowageError, TooLarge
from shared.jsonvalues import check_json_value, json_text
from shared.keys import check_id, check_tenant
from shared.storage.changefeed import MAX_ACTOR_BYTES, MAX_DETAILS_BYTES, OUTBOX_PREFIX, ChangeRecord
from shared.storage.group_commit import BATCH_WIRE_BUDGET, GroupCommit
from shared.storage.idempotency import Idempotency, IdempotencyKeyReused, lookup, marker_op
from shared.storage.mutate import Outcome, find
from shared.storage.retry import conditional, retry_races
from shared.storage.rows import iso, stored_time
from shared.stores import Stores

__all__ = [
    "INLINE_VALUE_BYTES", "LIST_PAGE_BYTES", "MAX_BULK_IDS", "MAX_CHANNELS", "MAX_ID_LENGTH", "MAX_METADATA_BYTES",
    "MAX_PUT_BYTES", "MAX_TASK_PATH_LENGTH", "MAX_TEXT_LENGTH", "MAX_TYPE_LENGTH", "MAX_WRITES",
    "VALUE_GRACE_SECONDS", "CheckpointRef", "CheckpointService", "PendingWrite", "PruneStrategy",
    "StoredCheckpoint", "TaskWrites", "ThreadInfo", "TypedValue", "WritesResult",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TYPE = re.compile(r"[!-~]{1,64}")
_ROWS_PER_QUERY = 100
_VALUE_ROWS_PER_QUERY = 16  # rows that may carry values of up to 256 KiB, or blobs
_INDEX_CACHE_LIMIT = 100_000
#: A new value up to this size is kept inline in its checkpoint row (and at most the offload threshold).
_INLINE_VALUE_BYTES = 16 * 1024
#: An unchanged value up to this size is carried inline again; a larger one moves to its value row.
_CARRY_BYTES = 1024
#: At most this many values and bytes inline in one checkpoint row.
_INLINE_ROW_VALUES = 64
_INLINE_ROW_BYTES = 96 * 1024
#: After this many lingering writes in a row that no put carried, a partition's writes stop
#: lingering for the next _LINGER_PAUSE writes.
_LINGER_MISSES = 2
_LINGER_PAUSE = 50
#: Bytes of inline values the per-process cache keeps (recent checkpoints, LRU).
_CACHE_BYTES = 32 * 1024 * 1024
#: Wire size an outbox row may take at most (details, actor and context at their limits, and the rest).
_RECORD_WEIGHT = (MAX_DETAILS_BYTES + 2 * MAX_ACTOR_BYTES) * 4 // 3 + 1024


def _inline_size(held: dict[str, tuple[str, TypedValue]]) -> int:
    return 256 + sum(len(value.data) + 128 for _, value in held.values())


@dataclass
class _Committed:
    written: int = 0
    kept: int = 0
    replaced: set[str] = field(default_factory=set)

    def add(self, other: _Committed) -> None:
        self.written += other.written
        self.kept += other.kept
        self.replaced |= other.replaced


@dataclass(frozen=True, eq=False)
class _Recording:
    """A change record of a thread, the tenant whose feed takes it and the request context of the
    change (taken when the change was asked for: group commit may write it from another thread).
    Its outbox row is made right before the batch that completes the change."""

    tenant: str
    record: ChangeRecord
    context: request_context.RequestContext
    #: Stands for the outbox row in group commit's count of a batch's rows (its key is made later).
    slot: str

    @property
    def partition(self) -> str:
        return layout.thread_pk(self.tenant, self.record.target_id)


@dataclass(frozen=True, eq=False)
class _Batch:
    """Rows of one partition that fit one atomic batch."""

    rows: list[Entity]
    replace: frozenset[str]
    size: int
    #: Checkpoint rows that, replacing a stored one, keep its inline values (see ``layout.keeping_inline``).
    keep_inline: frozenset[str] = frozenset()
    #: The change record, written in the batch that completes the change (the last one).
    recording: _Recording | None = None
    #: Write the record even when every row of this batch turns out stored already (an earlier
    #: batch of the same change wrote rows); otherwise such a batch writes nothing and records nothing.
    record_kept: bool = False

    @property
    def row_keys(self) -> list[str]:
        """The row keys this batch writes, its outbox row's slot included."""
        keys = [row.row_key for row in self.rows]
        if self.recording is not None:
            keys.append(self.recording.slot)
        return keys


# --------------------------------------------------------------------------- checks


def _check_text(value: str, what: str, *, empty: bool = False, max_length: int = MAX_TEXT_LENGTH) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidKey(f"{what} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidKey(f"{what} is longer than {max_length} characters")
    if value.isascii() and value.isprintable():  # the common case: no control character possible
        return value
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKey(f"{what} is not valid unicode") from exc
    if _CONTROL.search(value):
        raise InvalidKey(f"{what} contains a control character")
    return value


def _check_value(value: TypedValue, what: str) -> TypedValue:
    if not isinstance(value, TypedValue):
        raise InvalidInput(f"{what} must be a TypedValue (type tag and bytes)")
    if not isinstance(value.type, str) or not _TYPE.fullmatch(value.type):
        raise InvalidInput(f"{what}: type tag must be 1-{MAX_TYPE_LENGTH} printable ASCII characters")
    if not isinstance(value.data, (bytes, bytearray)):
        raise InvalidInput(f"{what}: data must be bytes")
    return value


def _metadata_json(metadata: Mapping[str, Any] | None) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, Mapping):
        raise InvalidInput("metadata must be a JSON object")
    text = json_text(dict(metadata), "metadata")  # InvalidInput for anything not storable as JSON
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise TooLarge(f"metadata is over {MAX_METADATA_BYTES} bytes as JSON")
    return text


def _check_task_writes(task: TaskWrites) -> None:
    """A task's writes as :meth:`CheckpointService.put_writes` takes them: InvalidInput/InvalidKey otherwise."""
    _check_text(task.task_id, "task_id")
    _check_text(task.task_path, "task_path", empty=True, max_length=MAX_TASK_PATH_LENGTH)
    writes = task.writes
    if isinstance(writes, (str, bytes)) or not isinstance(writes, Sequence):
        raise InvalidInput("writes must be a list of (idx, channel, value)")
    if len(writes) > MAX_WRITES:
        raise InvalidInput(f"at most {MAX_WRITES} writes per call")
    seen: set[int] = set()
    for write in writes:
        if not isinstance(write, tuple) or len(write) != 3:
            raise InvalidInput("each write must be (idx, channel, value)")
        idx, channel, value = write
        if not isinstance(idx, int) or isinstance(idx, bool) or abs(idx) > 2**31:
            raise InvalidInput(f"write idx must be an integer, got {idx!r}")
        if idx in seen:
            raise InvalidInput(f"write idx {idx} appears twice")
        seen.add(idx)
        _check_text(channel, "channel")
        _check_value(value, f"write to {channel!r}")


def _writes_size(writes: Sequence[tuple[int, str, TypedValue]]) -> int:
    return sum(len(value.data) for _, _, value in writes)


def _matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    return not wanted or all(metadata.get(key) == value for key, value in wanted.items())


def _unique_ids(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidInput(f"{what} must be a list of ids")
    unique = list(dict.fromkeys(values))
    if len(unique) > MAX_BULK_IDS:
        raise InvalidInput(f"at most {MAX_BULK_IDS} {what} per call")
    for value in unique:
        check_id(value, what)
    return unique


# --------------------------------------------------------------------------- service


class CheckpointService:
    """Checkpoints of every tenant; each call names its tenant. Thread-safe."""

    def __init__(self, stores: Stores) -> None:
        # One table, offload rule included. Key-only reads (what exists, what to delete) use its
        # ``*_inline`` reads, which download no offloaded value; inserts and blind upserts read
        # nothing first, so a batch of plain rows costs the one batch request.
        self._table = stores.table(names.TABLE_CHECKPOINTS)
        self._stores = stores
        self._slots = itertools.count()
        self._threshold = min(stores.settings.offload_threshold_bytes, MAX_PROPERTY_BYTES)
        #: Largest total of serialised bytes one put or put_writes may carry.
        self.max_bytes = MAX_PUT_BYTES
        # (tenant, thread_id) -> run ids whose index rows this instance wrote.
        self._indexed: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()
        #: Largest new value kept inline in its checkpoint row (one property, never offloaded).
        self._inline_most = min(_INLINE_VALUE_BYTES, self._threshold)
        # (partition, checkpoint row key) -> the values that row holds inline, as this process wrote
        # or read it. A checkpoint's (channel, version) names one value, so an entry never goes
        # stale while its checkpoint exists; deleting a thread here drops them all (an id reused
        # after that must not meet the old values).
        self._recent: LRUCache[tuple[str, str], dict[str, tuple[str, TypedValue]]] = LRUCache(
            maxsize=_CACHE_BYTES, getsizeof=_inline_size)
        # partition -> (waits in a row that no put carried, writes left to send without waiting)
        self._linger: dict[str, tuple[int, int]] = {}
        self._cache_hits = 0
        self._cache_misses = 0
        self._group: GroupCommit[_Batch, _Committed] = GroupCommit(
            together=self._commit_together, alone=self._commit_batch,
            max_operations=MAX_BATCH_OPERATIONS, max_bytes=BATCH_WIRE_BUDGET)

    # -- change records

    def _recording(self, tenant: str, thread_id: str, op: str, details: dict[str, Any]) -> _Recording:
        """``op``'s change record of the thread (audited as the registry says: puts and writes are not),
        in the request context of the caller."""
        return _Recording(tenant, change_record("checkpoints", op, "thread", thread_id, details),
                          request_context.current(), f"{OUTBOX_PREFIX}{next(self._slots)}")

    def _outbox_ops(self, recording: _Recording | None) -> list[TableOp]:
        """The record's outbox insert for the batch that completes its change (files the feed's hint first).

        Made when that batch is written, so that the work a change does before it
        joins its partition's group commit stays what it was without records (the
        direct saver's pending writes must be queued before the next put arrives to
        ride in its batch).
        """
        if recording is None:
            return []
        with request_context.acting_as(recording.context):
            return self._stores.outbox(recording.tenant, names.TABLE_CHECKPOINTS).ops(recording.partition,
                                                                                     recording.record)

    # -- writing rows

    def _weigh(self, entity: Entity) -> int:
        """Bytes the entity takes in a batch request (an offloaded value: its reference)."""
        inline, offloaded = 0, 0
        for value in entity.properties.values():
            size = property_size(value)
            if size > self._threshold and isinstance(value, (bytes, str)):
                offloaded += 1
            else:
                inline += size
        return inline * 4 // 3 + 160 * offloaded + 256

    def _batches(self, rows: Sequence[Entity], replace: frozenset[str], keep_inline: frozenset[str] = frozenset(),
                 recording: _Recording | None = None) -> list[_Batch]:
        """Rows in order, cut into batches under the operation and wire-size limits; the last one also
        carries ``recording`` (every batch leaves room for it)."""
        most = MAX_BATCH_OPERATIONS - (recording is not None)
        batches: list[_Batch] = []
        batch: list[Entity] = []
        size = 0
        for row in rows:
            weight = self._weigh(row)
            if batch and (len(batch) == most or size + weight > BATCH_WIRE_BUDGET):
                batches.append(_Batch(batch, replace, size, keep_inline))
                batch, size = [], 0
            batch.append(row)
            size += weight
        if batch:
            batches.append(_Batch(batch, replace, size, keep_inline))
        if recording is not None and batches:
            last = batches[-1]
            batches[-1] = dataclasses.replace(last, recording=recording, size=last.size + _RECORD_WEIGHT)
        return batches

    def _commit(self, rows: Sequence[Entity], replace: frozenset[str] = frozenset(), linger: float = 0.0,
                keep_inline: frozenset[str] = frozenset(), recording: _Recording | None = None,
                record_kept: bool = False) -> _Committed:
        """Write rows create-only, in order, in as few atomic batches as the limits allow.

        A row already there is kept, unless its row key is in ``replace`` (then it is
        replaced). ``recording`` (the change record) goes with the last batch, and is
        written when that batch writes a row, or an earlier one did, or ``record_kept``.
        A write that fits one batch goes through its partition's group
        commit: LangGraph writes a step's pending writes and the next checkpoint from
        two threads at once; one batch carrying both (and both their records) costs one
        round trip instead of two, and writers of one partition take turns here rather
        than contend for the store's own write lock.
        """
        batches = self._batches(rows, replace, keep_inline, recording)
        if len(batches) != 1:
            done = _Committed()
            for batch in batches:  # in order: a checkpoint's values before the checkpoint
                if batch.recording is not None:
                    batch = dataclasses.replace(batch, record_kept=record_kept or done.written > 0)
                done.add(self._commit_batch(batch))
            return done
        request = batches[0]
        if record_kept:
            request = dataclasses.replace(request, record_kept=True)
        partition = request.rows[0].partition_key
        if linger and not self._may_linger(partition):
            linger = 0.0
        done, carried = self._group.commit_carried(partition, request, row_keys=request.row_keys,
                                                   size=request.size, linger=linger)
        if linger:
            self._lingered(partition, carried)
        return done

    def _may_linger(self, partition: str) -> bool:
        """Whether writes to ``partition`` should wait for a put to carry them: not while recent waits
        found none (a graph whose puts wait for its writes, e.g. LangGraph's delta channels)."""
        with self._lock:
            state = self._linger.get(partition)
            if state is None or state[0] < _LINGER_MISSES:
                return True
            if state[1] > 0:
                self._linger[partition] = (state[0], state[1] - 1)
                return False
            self._linger[partition] = (_LINGER_MISSES - 1, 0)  # try once more
            return True

    def _lingered(self, partition: str, carried: bool) -> None:
        with self._lock:
            if carried:
                self._linger.pop(partition, None)
                return
            if len(self._linger) >= _INDEX_CACHE_LIMIT:
                self._linger.clear()
            misses = self._linger.get(partition, (0, 0))[0] + 1
            self._linger[partition] = (misses, _LINGER_PAUSE if misses >= _LINGER_MISSES else 0)

    def _commit_together(self, group: Sequence[_Batch]) -> list[_Committed] | None:
        """Several batches of one partition (each with its change record) as one atomic batch of
        inserts; None when it failed."""
        operations = [TableOp.insert(row) for batch in group for row in batch.rows]
        for batch in group:
            operations += self._outbox_ops(batch.recording)
        try:
            self._table.batch(operations)
        except StowageError:
            return None  # one of them meets an existing row, or fails alone: each is written on its own
        return [_Committed(written=len(batch.rows)) for batch in group]

    def _commit_batch(self, batch: _Batch) -> _Committed:
        outbox = self._outbox_ops(batch.recording)  # once: each attempt below that fails writes nothing
        try:
            self._table.batch([*(TableOp.insert(row) for row in batch.rows), *outbox])
            return _Committed(written=len(batch.rows))
        except AlreadyExists:
            pass
        partition = batch.rows[0].partition_key

        def attempt() -> _Committed:
            stored = {row.row_key: found for row in batch.rows
                      if (found := self._find_inline(partition, row.row_key)) is not None}
            present = set(stored)
            operations = [
                TableOp.upsert(layout.keeping_inline(row, stored[row.row_key], self._threshold)
                               if row.row_key in batch.keep_inline else row)
                if row.row_key in present else TableOp.insert(row)
                for row in batch.rows if row.row_key not in present or row.row_key in batch.replace
            ]
            written = len(operations)
            if operations or batch.record_kept:  # nothing to write: nothing changed, nothing to record
                operations += outbox
            with conditional():  # a concurrent writer added one of them: look again
                self._table.batch(operations)
            return _Committed(written, len(batch.rows) - written, present & batch.replace)

        return retry_races(attempt, what=f"checkpoint partition {partition!r}")

    def _find_inline(self, partition: str, row_key: str) -> Entity | None:
        """The row without its offloaded values (one table read, no blob), or None when absent."""
        try:
            return self._table.get_inline(partition, row_key)
        except NotFound:
            return None

    def _insert_index(self, row: Entity) -> None:
        try:
            self._table.insert(row)
        except AlreadyExists:
            pass

    def _index(self, tenant: str, thread_id: str, run_id: str | None, *, force: bool) -> None:
        """Make sure the thread and the (run, thread) index rows exist, before the data they index."""
        key = (tenant, thread_id)
        known = self._indexed.get(key)
        if known is None or force:
            self._insert_index(layout.thread_index_row(tenant, thread_id, time.time()))
        if run_id is not None and (known is None or run_id not in known):
            self._insert_index(layout.run_index_row(tenant, run_id, thread_id))
        with self._lock:
            if len(self._indexed) >= _INDEX_CACHE_LIMIT:
                self._indexed.clear()
            runs = self._indexed.setdefault(key, set())
            if run_id is not None:
                runs.add(run_id)

    def _forget(self, tenant: str, thread_id: str) -> None:
        with self._lock:
            self._indexed.pop((tenant, thread_id), None)

    # -- inline values of recent checkpoints (a bounded per-process cache)

    def _inline_of(self, partition: str, checkpoint_rk: str) -> dict[str, tuple[str, TypedValue]]:
        """The values a checkpoint row holds inline, from the cache or one read (empty when absent)."""
        key = (partition, checkpoint_rk)
        with self._lock:
            found = self._recent.get(key)
            if found is not None:
                self._cache_hits += 1
                return found
            self._cache_misses += 1
        entity = self._find_inline(partition, checkpoint_rk)
        if entity is None:
            return {}
        held = layout.checkpoint_of(entity).inline
        self._remember_inline(partition, checkpoint_rk, held)
        return held

    def _remember_inline(self, partition: str, checkpoint_rk: str, held: dict[str, tuple[str, TypedValue]]) -> None:
        with self._lock:
            self._recent[(partition, checkpoint_rk)] = held

    def cache_stats(self) -> dict[str, int]:
        """Hits and misses of the inline-values cache (a put finds its parent's values there), and its size."""
        with self._lock:
            return {"hits": self._cache_hits, "misses": self._cache_misses, "entries": len(self._recent),
                    "bytes": int(self._recent.currsize)}

    # -- deleting rows

    def _delete_rows(self, partition_key: str, rows: Sequence[str | Entity], recording: _Recording | None = None) -> None:
        """Delete rows in batches; rows already gone (a retry, a concurrent delete) are fine.

        A row given as an entity read from the table (``offloaded`` known) has its blobs
        deleted right after; one given by key leaves them to the offload sweeper.
        ``recording`` goes with the last batch (each batch leaves room for it), and only
        when that batch deletes a row.
        """
        gone = [Entity(partition_key, row) if isinstance(row, str)
                else Entity(partition_key, row.row_key, offloaded=row.offloaded) for row in rows]
        most = MAX_BATCH_OPERATIONS - (recording is not None)
        for start in range(0, len(gone), most):
            chunk = gone[start:start + most]
            if recording is not None and start + most >= len(gone):
                self._delete_recorded(partition_key, chunk, recording)
                return
            try:
                self._table.batch([TableOp(OpKind.DELETE, row) for row in chunk])
            except NotFound:
                for row in chunk:
                    try:
                        self._table.delete(partition_key, row.row_key, offloaded=row.offloaded)
                    except NotFound:
                        pass

    def _delete_recorded(self, partition_key: str, chunk: list[Entity], recording: _Recording) -> None:
        """Delete ``chunk`` with the change record in one batch; rows gone meanwhile are left out.

        When every row is gone, another deleter took them (and recorded its own change):
        nothing is written.
        """
        while chunk:
            try:
                self._table.batch([*(TableOp(OpKind.DELETE, row) for row in chunk), *self._outbox_ops(recording)])
                return
            except NotFound:
                left = [row for row in chunk if self._find_inline(partition_key, row.row_key) is not None]
            if len(left) == len(chunk):  # a row went and came back between the batch and the reads
                raise Busy(f"rows of checkpoint partition {partition_key!r} keep changing; try again")
            chunk = left

    def _delete_prefix(self, partition_key: str, prefix: str) -> int:
        """Delete every row under ``prefix``, a batch at a time; returns how many."""
        deleted = 0
        while True:
            page = self._table.query_inline(partition_key, prefix=prefix, limit=MAX_BATCH_OPERATIONS)
            if not page.items:
                return deleted
            self._delete_rows(partition_key, page.items)
            deleted += len(page.items)

    # -- writes

    def put(
        self,
        tenant: str,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_id: str,
        checkpoint: TypedValue,
        *,
        channel_versions: Mapping[str, str] | None = None,
        new_values: Mapping[str, TypedValue] | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_checkpoint_id: str | None = None,
        writes: Sequence[TaskWrites] = (),
    ) -> CheckpointRef:
        """Store a checkpoint and the values it introduces.

        ``channel_versions``: the version of every channel that holds a value at
        this checkpoint. ``new_values``: the values this checkpoint writes, by
        channel (at the version ``channel_versions`` names); values of other
        channels are those stored by earlier checkpoints. ``writes``: pending writes
        of tasks of the parent checkpoint (``parent_checkpoint_id`` needed), stored
        as :meth:`put_writes` stores them but in the checkpoint's batch: a remote
        client sends a step's writes and the next checkpoint in one request, and
        they are stored together or not at all. Everything is validated, and the
        size checked (TooLarge, the checkpoint and the writes together), before
        anything is written.
        """
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        _check_text(checkpoint_ns, "checkpoint_ns", empty=True)
        check_id(checkpoint_id, "checkpoint_id")
        if parent_checkpoint_id is not None:
            check_id(parent_checkpoint_id, "parent_checkpoint_id")
        _check_value(checkpoint, "checkpoint")
        versions = dict(channel_versions or {})
        values = dict(new_values or {})
        if len(versions) > MAX_CHANNELS:
            raise InvalidInput(f"a checkpoint may hold at most {MAX_CHANNELS} channels")
        for channel, version in versions.items():
            _check_text(channel, "channel")
            _check_text(version, f"version of channel {channel!r}")
        for channel, value in values.items():
            if channel not in versions:
                raise InvalidInput(f"new value for channel {channel!r} has no version in channel_versions")
            _check_value(value, f"value of channel {channel!r}")
        metadata_text = _metadata_json(metadata)
        size = len(checkpoint.data) + sum(len(v.data) for v in values.values()) + len(metadata_text)
        carried = self._carried_writes(writes, parent_checkpoint_id)
        size += sum(_writes_size(task.writes) for task in carried)
        if size > self.max_bytes:
            what = "checkpoint and its carried writes are" if carried else "checkpoint is"
            raise TooLarge(f"{what} {size} bytes serialised; the limit is {self.max_bytes}")
        run = (metadata or {}).get("run_id")
        run_id = _check_text(run, "metadata run_id") if isinstance(run, str) and run else None

        now = stored_time(time.time())
        partition = layout.thread_pk(tenant, thread_id)
        ns_part = part(checkpoint_ns)
        inline: dict[str, tuple[str, TypedValue]] = {}
        inline_bytes = 0
        rows: list[Entity] = []
        carried_rows: set[str] = set()
        special: set[str] = set()
        for task in carried:  # first: the parent's writes, before this checkpoint's values and row
            assert parent_checkpoint_id is not None  # _carried_writes refuses writes without a parent
            task_rows, task_special = self._write_rows(partition, ns_part, parent_checkpoint_id, task, now)
            rows.extend(task_rows)
            special |= task_special

        def keep_inline(channel: str, value: TypedValue, most: int) -> bool:
            nonlocal inline_bytes
            size = len(value.data)
            if (size > most or len(inline) >= _INLINE_ROW_VALUES
                    or inline_bytes + size > _INLINE_ROW_BYTES):
                return False
            inline[channel] = (versions[channel], value)
            inline_bytes += size
            return True

        for channel, value in values.items():
            if not keep_inline(channel, value, self._inline_most):
                rows.append(layout.value_row(partition, ns_part, channel, versions[channel], value, now,
                                             self._threshold))
        unchanged = [channel for channel in versions if channel not in values]
        if unchanged and parent_checkpoint_id is not None:
            # Values the parent holds inline are carried here (small) or written to their value row
            # (the same bytes, blind): a checkpoint row never depends on another row's inline values.
            held = self._inline_of(partition, layout.checkpoint_rk(ns_part, parent_checkpoint_id))
            for channel in unchanged:
                found = held.get(channel)
                if found is None or found[0] != versions[channel]:
                    continue  # in its value row already
                if not keep_inline(channel, found[1], _CARRY_BYTES):
                    value_row = layout.value_row(partition, ns_part, channel, versions[channel], found[1], now,
                                                 self._threshold)
                    rows.append(value_row)
                    carried_rows.add(value_row.row_key)
        if run_id is not None:
            rows.append(layout.run_row(partition, run_id, checkpoint_ns, checkpoint_id))
        row = layout.checkpoint_row(partition, checkpoint_ns, checkpoint_id, checkpoint, metadata_text=metadata_text,
                                    versions=versions, parent=parent_checkpoint_id, run=run_id, at=now,
                                    threshold=self._threshold, inline=inline)
        rows.append(row)  # last: never visible before its values

        details: dict[str, Any] = {"checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id,
                                   "values": len(values), "writes": sum(len(task.writes) for task in carried),
                                   "sha256": hashlib.sha256(checkpoint.data).hexdigest()}
        if parent_checkpoint_id is not None:
            details["parent_checkpoint_id"] = parent_checkpoint_id
        recording = self._recording(tenant, thread_id, "checkpoints.put", details)
        self._index(tenant, thread_id, run_id, force=parent_checkpoint_id is None)
        done = self._commit(rows, replace=frozenset({row.row_key, *carried_rows, *special}),
                            keep_inline=frozenset({row.row_key}), recording=recording)
        if row.row_key in done.replaced:
            with self._lock:  # it may have kept values of the row it replaced: read it when needed
                self._recent.pop((partition, row.row_key), None)
        else:
            self._remember_inline(partition, row.row_key, inline)
        return CheckpointRef(thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, iso(now),
                             created=row.row_key not in done.replaced)

    def put_writes(
        self,
        tenant: str,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_id: str,
        task_id: str,
        writes: Sequence[tuple[int, str, TypedValue]],
        *,
        task_path: str = "",
    ) -> WritesResult:
        """Store a task's pending writes, each ``(idx, channel, value)``.

        A regular write (``idx >= 0``) already stored for (task_id, idx) is kept,
        so a repeated call never duplicates it; a special one (``idx < 0``) is
        replaced. The checkpoint need not be stored yet (LangGraph writes both
        concurrently).
        """
        return self._put_writes(tenant, thread_id, checkpoint_ns, checkpoint_id, task_id, writes,
                                task_path=task_path)

    def _put_writes(self, tenant: str, thread_id: str, checkpoint_ns: str, checkpoint_id: str, task_id: str,
                    writes: Sequence[tuple[int, str, TypedValue]], *, task_path: str = "",
                    linger: float = 0.0) -> WritesResult:
        """:meth:`put_writes`; ``linger``: seconds to wait for the thread's next put to carry these
        writes in its batch (the direct saver: LangGraph puts the next checkpoint right after)."""
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        _check_text(checkpoint_ns, "checkpoint_ns", empty=True)
        check_id(checkpoint_id, "checkpoint_id")
        task = TaskWrites(task_id, writes, task_path)
        _check_task_writes(task)
        size = _writes_size(writes)
        if size > self.max_bytes:
            raise TooLarge(f"writes are {size} bytes serialised; the limit is {self.max_bytes}")
        rows, special = self._write_rows(layout.thread_pk(tenant, thread_id), part(checkpoint_ns), checkpoint_id,
                                         task, time.time())
        recording = self._recording(tenant, thread_id, "checkpoints.put_writes", {
            "checkpoint_ns": checkpoint_ns, "checkpoint_id": checkpoint_id, "task_id": task_id, "writes": len(rows)})
        done = self._commit(rows, replace=special, linger=linger, recording=recording)
        return WritesResult(done.written, done.kept)

    def _write_rows(self, partition: str, ns_part: str, checkpoint_id: str, task: TaskWrites,
                    now: float) -> tuple[list[Entity], frozenset[str]]:
        """A task's (checked) write rows, and the row keys of its special writes (replaced, not kept)."""
        rows = [layout.write_row(partition, ns_part, checkpoint_id, task.task_id, task.task_path, idx, channel,
                                 value, now, self._threshold)
                for idx, channel, value in task.writes]
        return rows, frozenset(row.row_key for row, (idx, _, _) in zip(rows, task.writes) if idx < 0)

    @staticmethod
    def _carried_writes(writes: Sequence[TaskWrites], parent_checkpoint_id: str | None) -> list[TaskWrites]:
        """The checked pending writes a put carries for its parent (at most MAX_WRITES in all)."""
        if isinstance(writes, (str, bytes)) or not isinstance(writes, Sequence):
            raise InvalidInput("writes must be a list of TaskWrites")
        carried = list(writes)
        if not carried:
            return carried
        if parent_checkpoint_id is None:
            raise InvalidInput("writes are carried for the parent checkpoint: give parent_checkpoint_id")
        total = 0
        tasks: set[tuple[str, str]] = set()
        for task in carried:
            if not isinstance(task, TaskWrites):
                raise InvalidInput("each carried entry must be TaskWrites (task_id, writes, task_path)")
            _check_task_writes(task)
            if (task.task_id, task.task_path) in tasks:
                raise InvalidInput(f"task {task.task_id!r} appears twice in the carried writes")
            tasks.add((task.task_id, task.task_path))
            total += len(task.writes)
        if total > MAX_WRITES:
            raise InvalidInput(f"at most {MAX_WRITES} writes per call")
        return carried

    # -- reads

    def _value(self, partition: str, row_key: str) -> TypedValue | None:
        entity = find(self._table, partition, row_key)
        return None if entity is None else layout.value_of(entity)

    def _pending_writes(self, partition: str, ns_part: str, checkpoint_id: str) -> list[PendingWrite]:
        found = [layout.pending_write_of(e)
                 for e in self._table.query_all(partition, prefix=layout.writes_prefix(ns_part, checkpoint_id))]
        found.sort(key=lambda w: (w.task_path, w.task_id, w.idx))
        return found

    def _assemble(self, thread_id: str, row: CheckpointRow, memo: dict[str, TypedValue | None]) -> StoredCheckpoint:
        """A checkpoint row with its values (read once per call through ``memo``) and writes."""
        partition = row.partition_key
        ns_part = part(row.ns)
        values: dict[str, TypedValue] = {}
        for channel, version in row.versions.items():
            held = row.inline.get(channel)
            if held is not None and held[0] == version:
                values[channel] = held[1]
                continue
            row_key = layout.value_rk(ns_part, channel, version)
            if row_key not in memo:
                memo[row_key] = self._value(partition, row_key)
            value = memo[row_key]
            if value is not None:
                values[channel] = value
        return StoredCheckpoint(
            thread_id=thread_id,
            checkpoint_ns=row.ns,
            checkpoint_id=row.id,
            parent_checkpoint_id=row.parent,
            checkpoint=row.checkpoint(),
            metadata=row.metadata,
            channel_versions=row.versions,
            values=values,
            pending_writes=self._pending_writes(partition, ns_part, row.id),
            created_at=row.created_at,
        )

    def get(self, tenant: str, thread_id: str, checkpoint_ns: str = "",
            checkpoint_id: str | None = None) -> StoredCheckpoint:
        """One checkpoint, or the latest of the namespace when ``checkpoint_id`` is None; NotFound when absent."""
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        _check_text(checkpoint_ns, "checkpoint_ns", empty=True)
        partition, ns_part = layout.thread_pk(tenant, thread_id), part(checkpoint_ns)
        if checkpoint_id is None:
            page = self._table.query(partition, prefix=layout.checkpoint_prefix(ns_part), limit=1)
            if not page.items:
                raise CheckpointNotFound(thread_id, checkpoint_ns)
            entity = page.items[0]
        else:
            check_id(checkpoint_id, "checkpoint_id")
            try:
                entity = self._table.get(partition, layout.checkpoint_rk(ns_part, checkpoint_id))
            except NotFound:
                raise CheckpointNotFound(thread_id, checkpoint_ns, checkpoint_id) from None
        row = layout.checkpoint_of(entity)
        self._remember_inline(partition, row.row_key, row.inline)  # its child's put carries them
        return self._assemble(thread_id, row, {})

    def list(
        self,
        tenant: str,
        thread_id: str,
        *,
        checkpoint_ns: str | None = None,
        before: str | None = None,
        metadata_filter: Mapping[str, Any] | None = None,
        limit: int = 100,
        continuation: str | None = None,
    ) -> Page[StoredCheckpoint]:
        """A thread's checkpoints, newest first, with values and pending writes.

        ``checkpoint_ns`` None lists every namespace (reading all the thread's
        checkpoint rows to order them); a namespace is a range query. ``before``:
        only checkpoints with a smaller id. ``metadata_filter``: only checkpoints
        whose metadata has these values. A page holds up to ``limit`` items and
        stops early past 16 MiB of values. NotFound when the thread has no
        checkpoint at all.
        """
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        if checkpoint_ns is not None:
            _check_text(checkpoint_ns, "checkpoint_ns", empty=True)
        if before is not None:
            check_id(before, "before")
        if metadata_filter is not None and not isinstance(metadata_filter, Mapping):
            raise InvalidInput("metadata_filter must be a mapping of metadata keys to values")
        check_json_value(dict(metadata_filter or {}), "metadata_filter")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be an integer from 1 to 1000, got {limit!r}")
        partition = layout.thread_pk(tenant, thread_id)
        state = self._table.verify_continuation(
            partition, continuation,
            purpose="list" if checkpoint_ns is None else f"list|{part(checkpoint_ns)}") if continuation else {}
        if checkpoint_ns is None:
            page = self._list_all_namespaces(thread_id, partition, before, metadata_filter, limit, state)
        else:
            page = self._list_namespace(thread_id, partition, part(checkpoint_ns), before, metadata_filter,
                                        limit, state)
        if not page.items and continuation is None and not self._table.query_inline(
                partition, prefix=layout.CHECKPOINT_PREFIX, limit=1).items:
            raise CheckpointThreadNotFound(thread_id)
        return page

    def _list_namespace(self, thread_id: str, partition: str, ns_part: str, before: str | None,
                        wanted: Mapping[str, Any] | None, limit: int, state: dict[str, Any]) -> Page[StoredCheckpoint]:
        prefix = layout.checkpoint_prefix(ns_part)
        low = prefix + layout.inverted(before) + layout.END if before is not None else prefix
        after = state.get("after")
        if after is not None:
            if not isinstance(after, str) or not after.startswith(prefix):
                raise InvalidInput("continuation token does not belong to this listing")
            low = max(low, after + layout.END)  # every checkpoint row key ends with the one "~"
        items: list[StoredCheckpoint] = []
        memo: dict[str, TypedValue | None] = {}
        size = 0
        while True:
            want = _ROWS_PER_QUERY if wanted else min(_ROWS_PER_QUERY, limit - len(items))
            page = self._table.query(partition, start=low, end=prefix_upper_bound(prefix), limit=want)
            for index, entity in enumerate(page.items):
                row = layout.checkpoint_of(entity)
                if not _matches(row.metadata, wanted):
                    continue
                item = self._assemble(thread_id, row, memo)
                items.append(item)
                size += item.size
                if len(items) >= limit or size >= LIST_PAGE_BYTES:
                    more = index + 1 < len(page.items) or page.continuation is not None
                    token = self._table.sign_continuation(partition, {"after": entity.row_key}, purpose=f"list|{ns_part}")
                    return Page(items, token if more else None)
            if page.continuation is None or not page.items:
                return Page(items, None)
            low = page.items[-1].row_key + layout.END

    def _list_all_namespaces(self, thread_id: str, partition: str, before: str | None,
                             wanted: Mapping[str, Any] | None, limit: int,
                             state: dict[str, Any]) -> Page[StoredCheckpoint]:
        rows = sorted((layout.checkpoint_of(e) for e in self._table.query_all(partition,
                                                                               prefix=layout.CHECKPOINT_PREFIX)),
                      key=lambda row: (layout.inverted(row.id), row.ns))
        after: tuple[str, str] | None = None
        after_id, after_ns = state.get("after_id"), state.get("after_ns")
        if after_id is not None:
            if not (isinstance(after_id, str) and isinstance(after_ns, str)):
                raise InvalidInput("continuation token does not belong to this listing")
            after = (after_id, after_ns)
        items: list[StoredCheckpoint] = []
        memo: dict[str, TypedValue | None] = {}
        size = 0
        for index, row in enumerate(rows):
            if before is not None and row.id >= before:
                continue
            if after is not None and (row.id > after[0] or (row.id == after[0] and row.ns <= after[1])):
                continue
            if not _matches(row.metadata, wanted):
                continue
            item = self._assemble(thread_id, row, memo)
            items.append(item)
            size += item.size
            if len(items) >= limit or size >= LIST_PAGE_BYTES:
                more = index + 1 < len(rows)
                position = {"after_id": row.id, "after_ns": row.ns}
                token = self._table.sign_continuation(partition, position, purpose="list")
                return Page(items, token if more else None)
        return Page(items, None)

    def threads(self, tenant: str, *, limit: int = 100, continuation: str | None = None) -> Page[ThreadInfo]:
        """The tenant's threads, in thread id order."""
        check_tenant(tenant)
        page = self._table.query(layout.threads_pk(tenant), limit=limit, continuation=continuation)
        return Page([layout.thread_info_of(e) for e in page.items], page.continuation)

    # -- maintenance

    def delete_thread(self, tenant: str, thread_id: str, *, idempotency_key: str | None = None) -> int:
        """Delete a thread's checkpoints, values, writes and index rows; returns how many checkpoints.

        NotFound when there was nothing to delete. Safe to repeat after a crash halfway.
        """
        return self.delete_thread_outcome(tenant, thread_id, idempotency_key=idempotency_key).result

    def delete_thread_outcome(self, tenant: str, thread_id: str, *,
                              idempotency_key: str | None = None) -> Outcome[int]:
        """:meth:`delete_thread`, saying whether the answer was replayed from ``idempotency_key``'s marker."""
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        return self._once(tenant, idempotency_key, "checkpoints.delete_thread", {"thread_id": thread_id},
                          lambda: self._delete_thread(tenant, thread_id))

    def _delete_thread(self, tenant: str, thread_id: str, op: str = "checkpoints.delete_thread",
                       details: Mapping[str, Any] | None = None) -> int:
        """Delete the thread; the change record (``op``, ``details`` and the count of checkpoints)
        goes with the batch that deletes its last checkpoints."""
        partition = layout.thread_pk(tenant, thread_id)
        runs = [layout.run_row_of(row) for row in self._table.query_all_inline(partition, prefix=layout.RUN_PREFIX)]
        # Checkpoints first, so no reader meets a checkpoint whose values are gone; run rows
        # last, since a retry finds the run index rows to delete through them. Keys only are
        # kept (a thread may hold many checkpoints, each with its inline values).
        checkpoints = [Entity(partition, row.row_key, offloaded=row.offloaded)
                       for row in self._table.query_all_inline(partition, prefix=layout.CHECKPOINT_PREFIX)]
        deleted = len(checkpoints)
        recording = self._recording(tenant, thread_id, op, {**(details or {}), "checkpoints": deleted})
        self._delete_rows(partition, checkpoints, recording)
        found = (deleted + self._delete_prefix(partition, layout.WRITE_PREFIX)
                 + self._delete_prefix(partition, layout.VALUE_PREFIX))
        for run_part in sorted({run.run_part for run in runs}):
            try:
                self._table.delete(layout.run_pk_of_part(tenant, run_part), thread_id)
            except NotFound:
                pass
        found += self._delete_prefix(partition, layout.RUN_PREFIX)
        try:
            self._table.delete(layout.threads_pk(tenant), thread_id)
            found += 1
        except NotFound:
            pass
        self._forget(tenant, thread_id)
        with self._lock:
            self._recent.clear()  # checkpoint ids written again later must not meet these values
        if not found:
            raise CheckpointThreadNotFound(thread_id)
        return deleted

    def copy_thread(self, tenant: str, source_thread_id: str, target_thread_id: str, *,
                    idempotency_key: str | None = None) -> int:
        """Copy every checkpoint, value and write of a thread to another; returns checkpoints copied.

        Rows the target already has are kept. NotFound when the source has no
        checkpoints. Safe to repeat after a crash halfway.
        """
        return self.copy_thread_outcome(tenant, source_thread_id, target_thread_id,
                                        idempotency_key=idempotency_key).result

    def copy_thread_outcome(self, tenant: str, source_thread_id: str, target_thread_id: str, *,
                            idempotency_key: str | None = None) -> Outcome[int]:
        """:meth:`copy_thread`, saying whether the answer was replayed from ``idempotency_key``'s marker."""
        check_tenant(tenant)
        check_id(source_thread_id, "source_thread_id")
        check_id(target_thread_id, "target_thread_id")
        if source_thread_id == target_thread_id:
            raise InvalidInput("source and target thread are the same")
        request = {"source_thread_id": source_thread_id, "target_thread_id": target_thread_id}
        return self._once(tenant, idempotency_key, "checkpoints.copy_thread", request,
                          lambda: self._copy_thread(tenant, source_thread_id, target_thread_id))

    def _copy_thread(self, tenant: str, source_thread_id: str, target_thread_id: str) -> int:
        source, target = layout.thread_pk(tenant, source_thread_id), layout.thread_pk(tenant, target_thread_id)
        if not self._table.query_inline(source, prefix=layout.CHECKPOINT_PREFIX, limit=1).items:
            raise CheckpointThreadNotFound(source_thread_id)
        runs = {layout.run_id_of(row) for row in self._table.query_all_inline(source, prefix=layout.RUN_PREFIX)}
        self._index(tenant, target_thread_id, None, force=True)
        for run_id in sorted(runs):
            self._index(tenant, target_thread_id, run_id, force=False)
        copied, seen, wrote = 0, 0, False
        # Indexes, then values and writes, then the checkpoints that refer to them; the change
        # record goes with the last checkpoints, when this call wrote anything.
        for prefix in (layout.RUN_PREFIX, layout.VALUE_PREFIX, layout.WRITE_PREFIX, layout.CHECKPOINT_PREFIX):
            for items, last in self._pages(source, prefix, _VALUE_ROWS_PER_QUERY):
                recording = None
                if last and prefix == layout.CHECKPOINT_PREFIX:
                    recording = self._recording(tenant, target_thread_id, "checkpoints.copy_thread", {
                        "source_thread_id": source_thread_id, "checkpoints": seen + len(items)})
                done = self._commit([Entity(target, e.row_key, dict(e.properties)) for e in items],
                                    recording=recording, record_kept=wrote)
                wrote = wrote or done.written > 0
                if prefix == layout.CHECKPOINT_PREFIX:
                    copied += done.written
                    seen += len(items)
        return copied

    def _pages(self, partition: str, prefix: str, limit: int) -> Iterator[tuple[Sequence[Entity], bool]]:
        """The rows under ``prefix``, a page at a time, each with whether it is the last (empty pages skipped)."""
        held: Sequence[Entity] = ()
        token: str | None = None
        while True:
            page = self._table.query(partition, prefix=prefix, limit=limit, continuation=token)
            if page.items:
                if held:
                    yield held, False
                held = page.items
            token = page.continuation
            if not token:
                break
        if held:
            yield held, True

    def prune(self, tenant: str, thread_ids: Sequence[str], strategy: PruneStrategy | str = PruneStrategy.KEEP_LATEST,
              *, now: float | None = None, idempotency_key: str | None = None) -> int:
        """Prune threads; returns how many checkpoints were deleted.

        ``keep_latest`` keeps the newest checkpoint of each namespace with its
        values and pending writes, and deletes the rest (values only once older
        than ``VALUE_GRACE_SECONDS`` at ``now``). Graphs using LangGraph's beta
        ``DeltaChannel`` rebuild state from ancestors: do not prune those threads.
        ``delete`` deletes the threads. NotFound when none of the threads has
        checkpoints. Safe to repeat after a crash halfway.
        """
        return self.prune_outcome(tenant, thread_ids, strategy, now=now, idempotency_key=idempotency_key).result

    def prune_outcome(self, tenant: str, thread_ids: Sequence[str],
                      strategy: PruneStrategy | str = PruneStrategy.KEEP_LATEST, *, now: float | None = None,
                      idempotency_key: str | None = None) -> Outcome[int]:
        """:meth:`prune`, saying whether the answer was replayed from ``idempotency_key``'s marker."""
        check_tenant(tenant)
        try:
            chosen = PruneStrategy(strategy)
        except ValueError:
            allowed = [s.value for s in PruneStrategy]
            raise InvalidInput(f"strategy must be one of {allowed}, got {strategy!r}") from None
        threads = _unique_ids(thread_ids, "thread_ids")
        at = time.time() if now is None else now
        return self._once(tenant, idempotency_key, "checkpoints.prune",
                          {"thread_ids": threads, "strategy": chosen.value},
                          lambda: self._prune(tenant, threads, chosen, at))

    def _prune(self, tenant: str, threads: Sequence[str], strategy: PruneStrategy, now: float) -> int:
        deleted, found = 0, False
        for thread_id in threads:
            try:
                if strategy is PruneStrategy.DELETE:
                    deleted += self._delete_thread(tenant, thread_id, "checkpoints.prune", {"strategy": strategy.value})
                else:
                    deleted += self._keep_latest(tenant, thread_id, now)
                found = True
            except NotFound:
                continue
        if threads and not found:
            raise CheckpointThreadNotFound(threads[0]) if len(threads) == 1 else CheckpointThreadNotFound(
                thread_ids=threads)
        return deleted

    def _keep_latest(self, tenant: str, thread_id: str, now: float) -> int:
        partition = layout.thread_pk(tenant, thread_id)
        # Values are listed BEFORE the checkpoints: a value written after this snapshot is
        # never deleted, whatever checkpoint comes to refer to it.
        values = list(self._table.query_all_inline(partition, prefix=layout.VALUE_PREFIX))
        stored = list(self._table.query_all(partition, prefix=layout.CHECKPOINT_PREFIX))
        if not stored:
            raise NotFound("thread has no checkpoints")
        kept: dict[str, CheckpointRow] = {}
        doomed: list[Entity] = []
        for entity in stored:  # newest first within each namespace
            row = layout.checkpoint_of(entity)
            if row.ns_part in kept:
                doomed.append(entity)
            else:
                kept[row.ns_part] = row
        # The record goes with the last checkpoints deleted; what follows is unreachable without them.
        self._delete_rows(partition, doomed, self._recording(tenant, thread_id, "checkpoints.prune", {
            "strategy": PruneStrategy.KEEP_LATEST.value, "checkpoints": len(doomed)}))
        kept_ids = {ns_part: row.id for ns_part, row in kept.items()}

        def older(ns_part: str, checkpoint_id: str) -> bool:
            return ns_part in kept_ids and checkpoint_id < kept_ids[ns_part]

        writes = [row for row in self._table.query_all_inline(partition, prefix=layout.WRITE_PREFIX)
                  if older(*layout.write_checkpoint_of(row.row_key))]
        self._delete_rows(partition, writes)
        runs = [run.row_key for run in map(layout.run_row_of,
                                           self._table.query_all_inline(partition, prefix=layout.RUN_PREFIX))
                if older(run.ns_part, run.checkpoint_id)]
        self._delete_rows(partition, runs)
        self._collect_values(partition, values, kept.values(), now)
        return len(doomed)

    def _collect_values(self, partition: str, values: Iterable[Entity], checkpoints: Iterable[CheckpointRow],
                        now: float) -> None:
        """Delete the listed value rows no checkpoint refers to, once past the grace period."""
        referenced: set[str] = set()
        for row in checkpoints:
            referenced |= layout.referenced_values(row)
        stale = [row for row in values
                 if row.row_key not in referenced and layout.value_at(row) < now - VALUE_GRACE_SECONDS]
        self._delete_rows(partition, stale)

    def delete_for_runs(self, tenant: str, run_ids: Sequence[str], *, now: float | None = None,
                        idempotency_key: str | None = None) -> int:
        """Delete every checkpoint (with its writes) that these runs wrote; returns how many.

        Found through the run index, without scanning the tenant. Values no
        remaining checkpoint refers to are deleted once past the grace period.
        NotFound when none of the runs wrote anything. Safe to repeat.
        """
        return self.delete_for_runs_outcome(tenant, run_ids, now=now, idempotency_key=idempotency_key).result

    def delete_for_runs_outcome(self, tenant: str, run_ids: Sequence[str], *, now: float | None = None,
                                idempotency_key: str | None = None) -> Outcome[int]:
        """:meth:`delete_for_runs`, saying whether the answer was replayed from ``idempotency_key``'s marker."""
        check_tenant(tenant)
        runs = list(dict.fromkeys(run_ids))
        if len(runs) > MAX_BULK_IDS:
            raise InvalidInput(f"at most {MAX_BULK_IDS} run ids per call")
        for run_id in runs:
            _check_text(run_id, "run_id")
        at = time.time() if now is None else now
        return self._once(tenant, idempotency_key, "checkpoints.delete_runs", {"run_ids": runs},
                          lambda: self._delete_for_runs(tenant, runs, at))

    def _delete_for_runs(self, tenant: str, runs: Sequence[str], now: float) -> int:
        deleted, found = 0, False
        for run_id in runs:
            # The index rows stay: a checkpoint the run writes after this call is still found next time.
            for row in self._table.query_all_inline(layout.run_pk(tenant, run_id)):
                found = True
                deleted += self._delete_run_in_thread(tenant, row.row_key, run_id, now)
        if runs and not found:
            raise RunCheckpointsNotFound(runs)
        return deleted

    def _delete_run_in_thread(self, tenant: str, thread_id: str, run_id: str, now: float) -> int:
        partition = layout.thread_pk(tenant, thread_id)
        doomed: list[Entity] = []
        cleared: list[layout.RunRow] = []
        run_prefix = f"{layout.RUN_PREFIX}{part(run_id)}|"
        runs = [layout.run_row_of(row) for row in self._table.query_all_inline(partition, prefix=run_prefix)]
        for run in runs:
            checkpoint = self._find_inline(partition, run.checkpoint_rk)
            # A checkpoint replaced by another run's put keeps its new run's rows.
            if checkpoint is None or layout.run_of(checkpoint) == run_id:
                if checkpoint is not None:
                    doomed.append(checkpoint)
                cleared.append(run)
        # The run's checkpoints first, with the change record in the batch of the last ones;
        # then their writes, and the run rows last: a retry finds what is left through them.
        self._delete_rows(partition, doomed, self._recording(tenant, thread_id, "checkpoints.delete_for_runs", {
            "run_id": run_id, "checkpoints": len(doomed)}))
        for run in cleared:
            self._delete_prefix(partition, layout.writes_prefix(run.ns_part, run.checkpoint_id))
        self._delete_rows(partition, [run.row_key for run in runs])
        for ns_part in {run.ns_part for run in cleared}:
            values = list(self._table.query_all_inline(partition, prefix=f"{layout.VALUE_PREFIX}{ns_part}|"))
            remaining = [layout.checkpoint_of(row)
                         for row in self._table.query_all(partition, prefix=layout.checkpoint_prefix(ns_part))]
            self._collect_values(partition, values, remaining, now)
        return len(doomed)

    # -- idempotency of maintenance

    def _once(self, tenant: str, idempotency_key: str | None, op: str, request: dict[str, Any],
              action: Callable[[], int]) -> Outcome[int]:
        """``action()`` once per ``idempotency_key`` (each call when None); see the module docstring.

        The marker is written after the work (which spans many batches) and only when
        it succeeded: a NotFound answers the same on a redelivery without a marker.
        """
        if idempotency_key is None:
            return Outcome(action())
        idempotency = Idempotency.of(idempotency_key, op, request)
        partition = layout.commands_pk(tenant)
        replay = self._replay(partition, idempotency, op)
        if replay is not None:
            return replay
        result = action()
        try:
            self._table.batch([marker_op(partition, idempotency, result)])
        except AlreadyExists:  # a concurrent delivery recorded it first: answer as it did (or 422)
            replay = self._replay(partition, idempotency, op)
            if replay is None:
                raise
            return replay
        return Outcome(result)

    def _replay(self, partition: str, idempotency: Idempotency, op: str) -> Outcome[int] | None:
        found = lookup(self._table, partition, idempotency)
        if found is not None:
            return Outcome(int(found.result), replayed=True, status=found.status)
        legacy = find(self._table, partition, layout.legacy_marker_rk(idempotency.key))
        if legacy is None:
            return None
        if legacy.get("op") != op:
            raise IdempotencyKeyReused(idempotency.key, op)
        return Outcome(0, replayed=True)  # a marker of the format before: its count was not kept
