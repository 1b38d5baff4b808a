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
4. write the operations and the marker as one atomic batch on ``partition``,
   the operations conditional on the ETags read.

A write that loses a race (ETag moved, row created or deleted meanwhile,
transaction conflict) starts the next attempt under :mod:`shared.storage.retry`;
out of attempts, :class:`~shared.errors.Busy`. Crash behaviour: the batch is
atomic, so a crash leaves either nothing or the change with its marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from shared.backends import Entity, OpKind, TableOp
from shared.errors import NotFound
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
           policy: RetryPolicy = DEFAULT_POLICY, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.time) -> Outcome[R]:
    """Apply ``decide(read())`` atomically on ``partition``; see the module docstring."""
    codec = codec or Codec()

    def attempt() -> Outcome[R]:
        if idempotency is not None:
            replay = lookup(table, partition, idempotency)
            if replay is not None:
                return Outcome(codec.decode(replay.result), replayed=True, status=replay.status)
        change = decide(read())
        ops = list(change.ops)
        if idempotency is not None:
            ops.append(marker_op(partition, idempotency, codec.encode(change.result), status=change.status,
                                 clock=clock))
        if ops:
            with conditional():
                write(table, ops)
        return Outcome(change.result, replayed=False, status=change.status)

    return retry_races(attempt, what=what, policy=policy, sleep=sleep)
