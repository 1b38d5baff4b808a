"""shared.storage.changefeed on every backend: outbox rows written with the change, sequenced
gapless and exactly once per tenant (crashes, two instances), hints cleaned, fair, paged, isolated."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from shared.backends import Backend, Entity, Page, TableOp, TableStore
from shared.errors import AlreadyExists, InvalidInput, TooLarge
from shared.request_context import Actor, RequestContext
from shared.storage.changefeed import (
    DEDUPE_PREFIX,
    MAX_RECORDS_PER_BATCH,
    OUTBOX_PREFIX,
    Change,
    ChangeFeed,
    ChangeRecord,
    canonical_digest,
)
from shared.storage.due import Budget


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Crash(Exception):
    """A process dying at this point (injected)."""


class CrashingTable:
    """The real table, except that the ``after``-th call (1-based) of one of ``methods`` raises Crash:
    before the call reaches the table, or, with ``applied``, after the table has done it."""

    def __init__(self, inner: TableStore, methods: set[str], after: int = 1, *, applied: bool = False) -> None:
        self._inner = inner
        self._methods = methods
        self._left = after
        self._applied = applied
        self.name = inner.name

    def _count(self, method: str) -> None:
        if method in self._methods and not self._applied:
            self._left -= 1
            if self._left == 0:
                raise Crash(f"crash at {method}")

    def _counted_after(self, method: str) -> None:
        if method in self._methods and self._applied:
            self._left -= 1
            if self._left == 0:
                raise Crash(f"crash after {method}")

    def upsert(self, entity: Entity) -> str:
        return self._inner.upsert(entity)

    def query_all(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]:
        return self._inner.query_all(partition_key, **kwargs)

    def sign_continuation(self, partition_key: str, state: dict[str, Any], *, purpose: str) -> str:
        return self._inner.sign_continuation(partition_key, state, purpose=purpose)

    def verify_continuation(self, partition_key: str, token: str, *, purpose: str) -> dict[str, Any]:
        return self._inner.verify_continuation(partition_key, token, purpose=purpose)

    def get(self, partition_key: str, row_key: str) -> Entity:
        self._count("get")
        try:
            return self._inner.get(partition_key, row_key)
        finally:
            self._counted_after("get")

    def query(self, partition_key: str, **kwargs: Any) -> Page[Entity]:
        self._count("query")
        return self._inner.query(partition_key, **kwargs)

    def scan(self, **kwargs: Any) -> Page[Entity]:
        return self._inner.scan(**kwargs)

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None) -> None:
        self._count("delete")
        self._inner.delete(partition_key, row_key, if_match=if_match)

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        self._count("batch")
        etags = self._inner.batch(operations)
        self._counted_after("batch")
        return etags


def _budget(items: int | None = None, seconds: float = 600.0) -> Budget:
    return Budget(seconds=seconds, items=items, clock=Clock(0.0))


def _new_table(backend: Backend) -> TableStore:
    name = "t" + uuid.uuid4().hex[:12]
    backend.ensure(tables=[name])
    return backend.table(name)


@pytest.fixture
def feed_table(backend: Backend) -> TableStore:
    return _new_table(backend)


@pytest.fixture
def domain_table(backend: Backend) -> TableStore:
    return _new_table(backend)


def _record(n: int | str, **overrides: Any) -> ChangeRecord:
    values: dict[str, Any] = {"domain": "objects", "op": "put", "target_type": "object", "target_id": f"key-{n}",
                              "actor": {"type": "user", "id": "u1"}, "details": {"n": n}}
    values.update(overrides)
    return ChangeRecord(**values)


def _change(feed: ChangeFeed, table: TableStore, tenant: str, partition: str, n: int | str) -> str:
    """A domain change with its record in one atomic batch; the record's id."""
    op = feed.outbox_op(tenant, table.name, partition, _record(n))
    table.batch([TableOp.upsert(Entity(partition, f"d|{n}", {"v": str(n)})), op])
    return op.entity.row_key[len(OUTBOX_PREFIX):]


