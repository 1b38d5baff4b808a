"""Suspend/resume round trips per second on local and Azurite, against a baseline in the same run.

    .venv/bin/python bench/workflows.py [--backends local,azure] [--scale 1.0]

The baseline is the least any suspend/resume store must do: read one entity and
write it back (a plain table get + upsert), twice per round trip. The figures
that matter are the ratios: how many baseline round trips one suspend + resume
costs, with its status indexes, conditional batch and context row. Also: event
delivery to many waiting workflows, and the timer's timeouts. Emulators start on
loopback, as the tests do. Absolute figures depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import backend_list, measure_on_backends, rate  # noqa: E402
from shared.backends import Entity
from shared.stores import Stores
from shared.domains.workflows.service import WorkflowService

console = Console()
SMALL_CONTEXT = {"cursor": 17, "messages": ["a short message " * 8] * 4}  # about 600 bytes
LARGE_CONTEXT = {"document": "x" * 200_000}  # over the offload threshold: a blob per write



def measure(stores: Stores, n: int) -> dict[str, float]:
    tenant = "bench" + uuid.uuid4().hex[:8]
    workflows = WorkflowService(stores)
    raw = stores.backend.table("benchbaseline" + uuid.uuid4().hex[:6])
    stores.backend.ensure(tables=[raw.name])
    figures: dict[str, float] = {}

    raw.upsert(Entity("p", "r", {"status": "running", "step": "load", "context": str(SMALL_CONTEXT)}))

    def baseline(_: int) -> None:
        for status in ("suspended", "running"):  # one round trip = two state changes, like suspend + resume
            entity = raw.get("p", "r")
            raw.upsert(Entity("p", "r", {**entity.properties, "status": status}))

    figures["baseline: (get + upsert) x 2"] = rate(n, baseline)

    def round_trip(workflow_id: str, context: dict) -> Callable[[int], None]:
        workflows.suspend(tenant, workflow_id, workflow_name="bench", resource="user:1", current_step="s",
                          context_state=context, reason={"kind": "manual"})
        workflows.resume(tenant, workflow_id)

        def once(_: int) -> None:
            workflows.suspend(tenant, workflow_id, workflow_name="bench", resource="user:1", current_step="s",
                              context_state=context, reason={"kind": "event", "event_id": "go",
                                                             "timeout_seconds": 3600})
            workflows.resume(tenant, workflow_id)

        return once

    figures["suspend + resume, 600 B context"] = rate(n, round_trip("small", SMALL_CONTEXT))
    figures["suspend + resume, 200 KB context"] = rate(max(n // 5, 5), round_trip("large", LARGE_CONTEXT))
    figures["suspend (new workflow)"] = rate(n, lambda i: workflows.suspend(
        tenant, f"new{i:06d}", workflow_name="bench", resource="user:2", current_step="s",
        context_state=SMALL_CONTEXT, reason={"kind": "event", "event_id": "data_ready", "timeout_seconds": 60}))

    start = time.perf_counter()
    delivered = workflows.deliver_event(tenant, "data_ready", {"rows": 1})
    figures["event delivery, workflows readied/s"] = delivered / (time.perf_counter() - start)

    for i in range(n):
        workflows.suspend(tenant, f"due{i:06d}", workflow_name="bench", resource="user:3", current_step="s",
                          context_state={}, reason={"kind": "event", "event_id": "never", "timeout_seconds": 60})
    start = time.perf_counter()
    timed_out = 0
    while counts := workflows.process_due(now=time.time() + 120, limit=500):
        timed_out += counts["timed_out"]
        if not any(counts.values()):
            break
    figures["timer, timeouts applied/s"] = timed_out / (time.perf_counter() - start)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="local,azure")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()
    kinds = backend_list(args.backends)
    counts = {"local": int(300 * args.scale), "azure": int(100 * args.scale)}
    results = measure_on_backends(
        kinds, lambda kind, stores: measure(stores, counts[kind]),
        lambda kind: console.print(f"measuring {kind} ({counts[kind]} round trips per figure) ..."))

    table = Table("operation", *[f"{k} /s" for k in kinds], *[f"{k} ratio" for k in kinds],
                  title="Suspended workflows (ratio: against the baseline round trip, same backend)")
    for name in next(iter(results.values())):
        values = [f"{results[k][name]:,.0f}" for k in kinds]
        ratios = [f"{results[k][name] / results[k]['baseline: (get + upsert) x 2']:.2f}" for k in kinds]
        table.add_row(name, *values, *ratios)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
