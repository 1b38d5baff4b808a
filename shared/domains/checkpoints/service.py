"""Checkpoints: LangGraph-compatible graph state per tenant, thread and namespace.

A checkpoint is addressed by (tenant, thread_id, checkpoint_ns, checkpoint_id),
links to its parent, carries JSON metadata (``source``, ``step``, ``run_id`` and
any user keys) and names, per channel, the version of the value it holds. Values
are opaque typed bytes (LangGraph's ``dumps_typed`` pairs); this module never
imports LangGraph (see :mod:`shared.domains.checkpoints.savers` for the savers).

Layout, in table ``stowagecheckpoints``. One partition per thread, so that a
checkpoint and its new channel values are written in ONE atomic batch:

* partition ``<tenant>|t|<thread_id>``:

  - ``c|<ns>|<inverted checkpoint_id>``: the checkpoint (serialised without its
    channel values), metadata, parent id and ``{channel: version}`` of the values
    it holds. Ids are inverted character by character (and end with ``~``), so
    ascending row keys list the NEWEST first: the latest checkpoint of a
    namespace is a one-row prefix query, and ``before`` is a range start;
  - ``v|<ns>|<channel>|<version>``: one value per channel version, written once
    (create-only; an existing version is never rewritten), so a step that
    changes one channel writes one value;
  - ``w|<ns>|<checkpoint_id>|<task_id>|<idx>``: pending writes. Regular writes
    (``idx >= 0``) are create-only, so writing the same (task_id, idx) twice
    never duplicates one; special channels (negative ``idx``) are replaced, as
    LangGraph's own savers do;
  - ``r|<run_id>|<ns>|<inverted checkpoint_id>``: which checkpoints a run wrote,
    in the same batch as the checkpoint.

* partition ``<tenant>|threads``, row ``<thread_id>``: the tenant's threads;
* partition ``<tenant>|r|<run_id>``, row ``<thread_id>``: the threads a run wrote
  to, so ``delete_for_runs`` never scans the tenant;
* partition ``<tenant>|commands``: queue command idempotency markers.

Key parts (namespace, channel, version, task and run ids) are escaped with
:func:`shared.keys.escape`; one longer than 100 bytes is replaced by ``~`` and a
SHA-256 digest (the original is kept in the entity).

Guarantees:

* ``put`` is one atomic batch (values, run row, checkpoint) unless it exceeds
  100 operations or the batch wire size; then values go first and the checkpoint
  last, so a checkpoint is never visible before its values. Repeating a put is
  harmless: existing values are kept and the checkpoint row is replaced.
* Group commit: writes to one thread from several threads of this process (LangGraph
  stores a step's pending writes and the next checkpoint concurrently) take turns,
  and the one whose turn it is carries the others waiting along in its batch when
  they fit. Each caller returns once its own rows are durable, with its own result;
  if the shared batch fails, each write is retried on its own.
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
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import Field

from shared import names
from shared.backends import Entity, Page, TableOp
from shared.backends.base import (
    MAX_BATCH_OPERATIONS,
    MAX_PROPERTY_BYTES,
    prefix_upper_bound,
    property_size,
)
from shared.command_ops import CommandOp, CommandPayload, Outcome
from shared.errors import AlreadyExists, Conflict, InvalidInput, InvalidKey, NotFound, StowageError, TooLarge
from shared.jsonvalues import check_json_value, json_text
from shared.keys import check_id, check_tenant, escape
from shared.stores import Stores

FORMAT_VERSION = 1
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 256  # namespaces, channels, versions, run ids
MAX_TYPE_LENGTH = 64
MAX_TASK_PATH_LENGTH = 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_CHANNELS = 1000
MAX_WRITES = 1000
MAX_BULK_IDS = 1000
#: Largest total of serialised bytes one put or put_writes may carry (checked before writing).
MAX_PUT_BYTES = 48 * 1024 * 1024
#: Values up to this size stay in their entity (split over properties); larger ones go to a blob.
INLINE_VALUE_BYTES = 256 * 1024
#: Unreferenced values younger than this are kept: a put in flight may be about to refer to them.
VALUE_GRACE_SECONDS = 600
#: A list page stops growing past this many bytes of values (it always holds one item).
LIST_PAGE_BYTES = 16 * 1024 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TYPE = re.compile(r"[!-~]{1,64}")
# Every character a checkpoint id may hold, in code-point order; inverting maps the
# i-th to the i-th from the end, and "~" (above all of them) ends the inverted id so
# that a longer id sorts before its prefix.
_ALPHABET = "-.0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_INVERT = str.maketrans(_ALPHABET, _ALPHABET[::-1])
_END = "~"
_MAX_KEY_PART = 100
# Room left under the 4 MiB batch limit for our estimate of the offload layer's output.
_BATCH_WIRE_BUDGET = 3 * 1024 * 1024
# Well under the offload layer's entity budget: entities this small are never changed by it.
_PLAIN_ENTITY_BYTES = 320 * 1024
_ROWS_PER_QUERY = 100
_VALUE_ROWS_PER_QUERY = 16  # rows that may carry values of up to 256 KiB, or blobs
_WRITE_ATTEMPTS = 8
_INDEX_CACHE_LIMIT = 100_000


class PruneStrategy(str, Enum):
    """``keep_latest``: keep the newest checkpoint of each namespace; ``delete``: delete the thread."""

    KEEP_LATEST = "keep_latest"
    DELETE = "delete"


@dataclass(frozen=True)
class TypedValue:
    """A serialised value: the serializer's type tag and its bytes (LangGraph's ``dumps_typed`` pair)."""

    type: str
    data: bytes


@dataclass(frozen=True)
class PendingWrite:
    """A write a task made after a checkpoint, not yet folded into the next one."""

    task_id: str
    channel: str
    value: TypedValue
    #: Position in the task's writes; negative for LangGraph's special channels (errors, interrupts...).
    idx: int
    task_path: str = ""


@dataclass(frozen=True)
class CheckpointRef:
    """Where a checkpoint was stored."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    created_at: str
    #: False when a checkpoint with this id was already there and has been replaced.
    created: bool = True


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint with its channel values and pending writes."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    #: The checkpoint as the client serialised it, without its channel values.
    checkpoint: TypedValue
    metadata: dict[str, Any]
    #: Version of each channel that holds a value at this checkpoint.
    channel_versions: dict[str, str]
    values: dict[str, TypedValue]
    #: In (task_path, task_id, idx) order, the order LangGraph applies them in.
    pending_writes: list[PendingWrite]
    created_at: str


