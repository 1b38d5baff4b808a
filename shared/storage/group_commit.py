"""Group commit: writes to one partition from several threads of a process, grouped into one batch.

Some clients write to the same partition from several threads at once (LangGraph
stores a step's pending writes and the next checkpoint concurrently). Sent as they
come, those writes cost one round trip each and contend for the store's write lock
on that partition. With :class:`GroupCommit`, writers of one partition take turns:
the writer whose turn it is takes the writes queued behind it along, as long as
they fit one atomic batch (operation count, estimated wire size, no row twice), and
writes them with ``together``. Each caller returns once its own rows are durable,
with its own result.

Guarantees and crash behaviour:

* ``together`` writes the group as ONE atomic batch: every write of the group
  is applied, or none is. When it reports failure (one write meets an existing
  row, or fails on its own), every write of the group is applied on its own with
  ``alone``, so one write's failure never becomes another's: each caller gets its
  own result or its own exception.
* A write that cannot be grouped (``alone`` is always correct) loses nothing; the
  grouping is an optimisation within one process, not a protocol between
  processes, and holds no state after its writers return (per-partition slots are
  weakly referenced).
* A writer may *linger* (``commit(..., linger=seconds)``): it waits, queued, up to that
  long for another writer of the partition to take it along, then writes alone; while
  a commit of the partition is in flight it waits on, up to :data:`MAX_LINGER_ROUNDS`
  lingers in all (the writer that will carry it may be waiting for that commit). The
  wait is on an event; whoever carries it settles it and wakes it.
* If the committing thread is interrupted (KeyboardInterrupt, a bug in a callback)
  before a write of its group is settled, that writer gets
  :class:`~shared.errors.Busy` (send again), never a hang.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shared.backends.base import MAX_BATCH_OPERATIONS
from shared.errors import Busy

W = TypeVar("W")
R = TypeVar("R")

#: A lingering write waits at most this many times its linger, and longer than one linger
#: only while another commit of its partition is in flight.
MAX_LINGER_ROUNDS = 20
#: Room left under the 4 MiB batch limit for estimates of the wire size of a group.
BATCH_WIRE_BUDGET = 3 * 1024 * 1024


@dataclass(eq=False)
class _Pending(Generic[W, R]):
    write: W
    row_keys: frozenset[str]
    size: int
    result: R | None = None
    error: BaseException | None = None
    settled: bool = False
    done: bool = field(default=False)
    #: Set once settled, for a writer that lingers (waits to be carried along by another).
    event: threading.Event | None = None


class _Slot(Generic[W, R]):
    """The writers of one partition in this process: one commits at a time, taking the queued along."""

    def __init__(self) -> None:
        self.commit_lock = threading.Lock()
        self.queue: list[_Pending[W, R]] = []


class GroupCommit(Generic[W, R]):
    """Grouped writes into one partition; see the module docstring.

    ``together(writes)`` writes several writes of one partition as one atomic batch
    and returns their results in order, or None when the batch failed (nothing was
    written). ``alone(write)`` writes one write by itself and returns its result or
    raises. Limits: ``max_operations`` rows and ``max_bytes`` of estimated wire size
    per group.
    """

    def __init__(self, *, together: Callable[[Sequence[W]], Sequence[R] | None], alone: Callable[[W], R],
                 max_operations: int = MAX_BATCH_OPERATIONS, max_bytes: int = BATCH_WIRE_BUDGET) -> None:
        self._together = together
        self._alone = alone
        self.max_operations = max_operations
        self.max_bytes = max_bytes
        self._slots: weakref.WeakValueDictionary[str, _Slot[W, R]] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        #: Makes the event a lingering writer waits on (tests hook it to know a writer is queued).
        self.make_event: Callable[[], threading.Event] = threading.Event

    def fits(self, operations: int, size: int) -> bool:
        """Whether a write of this many rows and bytes fits one batch (else write it in parts yourself)."""
        return operations <= self.max_operations and size <= self.max_bytes

    def commit(self, partition: str, write: W, *, row_keys: Sequence[str], size: int, linger: float = 0.0) -> R:
        """Write ``write`` (rows ``row_keys`` of ``partition``, ``size`` bytes), grouped with others waiting.

        ``linger``: seconds to wait, queued, for another writer of the partition to carry this
        write along in its batch (one batch instead of two) before writing it alone. For a
        write that is usually followed at once by another (LangGraph's pending writes, then
        the next checkpoint); it delays only this writer, never the one that carries it.
        """
        return self.commit_carried(partition, write, row_keys=row_keys, size=size, linger=linger)[0]

    def commit_carried(self, partition: str, write: W, *, row_keys: Sequence[str], size: int,
                       linger: float = 0.0) -> tuple[R, bool]:
        """:meth:`commit`, and whether a lingering write was carried along by another writer."""
        request: _Pending[W, R] = _Pending(write, frozenset(row_keys), size)
        carried = False
        if linger > 0:
            request.event = self.make_event()
        with self._lock:
            slot = self._slots.get(partition)
            if slot is None:
                slot = _Slot()
                self._slots[partition] = slot
            slot.queue.append(request)
        if request.event is not None:
            # Settled by a writer that took it along, or time to write it alone; while a commit
            # of the partition is in flight (the write that will carry it often waits for that
            # one: LangGraph chains its puts), the wait goes on, up to MAX_LINGER_ROUNDS lingers.
            for _ in range(MAX_LINGER_ROUNDS):
                carried = request.event.wait(linger)
                if carried or not slot.commit_lock.locked():
                    break
        with slot.commit_lock:
            if not request.settled:
                with self._lock:
                    group = self._take_group(slot.queue, request)
                self._commit_group(group)
        if request.error is not None:
            raise request.error
        return request.result, carried  # type: ignore[return-value]  # settled without an error: a result

    def _take_group(self, queue: list[_Pending[W, R]], own: _Pending[W, R]) -> list[_Pending[W, R]]:
        """``own`` and the queued writes that fit with it in one batch (no row twice), off the queue."""
        queue.remove(own)
        group, count, size = [own], len(own.row_keys), own.size
        keys = set(own.row_keys)
        for other in list(queue):
            if (count + len(other.row_keys) <= self.max_operations and size + other.size <= self.max_bytes
                    and not keys & other.row_keys):
                queue.remove(other)
                group.append(other)
                count, size = count + len(other.row_keys), size + other.size
                keys |= other.row_keys
        return group

    def _commit_group(self, group: list[_Pending[W, R]]) -> None:
        """Commit the group as one atomic batch; if that fails, each write on its own."""
        try:
            if len(group) > 1:
                results = self._together([pending.write for pending in group])
                if results is not None:
                    for pending, result in zip(group, results, strict=True):
                        pending.result, pending.done = result, True
            for pending in group:
                if not pending.done:
                    try:
                        pending.result, pending.done = self._alone(pending.write), True
                    except BaseException as exc:  # noqa: BLE001 - raised again in the writer's own thread
                        pending.error = exc
        finally:
            for pending in group:
                if not pending.done and pending.error is None:
                    pending.error = Busy("the group commit carrying this write was interrupted; send it again")
                pending.settled = True
                if pending.event is not None:
                    pending.event.set()
