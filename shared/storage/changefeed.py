"""Change feed: every change's record written with the change, sequenced per tenant, gapless.

Writing (one call per change, in the domain's own atomic batch)::

    ops.append(feed.outbox_op(tenant, table.name, partition, ChangeRecord(
        domain="objects", op="put", target_type="object", target_id=key, actor=principal_actor,
        details={"version": version_id, "sha256": digest})))
    table.batch(ops)

Services write through :class:`shared.storage.mutate.Outbox`, which passes the current
:class:`~shared.request_context.RequestContext` as ``context``: a record without its own
actor or context gets the request's, whose JSON the context checks and encodes once
(:attr:`~shared.request_context.RequestContext.json_text`) for all its writes. Every
field is checked before anything is written, whichever way it came: names against
``[A-Za-z0-9._-]{1,64}``, ``target_id`` 1-1024 characters, ``actor``, ``context`` and
``details`` as client JSON (:mod:`shared.jsonvalues`: no lone surrogates, bounded depth,
finite numbers) within their byte limits (TooLarge, 413).

Layout.

* Outbox rows live in the changed partition of the domain's table, row key
  ``~outbox|<created, epoch µs, 16 digits>-<20 hex random>`` (the part after
  ``~outbox|`` is the record's id; the µs part never repeats or goes back within
  one :class:`ChangeFeed` object, as with monotonic ULIDs), so a partition's
  pending records are one prefix read, oldest first. Properties: ``fmt``,
  ``tenant``, ``domain``, ``op``, ``target_type``, ``target_id``, ``actor`` and ``context`` (JSON
  objects, ``context`` left out when empty), ``at`` (epoch s),
  ``audited`` and ``details`` (JSON, at most :data:`MAX_DETAILS_BYTES`: the
  change's canonical data or its hash; anything larger stays with the caller and
  the details name it).
* Hints say where pending outbox rows may be, so the sequencer never scans a
  table. They are a :class:`~shared.storage.due.DueIndex` with prefix
  ``!outbox|`` in the feed table: partition ``!outbox|<tenant>``, one entry per
  (table, partition) with ``table``, ``partition`` and ``at`` (when it was last
  filed), and the index's directory of tenants (``!outbox|~dir|00..15``).
* The feed: partition ``<tenant>`` of the feed table holds the counter row ``c``
  (``seq``, the newest sequence number, and ``at``, when it was sequenced), the
  feed rows ``s|<seq, 20 digits>`` (the record plus ``seq``, ``id``,
  ``sequenced_at``, ``table`` and ``partition``) and the dedupe rows
  ``o|<record id>`` (``seq``, ``at``, ``table``, ``partition``).

Guarantees.

* A record exists exactly when its change does: the outbox row is an insert in the
  change's own atomic batch.
* Hints are written before the change (write-before): :meth:`ChangeFeed.outbox_op`
  files the hint, then returns the operation. Each process remembers for
  ``grace / 2`` seconds that it filed a hint and does not rewrite it meanwhile, so
  a busy partition costs one extra write per process every ``grace / 2``. The
  sequencer removes a hint (clean-after) only when its partition has no outbox row
  and the hint was last filed more than ``grace`` seconds ago, conditional on the
  ETag it read before looking at the partition, so a hint a writer is relying on
  (filed less than ``grace / 2`` ago by that writer's clock) is never removed and a
  concurrent refiling keeps it. This holds while instance clocks agree and a write
  lands within ``grace / 2`` (300 s by default) of its :meth:`outbox_op` call;
  :meth:`ChangeFeed.repair` (a maintenance scan, one page per call) refiles hints
  for anything outside that rule.
* Sequencing is exactly once and gapless. One atomic batch in the tenant's feed
  partition writes the counter (create-only, or an update conditional on the ETag
  read), ``k`` feed rows (create-only) and ``k`` dedupe rows (create-only), ``k``
  at most :data:`MAX_RECORDS_PER_BATCH` (1 + 2k ≤ 100 operations; each record is
  at most about 12 KiB, so a batch stays far below 4 MiB). A second instance, or a
  rerun, either loses the counter race or finds the dedupe row: a record is never
  sequenced twice, and numbers 1..counter all exist.
* Order: each partition's records are sequenced in row-key (creation) order. Within
  one batch, records of several partitions are merged by (time, id); across
  batches there is no cross-partition time order.
* Fairness: :meth:`ChangeFeed.sequence` takes tenants round-robin (rotating start,
  from the hint directory), one batch of at most ``quantum`` records per turn, and
  repeats rounds while work remains and the :class:`~shared.storage.due.Budget`
  lasts (its ``items`` count records). Within a tenant, each turn visits the next
  page of at most :data:`HINTS_PER_TURN` hints.

Reading. :meth:`ChangeFeed.changes` pages a tenant's feed after a sequence
number with signed tokens bound to that tenant's feed partition (another tenant's
token, or an edited one, is InvalidInput: 400). :meth:`ChangeFeed.status` gives the
lag: the counter (newest number, when) and the pending outbox rows, counted when
asked through the tenant's hints (not a snapshot; exact up to
:data:`STATUS_COUNT_BOUND`, ``pending_exact`` says).

For the domains: outbox rows share the changed partition, so code that lists or
deletes a whole partition must leave ``~outbox|`` rows to the sequencer (skip
them; a partition delete can be an outbox record of its own).

Crash behaviour.

* Crash after the hint, before the change: a hint with nothing behind it, removed
  after ``grace``; nothing is sequenced.
* Crash after the feed batch, before the outbox rows are deleted: the next run
  tries to sequence them again, the create-only dedupe rows refuse that batch, the
  retry finds the dedupe rows and deletes those outbox rows (conditional on their
  ETag) without sequencing them.
* Dedupe rows are kept after their outbox row is gone, because an instance that
  read the outbox row earlier may still try to sequence it. :meth:`ChangeFeed.prune`
  removes dedupe rows sequenced more than ``horizon`` (1 hour) ago, first deleting
  their outbox row if a crash left it; a sequencing attempt takes seconds, far
  below the horizon.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.backends import Entity, Page, TableOp
from shared.errors import Busy, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.keys import check_tenant
from shared.request_context import RequestContext
from shared.storage.due import Budget, DueIndex
from shared.storage.retry import DEFAULT_POLICY, RetryPolicy, conditional, retry_races
from shared.storage.rows import json_field, json_value, stamped, stored_time

log = logging.getLogger(__name__)

#: Row format of outbox, feed, dedupe and counter rows (``fmt``).
CHANGEFEED_FMT = 1
OUTBOX_PREFIX = "~outbox|"
HINT_PREFIX = "!outbox|"
COUNTER_ROW = "c"
FEED_PREFIX = "s|"
DEDUPE_PREFIX = "o|"
_SEQ_DIGITS = 20
_TIME_DIGITS = 16
#: Counter + k feed rows + k dedupe rows in one batch of at most 100 operations.
MAX_RECORDS_PER_BATCH = 49
HINTS_PER_TURN = 32
MAX_DETAILS_BYTES = 8 * 1024
MAX_ACTOR_BYTES = 2 * 1024  # and of the context
MAX_TARGET_ID_CHARS = 1024
MAX_NAME_CHARS = 64
MAX_PAGE = 1000
#: How many pending outbox rows :meth:`ChangeFeed.status` counts before it stops (``pending_exact`` False).
STATUS_COUNT_BOUND = 10_000
#: Hints a process remembers filing; beyond this it forgets the expired ones (and then all).
_HINT_CACHE_SIZE = 10_000


class OutboxTable(Protocol):
    """What the feed needs of a domain's table (a TableStore or the offloading table over one)."""

    def get(self, partition_key: str, row_key: str) -> Entity: ...

    def query(self, partition_key: str, *, prefix: str | None = ..., start: str | None = ...,
              end: str | None = ..., limit: int = ..., continuation: str | None = ...) -> Page[Entity]: ...

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None) -> None: ...

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]: ...

    def scan(self, *, limit: int = ..., continuation: str | None = ...) -> Page[Entity]: ...


