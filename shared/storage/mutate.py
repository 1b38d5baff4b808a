"""Read, decide, write: the one optimistic-concurrency mutation every domain uses.

    outcome = mutate(
        table, partition=pk, what=f"session {sid!r}",
        read=lambda: find(table, pk, "session"),
        decide=lambda row: Change([TableOp.update(new_row(row), if_match=row.etag)], result),
        idempotency=Idempotency.of(key, "sessions.end", {...}),
    )

Each attempt:

1. with an idempotency key, look for its marker: a replay returns the stored
   result (``outcome.replayed``) without reading anything else; the key with a
   different request is refused (422);
2. ``read()`` the current state (rows with their ETags);
3. ``decide(state)``: pure, returns the operations to write and the result, or
   raises a permanent error (not found, illegal transition, a client's stale
   If-Match) that ends the mutation;
4. write the operations, the change record (an outbox row of
   :mod:`shared.storage.changefeed`, when ``record`` is given) and the marker as one
   atomic batch on ``partition``, the operations conditional on the ETags read.

A decision without operations (nothing to change) writes nothing: no marker and no
change record; nor does a replay. The change record's actor and context are those
of :func:`shared.request_context.current` when the batch is written.

A write that loses a race (ETag moved, row created or deleted meanwhile,
transaction conflict) starts the next attempt under :mod:`shared.storage.retry`;
out of attempts, :class:`~shared.errors.Busy`. Crash behaviour: the batch is
atomic, so a crash leaves either nothing or the change with its marker and its
change record.

Cost of the change record: one more entity in the batch, so a change of one row
becomes a batch of two (on DynamoDB a ``TransactWriteItems`` of two items, 2 WCU
each per KB, instead of one plain write of 1 WCU), and a hint write in the feed
table at most every ``grace / 2`` per partition and process
(:meth:`~shared.storage.changefeed.ChangeFeed.outbox_op`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from shared import request_context
from shared.backends import Entity, OpKind, TableOp
from shared.errors import NotFound
from shared.storage.changefeed import ChangeFeed, ChangeRecord
from shared.storage.idempotency import Idempotency, lookup, marker_op
from shared.storage.retry import DEFAULT_POLICY, RetryPolicy, conditional, retry_races

S = TypeVar("S")
R = TypeVar("R")


class Rows(Protocol):
    """What mutate needs of a table (a TableStore or the offloading table over one)."""

    def get(self, partition_key: str, row_key: str) -> Entity: ...

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]: ...

    def insert(self, entity: Entity) -> str: ...

    def upsert(self, entity: Entity) -> str: ...

    def update(self, entity: Entity, *, if_match: str | None = None) -> str: ...

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None) -> None: ...


@dataclass(frozen=True)
class Change(Generic[R]):
    """A decision: the operations to write (all on the mutation's partition) and the result."""

    ops: Sequence[TableOp]
    result: R
    #: The status a replay of this request answers (201 for a creation, 200 otherwise).
    status: int = 200


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """The result, whether it was replayed from an earlier application, and its status."""

    result: R
    replayed: bool = False
    status: int = 200


@dataclass(frozen=True)
class Codec(Generic[R]):
    """How a result is kept in an idempotency marker (JSON) and brought back."""

    encode: Callable[[R], Any] = field(default=lambda result: result)
    decode: Callable[[Any], R] = field(default=lambda stored: stored)


@dataclass(frozen=True)
class Outbox:
    """Where one tenant's change records go: the change feed, and the table the changes are in.

    ``feed`` None records nothing: only the outbox benchmark's baseline runs that way.
    """

    feed: ChangeFeed | None
    tenant: str
    table: str

    def ops(self, partition: str, record: ChangeRecord | None) -> list[TableOp]:
        """The outbox insert of ``record`` for the batch that changes ``partition`` (none without a record).

        Files the feed's hint first (a write); the actor and context, unless the record
        names them, are :func:`shared.request_context.current`'s now (its JSON is
        made once per request context, not per write).
        """
        if self.feed is None or record is None:
            return []
        return [self.feed.outbox_op(self.tenant, self.table, partition, record, context=request_context.current())]

    def record_alone(self, rows: Rows, partition: str, record: ChangeRecord) -> None:
        """Write ``record`` on its own into ``partition`` of ``rows``: for an event that changes nothing
        there to batch it with (an audited read). Errors propagate, so the caller fails closed."""
        ops = self.ops(partition, record)
        if ops:  # none when the stores record nothing (the outbox benchmark's baseline)
            write(rows, ops)


#: A mutation's change record: given, or made from the result (None: no record).
RecordOf = ChangeRecord | Callable[[R], ChangeRecord | None]


def find(table: Rows, partition: str, row: str) -> Entity | None:
    """The row, or None when it does not exist."""
    try:
        return table.get(partition, row)
    except NotFound:
        return None


def write(table: Rows, ops: Sequence[TableOp]) -> None:
    """Write ``ops`` atomically: one operation as a plain write (on DynamoDB a transaction costs
    twice as much), several as one batch."""
    if len(ops) != 1 or (ops[0].kind is OpKind.DELETE and ops[0].entity.offloaded):
        table.batch(ops)  # a delete that names its offloaded blobs goes where they are deleted too
        return
    [op] = ops
    if op.kind is OpKind.INSERT:
        table.insert(op.entity)
    elif op.kind is OpKind.UPSERT:
        table.upsert(op.entity)
    elif op.kind is OpKind.UPDATE:
        table.update(op.entity, if_match=op.if_match)
    else:
        table.delete(op.entity.partition_key, op.entity.row_key, if_match=op.if_match)


def mutate(table: Rows, *, partition: str, read: Callable[[], S], decide: Callable[[S], Change[R]], what: str,
           idempotency: Idempotency | None = None, codec: Codec[R] | None = None,
           outbox: Outbox | None = None, record: RecordOf[R] | None = None,
           policy: RetryPolicy = DEFAULT_POLICY, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.time) -> Outcome[R]:
    """Apply ``decide(read())`` atomically on ``partition``; see the module docstring.

    ``record`` (with ``outbox``): the change record written with a decision that has
    operations, as given or made from the decision's result.
    """
    codec = codec or Codec()
    if record is not None and outbox is None:
        raise ValueError("a change record needs an outbox")

    def attempt() -> Outcome[R]:
        if idempotency is not None:
            replay = lookup(table, partition, idempotency)
            if replay is not None:
                return Outcome(codec.decode(replay.result), replayed=True, status=replay.status)
        change = decide(read())
        ops = list(change.ops)
        if ops and outbox is not None and record is not None:
            ops += outbox.ops(partition, record(change.result) if callable(record) else record)
        if idempotency is not None:
            ops.append(marker_op(partition, idempotency, codec.encode(change.result), status=change.status,
                                 clock=clock))
        if ops:
            with conditional():
                write(table, ops)
        return Outcome(change.result, replayed=False, status=change.status)

    return retry_races(attempt, what=what, policy=policy, sleep=sleep)
