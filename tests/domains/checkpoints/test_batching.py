"""A step's pending writes and its next checkpoint in one batch (the direct saver's linger), on
every backend; and the inline-values cache's hit rate under a real graph."""

from __future__ import annotations

import operator
import threading
import uuid
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from shared.domains.checkpoints import _layout
from shared.domains.checkpoints.savers import StowageCheckpointSaver
from shared.domains.checkpoints.service import CheckpointService, TypedValue
from tests.domains.checkpoints.batches import Batches, val


class _QueuedSignal(threading.Event):
    """An Event that also tells the test when a lingering writer starts to wait (it is queued then)."""

    waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        _QueuedSignal.waiting.set()
        return super().wait(timeout)


def test_lingering_writes_ride_in_the_next_puts_batch(service, tenant, monkeypatch):
    _QueuedSignal.waiting = threading.Event()
    service._group.make_event = _QueuedSignal
    batches = Batches(service, monkeypatch)
    service.put(tenant, "th", "", "c1", TypedValue("json", b"{}"), channel_versions={"a": "1"},
                new_values={"a": val("A1")})
    result = {}
    writer = threading.Thread(target=lambda: result.update(w=service._put_writes(
        tenant, "th", "", "c1", "task", [(0, "a", val("w")), (1, "b", val("x"))], linger=60)))
    writer.start()
    assert _QueuedSignal.waiting.wait(30)  # the writes are queued, waiting to be carried
    service.put(tenant, "th", "", "c2", TypedValue("json", b"{}"), channel_versions={"a": "2"},
                new_values={"a": val("A2")}, parent_checkpoint_id="c1")
    writer.join(30)
    assert not writer.is_alive()
    assert (result["w"].written, result["w"].kept) == (2, 0)
    assert batches.sizes == [1, 3]  # c1 alone, then c2 with both writes: one batch
    assert batches.records == [1, 2]  # each change with its own record, in its batch
    assert [w.value for w in service.get(tenant, "th", "", "c1").pending_writes] == [val("w"), val("x")]
    assert service.get(tenant, "th").values == {"a": val("A2")}


def test_writes_that_no_put_carries_are_written_alone_and_stop_lingering(service, tenant, monkeypatch):
    lingers: list[float] = []
    real = service._group.commit_carried

    def spy(*args, **kwargs):
        lingers.append(kwargs.get("linger", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(service._group, "commit_carried", spy)
    for task in range(4):
        done = service._put_writes(tenant, "th", "", "c1", f"t{task}", [(0, "a", val(str(task)))], linger=0.01)
        assert (done.written, done.kept) == (1, 0)
    # Two waits in a row found no put: the partition's writes go at once for a while.
    assert lingers == [0.01, 0.01, 0.0, 0.0]
    assert service._put_writes(tenant, "other", "", "c1", "t", [(0, "a", val("x"))], linger=0.01).written == 1
    assert lingers[-1] == 0.01  # per thread


def test_a_real_graph_stores_most_steps_in_one_batch_and_hits_the_cache(stores, tenant, monkeypatch):
    class State(TypedDict):
        log: Annotated[list[str], operator.add]
        n: int
        label: str  # set once: every later checkpoint carries it from its parent

    def step(state: State) -> dict:
        return {"log": [f"step {state['n']}"], "n": state["n"] + 1}

    builder = StateGraph(State)
    builder.add_node("a", step)
    builder.add_node("b", step)
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_conditional_edges("b", lambda s: "a" if s["n"] < 12 else END, ["a", END])
    service = CheckpointService(stores)
    batches = Batches(service, monkeypatch)
    saver = StowageCheckpointSaver(service, tenant, writes_linger=1.0)
    graph = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": f"g-{uuid.uuid4().hex[:6]}"}}
    assert graph.invoke({"log": [], "n": 0, "label": "x"}, config)["n"] == 12
    assert graph.invoke({"n": 10}, config)["log"][-1] == "step 11"  # resumes from storage
    puts = sum(1 for _ in saver.list(config))
    writes = sum(1 for size in batches.sizes if size)
    assert len(batches.sizes) < puts + puts - 2  # without carrying: a batch per put and per step's writes
    assert all(batches.records)  # no batch without the record of its change
    stats = service.cache_stats()
    assert stats["hits"] >= puts - 4 and stats["misses"] == 0  # each parent was written or read here
    latest = saver.get_tuple(config)
    assert latest.checkpoint["channel_values"]["n"] == 12 and latest.checkpoint["channel_values"]["label"] == "x"
    table = stores.table("stowagecheckpoints").table
    partition = _layout.thread_pk(tenant, config["configurable"]["thread_id"])
    assert list(table.query_all(partition, prefix=_layout.VALUE_PREFIX)) == []  # small state: all inline
    assert writes