class FeedTable(OutboxTable, Protocol):
    """What the feed needs of its own table: also upserts, full queries and signed tokens."""

    def upsert(self, entity: Entity) -> str: ...

    def query_all(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]: ...

    def sign_continuation(self, partition_key: str, state: dict[str, Any], *, purpose: str) -> str: ...

    def verify_continuation(self, partition_key: str, token: str, *, purpose: str) -> dict[str, Any]: ...


_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME_CHARS}}}")


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidInput(f"{what} must be 1-{MAX_NAME_CHARS} ASCII letters, digits, '.', '_' or '-'")
    return value


def _json_object(value: object, what: str) -> str:
    """A record's own actor or context as stored (a JSON object): checked, InvalidInput or TooLarge."""
    return json_field(dict(value) if isinstance(value, Mapping) else value, what, max_bytes=MAX_ACTOR_BYTES,
                      require_object=True)


def _sized(text: str, what: str) -> str:
    """JSON text checked when it was made (a request context's), held to :data:`MAX_ACTOR_BYTES`."""
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > MAX_ACTOR_BYTES:
        raise TooLarge(f"{what} is {size} bytes as JSON; the limit is {MAX_ACTOR_BYTES}")
    return text


@dataclass(frozen=True)
class ChangeRecord:
    """What a domain says about one change; the tenant and time are added by :meth:`ChangeFeed.outbox_op`."""

    domain: str
    op: str
    target_type: str
    target_id: str
    #: Who made the change, opaque to the feed (e.g. from the API key: type, id, name, roles).
    actor: Mapping[str, Any] = field(default_factory=dict)
    #: Where the change came from, opaque to the feed (e.g. trace and span id, session, workflow).
    context: Mapping[str, Any] = field(default_factory=dict)
    #: False for high-volume writes the audit log skips; the feed carries them all.
    audited: bool = True
    #: Small JSON: the change's canonical data or its hash, or a reference to larger details.
    details: Any = None


