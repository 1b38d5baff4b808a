"""Real LangGraph graphs on Stowage checkpoints.

* Human in the loop across processes: examples/langgraph_human_in_the_loop.py
  pauses on ``interrupt()`` in one process, which exits; a second process resumes
  the thread from storage with ``Command(resume=...)``; the history lists every step.
  Over HTTP (remote saver) against `stowage serve` on each backend.
* The direct saver under a graph that loops, forks from an old checkpoint with
  ``update_state`` and runs async, on each backend.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import operator
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from shared.domains.checkpoints.service import CheckpointService
from shared.langgraph_savers import RemoteCheckpointSaver, StowageCheckpointSaver
from shared.stores import Stores

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "langgraph_human_in_the_loop.py"


def run_example(server, *args: str) -> dict:
    env = {**os.environ, "STOWAGE_URL": server.url, "STOWAGE_API_KEY": server.keys["alpha"]}
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def load_example():
    spec = importlib.util.spec_from_file_location("langgraph_human_in_the_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # LangGraph resolves the state's annotations through it
    spec.loader.exec_module(module)
    return module


def test_human_in_the_loop_pauses_exits_and_resumes_in_a_new_process(server):
    thread = "hitl-" + uuid.uuid4().hex[:10]
    paused = run_example(server, "start", "--thread", thread, "--topic", "Checkpoints")
    assert paused["status"] == "drafted"
    assert paused["interrupt"] == [{"question": "Publish this draft? (approve / reject)",
                                    "draft": "Checkpoints: a short article, ready for review."}]

    with RemoteCheckpointSaver(server.url, server.keys["alpha"]) as saver:  # what the first process left
        waiting = saver.get_tuple({"configurable": {"thread_id": thread}})
        assert waiting.metadata["step"] == 1
        assert [write[1] for write in waiting.pending_writes] == ["__interrupt__"]

    resumed = run_example(server, "resume", "--thread", thread, "--answer", "approve")
    assert resumed["state"] == {"topic": "Checkpoints", "draft": "Checkpoints: a short article, ready for review.",
                                "feedback": ["approve"], "status": "published"}
    steps = [(h["step"], h["source"], h["next"], h["status"]) for h in resumed["history"]]
    assert steps == [(3, "loop", [], "published"), (2, "loop", ["publish"], "approved"),
                     (1, "loop", ["human_review"], "drafted"), (0, "loop", ["write_draft"], "new"),
                     (-1, "input", ["__start__"], None)]

    example = load_example()
    with RemoteCheckpointSaver(server.url, server.keys["alpha"]) as saver:
        graph = example.build_graph(saver)
        config = {"configurable": {"thread_id": thread}}
        assert example.history(graph, config) == resumed["history"]
        assert graph.get_state(config).next == ()
    with RemoteCheckpointSaver(server.url, server.keys["beta"]) as stranger:
        assert stranger.get_tuple({"configurable": {"thread_id": thread}}) is None


class Counter(TypedDict):
    total: int
    log: Annotated[list[str], operator.add]


def build_counter(checkpointer):
    def add(state: Counter) -> dict:
        return {"total": state["total"] + 1, "log": [f"add->{state['total'] + 1}"]}

    def again(state: Counter) -> str:
        return "add" if state["total"] < 5 else END

    builder = StateGraph(Counter)
    builder.add_node("add", add)
    builder.add_edge(START, "add")
    builder.add_conditional_edges("add", again, ["add", END])
    return builder.compile(checkpointer=checkpointer)


def test_direct_saver_under_a_looping_graph_with_a_fork_and_async_runs(settings):
    stores = Stores.from_settings(settings)
    stores.ensure()
    try:
        saver = StowageCheckpointSaver(CheckpointService(stores), "graph" + uuid.uuid4().hex[:8])
        graph = build_counter(saver)
        config = {"configurable": {"thread_id": "loop"}}
        assert graph.invoke({"total": 0, "log": []}, config)["total"] == 5
        history = list(graph.get_state_history(config))
        assert [s.metadata["step"] for s in history] == [5, 4, 3, 2, 1, 0, -1]
        assert [s.values.get("total") for s in history] == [5, 4, 3, 2, 1, 0, None]

        # Fork from step 2 (total 2): the fork's new channel versions must not clobber the original branch.
        at_two = next(s for s in history if s.metadata["step"] == 2)
        forked = graph.update_state(at_two.config, {"total": 3, "log": ["fork"]})
        assert graph.invoke(None, forked)["log"] == ["add->1", "add->2", "fork", "add->4", "add->5"]
        assert graph.get_state(config).values["log"][2] == "fork"
        original = graph.get_state(history[0].config).values
        assert original == {"total": 5, "log": [f"add->{n}" for n in range(1, 6)]}
        assert graph.get_state(at_two.config).values["total"] == 2

        async def run_async() -> dict:
            async_config = {"configurable": {"thread_id": "async"}}
            result = await graph.ainvoke({"total": 3, "log": []}, async_config)
            snapshots = [s async for s in graph.aget_state_history(async_config)]
            return {"result": result, "steps": [s.metadata["step"] for s in snapshots]}

        done = asyncio.run(run_async())
        assert done["result"] == {"total": 5, "log": ["add->4", "add->5"]}
        assert done["steps"] == [2, 1, 0, -1]
        assert sorted(t["configurable"]["thread_id"] for t in {
            t.config["configurable"]["thread_id"]: t.config for t in saver.list(None)}.values()) == ["async", "loop"]
    finally:
        stores.close()