def _all_changes(feed: ChangeFeed, tenant: str, limit: int = 7) -> list[Change]:
    out: list[Change] = []
    token: str | None = None
    while True:
        page = feed.changes(tenant, limit=limit, continuation=token)
        out.extend(page.items)
        token = page.continuation
        if token is None:
            return out


def _outbox(table: TableStore, partition: str) -> list[Entity]:
    return list(table.query_all(partition, prefix=OUTBOX_PREFIX))


# ----------------------------------------------------------------------------- writing and reading


def test_one_writer_changes_are_sequenced_in_order_with_their_record(feed_table, domain_table) -> None:
    clock = Clock()
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock)
    ids = []
    for n in range(3):
        clock.now += 1
        ids.append(_change(feed, domain_table, "acme", "acme|p", n))
    assert len(_outbox(domain_table, "acme|p")) == 3
    status = feed.status("acme")
    assert (status.newest_seq, status.pending, status.pending_exact, status.hinted_partitions) == (0, 3, True, 1)

    report = feed.sequence(budget=_budget())
    assert report.sequenced == {"acme": 3}
    changes = feed.changes("acme").items
    assert [c.seq for c in changes] == [1, 2, 3]
    assert [c.id for c in changes] == ids
    first = changes[0]
    assert (first.tenant, first.domain, first.op, first.target_type, first.target_id) == (
        "acme", "objects", "put", "object", "key-0")
    assert first.actor == {"type": "user", "id": "u1"} and first.details == {"n": 0} and first.audited is True
    assert first.at == clock.now - 2 and first.sequenced_at == clock.now
    assert _outbox(domain_table, "acme|p") == []
    assert domain_table.get("acme|p", "d|2")["v"] == "2"  # the change itself is untouched
    status = feed.status("acme")
    assert (status.newest_seq, status.newest_at, status.pending) == (3, clock.now, 0)
    assert feed.changes("acme", after=2).items[0].seq == 3 and feed.changes("acme", after=3).items == []
    blind = ChangeFeed(feed_table).status("acme")  # not given the table: says its count is not exact
    assert (blind.pending, blind.pending_exact, blind.hinted_partitions) == (0, False, 1)
    assert feed.sequence(budget=_budget()).total == 0  # nothing twice


def test_a_failed_change_batch_leaves_no_record(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    domain_table.insert(Entity("acme|p", "d|1", {"v": "old"}))
    op = feed.outbox_op("acme", domain_table.name, "acme|p", _record(1))
    with pytest.raises(AlreadyExists):
        domain_table.batch([TableOp.insert(Entity("acme|p", "d|1", {"v": "new"})), op])  # the change fails
    assert _outbox(domain_table, "acme|p") == []
    feed.sequence(budget=_budget())
    assert feed.changes("acme").items == [] and feed.status("acme").newest_seq == 0


def test_many_partitions_and_tables_each_partition_in_its_order_tenants_apart(backend, feed_table) -> None:
    tables = [_new_table(backend), _new_table(backend)]
    clock = Clock()
    feed = ChangeFeed(feed_table, {t.name: t for t in tables}, clock=clock)
    written: dict[str, dict[tuple[str, str], list[str]]] = {"a": {}, "b": {}}
    for n in range(6):
        for tenant in ("a", "b"):
            for t in tables:
                for part in ("p1", "p2"):
                    clock.now += 0.5
                    partition = f"{tenant}|{part}"
                    written[tenant].setdefault((t.name, partition), []).append(
                        _change(feed, t, tenant, partition, f"{part}-{n}"))
    feed.sequence(budget=_budget())
    for tenant, other in (("a", "b"), ("b", "a")):
        changes = _all_changes(feed, tenant)
        assert [c.seq for c in changes] == list(range(1, 25))
        assert {c.tenant for c in changes} == {tenant}
        ids = [c.id for c in changes]
        assert len(set(ids)) == 24
        for expected in written[tenant].values():
            assert [i for i in ids if i in expected] == expected  # each partition's own order
        assert not set(ids) & {i for ids_ in written[other].values() for i in ids_}
        assert changes == sorted(changes, key=lambda c: (c.at, c.id))  # one batch: merged by time


def test_a_partition_shared_by_two_tenants_feeds_each_tenant_only_its_own_records(feed_table, domain_table) -> None:
    # Platform tables (API keys) keep several tenants' rows in one partition.
    clock = Clock()
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock)
    for n in range(3):
        clock.now += 1
        _change(feed, domain_table, "acme", "shared", f"a{n}")
        _change(feed, domain_table, "globex", "shared", f"g{n}")
    assert (feed.status("acme").pending, feed.status("globex").pending) == (3, 3)
    feed.sequence("acme", budget=_budget())
    assert [c.target_id for c in _all_changes(feed, "acme")] == ["key-a0", "key-a1", "key-a2"]
    assert _all_changes(feed, "globex") == []
    assert {row.get("tenant") for row in _outbox(domain_table, "shared")} == {"globex"}
    feed.sequence(budget=_budget())
    assert [c.target_id for c in _all_changes(feed, "globex")] == ["key-g0", "key-g1", "key-g2"]
    assert [c.seq for c in _all_changes(feed, "acme")] == [1, 2, 3]
    assert _outbox(domain_table, "shared") == []