@dataclass(frozen=True)
class Change:
    """One sequenced record, as :meth:`ChangeFeed.changes` reads it."""

    seq: int
    id: str
    tenant: str
    domain: str
    op: str
    target_type: str
    target_id: str
    actor: dict[str, Any]
    context: dict[str, Any]
    at: float
    audited: bool
    details: Any
    sequenced_at: float


@dataclass(frozen=True)
class FeedStatus:
    """Lag of one tenant's feed: the newest sequence number and when it was sequenced, and what waits."""

    tenant: str
    newest_seq: int
    newest_at: float | None
    #: Outbox rows not yet sequenced, counted when asked (not a snapshot); at most the bound.
    pending: int
    #: False when counting stopped at :data:`STATUS_COUNT_BOUND`, or a hint names a table this
    #: :class:`ChangeFeed` was not given (there are at least ``pending``).
    pending_exact: bool
    #: Partitions with a hint (pending rows, or none yet cleaned up).
    hinted_partitions: int


@dataclass
class SequenceReport:
    """What one :meth:`ChangeFeed.sequence` run did."""

    sequenced: dict[str, int] = field(default_factory=dict)
    #: Outbox rows found already sequenced (a crash after the feed batch) and deleted.
    recovered: int = 0
    hints_removed: int = 0
    #: Tenants left for the next run because another instance kept winning their counter.
    contended: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sequenced.values())


@dataclass
class _Pending:
    """Pending outbox rows read from one hinted partition in one turn."""

    hint: Entity
    table_name: str
    table: OutboxTable
    partition: str
    rows: list[Entity]


@dataclass
class _TenantTurn:
    tenant: str
    directory_row: Entity | None
    cursor: str | None = None
    visited: bool = False


def _seq_key(seq: int) -> str:
    return f"{FEED_PREFIX}{seq:0{_SEQ_DIGITS}d}"


def _tenant_rows(table: OutboxTable, partition: str, tenant: str, limit: int) -> list[Entity]:
    """Up to ``limit`` pending outbox rows of ``tenant`` in ``partition``, oldest first."""
    rows: list[Entity] = []
    token: str | None = None
    while True:
        page = table.query(partition, prefix=OUTBOX_PREFIX, limit=MAX_PAGE, continuation=token)
        for row in page.items:
            if row.get("tenant") == tenant:
                rows.append(row)
                if len(rows) == limit:
                    return rows
        token = page.continuation
        if token is None:
            return rows


def _record_id(row: Entity) -> str:
    return row.row_key[len(OUTBOX_PREFIX):]