@dataclass(frozen=True)
class WritesResult:
    """What put_writes did: writes stored (new or replaced) and writes already there (kept)."""

    written: int
    kept: int


@dataclass(frozen=True)
class ThreadInfo:
    """A thread that has (or had) checkpoints."""

    thread_id: str
    created_at: str


@dataclass
class _Committed:
    written: int = 0
    kept: int = 0
    replaced: set[str] = field(default_factory=set)

    def add(self, other: _Committed) -> None:
        self.written += other.written
        self.kept += other.kept
        self.replaced |= other.replaced


@dataclass(eq=False)
class _Batch:
    """Rows that fit one atomic batch, and (once settled) what writing them did."""

    rows: list[Entity]
    replace: frozenset[str]
    size: int
    #: Every row is one the offload rule leaves untouched.
    plain: bool
    result: _Committed | None = None
    error: BaseException | None = None
    settled: bool = False


class _Slot:
    """The writers of one partition in this process: one commits at a time, taking the queued along."""

    def __init__(self) -> None:
        self.commit_lock = threading.Lock()
        self.queue: list[_Batch] = []


def _take_group(queue: list[_Batch], own: _Batch) -> list[_Batch]:
    """``own`` and the queued batches that fit with it in one batch (no row twice), off the queue."""
    queue.remove(own)
    group, count, size = [own], len(own.rows), own.size
    keys = {row.row_key for row in own.rows}
    for other in list(queue):
        other_keys = {row.row_key for row in other.rows}
        if (count + len(other.rows) <= MAX_BATCH_OPERATIONS and size + other.size <= _BATCH_WIRE_BUDGET
                and not keys & other_keys):
            queue.remove(other)
            group.append(other)
            count, size = count + len(other.rows), size + other.size
            keys |= other_keys
    return group


# --------------------------------------------------------------------------- keys and checks


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def _inverted(checkpoint_id: str) -> str:
    return checkpoint_id.translate(_INVERT) + _END


def _uninverted(part: str) -> str:
    return part[:-1].translate(_INVERT)


def _part(text: str) -> str:
    """``text`` as one key part: escaped, or a digest when long (or when it could pass for one)."""
    escaped = escape(text)
    if len(escaped.encode("utf-8")) <= _MAX_KEY_PART and not text.startswith("~"):
        return escaped
    return "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def _thread_pk(tenant: str, thread_id: str) -> str:
    return f"{tenant}|t|{thread_id}"


def _threads_pk(tenant: str) -> str:
    return f"{tenant}|threads"


def _run_pk(tenant: str, run_id: str) -> str:
    return f"{tenant}|r|{_part(run_id)}"


def _commands_pk(tenant: str) -> str:
    return f"{tenant}|commands"


def _checkpoint_rk(ns_part: str, checkpoint_id: str) -> str:
    return f"c|{ns_part}|{_inverted(checkpoint_id)}"


def _value_rk(ns_part: str, channel: str, version: str) -> str:
    return f"v|{ns_part}|{_part(channel)}|{_part(version)}"


def _writes_prefix(ns_part: str, checkpoint_id: str) -> str:
    return f"w|{ns_part}|{checkpoint_id}|"


def _check_text(value: str, what: str, *, empty: bool = False, max_length: int = MAX_TEXT_LENGTH) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidKey(f"{what} must be a non-empty string")
    if len(value) > max_length:
        raise InvalidKey(f"{what} is longer than {max_length} characters")
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


def _matches(metadata: Mapping[str, Any], wanted: Mapping[str, Any] | None) -> bool:
    return not wanted or all(metadata.get(key) == value for key, value in wanted.items())


# --------------------------------------------------------------------------- service