def test_a_page_token_works_only_for_its_own_tenant(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    for n in range(5):
        _change(feed, domain_table, "a", "a|p", n)
    _change(feed, domain_table, "b", "b|p", 0)
    feed.sequence(budget=_budget())
    page = feed.changes("a", limit=2)
    assert [c.seq for c in page.items] == [1, 2] and page.continuation
    assert [c.seq for c in feed.changes("a", limit=2, continuation=page.continuation).items] == [3, 4]
    with pytest.raises(InvalidInput):
        feed.changes("b", continuation=page.continuation)
    with pytest.raises(InvalidInput):
        feed.changes("a", continuation=page.continuation[:-2] + "AA")
    assert [c.id for c in feed.changes("b").items] != [c.id for c in page.items]
    assert [c.tenant for c in feed.changes("b").items] == ["b"]


@pytest.mark.parametrize("call", [
    lambda f: f.changes("a", limit=0), lambda f: f.changes("a", limit=1001), lambda f: f.changes("a", after=-1),
    lambda f: f.changes("A"), lambda f: f.changes("!outbox|a"), lambda f: f.status("a b"),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, domain="ob jects")),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, actor=["not", "an", "object"])),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, target_id="")),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, audited="yes")),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, details=float("nan"))),
    # names: exactly 1-64 of A-Z a-z 0-9 . _ - (no trailing newline, no non-ASCII letter or digit)
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, op="put\n")),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, op="p" * 65)),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, target_type="obj\u00e9ct")),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, domain="\u0663")),  # an Arabic-Indic digit
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, domain="")),
    lambda f: f.outbox_op("a", "t\n", "a|p", _record(1)),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, actor={}), context=RequestContext(Actor("user", "\ud800"))),
    lambda f: f.outbox_op("a", "t", "a|p", _record(1, context={}),
                          context=RequestContext(ids={"session_id": "s\udfff"})),
])
def test_bad_input_is_refused_before_anything_is_written(feed_table, call) -> None:
    feed = ChangeFeed(feed_table, clock=Clock())
    with pytest.raises(InvalidInput):
        call(feed)
    assert feed.status("a").hinted_partitions == 0


