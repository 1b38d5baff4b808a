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

    def fits(self, operations: int, size: int) -> bool:
        """Whether a write of this many rows and bytes fits one batch (else write it in parts yourself)."""
        return operations <= self.max_operations and size <= self.max_bytes

    def commit(self, partition: str, write: W, *, row_keys: Sequence[str], size: int) -> R:
        """Write ``write`` (rows ``row_keys`` of ``partition``, ``size`` bytes), grouped with others waiting."""
        request: _Pending[W, R] = _Pending(write, frozenset(row_keys), size)
        with self._lock:
            slot = self._slots.get(partition)
            if slot is None:
                slot = _Slot()
                self._slots[partition] = slot
            slot.queue.append(request)
        with slot.commit_lock:
            if not request.settled:
                with self._lock:
                    group = self._take_group(slot.queue, request)
                self._commit_group(group)
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]  # settled without an error: a result

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