class CheckpointService:
    """Checkpoints of every tenant; each call names its tenant. Thread-safe."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_CHECKPOINTS)
        # Key-only scans (what to delete) read the stored rows as they are, without fetching
        # offloaded blobs; deletes still go through the offload layer, which frees the blobs.
        self._raw = self._table.table
        self._threshold = min(stores.settings.offload_threshold_bytes, MAX_PROPERTY_BYTES)
        #: Largest total of serialised bytes one put or put_writes may carry.
        self.max_bytes = MAX_PUT_BYTES
        # (tenant, thread_id) -> run ids whose index rows this instance wrote.
        self._indexed: dict[tuple[str, str], set[str]] = {}
        # Group commit: per partition, the writes waiting for their turn (entries go when unused).
        self._slots: weakref.WeakValueDictionary[str, _Slot] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    # -- bytes in entities

    def _put_bytes(self, properties: dict[str, Any], name: str, data: bytes) -> None:
        """Small or large data in one property (large ones go to a blob); medium split in parts."""
        size = len(data)
        if size <= self._threshold or size > INLINE_VALUE_BYTES:
            properties[name] = bytes(data)
            return
        count = math.ceil(size / self._threshold)
        properties[f"{name}_n"] = count
        for index in range(count):
            properties[f"{name}{index}"] = bytes(data[index * self._threshold:(index + 1) * self._threshold])

    @staticmethod
    def _get_bytes(entity: Entity, name: str) -> bytes:
        data = entity.get(name)
        if data is not None:
            return bytes(data)
        count = int(entity.get(f"{name}_n", 0))
        return b"".join(bytes(entity[f"{name}{index}"]) for index in range(count))

    def _weigh(self, entity: Entity) -> tuple[int, bool]:
        """Bytes the entity takes in a batch request, and whether the offload rule leaves it as it is."""
        inline, offloaded = 0, 0
        for value in entity.properties.values():
            size = property_size(value)
            if size > self._threshold and isinstance(value, (bytes, str)):
                offloaded += 1
            else:
                inline += size
        return inline * 4 // 3 + 160 * offloaded + 256, offloaded == 0 and inline <= _PLAIN_ENTITY_BYTES

    # -- writing rows

    def _batches(self, rows: Sequence[Entity], replace: frozenset[str]) -> Iterator[_Batch]:
        """Rows in order, cut into batches under the operation and wire-size limits."""
        batch: list[Entity] = []
        size, plain = 0, True
        for row in rows:
            weight, row_plain = self._weigh(row)
            if batch and (len(batch) == MAX_BATCH_OPERATIONS or size + weight > _BATCH_WIRE_BUDGET):
                yield _Batch(batch, replace, size, plain)
                batch, size, plain = [], 0, True
            batch.append(row)
            size += weight
            plain = plain and row_plain
        if batch:
            yield _Batch(batch, replace, size, plain)

    def _exists(self, partition_key: str, row_key: str) -> bool:
        try:
            self._raw.get(partition_key, row_key)
        except NotFound:
            return False
        return True

    def _commit(self, rows: Sequence[Entity], replace: frozenset[str] = frozenset()) -> _Committed:
        """Write rows create-only, in order, in as few atomic batches as the limits allow.

        A row already there is kept, unless its row key is in ``replace`` (then it is
        replaced). A write that fits one batch goes through its partition's group
        commit: LangGraph writes a step's pending writes and the next checkpoint from
        two threads at once; one batch carrying both costs one round trip instead of
        two, and writers of one partition take turns here rather than contend for the
        store's own write lock.
        """
        batches = list(self._batches(rows, replace))
        if len(batches) != 1:
            done = _Committed()
            for batch in batches:  # in order: a checkpoint's values before the checkpoint
                done.add(self._commit_batch(batch))
            return done
        request = batches[0]
        partition = request.rows[0].partition_key
        with self._lock:
            slot = self._slots.get(partition)
            if slot is None:
                slot = self._slots[partition] = _Slot()
            slot.queue.append(request)
        with slot.commit_lock:
            if not request.settled:
                with self._lock:
                    group = _take_group(slot.queue, request)
                self._commit_group(group)
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]  # settled: a result or an error

    def _commit_group(self, group: list[_Batch]) -> None:
        """Commit batches of one partition as one atomic batch; if that fails, each on its own."""
        try:
            if len(group) > 1:
                rows = [row for batch in group for row in batch.rows]
                table = self._raw if all(batch.plain for batch in group) else self._table
                try:
                    table.batch([TableOp.insert(row) for row in rows])
                except StowageError:
                    pass  # one of them meets an existing row, or fails alone: settle each below
                else:
                    for batch in group:
                        batch.result = _Committed(written=len(batch.rows))
            for batch in group:
                if batch.result is None:
                    try:
                        batch.result = self._commit_batch(batch)
                    except BaseException as exc:  # noqa: BLE001 - raised again in the writer's own thread
                        batch.error = exc
        finally:
            for batch in group:
                if batch.result is None and batch.error is None:
                    batch.error = Conflict("the group commit carrying this write was interrupted; retry")
                batch.settled = True

    def _commit_batch(self, batch: _Batch) -> _Committed:
        # Rows the offload rule would leave untouched skip its per-entity pass (the hot path:
        # inserts have no old blobs to free).
        table = self._raw if batch.plain else self._table
        try:
            table.batch([TableOp.insert(row) for row in batch.rows])
            return _Committed(written=len(batch.rows))
        except AlreadyExists:
            pass
        for _ in range(_WRITE_ATTEMPTS):
            present = {row.row_key for row in batch.rows if self._exists(row.partition_key, row.row_key)}
            operations = [
                TableOp.upsert(row) if row.row_key in present else TableOp.insert(row)
                for row in batch.rows if row.row_key not in present or row.row_key in batch.replace
            ]
            try:
                self._table.batch(operations)
            except AlreadyExists:
                continue  # a concurrent writer added one of them: look again
            return _Committed(len(operations), len(batch.rows) - len(operations), present & batch.replace)
        raise Conflict("rows kept appearing while being written; retry")

    def _insert_index(self, row: Entity) -> None:
        try:
            self._table.insert(row)
        except AlreadyExists:
            pass

    def _index(self, tenant: str, thread_id: str, run_id: str | None, *, force: bool) -> None:
        """Make sure the thread and the (run, thread) index rows exist, before the data they index."""
        key = (tenant, thread_id)
        known = self._indexed.get(key)
        now = time.time()
        if known is None or force:
            self._insert_index(Entity(_threads_pk(tenant), thread_id, {"thread_id": thread_id, "at": now}))
        if run_id is not None and (known is None or run_id not in known):
            self._insert_index(Entity(_run_pk(tenant, run_id), thread_id, {"run": run_id, "thread_id": thread_id}))
        with self._lock:
            if len(self._indexed) >= _INDEX_CACHE_LIMIT:
                self._indexed.clear()
            runs = self._indexed.setdefault(key, set())
            if run_id is not None:
                runs.add(run_id)

    def _forget(self, tenant: str, thread_id: str) -> None:
        with self._lock:
            self._indexed.pop((tenant, thread_id), None)

    # -- deleting rows

    def _delete_rows(self, partition_key: str, row_keys: Sequence[str]) -> None:
        """Delete rows in batches; rows already gone (a retry, a concurrent delete) are fine."""
        for start in range(0, len(row_keys), MAX_BATCH_OPERATIONS):
            chunk = row_keys[start:start + MAX_BATCH_OPERATIONS]
            try:
                self._table.batch([TableOp.delete(partition_key, row_key) for row_key in chunk])
            except NotFound:
                for row_key in chunk:
                    try:
                        self._table.delete(partition_key, row_key)
                    except NotFound:
                        pass

    def _delete_prefix(self, partition_key: str, prefix: str) -> int:
        """Delete every row under ``prefix``, a batch at a time; returns how many."""
        deleted = 0
        while True:
            page = self._raw.query(partition_key, prefix=prefix, limit=MAX_BATCH_OPERATIONS)
            if not page.items:
                return deleted
            self._delete_rows(partition_key, [row.row_key for row in page.items])
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
    ) -> CheckpointRef:
        """Store a checkpoint and the values it introduces.

        ``channel_versions``: the version of every channel that holds a value at
        this checkpoint. ``new_values``: the values this checkpoint writes, by
        channel (at the version ``channel_versions`` names); values of other
        channels are those stored by earlier checkpoints. Everything is validated,
        and the size checked (TooLarge), before anything is written.
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
        if size > self.max_bytes:
            raise TooLarge(f"checkpoint is {size} bytes serialised; the limit is {self.max_bytes}")
        run = (metadata or {}).get("run_id")
        run_id = _check_text(run, "metadata run_id") if isinstance(run, str) and run else None

        now = time.time()
        partition = _thread_pk(tenant, thread_id)
        ns_part = _part(checkpoint_ns)
        rows: list[Entity] = []
        for channel, value in values.items():
            version = versions[channel]
            properties: dict[str, Any] = {"ch": channel, "ver": version, "type": value.type, "at": now}
            self._put_bytes(properties, "data", value.data)
            rows.append(Entity(partition, _value_rk(ns_part, channel, version), properties))
        if run_id is not None:
            rows.append(Entity(partition, f"r|{_part(run_id)}|{ns_part}|{_inverted(checkpoint_id)}",
                               {"run": run_id, "ns": checkpoint_ns, "id": checkpoint_id}))
        properties = {"fmt": FORMAT_VERSION, "id": checkpoint_id, "ns": checkpoint_ns, "ctype": checkpoint.type,
                      "meta": metadata_text, "vals": json.dumps(versions, ensure_ascii=False, separators=(",", ":")),
                      "at": now}
        if parent_checkpoint_id is not None:
            properties["parent"] = parent_checkpoint_id
        if run_id is not None:
            properties["run"] = run_id
        self._put_bytes(properties, "cdata", checkpoint.data)
        row_key = _checkpoint_rk(ns_part, checkpoint_id)
        rows.append(Entity(partition, row_key, properties))  # last: never visible before its values

        self._index(tenant, thread_id, run_id, force=parent_checkpoint_id is None)
        done = self._commit(rows, replace=frozenset({row_key}))
        return CheckpointRef(thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, _iso(now),
                             created=row_key not in done.replaced)

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
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        _check_text(checkpoint_ns, "checkpoint_ns", empty=True)
        check_id(checkpoint_id, "checkpoint_id")
        _check_text(task_id, "task_id")
        _check_text(task_path, "task_path", empty=True, max_length=MAX_TASK_PATH_LENGTH)
        if len(writes) > MAX_WRITES:
            raise InvalidInput(f"at most {MAX_WRITES} writes per call")
        seen: set[int] = set()
        size = 0
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
            size += len(_check_value(value, f"write to {channel!r}").data)
        if size > self.max_bytes:
            raise TooLarge(f"writes are {size} bytes serialised; the limit is {self.max_bytes}")

        now = time.time()
        partition = _thread_pk(tenant, thread_id)
        prefix = _writes_prefix(_part(checkpoint_ns), checkpoint_id) + _part(task_id) + "|"
        rows, special = [], set()
        for idx, channel, value in writes:
            properties: dict[str, Any] = {"task": task_id, "path": task_path, "idx": idx, "ch": channel,
                                          "type": value.type, "at": now}
            self._put_bytes(properties, "data", value.data)
            rows.append(Entity(partition, f"{prefix}{idx}", properties))
            if idx < 0:
                special.add(f"{prefix}{idx}")
        done = self._commit(rows, replace=frozenset(special))
        return WritesResult(done.written, done.kept)

    # -- reads

    def _value(self, partition: str, row_key: str) -> TypedValue | None:
        try:
            entity = self._table.get(partition, row_key)
        except NotFound:
            return None
        return TypedValue(str(entity["type"]), self._get_bytes(entity, "data"))

    def _pending_writes(self, partition: str, ns_part: str, checkpoint_id: str) -> list[PendingWrite]:
        found = [
            PendingWrite(str(e["task"]), str(e["ch"]), TypedValue(str(e["type"]), self._get_bytes(e, "data")),
                         int(e["idx"]), str(e.get("path", "")))
            for e in self._table.query_all(partition, prefix=_writes_prefix(ns_part, checkpoint_id))
        ]
        found.sort(key=lambda w: (w.task_path, w.task_id, w.idx))
        return found

    def _assemble(self, thread_id: str, entity: Entity, memo: dict[str, TypedValue | None]) -> StoredCheckpoint:
        """A checkpoint row with its values (read once per call through ``memo``) and writes."""
        partition = entity.partition_key
        ns = str(entity.get("ns", ""))
        ns_part = _part(ns)
        versions: dict[str, str] = json.loads(str(entity["vals"]))
        values: dict[str, TypedValue] = {}
        for channel, version in versions.items():
            row_key = _value_rk(ns_part, channel, version)
            if row_key not in memo:
                memo[row_key] = self._value(partition, row_key)
            if memo[row_key] is not None:
                values[channel] = memo[row_key]  # type: ignore[assignment]
        checkpoint_id = str(entity["id"])
        parent = entity.get("parent")
        return StoredCheckpoint(
            thread_id=thread_id,
            checkpoint_ns=ns,
            checkpoint_id=checkpoint_id,
            parent_checkpoint_id=str(parent) if parent else None,
            checkpoint=TypedValue(str(entity["ctype"]), self._get_bytes(entity, "cdata")),
            metadata=json.loads(str(entity["meta"])),
            channel_versions=versions,
            values=values,
            pending_writes=self._pending_writes(partition, ns_part, checkpoint_id),
            created_at=_iso(float(entity["at"])),
        )

    def get(self, tenant: str, thread_id: str, checkpoint_ns: str = "",
            checkpoint_id: str | None = None) -> StoredCheckpoint:
        """One checkpoint, or the latest of the namespace when ``checkpoint_id`` is None; NotFound when absent."""
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        _check_text(checkpoint_ns, "checkpoint_ns", empty=True)
        partition, ns_part = _thread_pk(tenant, thread_id), _part(checkpoint_ns)
        if checkpoint_id is None:
            page = self._table.query(partition, prefix=f"c|{ns_part}|", limit=1)
            if not page.items:
                raise NotFound(f"thread {thread_id!r} has no checkpoint in namespace {checkpoint_ns!r}")
            entity = page.items[0]
        else:
            check_id(checkpoint_id, "checkpoint_id")
            try:
                entity = self._table.get(partition, _checkpoint_rk(ns_part, checkpoint_id))
            except NotFound:
                raise NotFound(f"thread {thread_id!r} has no checkpoint {checkpoint_id!r} "
                               f"in namespace {checkpoint_ns!r}") from None
        return self._assemble(thread_id, entity, {})

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
        state = self._raw.verify_continuation(
            _thread_pk(tenant, thread_id), continuation,
            purpose="list" if checkpoint_ns is None else f"list|{_part(checkpoint_ns)}") if continuation else {}
        partition = _thread_pk(tenant, thread_id)
        if checkpoint_ns is None:
            page = self._list_all_namespaces(thread_id, partition, before, metadata_filter, limit, state)
        else:
            page = self._list_namespace(thread_id, partition, _part(checkpoint_ns), before, metadata_filter,
                                        limit, state)
        if not page.items and continuation is None and not self._raw.query(partition, prefix="c|", limit=1).items:
            raise NotFound(f"thread {thread_id!r} has no checkpoints")
        return page

    def _list_namespace(self, thread_id: str, partition: str, ns_part: str, before: str | None,
                        wanted: Mapping[str, Any] | None, limit: int, state: dict[str, Any]) -> Page[StoredCheckpoint]:
        prefix = f"c|{ns_part}|"
        low = prefix + _inverted(before) + _END if before is not None else prefix
        after = state.get("after")
        if after is not None:
            if not isinstance(after, str) or not after.startswith(prefix):
                raise InvalidInput("continuation token does not belong to this listing")
            low = max(low, after + _END)  # every checkpoint row key ends with the one "~"
        items: list[StoredCheckpoint] = []
        memo: dict[str, TypedValue | None] = {}
        size = 0
        while True:
            want = _ROWS_PER_QUERY if wanted else min(_ROWS_PER_QUERY, limit - len(items))
            page = self._table.query(partition, start=low, end=prefix_upper_bound(prefix), limit=want)
            for index, entity in enumerate(page.items):
                if not _matches(json.loads(str(entity["meta"])), wanted):
                    continue
                item = self._assemble(thread_id, entity, memo)
                items.append(item)
                size += _size(item)
                if len(items) >= limit or size >= LIST_PAGE_BYTES:
                    more = index + 1 < len(page.items) or page.continuation is not None
                    token = self._raw.sign_continuation(partition, {"after": entity.row_key}, purpose=f"list|{ns_part}")
                    return Page(items, token if more else None)
            if page.continuation is None or not page.items:
                return Page(items, None)
            low = page.items[-1].row_key + _END

    def _list_all_namespaces(self, thread_id: str, partition: str, before: str | None,
                             wanted: Mapping[str, Any] | None, limit: int,
                             state: dict[str, Any]) -> Page[StoredCheckpoint]:
        rows = sorted(self._table.query_all(partition, prefix="c|"),
                      key=lambda e: (_inverted(str(e["id"])), str(e.get("ns", ""))))
        after = state.get("after_id"), state.get("after_ns")
        items: list[StoredCheckpoint] = []
        memo: dict[str, TypedValue | None] = {}
        size = 0
        for index, entity in enumerate(rows):
            checkpoint_id, ns = str(entity["id"]), str(entity.get("ns", ""))
            if before is not None and checkpoint_id >= before:
                continue
            if after[0] is not None and (checkpoint_id > after[0] or (checkpoint_id == after[0] and ns <= after[1])):
                continue
            if not _matches(json.loads(str(entity["meta"])), wanted):
                continue
            item = self._assemble(thread_id, entity, memo)
            items.append(item)
            size += _size(item)
            if len(items) >= limit or size >= LIST_PAGE_BYTES:
                more = index + 1 < len(rows)
                position = {"after_id": checkpoint_id, "after_ns": ns}
                token = self._raw.sign_continuation(partition, position, purpose="list")
                return Page(items, token if more else None)
        return Page(items, None)

    def threads(self, tenant: str, *, limit: int = 100, continuation: str | None = None) -> Page[ThreadInfo]:
        """The tenant's threads, in thread id order."""
        check_tenant(tenant)
        page = self._table.query(_threads_pk(tenant), limit=limit, continuation=continuation)
        return Page([ThreadInfo(e.row_key, _iso(float(e.get("at", 0.0)))) for e in page.items], page.continuation)

    # -- maintenance

    def delete_thread(self, tenant: str, thread_id: str) -> int:
        """Delete a thread's checkpoints, values, writes and index rows; returns how many checkpoints.

        NotFound when there was nothing to delete. Safe to repeat after a crash halfway.
        """
        check_tenant(tenant)
        check_id(thread_id, "thread_id")
        return self._delete_thread(tenant, thread_id)

    def _delete_thread(self, tenant: str, thread_id: str) -> int:
        partition = _thread_pk(tenant, thread_id)
        run_parts = {row.row_key.split("|")[1] for row in self._raw.query_all(partition, prefix="r|")}
        # Checkpoints first, so no reader meets a checkpoint whose values are gone; run rows
        # last, since a retry finds the run index rows to delete through them.
        deleted = self._delete_prefix(partition, "c|")
        found = deleted + self._delete_prefix(partition, "w|") + self._delete_prefix(partition, "v|")
        for run_part in run_parts:
            try:
                self._table.delete(f"{tenant}|r|{run_part}", thread_id)
            except NotFound:
                pass
        found += self._delete_prefix(partition, "r|")
        try:
            self._table.delete(_threads_pk(tenant), thread_id)
            found += 1
        except NotFound:
            pass
        self._forget(tenant, thread_id)
        if not found:
            raise NotFound(f"thread {thread_id!r} has no checkpoints")
        return deleted

    def copy_thread(self, tenant: str, source_thread_id: str, target_thread_id: str) -> int:
        """Copy every checkpoint, value and write of a thread to another; returns checkpoints copied.

        Rows the target already has are kept. NotFound when the source has no
        checkpoints. Safe to repeat after a crash halfway.
        """
        check_tenant(tenant)
        check_id(source_thread_id, "source_thread_id")
        check_id(target_thread_id, "target_thread_id")
        if source_thread_id == target_thread_id:
            raise InvalidInput("source and target thread are the same")
        source, target = _thread_pk(tenant, source_thread_id), _thread_pk(tenant, target_thread_id)
        if not self._raw.query(source, prefix="c|", limit=1).items:
            raise NotFound(f"thread {source_thread_id!r} has no checkpoints")
        runs = {str(row["run"]) for row in self._raw.query_all(source, prefix="r|")}
        self._index(tenant, target_thread_id, None, force=True)
        for run_id in sorted(runs):
            self._index(tenant, target_thread_id, run_id, force=False)
        copied = 0
        # Indexes, then values and writes, then the checkpoints that refer to them.
        for prefix in ("r|", "v|", "w|", "c|"):
            token: str | None = None
            while True:
                page = self._table.query(source, prefix=prefix, limit=_VALUE_ROWS_PER_QUERY, continuation=token)
                done = self._commit([Entity(target, e.row_key, dict(e.properties)) for e in page.items])
                if prefix == "c|":
                    copied += done.written
                token = page.continuation
                if not token:
                    break
        return copied

    def prune(self, tenant: str, thread_ids: Sequence[str], strategy: PruneStrategy | str = PruneStrategy.KEEP_LATEST,
              *, now: float | None = None) -> int:
        """Prune threads; returns how many checkpoints were deleted.

        ``keep_latest`` keeps the newest checkpoint of each namespace with its
        values and pending writes, and deletes the rest (values only once older
        than ``VALUE_GRACE_SECONDS`` at ``now``). Graphs using LangGraph's beta
        ``DeltaChannel`` rebuild state from ancestors: do not prune those threads.
        ``delete`` deletes the threads. NotFound when none of the threads has
        checkpoints. Safe to repeat after a crash halfway.
        """
        check_tenant(tenant)
        try:
            strategy = PruneStrategy(strategy)
        except ValueError:
            raise InvalidInput(f"strategy must be one of {[s.value for s in PruneStrategy]}, got {strategy!r}") from None
        threads = _unique_ids(thread_ids, "thread_ids")
        now = time.time() if now is None else now
        deleted, found = 0, False
        for thread_id in threads:
            try:
                if strategy is PruneStrategy.DELETE:
                    deleted += self._delete_thread(tenant, thread_id)
                else:
                    deleted += self._keep_latest(_thread_pk(tenant, thread_id), now)
                found = True
            except NotFound:
                continue
        if threads and not found:
            raise NotFound("none of these threads has checkpoints")
        return deleted

    def _keep_latest(self, partition: str, now: float) -> int:
        # Values are listed BEFORE the checkpoints: a value written after this snapshot is
        # never deleted, whatever checkpoint comes to refer to it.
        values = list(self._raw.query_all(partition, prefix="v|"))
        checkpoints = list(self._table.query_all(partition, prefix="c|"))
        if not checkpoints:
            raise NotFound("thread has no checkpoints")
        kept: dict[str, Entity] = {}
        doomed: list[str] = []
        for entity in checkpoints:  # newest first within each namespace
            ns_part = entity.row_key.split("|")[1]
            if ns_part in kept:
                doomed.append(entity.row_key)
            else:
                kept[ns_part] = entity
        self._delete_rows(partition, doomed)
        kept_ids = {ns_part: str(entity["id"]) for ns_part, entity in kept.items()}

        def older(ns_part: str, checkpoint_id: str) -> bool:
            return ns_part in kept_ids and checkpoint_id < kept_ids[ns_part]

        writes = [row.row_key for row in self._raw.query_all(partition, prefix="w|")
                  if older(*row.row_key.split("|")[1:3])]
        self._delete_rows(partition, writes)
        runs = [row.row_key for row in self._raw.query_all(partition, prefix="r|")
                if older(row.row_key.split("|")[2], _uninverted(row.row_key.split("|")[3]))]
        self._delete_rows(partition, runs)
        self._collect_values(partition, values, kept.values(), now)
        return len(doomed)

    def _collect_values(self, partition: str, values: Iterable[Entity], checkpoints: Iterable[Entity],
                        now: float) -> None:
        """Delete the listed value rows no checkpoint refers to, once past the grace period."""
        referenced = set()
        for entity in checkpoints:
            ns_part = _part(str(entity.get("ns", "")))
            for channel, version in json.loads(str(entity["vals"])).items():
                referenced.add(_value_rk(ns_part, channel, version))
        stale = [row.row_key for row in values
                 if row.row_key not in referenced and float(row.get("at", 0.0)) < now - VALUE_GRACE_SECONDS]
        self._delete_rows(partition, stale)

    def delete_for_runs(self, tenant: str, run_ids: Sequence[str], *, now: float | None = None) -> int:
        """Delete every checkpoint (with its writes) that these runs wrote; returns how many.

        Found through the run index, without scanning the tenant. Values no
        remaining checkpoint refers to are deleted once past the grace period.
        NotFound when none of the runs wrote anything. Safe to repeat.
        """
        check_tenant(tenant)
        runs = list(dict.fromkeys(run_ids))
        if len(runs) > MAX_BULK_IDS:
            raise InvalidInput(f"at most {MAX_BULK_IDS} run ids per call")
        for run_id in runs:
            _check_text(run_id, "run_id")
        now = time.time() if now is None else now
        deleted, found = 0, False
        for run_id in runs:
            # The index rows stay: a checkpoint the run writes after this call is still found next time.
            for row in self._raw.query_all(_run_pk(tenant, run_id)):
                found = True
                deleted += self._delete_run_in_thread(_thread_pk(tenant, row.row_key), run_id, now)
        if runs and not found:
            raise NotFound("none of these runs wrote checkpoints")
        return deleted

    def _delete_run_in_thread(self, partition: str, run_id: str, now: float) -> int:
        deleted = 0
        namespaces: set[str] = set()
        for row in list(self._raw.query_all(partition, prefix=f"r|{_part(run_id)}|")):
            _, _, ns_part, inverted = row.row_key.split("|")
            checkpoint_rk = f"c|{ns_part}|{inverted}"
            try:
                checkpoint = self._raw.get(partition, checkpoint_rk)
            except NotFound:
                checkpoint = None
            # A checkpoint replaced by another run's put keeps its new run's rows.
            if checkpoint is None or checkpoint.get("run") == run_id:
                if checkpoint is not None:
                    self._delete_rows(partition, [checkpoint_rk])
                    deleted += 1
                self._delete_prefix(partition, _writes_prefix(ns_part, _uninverted(inverted)))
                namespaces.add(ns_part)
            self._delete_rows(partition, [row.row_key])
        for ns_part in namespaces:
            values = list(self._raw.query_all(partition, prefix=f"v|{ns_part}|"))
            remaining = self._table.query_all(partition, prefix=f"c|{ns_part}|")
            self._collect_values(partition, values, remaining, now)
        return deleted

    # -- queue command markers

    def _command_done(self, tenant: str, idempotency_key: str) -> str | None:
        try:
            return str(self._table.get(_commands_pk(tenant), _part(idempotency_key)).get("detail", ""))
        except NotFound:
            return None

    def _record_command(self, tenant: str, idempotency_key: str, op: str, detail: str) -> None:
        self._table.upsert(Entity(_commands_pk(tenant), _part(idempotency_key),
                                  {"op": op, "detail": detail[:1000], "at": time.time()}))


