"""Test harness: one run of the audit sequencer in a fresh process that SIGKILLs itself at a chosen point.

Usage (by tests/domains/audit/test_crash.py)::

    python -m tests.domains.audit.crash_child <tenant> <point> <k>

Settings come from the environment (:meth:`Settings.from_env`), as a Functions host
hands them to a worker, so the child reaches the very emulator, bucket and data
directory the test uses. The child runs ``AuditService(stores).sequence_changes(tenant)``
with counting wrappers around the stores the service is given, and on the ``k``-th
call (1-based, counted in this process only) at ``point`` it writes one line
``killed at <point> <k>: <detail>`` to stderr and sends itself SIGKILL: no handler,
``finally`` or ``atexit`` runs, exactly as ``kill -9`` from outside.

Points:

* ``feed-batch``: right after the k-th feed batch (counter, feed and dedupe rows)
  was written, before its outbox rows are deleted.
* ``outbox-delete``: right after the k-th batch of outbox deletes (deletes are
  grouped per table and partition, so later groups are still pending).
* ``entry-rows``: right before the k-th batch of audit entry rows is written.
* ``log-write``: right before the k-th blob write under the tenant's log prefix
  (entry bundles, tiles and the checkpoint, in the order the log writes them).
* ``checkpoint``: right before the k-th checkpoint write (every tile and bundle of
  that append is written).
* ``after-checkpoint``: right after the k-th checkpoint write returned, before the
  sequencer moves its cursor and releases its lease.

The wrappers only count and kill; the product code runs unchanged (no hooks in it).
Exit status 3: ``sequence_changes`` returned without reaching the point (printed).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from shared import names
from shared.backends import TableOp
from shared.backends.base import BlobProperties, OpKind
from shared.config import Settings
from shared.domains.audit import AuditService
from shared.domains.audit import _layout as layout
from shared.domains.audit.service import SEQUENCE_BUDGET_SECONDS, log_prefix
from shared.storage.changefeed import COUNTER_ROW, OUTBOX_PREFIX, ChangeFeed
from shared.storage.due import Budget
from shared.stores import Stores

POINTS = ("feed-batch", "outbox-delete", "entry-rows", "log-write", "checkpoint", "after-checkpoint")
NOT_REACHED = 3


class _KillSwitch:
    """Counts calls at the chosen point and kills this process on the k-th."""

    def __init__(self, point: str, k: int) -> None:
        self.point, self.k = point, k
        self.counts: dict[str, int] = {}

    def reached(self, point: str, detail: str) -> None:
        self.counts[point] = self.counts.get(point, 0) + 1
        if point == self.point and self.counts[point] == self.k:
            sys.stderr.write(f"killed at {point} {self.k}: {detail}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class _Proxy:
    """Everything not overridden goes to the wrapped store."""

    def __init__(self, inner: Any, switch: _KillSwitch) -> None:
        self._inner, self._switch = inner, switch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _LogBlobs(_Proxy):
    """The service's blob store: counts writes under the tenant's log prefix."""

    def __init__(self, inner: Any, switch: _KillSwitch, prefix: str) -> None:
        super().__init__(inner, switch)
        self._prefix = prefix

    def put(self, key: str, data: bytes, **kwargs: Any) -> BlobProperties:
        relative = key.removeprefix(self._prefix)
        in_log = key.startswith(self._prefix)
        if in_log:
            self._switch.reached("log-write", relative)
            if relative == "checkpoint":
                self._switch.reached("checkpoint", relative)
        props: BlobProperties = self._inner.put(key, data, **kwargs)
        if in_log and relative == "checkpoint":
            self._switch.reached("after-checkpoint", relative)
        return props


class _AuditTable(_Proxy):
    """The service's own table: counts batches that write entry rows."""

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        rows = [op.entity.row_key for op in operations if op.entity.row_key.startswith(layout.ENTRY_PREFIX)]
        if rows:
            self._switch.reached("entry-rows", f"{len(rows)} rows from {rows[0]}")
        result: list[str | None] = self._inner.batch(operations)
        return result


class _FeedTable(_Proxy):
    """The feed's table: counts batches that move the counter (one per sequenced batch)."""

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        result: list[str | None] = self._inner.batch(operations)
        if any(op.entity.row_key == COUNTER_ROW for op in operations):
            self._switch.reached("feed-batch", f"{len(operations)} operations written")
        return result


class _OutboxTable(_Proxy):
    """A domain table as the sequencer sees it: counts batches of outbox deletes."""

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        result: list[str | None] = self._inner.batch(operations)
        if operations and all(op.kind is OpKind.DELETE and op.entity.row_key.startswith(OUTBOX_PREFIX)
                              for op in operations):
            self._switch.reached("outbox-delete", f"{len(operations)} outbox rows of {self._inner.name} deleted")
        return result


def _feed(stores: Stores, switch: _KillSwitch) -> ChangeFeed:
    """The feed :attr:`Stores.changes` builds, over counting wrappers of the same tables."""
    tables: Mapping[str, Any] = {name: _OutboxTable(stores.table(name), switch) for name in names.TABLES}
    return ChangeFeed(_FeedTable(stores.backend.table(names.TABLE_CHANGES), switch), tables)  # type: ignore[arg-type]


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or argv[1] not in POINTS or not argv[2].isdigit() or int(argv[2]) < 1:
        sys.stderr.write(f"usage: python -m tests.domains.audit.crash_child <tenant> <{'|'.join(POINTS)}> <k>=1..\n")
        return 2
    tenant, point, k = argv[0], argv[1], int(argv[2])
    switch = _KillSwitch(point, k)
    stores = Stores.from_settings(Settings.from_env())
    service = AuditService(stores, feed=_feed(stores, switch))
    service.blobs = _LogBlobs(service.blobs, switch, log_prefix(tenant))  # type: ignore[assignment]
    service.table = _AuditTable(service.table, switch)  # type: ignore[assignment]
    # A budget whose clock stands still: the run stops only at the kill point or when done, never on time.
    result = service.sequence_changes(tenant, Budget(seconds=SEQUENCE_BUDGET_SECONDS, clock=lambda: 0.0))
    stores.close()
    sys.stderr.write(f"not killed: {point} {k} was not reached (calls counted: {switch.counts}; run: {result})\n")
    return NOT_REACHED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