def test_names_of_up_to_64_allowed_characters_are_accepted(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    name = "Az09._-" + "x" * 57
    domain_table.batch([feed.outbox_op("a", domain_table.name, "a|p", _record(1, domain=name, op="a", target_type="Z"))])
    feed.sequence(budget=_budget())
    [change] = feed.changes("a").items
    assert (change.domain, change.op, change.target_type) == (name, "a", "Z")


def test_the_request_context_fills_in_what_the_record_leaves_out(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    context = RequestContext(Actor("user", "u9", "Ad\u00e4", ("ops",)), source="http", trace_id="a" * 32,
                             span_id="b" * 16, ids={"session_id": "s1"})
    domain_table.batch([
        feed.outbox_op("a", domain_table.name, "a|p", _record(1, actor={}), context=context),
        feed.outbox_op("a", domain_table.name, "a|p", _record(2, context={"job": "j1"}), context=context),
        feed.outbox_op("a", domain_table.name, "a|p", _record(3, actor={}, context={})),
    ])
    feed.sequence(budget=_budget())
    first, second, third = feed.changes("a").items
    from_context = {"source": "http", "trace_id": "a" * 32, "span_id": "b" * 16, "session_id": "s1"}
    assert first.actor == {"type": "user", "id": "u9", "name": "Ad\u00e4", "roles": ["ops"]}
    assert first.context == from_context
    assert second.actor == {"type": "user", "id": "u1"} and second.context == {"job": "j1"}  # the record's own
    assert third.actor == {} and third.context == {}  # no request context given: only what the record says


def test_an_oversized_request_context_is_too_large_before_anything_is_written(feed_table) -> None:
    feed = ChangeFeed(feed_table, clock=Clock())
    with pytest.raises(TooLarge):
        feed.outbox_op("a", "t", "a|p", _record(1, actor={}), context=RequestContext(Actor("user", "u", "\u00e9" * 1100)))
    with pytest.raises(TooLarge):
        feed.outbox_op("a", "t", "a|p", _record(1), context=RequestContext(ids={"k": "v" * 2100}))
    assert feed.status("a").hinted_partitions == 0


def test_large_details_are_too_large_and_a_digest_fits(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    big = {"text": "x" * 10_000}
    with pytest.raises(TooLarge):
        feed.outbox_op("a", domain_table.name, "a|p", _record(1, details=big))
    op = feed.outbox_op("a", domain_table.name, "a|p", _record(1, details={"sha256": canonical_digest(big)}))
    domain_table.batch([op])
    feed.sequence(budget=_budget())
    assert feed.changes("a").items[0].details == {"sha256": canonical_digest(big)}


def test_not_audited_records_are_in_the_feed_marked_so(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    domain_table.batch([feed.outbox_op("a", domain_table.name, "a|p", _record(1, audited=False, details=None))])
    feed.sequence(budget=_budget())
    [change] = feed.changes("a").items
    assert change.audited is False and change.details is None


# ----------------------------------------------------------------------------- crashes


def test_crash_after_the_feed_batch_before_the_outbox_deletes_sequences_nothing_twice(feed_table, domain_table
                                                                                     ) -> None:
    clock = Clock()
    writer = ChangeFeed(feed_table, clock=clock)
    ids = [_change(writer, domain_table, "acme", "acme|p", n) for n in range(5)]
    crashing = CrashingTable(domain_table, {"batch", "delete"})  # the first outbox delete dies
    with pytest.raises(Crash):
        ChangeFeed(feed_table, {domain_table.name: crashing}, clock=clock).sequence(budget=_budget())
    assert feed_table.get("acme", "c")["seq"] == 5 and len(_outbox(domain_table, "acme|p")) == 5

    rerun = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock,
                       sleep=lambda seconds: None)
    report = rerun.sequence(budget=_budget())
    assert report.total == 0 and report.recovered == 5
    assert [c.id for c in _all_changes(rerun, "acme")] == ids and feed_table.get("acme", "c")["seq"] == 5
    assert _outbox(domain_table, "acme|p") == []
    assert rerun.status("acme").pending == 0

    ids.append(_change(writer, domain_table, "acme", "acme|p", 5))  # and the feed goes on from there
    rerun.sequence(budget=_budget())
    assert [c.seq for c in _all_changes(rerun, "acme")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("method, applied", [("get", False), ("batch", False), ("batch", True)],
                         ids=["at-counter-read", "before-feed-batch", "after-feed-batch"])
def test_a_crash_inside_the_sequencer_loses_and_doubles_nothing(feed_table, domain_table, method, applied) -> None:
    clock = Clock()
    writer = ChangeFeed(feed_table, clock=clock)
    ids = [_change(writer, domain_table, "acme", f"acme|p{n % 2}", n) for n in range(6)]
    crashing_feed = CrashingTable(feed_table, {method}, applied=applied)
    sequencer = ChangeFeed(crashing_feed, {domain_table.name: domain_table}, clock=clock)
    with pytest.raises(Crash):
        sequencer.sequence(budget=_budget())
    again = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock, sleep=lambda seconds: None)
    again.sequence(budget=_budget())
    changes = _all_changes(again, "acme")
    assert [c.seq for c in changes] == list(range(1, 7)) and sorted(c.id for c in changes) == sorted(ids)


def test_a_hint_without_a_change_is_cleaned_after_the_grace_and_nothing_is_sequenced(feed_table, domain_table
                                                                                     ) -> None:
    clock = Clock()
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, grace=600, clock=clock)
    feed.outbox_op("acme", domain_table.name, "acme|p", _record(1))  # hint written ...
    assert feed.status("acme").hinted_partitions == 1  # ... before the batch, which never comes (crash)
    clock.now += 599
    assert feed.sequence(budget=_budget()).hints_removed == 0  # a writer may still be relying on it
    assert feed.status("acme").hinted_partitions == 1
    clock.now += 2
    report = feed.sequence(budget=_budget())
    assert report.hints_removed == 1 and report.total == 0
    assert feed.status("acme").hinted_partitions == 0 and feed.status("acme").newest_seq == 0
    clock.now += 601
    feed.sequence(budget=_budget())
    assert feed.hints.tenants() == []  # the directory row goes too, in a later run


def test_a_writer_refiles_its_hint_before_a_sequencer_could_remove_it(feed_table, domain_table) -> None:
    clock = Clock()
    writer = ChangeFeed(feed_table, clock=clock, grace=600)
    sequencer = ChangeFeed(feed_table, {domain_table.name: domain_table}, grace=600, clock=clock)
    _change(writer, domain_table, "acme", "acme|p", 0)
    sequencer.sequence(budget=_budget())
    clock.now += 299  # cached: no hint write
    _change(writer, domain_table, "acme", "acme|p", 1)
    clock.now += 302  # hint last filed 601 s ago, but its partition has a row: kept, row sequenced
    sequencer.sequence(budget=_budget())
    assert sequencer.status("acme").hinted_partitions == 1
    clock.now += 1  # the writer's cache has expired: it files again, so the hint stays
    _change(writer, domain_table, "acme", "acme|p", 2)
    assert [e.properties["at"] for e in feed_table.query_all("!outbox|acme")] == [clock.now]
    sequencer.sequence(budget=_budget())
    assert [c.seq for c in _all_changes(sequencer, "acme")] == [1, 2, 3]


def test_repair_refiles_a_lost_hint_so_the_row_is_sequenced(feed_table, domain_table) -> None:
    clock = Clock()
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock)
    record_id = _change(feed, domain_table, "acme", "acme|p", 0)
    for hint in list(feed_table.query_all("!outbox|acme")):  # a write that landed after its hint was cleaned
        feed_table.delete(hint.partition_key, hint.row_key)
    assert feed.sequence(budget=_budget()).total == 0
    token = feed.repair(domain_table.name, limit=1)
    while token is not None:
        token = feed.repair(domain_table.name, limit=1, continuation=token)
    feed.sequence(budget=_budget())
    assert [c.id for c in feed.changes("acme").items] == [record_id]


def test_prune_drops_old_dedupe_rows_and_a_leftover_outbox_row(feed_table, domain_table) -> None:
    clock = Clock()
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock, horizon=3600)
    for n in range(3):
        _change(feed, domain_table, "acme", "acme|p", n)
    with pytest.raises(Crash):
        ChangeFeed(feed_table, {domain_table.name: CrashingTable(domain_table, {"batch", "delete"})},
                   clock=clock).sequence(budget=_budget())
    assert len(list(feed_table.query_all("acme", prefix=DEDUPE_PREFIX))) == 3
    assert feed.prune("acme") == 0  # young: kept
    clock.now += 3601
    assert feed.prune("acme") == 3
    assert list(feed_table.query_all("acme", prefix=DEDUPE_PREFIX)) == [] and _outbox(domain_table, "acme|p") == []
    assert feed.sequence(budget=_budget()).total == 0 and feed.status("acme").newest_seq == 3


