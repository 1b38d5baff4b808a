"""LangGraph checkpointing throughput: Stowage's direct saver against SqliteSaver, in one run.

    .venv/bin/python bench/checkpoints.py [--threads 20] [--loops 6] [--invokes 2] [--no-azurite]

The workload is a real LangGraph graph of four nodes (plan, act, observe, reflect)
looping ``--loops`` times per invoke, ``--invokes`` invokes per thread (each resumes
its thread from storage), over ``--threads`` threads. The state grows: every node
appends a message, so later checkpoints carry more history. Each saver runs the
same workload; the figure is graph steps (node runs, one checkpoint each) per second.

Baseline: langgraph-checkpoint-sqlite's ``SqliteSaver`` on a file, as shipped
(WAL, ``synchronous`` left at SQLite's default FULL) and with ``synchronous=NORMAL``.
Stowage's direct saver runs on the local backend (SQLite WAL, NORMAL by default,
and FULL for the like-for-like durability), then on Azurite. Ratios are against
the shipped SqliteSaver measured in this run. Figures depend on the machine's disk.
"""

from __future__ import annotations

import argparse
import operator
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.config import Settings
from shared.domains.checkpoints.savers import StowageCheckpointSaver
from shared.manager import StorageManager
from shared.stores import Stores
from tests.emulators import start_azurite

console = Console()


class AgentState(TypedDict):
    messages: Annotated[list[dict[str, Any]], operator.add]
    steps: int
    plan: str
    notes: dict[str, str]
    loops_left: int


def _message(role: str, state: AgentState) -> dict[str, Any]:
    return {"role": role, "step": state["steps"] + 1,
            "content": f"{role} output at step {state['steps'] + 1}: " + "lorem ipsum dolor sit amet " * 8}


def plan(state: AgentState) -> dict[str, Any]:
    return {"messages": [_message("planner", state)], "steps": state["steps"] + 1,
            "plan": f"plan #{state['steps']}: look, act, check"}


def act(state: AgentState) -> dict[str, Any]:
    return {"messages": [_message("actor", state)], "steps": state["steps"] + 1}


def observe(state: AgentState) -> dict[str, Any]:
    return {"messages": [_message("observer", state)], "steps": state["steps"] + 1}


def reflect(state: AgentState) -> dict[str, Any]:
    notes = {**state["notes"], f"loop{state['loops_left']}": "went fine, keep going"}
    return {"messages": [_message("critic", state)], "steps": state["steps"] + 1, "notes": notes,
            "loops_left": state["loops_left"] - 1}


def build(checkpointer: BaseCheckpointSaver) -> Any:
    builder = StateGraph(AgentState)
    for name, node in (("plan", plan), ("act", act), ("observe", observe), ("reflect", reflect)):
        builder.add_node(name, node)
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "act")
    builder.add_edge("act", "observe")
    builder.add_edge("observe", "reflect")
    builder.add_conditional_edges("reflect", lambda s: "plan" if s["loops_left"] > 0 else END, ["plan", END])
    return builder.compile(checkpointer=checkpointer)


def workload(checkpointer: BaseCheckpointSaver, threads: int, loops: int, invokes: int) -> tuple[int, float]:
    """Run the graph over every thread; returns (steps, seconds). Checks the final states."""
    graph = build(checkpointer)
    tag = uuid.uuid4().hex[:6]
    steps = 0
    start = time.perf_counter()
    for t in range(threads):
        config = {"configurable": {"thread_id": f"bench-{tag}-{t}"}}
        for i in range(invokes):
            first = {"messages": [], "steps": 0, "plan": "", "notes": {}, "loops_left": loops}
            state = graph.invoke(first if i == 0 else {"loops_left": loops}, config)
            steps += 4 * loops
        assert state["steps"] == 4 * loops * invokes and len(state["messages"]) == state["steps"], "lost updates"
    return steps, time.perf_counter() - start


@contextmanager
def sqlite_saver(directory: Path, synchronous: str | None) -> Iterator[BaseCheckpointSaver]:
    conn = sqlite3.connect(directory / f"langgraph-{uuid.uuid4().hex[:6]}.sqlite", check_same_thread=False)
    if synchronous:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    try:
        yield SqliteSaver(conn)
    finally:
        conn.close()


@contextmanager
def stowage_saver(settings: Settings) -> Iterator[BaseCheckpointSaver]:
    stores = Stores.from_settings(settings)
    stores.ensure()
    try:
        yield StowageCheckpointSaver(StorageManager(stores, "bench" + uuid.uuid4().hex[:6]))
    finally:
        stores.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--loops", type=int, default=6)
    parser.add_argument("--invokes", type=int, default=2)
    parser.add_argument("--azurite-threads", type=int, default=4, help="threads for the (slower) Azurite run")
    parser.add_argument("--no-azurite", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        runs: list[tuple[str, Callable[[], Any], int]] = [
            ("SqliteSaver, file (as shipped: synchronous FULL)", lambda: sqlite_saver(work, None), args.threads),
            ("SqliteSaver, file, synchronous NORMAL", lambda: sqlite_saver(work, "NORMAL"), args.threads),
            ("Stowage direct saver, local (default: synchronous NORMAL)",
             lambda: stowage_saver(Settings(backend="local", data_dir=work / "normal")), args.threads),
            ("Stowage direct saver, local, synchronous FULL",
             lambda: stowage_saver(Settings(backend="local", data_dir=work / "full", local_synchronous="FULL")),
             args.threads),
        ]
        if not args.no_azurite:
            azurite = stack.enter_context(start_azurite(work / "azurite"))
            runs.append(("Stowage direct saver, Azurite",
                         lambda: stowage_saver(Settings(backend="azure",
                                                        azure_connection_string=azurite.connection_string)),
                         args.azurite_threads))
        figures: list[tuple[str, int, float]] = []
        for label, make, threads in runs:
            with make() as saver:
                workload(saver, 1, 1, 1)  # warm up: tables, connections, imports
                steps, seconds = workload(saver, threads, args.loops, args.invokes)
            figures.append((label, steps, steps / seconds))
            console.print(f"{label}: {steps} steps in {seconds:.2f} s")

    baseline = figures[0][2]
    table = Table(title=f"LangGraph steps/s: {args.loops} loops x 4 nodes x {args.invokes} invokes per thread, "
                        "state grows every step")
    table.add_column("saver")
    table.add_column("steps", justify="right")
    table.add_column("steps/s", justify="right")
    table.add_column("ratio vs SqliteSaver as shipped", justify="right")
    for label, steps, rate in figures:
        table.add_row(label, str(steps), f"{rate:,.0f}", f"{rate / baseline:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
