"""Due indexes: "do this for that item at that time", fair across tenants.

Session idle expiry, workflow timeouts and schedules, object expiry and
retention all need the same thing: find what is due now without scanning, keep
working while work remains within a time budget, and never let one tenant's
backlog delay another tenant's work beyond one timer run.

Layout, in the table the index is given (``prefix`` is e.g. ``"!idle|"``; ``!``
cannot start a tenant, ``~`` cannot appear in one):

* partition ``<prefix><tenant>``: one entry per filed item, row key
  ``<due, epoch s, 12 digits>|<item>``, so a tenant's due entries are a range read
  up to now, oldest first;
* partitions ``<prefix>~dir|00`` to ``~dir|15``: the directory, one row per tenant
  that has (or recently had) entries, row key the tenant, in the shard a hash of
  the tenant picks. ``at`` is when it was last filed under.

Writes spread: each tenant's entries go to its own partition, and the directory
row is an unconditional upsert. Reading is round-robin: every tenant with due
work gets up to ``quantum`` entries per round, rounds repeat while entries remain
and the budget lasts, and the starting tenant rotates from run to run, so a tenant
with 10,000 due entries takes its turn like everyone else.

Crash behaviour: filing upserts the directory row before the entry, so an entry
always has its tenant listed. An entry is removed only by its handler
(:meth:`DueIndex.done`) after the work is done, so an interrupted run resumes where it
stopped and handlers must be idempotent (a second timer instance may handle the same
entry; handlers decide with a conditional write). A directory row is removed only
when its tenant has no entries and it was last filed under more than ``grace``
seconds ago, conditional on the ETag read before the emptiness check, so a
concurrent filing keeps it.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.backends import Entity, Page
from shared.errors import InvalidInput, NotFound, PreconditionFailed

DIRECTORY_SHARDS = 16
#: Row format of entries and directory rows (``fmt``); the properties a caller files keep their names.
DUE_FMT = 1
_DUE_DIGITS = 12


def shard_of(text: str, shards: int) -> int:
    """The one shard hash every index uses: SHA-256 of the text, first 4 bytes, modulo ``shards``."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") % shards


@dataclass
class Budget:
    """How much one timer run may do: ``seconds`` of wall time (and at most ``items`` entries)."""

    seconds: float
    items: int | None = None
    clock: Callable[[], float] = time.monotonic
    _deadline: float = field(init=False)
    _spent: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.items is not None and (not isinstance(self.items, int) or isinstance(self.items, bool)
                                       or self.items < 1):
            raise InvalidInput("limit must be a positive integer")
        self._deadline = self.clock() + self.seconds

    def spend(self) -> None:
        self._spent += 1

    @property
    def spent(self) -> int:
        return self._spent

    @property
    def exhausted(self) -> bool:
        return (self.items is not None and self._spent >= self.items) or self.clock() >= self._deadline


@dataclass(frozen=True)
class DueEntry:
    """One due item: whose, which, when, and the properties it was filed with."""

    tenant: str
    item: str
    due: int
    properties: dict[str, Any]
    row_key: str


class IndexTable(Protocol):
    """What a due index needs of a table: a TableStore, or the offloading table over one."""

    def upsert(self, entity: Entity) -> str: ...

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None) -> None: ...

    def query(self, partition_key: str, *, start: str | None = ..., end: str | None = ...,
              limit: int = ...) -> Page[Entity]: ...

    def query_all(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]: ...