def _size(item: StoredCheckpoint) -> int:
    return (len(item.checkpoint.data) + sum(len(v.data) for v in item.values.values())
            + sum(len(w.value.data) for w in item.pending_writes))


def _unique_ids(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidInput(f"{what} must be a list of ids")
    unique = list(dict.fromkeys(values))
    if len(unique) > MAX_BULK_IDS:
        raise InvalidInput(f"at most {MAX_BULK_IDS} {what} per call")
    for value in unique:
        check_id(value, what)
    return unique


# --------------------------------------------------------------------------- queue commands


class DeleteThreadPayload(CommandPayload):
    """Delete a thread's checkpoints, values and writes."""

    thread_id: str = Field(description="The thread to delete.")


class DeleteRunsPayload(CommandPayload):
    """Delete every checkpoint these runs wrote."""

    run_ids: list[str] = Field(min_length=1, max_length=100, description="Run ids (metadata 'run_id').")


class CopyThreadPayload(CommandPayload):
    """Copy a thread's checkpoints, values and writes to another thread."""

    source_thread_id: str = Field(description="The thread to copy from.")
    target_thread_id: str = Field(description="The thread to copy to; rows it already has are kept.")


class PrunePayload(CommandPayload):
    """Prune threads: keep the latest checkpoint of each namespace, or delete them."""

    thread_ids: list[str] = Field(min_length=1, max_length=100, description="The threads to prune.")
    strategy: PruneStrategy = Field(default=PruneStrategy.KEEP_LATEST, description="keep_latest or delete.")


def _once(service: CheckpointService, tenant: str, key: str, op: str, action: Callable[[CheckpointService], str]) -> Outcome:
    """Apply a (naturally idempotent) maintenance op, recording that it was done under ``key``."""
    check_tenant(tenant)
    previous = service._command_done(tenant, key)
    if previous is not None:
        return Outcome("duplicate", previous)
    detail = action(service)
    service._record_command(tenant, key, op, detail)
    return Outcome("applied", detail)


def _apply_delete_thread(service: CheckpointService, tenant: str, payload: DeleteThreadPayload, key: str) -> Outcome:
    def action(service: CheckpointService) -> str:
        try:
            return f"thread {payload.thread_id}: {service.delete_thread(tenant, payload.thread_id)} checkpoints deleted"
        except NotFound:
            return f"thread {payload.thread_id} had no checkpoints"
    return _once(service, tenant, key, "checkpoints.delete_thread", action)


def _apply_delete_runs(service: CheckpointService, tenant: str, payload: DeleteRunsPayload, key: str) -> Outcome:
    def action(service: CheckpointService) -> str:
        try:
            return f"{service.delete_for_runs(tenant, payload.run_ids)} checkpoints of {len(payload.run_ids)} runs deleted"
        except NotFound:
            return "none of these runs wrote checkpoints"
    return _once(service, tenant, key, "checkpoints.delete_runs", action)


def _apply_copy_thread(service: CheckpointService, tenant: str, payload: CopyThreadPayload, key: str) -> Outcome:
    def action(service: CheckpointService) -> str:
        try:
            copied = service.copy_thread(tenant, payload.source_thread_id, payload.target_thread_id)
        except NotFound:
            # Nothing to copy now means nothing to copy on any redelivery: poison it with this reason.
            raise InvalidInput(f"thread {payload.source_thread_id} has no checkpoints to copy") from None
        return f"{copied} checkpoints copied to {payload.target_thread_id}"
    return _once(service, tenant, key, "checkpoints.copy_thread", action)


def _apply_prune(service: CheckpointService, tenant: str, payload: PrunePayload, key: str) -> Outcome:
    def action(service: CheckpointService) -> str:
        try:
            deleted = service.prune(tenant, payload.thread_ids, payload.strategy)
        except NotFound:
            return "none of these threads has checkpoints"
        return f"{deleted} checkpoints pruned ({payload.strategy.value})"
    return _once(service, tenant, key, "checkpoints.prune", action)


COMMANDS = (
    CommandOp("checkpoints.delete_thread", DeleteThreadPayload, _apply_delete_thread,
              "Delete a thread's checkpoints, values and pending writes."),
    CommandOp("checkpoints.delete_runs", DeleteRunsPayload, _apply_delete_runs,
              "Delete every checkpoint the given runs wrote."),
    CommandOp("checkpoints.copy_thread", CopyThreadPayload, _apply_copy_thread,
              "Copy a thread's checkpoints, values and pending writes to another thread."),
    CommandOp("checkpoints.prune", PrunePayload, _apply_prune,
              "Prune threads: keep the latest checkpoint per namespace, or delete them."),
)