# ----------------------------------------------------------------------------- fairness and lag


def _pending_rows(feed: ChangeFeed, table: TableStore, tenant: str, partition: str, count: int) -> None:
    """``count`` outbox rows, written one by one: moto copies every table for each transaction."""
    for n in range(count):
        table.insert(feed.outbox_op(tenant, table.name, partition, _record(n)).entity)


def test_a_backlog_tenant_does_not_starve_another_within_one_run(feed_table, domain_table) -> None:
    clock = Clock()
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=clock, quantum=20)
    _pending_rows(feed, domain_table, "busy", "busy|p", 1000)
    _change(feed, domain_table, "quiet", "quiet|p", 0)
    status = feed.status("busy")
    assert (status.pending, status.pending_exact) == (1000, True)
    report = feed.sequence(budget=_budget(items=45))
    assert report.sequenced == {"busy": 44, "quiet": 1}  # quiet in the first round; the budget holds
    assert feed.status("quiet").newest_seq == 1
    status = feed.status("busy")
    assert status.newest_seq == report.sequenced["busy"] and status.pending == 1000 - status.newest_seq
    assert status.newest_at == clock.now


def test_the_budget_bounds_a_run_and_the_next_runs_continue_gapless(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    _pending_rows(feed, domain_table, "acme", "acme|p", 130)
    runs = []
    while feed.status("acme").pending:
        runs.append(feed.sequence(budget=_budget(items=50)).total)
    assert runs == [50, 50, 30]
    assert [c.seq for c in _all_changes(feed, "acme", limit=1000)] == list(range(1, 131))


def test_one_tenant_only_when_asked(feed_table, domain_table) -> None:
    feed = ChangeFeed(feed_table, {domain_table.name: domain_table}, clock=Clock())
    _change(feed, domain_table, "a", "a|p", 0)
    _change(feed, domain_table, "b", "b|p", 0)
    assert feed.sequence("a", _budget()).sequenced == {"a": 1}
    assert feed.status("b").pending == 1


def test_batches_stay_within_the_operation_limit(feed_table, domain_table) -> None:
    assert 1 + 2 * MAX_RECORDS_PER_BATCH <= 100
    with pytest.raises(ValueError):
        ChangeFeed(feed_table, quantum=MAX_RECORDS_PER_BATCH + 1)


# ----------------------------------------------------------------------------- concurrency


def test_eight_writers_and_two_sequencers_give_a_gapless_feed_with_every_record_once(backend, feed_table
                                                                                    ) -> None:
    tables = [_new_table(backend), _new_table(backend)]
    per_writer = 12
    written: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    writers_done = threading.Event()

    def write(w: int) -> None:
        try:
            feed = ChangeFeed(feed_table)  # each writer is a process of its own
            for n in range(per_writer):
                table = tables[n % 2]
                record_id = _change(feed, table, "acme", f"acme|p{(w + n) % 4}", f"{w}-{n}")
                with lock:
                    written.append(record_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def sequence() -> None:
        try:
            feed = ChangeFeed(feed_table, {t.name: t for t in tables})
            while True:
                done = writers_done.is_set()  # read before the run: that run sees every write
                report = feed.sequence(budget=Budget(seconds=5.0))
                if done and report.total == 0 and not report.contended and feed.status("acme").pending == 0:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    writer_threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    sequencers = [threading.Thread(target=sequence) for _ in range(2)]
    for thread in [*writer_threads, *sequencers]:
        thread.start()
    for thread in writer_threads:
        thread.join(600)  # a guard against a hang only: a machine under load can take minutes
    writers_done.set()
    for thread in sequencers:
        thread.join(600)
    assert not errors, errors
    assert not any(t.is_alive() for t in [*writer_threads, *sequencers])
    reader = ChangeFeed(feed_table)
    changes = _all_changes(reader, "acme", limit=50)
    assert [c.seq for c in changes] == list(range(1, 8 * per_writer + 1))
    assert sorted(c.id for c in changes) == sorted(written)
    for table in tables:
        for part in range(4):
            assert _outbox(table, f"acme|p{part}") == []
