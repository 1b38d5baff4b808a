"""Session metrics updates against plain gets, on local and Azurite, measured in one run.

    .venv/bin/python bench/sessions.py [--backends local,azure] [--scale 1.0]

A metrics update (``SessionService.record``) is a read and a write conditional on
the ETag read; the baseline is a plain ``get`` of the same session in the same
run, so the ratio says what the atomic update costs in reads' worth. Figures:
sequential updates on one session, 8 threads updating one session (every lost
race is a re-read and a retry), 8 threads updating 8 sessions, and the same
update carrying an idempotency key (a marker in the same batch, as queue commands
do). Figures depend on the machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import backend_list, measure_on_backends, rate  # noqa: E402
from shared.domains.sessions.service import SessionService
from shared.stores import Stores

console = Console(width=120)
THREADS = 8



def threaded_rate(per_thread: int, action: Callable[[int, int], object]) -> float:
    """Operations per second of ``THREADS`` threads each calling ``action(thread, i)`` ``per_thread`` times."""
    def run(worker: int) -> None:
        for i in range(per_thread):
            action(worker, i)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return THREADS * per_thread / (time.perf_counter() - start)


def measure(stores: Stores, n: int) -> dict[str, float]:
    sessions = SessionService(stores)
    tenant = "bench" + uuid.uuid4().hex[:8]
    one = sessions.create(tenant, "user", metadata={"agent": "bench"}).session_id
    many = [sessions.create(tenant, "user").session_id for _ in range(THREADS)]
    figures: dict[str, float] = {}
    figures["get (baseline)"] = rate(n, lambda i: sessions.get(tenant, one))
    figures["record, sequential"] = rate(n, lambda i: sessions.record(tenant, one, processing_time=0.01))
    figures["record, idempotency key"] = rate(
        n, lambda i: sessions.record(tenant, one, idempotency_key=f"k{i}-{uuid.uuid4().hex}"))
    per_thread = max(n // THREADS, 5)
    figures[f"get, {THREADS} threads"] = threaded_rate(per_thread, lambda w, i: sessions.get(tenant, many[w]))
    figures[f"record, {THREADS} threads, {THREADS} sessions"] = threaded_rate(
        per_thread, lambda w, i: sessions.record(tenant, many[w]))
    before = sessions.get(tenant, one).request_count
    figures[f"record, {THREADS} threads, 1 session"] = threaded_rate(
        per_thread, lambda w, i: sessions.record(tenant, one))
    counted = sessions.get(tenant, one).request_count - before
    assert counted == THREADS * per_thread, f"lost updates: {counted} of {THREADS * per_thread}"
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="local,azure")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()
    kinds = backend_list(args.backends)
    counts = {"local": int(1000 * args.scale), "azure": int(200 * args.scale)}
    results = measure_on_backends(
        kinds, lambda kind, stores: measure(stores, counts[kind]),
        lambda kind: console.print(f"measuring {kind} ({counts[kind]} operations per figure) ..."))

    table = Table("operation", *[c for k in kinds for c in (f"{k} ops/s", f"{k} ÷ get")],
                  title="Session metrics updates against plain gets")
    for name in next(iter(results.values())):
        cells = []
        for kind in kinds:
            figures = results[kind]
            baseline = figures[f"get, {THREADS} threads"] if "threads" in name else figures["get (baseline)"]
            cells += [f"{figures[name]:,.0f}", f"{figures[name] / baseline:.2f}"]
        table.add_row(name, *cells)
    console.print(table)
    console.print("Ratios: threaded figures against threaded gets, the others against sequential gets.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