class ChangeFeed:
    """Outbox writing, sequencing and reading over one feed table; see the module docstring.

    ``tables`` maps the names hints carry to the domain tables (as services see
    them) for the sequencer; writers need none. ``clock`` gives epoch seconds.
    """

    def __init__(self, feed: FeedTable, tables: Mapping[str, OutboxTable] | None = None, *,
                 quantum: int = MAX_RECORDS_PER_BATCH, grace: float = 600.0, horizon: float = 3600.0,
                 clock: Callable[[], float] = time.time, policy: RetryPolicy = DEFAULT_POLICY,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 1 <= quantum <= MAX_RECORDS_PER_BATCH:
            raise ValueError(f"quantum must be from 1 to {MAX_RECORDS_PER_BATCH}")
        self._feed = feed
        self._tables = dict(tables or {})
        self.quantum = quantum
        self.grace = grace
        self.horizon = horizon
        self._clock = clock
        self._policy = policy
        self._sleep = sleep
        self.hints = DueIndex(feed, HINT_PREFIX, quantum=HINTS_PER_TURN, grace=grace, clock=clock)
        self._hinted: dict[tuple[str, str, str], float] = {}  # (tenant, table, partition) -> filed at
        self._id_lock = threading.Lock()
        self._last_micros = 0

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _hint_item(table_name: str, partition: str) -> str:
        # Partition keys may be up to 1 KiB; the hint's row key must fit beside its prefix.
        if len(partition) <= 400 and len(partition.encode("utf-8")) <= 400:
            return f"{table_name}|{partition}"
        return f"{table_name}|~{hashlib.sha256(partition.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"

    def hint(self, tenant: str, table_name: str, partition: str) -> None:
        """File the hint for ``partition`` of ``table_name`` unless this process did within ``grace / 2``."""
        self._hint(check_tenant(tenant), table_name, partition)

    def _hint(self, tenant: str, table_name: str, partition: str) -> None:
        """:meth:`hint` for a tenant already checked."""
        now = self._clock()
        key = (tenant, table_name, partition)
        if now - self._hinted.get(key, float("-inf")) < self.grace / 2:
            return
        self.hints.file(tenant, self._hint_item(table_name, partition), 0,
                        {"table": table_name, "partition": partition, "at": now})
        if len(self._hinted) >= _HINT_CACHE_SIZE:
            self._hinted = {k: at for k, at in self._hinted.items() if now - at < self.grace / 2}
            if len(self._hinted) >= _HINT_CACHE_SIZE:
                self._hinted.clear()
        self._hinted[key] = now

    def outbox_op(self, tenant: str, table_name: str, partition: str, record: ChangeRecord, *,
                  context: RequestContext | None = None) -> TableOp:
        """File the hint (a write, before the change), then the outbox insert to add to the change's batch.

        Call it right before writing the batch (on each attempt of a retried write is
        fine: the hint is cached and each attempt's row is new). Bad fields are
        InvalidInput, oversized actor or details TooLarge, before anything is written.
        With ``context``, a record without an actor or context gets the context's
        (:attr:`RequestContext.json_text`: checked and encoded once per context).
        """
        check_tenant(tenant)
        entity = self._outbox_entity(tenant, partition, record, context)
        self._hint(tenant, _name(table_name, "table name"), partition)
        return TableOp.insert(entity)

    def _outbox_entity(self, tenant: str, partition: str, record: ChangeRecord,
                       context: RequestContext | None) -> Entity:
        if not isinstance(record, ChangeRecord):
            raise InvalidInput("expected a ChangeRecord")
        target_id = record.target_id
        if not isinstance(target_id, str) or not 0 < len(target_id) <= MAX_TARGET_ID_CHARS:
            raise InvalidInput(f"target_id must be 1-{MAX_TARGET_ID_CHARS} characters")
        if not isinstance(record.audited, bool):
            raise InvalidInput("audited must be true or false")
        if record.actor or context is None:
            actor = _json_object(record.actor, "actor")
        else:
            actor = _sized(context.actor.json_text, "actor")
        if record.context:
            context_text: str | None = _json_object(record.context, "context")
        else:
            context_text = None if context is None else _sized(context.json_text, "context")
        properties: dict[str, Any] = {
            "tenant": tenant,
            "domain": _name(record.domain, "domain"),
            "op": _name(record.op, "op"),
            "target_type": _name(record.target_type, "target_type"),
            "target_id": target_id,
            "actor": actor,
            "audited": record.audited,
        }
        if context_text is not None:
            properties["context"] = context_text
        if record.details is not None:
            properties["details"] = json_field(record.details, "details", max_bytes=MAX_DETAILS_BYTES)
        now = self._clock()
        properties["at"] = stored_time(now)
        with self._id_lock:  # monotonic per process, as ULIDs are: a coarse clock keeps the writes' order
            micros = max(int(now * 1_000_000), self._last_micros + 1)
            self._last_micros = micros
        record_id = f"{micros:0{_TIME_DIGITS}d}-{secrets.token_hex(10)}"
        return Entity(partition, OUTBOX_PREFIX + record_id, stamped(properties, CHANGEFEED_FMT))

    # ------------------------------------------------------------------ sequencing

    def sequence(self, tenant: str | None = None, budget: Budget | None = None) -> SequenceReport:
        """Move pending outbox rows into the feeds: of ``tenant``, or of every hinted tenant, fairly.

        Safe under redelivery and on several instances at once; see the module docstring.
        """
        budget = budget or Budget(seconds=30.0)
        report = SequenceReport()
        if tenant is not None:
            turns = deque([_TenantTurn(check_tenant(tenant), None)])
        else:
            turns = deque(_TenantTurn(row.row_key, row) for row in self.hints.tenants())
        while turns and not budget.exhausted:
            turn = turns.popleft()
            try:
                more = self._turn(turn, budget, report)
            except Busy:
                report.contended.append(turn.tenant)  # another instance is on it; next run
                continue
            if more:
                turns.append(turn)
        return report

    def _turn(self, turn: _TenantTurn, budget: Budget, report: SequenceReport) -> bool:
        """One batch of one tenant; whether the tenant may have more work."""
        now = self._clock()
        first_page = turn.cursor is None
        page = self._feed.query(self.hints.partition(turn.tenant), limit=HINTS_PER_TURN,
                                continuation=turn.cursor)
        turn.cursor = page.continuation
        if not page.items:
            if first_page and not turn.visited and turn.directory_row is not None:
                self._drop_directory_row_if_idle(turn.directory_row, now)
            return False
        turn.visited = True
        left = self.quantum if budget.items is None else min(self.quantum, budget.items - budget.spent)
        pending = self._read_pending(turn.tenant, page.items, left, now, report)
        if not pending:
            return page.continuation is not None
        full = any(len(p.rows) == left for p in pending)
        attempts = 0

        def attempt() -> tuple[list[tuple[_Pending, Entity]], list[tuple[_Pending, Entity]]]:
            nonlocal attempts
            attempts += 1
            return self._append(turn.tenant, pending, left, retrying=attempts > 1)

        sequenced, recovered = retry_races(attempt, what=f"the change feed of tenant {turn.tenant!r}",
                                           policy=self._policy, sleep=self._sleep)
        self._delete_outbox(sequenced + recovered)
        for _ in sequenced:
            budget.spend()
        if sequenced:
            report.sequenced[turn.tenant] = report.sequenced.get(turn.tenant, 0) + len(sequenced)
        report.recovered += len(recovered)
        return full or page.continuation is not None or sum(len(p.rows) for p in pending) > len(sequenced)

    def _read_pending(self, tenant: str, hints: list[Entity], limit: int, now: float,
                      report: SequenceReport) -> list[_Pending]:
        """The tenant's pending outbox rows, oldest first per hinted partition.

        Only rows that name this tenant are taken: a partition shared by several tenants
        (each files its own hint for it) never puts one tenant's records in another's feed.
        """
        pending: list[_Pending] = []
        for hint in hints:
            table_name = str(hint.get("table", ""))
            partition = str(hint.get("partition", ""))
            table = self._tables.get(table_name)
            if table is None:
                log.warning("change feed hint %s names table %r, which this sequencer was not given",
                            hint.row_key, table_name)
                continue
            rows = _tenant_rows(table, partition, tenant, limit)
            if rows:
                pending.append(_Pending(hint, table_name, table, partition, rows))
            elif now - float(hint.get("at", now)) >= self.grace:
                try:  # conditional on the ETag read before the partition was found empty
                    self._feed.delete(hint.partition_key, hint.row_key, if_match=hint.etag)
                    report.hints_removed += 1
                except (NotFound, PreconditionFailed):
                    pass  # refiled meanwhile, or another instance removed it
        return pending

    def _drop_directory_row_if_idle(self, row: Entity, now: float) -> None:
        self.hints.forget_if_empty(row, now)

    def _append(self, tenant: str, pending: list[_Pending], limit: int, *, retrying: bool
                ) -> tuple[list[tuple[_Pending, Entity]], list[tuple[_Pending, Entity]]]:
        """One attempt: merge, write counter + feed rows + dedupe rows atomically; LostRace on a race.

        The first attempt trusts the rows the turn read and checks no dedupe rows: the
        create-only dedupe inserts refuse the batch if any record was sequenced already.
        A retry reads the partitions again and looks up each candidate's dedupe row.
        """
        if retrying:
            for p in pending:
                p.rows = _tenant_rows(p.table, p.partition, tenant, limit)
        counter = self._find(tenant, COUNTER_ROW)
        chosen = self._merge(pending, limit)
        recovered: list[tuple[_Pending, Entity]] = []
        if retrying:
            fresh = []
            for p, row in chosen:
                if self._find(tenant, DEDUPE_PREFIX + _record_id(row)) is None:
                    fresh.append((p, row))
                else:
                    recovered.append((p, row))
            chosen = fresh
        if not chosen:
            return [], recovered
        seq = int(counter.get("seq", 0)) if counter is not None else 0
        now = stored_time(self._clock())
        ops: list[TableOp] = []
        for p, row in chosen:
            seq += 1
            record_id = _record_id(row)
            feed_row = {k: v for k, v in row.properties.items()}
            feed_row.update(seq=seq, id=record_id, sequenced_at=now, table=p.table_name, partition=p.partition)
            ops.append(TableOp.insert(Entity(tenant, _seq_key(seq), stamped(feed_row, CHANGEFEED_FMT))))
            ops.append(TableOp.insert(Entity(tenant, DEDUPE_PREFIX + record_id, stamped(
                {"seq": seq, "at": now, "table": p.table_name, "partition": p.partition}, CHANGEFEED_FMT))))
        counter_row = Entity(tenant, COUNTER_ROW, stamped({"seq": seq, "at": now}, CHANGEFEED_FMT))
        ops.insert(0, TableOp.insert(counter_row) if counter is None
                   else TableOp.update(counter_row, if_match=counter.etag))
        with conditional():
            self._feed.batch(ops)
        return chosen, recovered

    @staticmethod
    def _merge(pending: list[_Pending], limit: int) -> list[tuple[_Pending, Entity]]:
        """Up to ``limit`` rows, each partition's in its own order, partitions merged by (time, id)."""
        heap: list[tuple[float, str, int, int]] = []
        for n, p in enumerate(pending):
            if p.rows:
                heap.append((float(p.rows[0].get("at", 0.0)), _record_id(p.rows[0]), n, 0))
        heapq.heapify(heap)
        chosen: list[tuple[_Pending, Entity]] = []
        while heap and len(chosen) < limit:
            _, _, n, i = heapq.heappop(heap)
            p = pending[n]
            chosen.append((p, p.rows[i]))
            if i + 1 < len(p.rows):
                nxt = p.rows[i + 1]
                heapq.heappush(heap, (float(nxt.get("at", 0.0)), _record_id(nxt), n, i + 1))
        return chosen

    def _find(self, partition: str, row_key: str) -> Entity | None:
        try:
            return self._feed.get(partition, row_key)
        except NotFound:
            return None

    @staticmethod
    def _delete_outbox(rows: list[tuple[_Pending, Entity]]) -> None:
        """Delete sequenced outbox rows, conditional on their ETag; gone already is fine."""
        groups: dict[tuple[int, str], list[tuple[_Pending, Entity]]] = {}
        for p, row in rows:
            groups.setdefault((id(p.table), p.partition), []).append((p, row))
        for group in groups.values():
            table = group[0][0].table
            try:
                table.batch([TableOp.delete(row.partition_key, row.row_key, if_match=row.etag) for _, row in group])
            except (NotFound, PreconditionFailed, Busy):
                for _, row in group:  # one was gone (another instance): the rest one by one
                    try:
                        table.delete(row.partition_key, row.row_key, if_match=row.etag)
                    except (NotFound, PreconditionFailed):
                        pass

    def repair(self, table_name: str, *, limit: int = MAX_PAGE, continuation: str | None = None) -> str | None:
        """Maintenance: scan one page of ``table_name`` and file a hint for each partition with outbox rows.

        For the case the hint rule cannot cover (a write that landed more than
        ``grace / 2`` after its :meth:`outbox_op`, after its hint was cleaned). Returns
        the token of the next page (None at the end); a timer resumes from it.
        """
        table = self._tables[table_name]
        page = table.scan(limit=limit, continuation=continuation)
        for row in page.items:
            if row.row_key.startswith(OUTBOX_PREFIX):
                self._hinted.pop((str(row.get("tenant")), table_name, row.partition_key), None)
                self.hint(str(row.get("tenant")), table_name, row.partition_key)
        return page.continuation

    # ------------------------------------------------------------------ pruning

    def prune(self, tenant: str, budget: Budget | None = None) -> int:
        """Remove dedupe rows sequenced more than ``horizon`` ago (their outbox row first, if a crash left it)."""
        check_tenant(tenant)
        budget = budget or Budget(seconds=30.0)
        now = self._clock()
        removed = 0
        for row in self._feed.query_all(tenant, prefix=DEDUPE_PREFIX):
            if budget.exhausted:
                break
            budget.spend()
            if now - float(row.get("at", now)) < self.horizon:
                continue
            table = self._tables.get(str(row.get("table", "")))
            if table is None:
                continue  # its outbox row cannot be checked here: keep it
            outbox_key = OUTBOX_PREFIX + row.row_key[len(DEDUPE_PREFIX):]
            try:
                left = table.get(str(row["partition"]), outbox_key)
                table.delete(left.partition_key, left.row_key, if_match=left.etag)
            except (NotFound, PreconditionFailed):
                pass
            try:
                self._feed.delete(tenant, row.row_key, if_match=row.etag)
                removed += 1
            except (NotFound, PreconditionFailed):
                pass
        return removed

    # ------------------------------------------------------------------ reading

    def changes(self, tenant: str, *, after: int = 0, limit: int = 100,
                continuation: str | None = None) -> Page[Change]:
        """Sequenced changes of ``tenant`` with ``seq > after``, in order, ``limit`` per page.

        The continuation token (signed, bound to this tenant's feed) carries the
        position; given one, ``after`` is ignored. A token of another tenant or an
        edited one is InvalidInput (400).
        """
        check_tenant(tenant)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}")
        if continuation is not None:
            position: object = self._feed.verify_continuation(tenant, continuation, purpose="changes").get("after")
            after = position if isinstance(position, int) else -1
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 10 ** _SEQ_DIGITS - 1:
            raise InvalidInput("after must be a non-negative integer sequence number")
        page = self._feed.query(tenant, start=_seq_key(after + 1), end="s}", limit=limit)  # '}' follows '|'
        items = [self._change(row) for row in page.items]
        token = None
        if items and (len(items) == limit or page.continuation is not None):
            token = self._feed.sign_continuation(tenant, {"after": items[-1].seq}, purpose="changes")
        return Page(items, token)

    @staticmethod
    def _change(row: Entity) -> Change:
        return Change(seq=int(row.get("seq")), id=str(row["id"]), tenant=str(row["tenant"]), domain=str(row["domain"]),
                      op=str(row["op"]), target_type=str(row["target_type"]), target_id=str(row["target_id"]),
                      actor=json_value(row.get("actor"), {}),
                      context=json_value(row.get("context"), {}), at=float(row.get("at")), audited=bool(row["audited"]),
                      details=json_value(row.get("details")), sequenced_at=float(row.get("sequenced_at")))

    def status(self, tenant: str) -> FeedStatus:
        """The newest sequence number and its time, and the pending outbox rows (counted up to a bound)."""
        check_tenant(tenant)
        counter = self._find(tenant, COUNTER_ROW)
        pending = 0
        hinted = 0
        exact = True
        for hint in self._feed.query_all(self.hints.partition(tenant)):
            hinted += 1
            table = self._tables.get(str(hint.get("table", "")))
            if table is None:
                exact = False  # a table this object was not given: its rows are not counted
            if table is None or not exact:
                continue
            token: str | None = None
            while True:
                room = STATUS_COUNT_BOUND - pending
                if room <= 0:
                    exact = False
                    break
                page = table.query(str(hint["partition"]), prefix=OUTBOX_PREFIX, limit=min(room, MAX_PAGE),
                                   continuation=token)
                pending += sum(1 for row in page.items if row.get("tenant") == tenant)
                token = page.continuation
                if token is None:
                    break
        return FeedStatus(tenant=tenant, newest_seq=int(counter.get("seq", 0)) if counter else 0,
                          newest_at=float(counter.get("at")) if counter else None,
                          pending=pending, pending_exact=exact, hinted_partitions=hinted)


def canonical_digest(value: Any) -> str:
    """SHA-256 (hex) of ``value`` as canonical JSON (sorted keys, compact): a small ``details`` for a large change."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