class DueIndex:
    """A due index under ``prefix`` in ``table``; see the module docstring."""

    def __init__(self, table: IndexTable, prefix: str, *, quantum: int = 50, grace: float = 600.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not prefix.startswith("!"):
            raise ValueError("a due index prefix starts with '!' so it cannot be a tenant's partition")
        self._table = table
        self.prefix = prefix
        self.quantum = quantum
        self.grace = grace
        self._clock = clock
        self._listed: dict[str, float] = {}  # tenant -> when this process last wrote its directory row

    # -- keys

    def partition(self, tenant: str) -> str:
        return f"{self.prefix}{tenant}"

    def _directory(self, tenant: str) -> str:
        return f"{self.prefix}~dir|{shard_of(tenant, DIRECTORY_SHARDS):02d}"

    @staticmethod
    def row_key(due: int, item: str) -> str:
        return f"{max(0, int(due)):0{_DUE_DIGITS}d}|{item}"

    # -- writing

    def file(self, tenant: str, item: str, due: int, properties: dict[str, Any] | None = None) -> None:
        """File ``item`` of ``tenant`` as due at ``due`` (epoch s). Filing the same (item, due) again is a no-op."""
        now = self._clock()
        # The directory row is rewritten at most every grace/2 seconds per process: a row this
        # process wrote that recently has an ``at`` no remover deletes, so skipping is safe and
        # a busy tenant does not rewrite one row on every filing.
        if now - self._listed.get(tenant, float("-inf")) >= self.grace / 2:
            self._table.upsert(Entity(self._directory(tenant), tenant, {"fmt": DUE_FMT, "at": now}))
            self._listed[tenant] = now
        self._table.upsert(Entity(self.partition(tenant), self.row_key(due, item),
                                  {"fmt": DUE_FMT, **(properties or {})}))  # a caller's own fmt wins

    def done(self, entry: DueEntry) -> None:
        """Remove a handled entry (absent already is fine: another instance handled it)."""
        self.remove(entry.tenant, entry.item, entry.due)

    def remove(self, tenant: str, item: str, due: int) -> None:
        try:
            self._table.delete(self.partition(tenant), self.row_key(due, item))
        except NotFound:
            pass

    # -- reading

    def tenants(self) -> list[Entity]:
        """Directory rows of every tenant with entries, in a rotating order."""
        rows = [row for shard in range(DIRECTORY_SHARDS)
                for row in self._table.query_all(f"{self.prefix}~dir|{shard:02d}")]
        rows.sort(key=lambda row: row.row_key)
        if rows:
            turn = int(self._clock() // 60) % len(rows)
            rows = rows[turn:] + rows[:turn]
        return rows

    def due(self, now: float, budget: Budget) -> Iterator[DueEntry]:
        """Entries due at ``now`` or before, round-robin over tenants, while ``budget`` lasts.

        Each yielded entry counts against the budget; the caller handles it and
        calls :meth:`done`. An entry the caller leaves in place is not yielded again
        in the same run.
        """
        end = f"{int(now) + 1:0{_DUE_DIGITS}d}|"  # every row key of a due at or before now sorts below it
        queue: deque[tuple[Entity, str | None]] = deque((row, None) for row in self.tenants())
        while queue and not budget.exhausted:
            row, after = queue.popleft()
            tenant = row.row_key
            # The least row key above ``after``: keys hold no control characters, so ' ' is the next one.
            start = f"{after} " if after is not None else None
            page = self._table.query(self.partition(tenant), start=start, end=end, limit=self.quantum)
            if not page.items:
                if after is None:
                    self.forget_if_empty(row, now)
                continue
            last = None
            for entity in page.items:
                if budget.exhausted:
                    return
                due_text, _, item = entity.row_key.partition("|")
                budget.spend()
                last = entity.row_key
                yield DueEntry(tenant, item, int(due_text), dict(entity.properties), entity.row_key)
            if page.continuation is not None or len(page.items) == self.quantum:
                queue.append((row, last))

    def forget_if_empty(self, row: Entity, now: float) -> None:
        """Drop a tenant's directory row once it has no entries and nothing was filed for ``grace`` seconds."""
        if now - float(row.get("at", now)) < self.grace:
            return
        if self._table.query(self.partition(row.row_key), limit=1).items:
            return
        try:
            self._table.delete(row.partition_key, row.row_key, if_match=row.etag)
            self._listed.pop(row.row_key, None)
        except (NotFound, PreconditionFailed):
            pass  # filed under again meanwhile (the ETag moved), or another instance dropped it
