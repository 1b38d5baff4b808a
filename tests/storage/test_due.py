"""shared.storage.due on every backend: due order, fairness across tenants, resumability."""

from __future__ import annotations

import pytest

from shared.backends import TableStore
from shared.storage.due import Budget, DueIndex, shard_of


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _budget(items: int | None = None) -> Budget:
    ticks = Clock(0.0)
    return Budget(seconds=60.0, items=items, clock=ticks)


def test_only_due_entries_come_back_oldest_first_with_their_properties(table: TableStore) -> None:
    clock = Clock()
    index = DueIndex(table, "!due|", clock=clock)
    index.file("acme", "wf-2", 200, {"kind": "timeout"})
    index.file("acme", "wf-1", 100, {"kind": "timeout"})
    index.file("acme", "wf-3", 300)
    entries = list(index.due(200, _budget()))
    assert [(e.tenant, e.item, e.due) for e in entries] == [("acme", "wf-1", 100), ("acme", "wf-2", 200)]
    assert entries[0].properties == {"kind": "timeout", "fmt": 1}
    index.file("acme", "own-format", 50, {"fmt": 3})
    assert [e.properties for e in index.due(60, _budget())] == [{"fmt": 3}]


def test_handled_entries_are_gone_and_unhandled_ones_come_back_next_run(table: TableStore) -> None:
    index = DueIndex(table, "!due|", clock=Clock())
    for n in range(5):
        index.file("acme", f"w{n}", 100 + n)
    first_run = list(index.due(1000, _budget(items=3)))
    assert [e.item for e in first_run] == ["w0", "w1", "w2"]
    for entry in first_run[:2]:
        index.done(entry)
    index.done(first_run[0])  # done twice (another instance) is fine
    second_run = [e.item for e in index.due(1000, _budget())]
    assert second_run == ["w2", "w3", "w4"]


def test_a_backlog_tenant_does_not_delay_another_tenant_beyond_one_run(table: TableStore) -> None:
    index = DueIndex(table, "!due|", quantum=10, clock=Clock())
    for n in range(120):
        index.file("busy", f"item-{n:04d}", 100)
    index.file("quiet", "only", 101)
    seen = [(e.tenant, e.item) for e in index.due(1000, _budget(items=25))]
    assert ("quiet", "only") in seen
    assert len(seen) == 25


def test_rounds_continue_while_work_remains_and_the_budget_lasts(table: TableStore) -> None:
    index = DueIndex(table, "!due|", quantum=7, clock=Clock())
    for n in range(30):
        index.file("acme", f"i{n:03d}", 100)
    seen = list(index.due(1000, _budget()))
    assert len(seen) == 30 and len({e.item for e in seen}) == 30


def test_an_exhausted_time_budget_stops_the_run() -> None:
    ticks = Clock(0.0)
    budget = Budget(seconds=5.0, clock=ticks)
    assert not budget.exhausted
    ticks.now = 5.0
    assert budget.exhausted


def test_directory_rows_of_drained_tenants_are_dropped_after_the_grace(table: TableStore) -> None:
    clock = Clock(1000.0)
    index = DueIndex(table, "!due|", grace=600, clock=clock)
    index.file("acme", "w", 100)
    for entry in index.due(1000, _budget()):
        index.done(entry)
    list(index.due(1000, _budget()))
    assert [row.row_key for row in index.tenants()] == ["acme"]  # within the grace: kept
    clock.now = 2000.0
    list(index.due(2000, _budget()))
    assert index.tenants() == []
    index.file("acme", "again", 2100)
    assert [e.item for e in index.due(2100, _budget())] == ["again"]


def test_prefix_must_not_be_a_tenant_partition(table: TableStore) -> None:
    with pytest.raises(ValueError):
        DueIndex(table, "due|")


def test_one_shard_hash() -> None:
    assert shard_of("acme|s1", 16) == shard_of("acme|s1", 16)
    assert len({shard_of(f"t{n}", 16) for n in range(200)}) == 16


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_a_budget_refuses_a_limit_that_is_not_a_positive_integer(bad) -> None:
    from shared.errors import InvalidInput

    with pytest.raises(InvalidInput):
        Budget(seconds=1.0, items=bad)
