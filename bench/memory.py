"""Memory: append throughput and history reads at two thread sizes, on local and Azurite.

    .venv/bin/python bench/memory.py [--backends local,azure] [--scale 1.0]

Figures, each as a ratio against a baseline measured in the same run:

* ``add_message`` calls/s against a raw table insert of one entity of the same
  size (the least any store of one message must do), and against the raw
  primitives an exact append needs (a read, then a conditional 2-entity batch);
* ``add_messages`` of 98 messages, messages/s, against a raw 98-entity batch;
* reading the last 50 messages of a big thread against the same read of a
  100-message thread (big = 100,000 messages on local; 10,000 on Azurite, to
  keep the run short), and the oldest 50 (``order=asc``) likewise.

Figures depend on the machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import backend_list, measure_on_backends  # noqa: E402
from shared.backends import Entity, TableOp
from shared.domains.memory.service import MAX_MESSAGES_PER_CALL, MemoryService
from shared.stores import Stores

console = Console(width=150)
TENANT = "bench"
TEXT = "A typical chat message of a few sentences, about the length people type. " * 3
SMALL_THREAD = 100
BIG_THREAD = {"local": 100_000, "azure": 10_000}
READS = 50


def per_second(count: int, action: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(count):
        action(i)
    return count / (time.perf_counter() - start)


def median_seconds(count: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fill(memory: MemoryService, thread_id: str, total: int) -> None:
    batch = [{"role": "user" if i % 2 else "assistant", "content": TEXT} for i in range(MAX_MESSAGES_PER_CALL)]
    for start in range(0, total, MAX_MESSAGES_PER_CALL):
        memory.add_messages(TENANT, thread_id, batch[: min(MAX_MESSAGES_PER_CALL, total - start)])


def measure(stores: Stores, kind: str, scale: float) -> dict[str, tuple[float, float, str]]:
    """figure -> (value, baseline, unit)"""
    memory = MemoryService(stores)
    raw = stores.backend.table(f"bench{uuid.uuid4().hex[:8]}")
    stores.backend.ensure(tables=[raw.name])
    row = {"role": "user", "text": TEXT, "message_id": "msg_000000000001_00000000", "seq": 1,
           "created_at": time.time(), "updated_at": time.time()}
    calls = int((1000 if kind == "local" else 200) * scale)
    figures: dict[str, tuple[float, float, str]] = {}

    thread = memory.create_thread(TENANT, "bench_user").thread_id
    ours = per_second(calls, lambda i: memory.add_message(TENANT, thread, "user", TEXT))
    base = per_second(calls, lambda i: raw.insert(Entity("single", f"r{i:08d}", row)))
    figures["add_message, calls/s"] = (ours, base, "raw insert of one entity")
    raw.insert(Entity("head", "thread", {"message_count": 0}))
    base = per_second(calls, lambda i: raw.batch([
        TableOp.update(Entity("head", "thread", {"message_count": i}), if_match=raw.get("head", "thread").etag),
        TableOp.insert(Entity("head", f"m{i:08d}", row))]))
    figures["add_message vs its primitives, calls/s"] = (ours, base, "raw get + batch(update if-match, insert)")

    batches = max(int((40 if kind == "local" else 10) * scale), 3)
    many = [{"role": "user", "content": TEXT}] * MAX_MESSAGES_PER_CALL
    ours = per_second(batches, lambda i: memory.add_messages(TENANT, thread, many)) * MAX_MESSAGES_PER_CALL
    base = per_second(batches, lambda i: raw.batch(
        [TableOp.insert(Entity(f"batch{i}", f"r{j:03d}", row)) for j in range(MAX_MESSAGES_PER_CALL)]
    )) * MAX_MESSAGES_PER_CALL
    figures[f"add_messages x{MAX_MESSAGES_PER_CALL}, messages/s"] = (ours, base, "raw batch of the same entities")

    big_size = int(BIG_THREAD[kind] * scale)
    small = memory.create_thread(TENANT, "bench_user").thread_id
    big = memory.create_thread(TENANT, "bench_user").thread_id
    fill(memory, small, SMALL_THREAD)
    console.print(f"  filling a {big_size:,}-message thread on {kind} ...")
    start = time.perf_counter()
    fill(memory, big, big_size)
    filled = time.perf_counter() - start
    for name, kwargs in (("last 50", {"last": 50}), ("oldest 50", {"limit": 50})):
        small_read = median_seconds(READS, lambda kwargs=kwargs: memory.history(TENANT, small, **kwargs))
        big_read = median_seconds(READS, lambda kwargs=kwargs: memory.history(TENANT, big, **kwargs))
        assert len(memory.history(TENANT, big, **kwargs).items) == 50
        figures[f"history {name}, {big_size:,} vs {SMALL_THREAD} messages, ms"] = (
            big_read * 1000, small_read * 1000, f"same read, {SMALL_THREAD}-message thread")
    memory.delete_thread(TENANT, small)
    start = time.perf_counter()
    memory.delete_thread(TENANT, big)
    figures["delete_thread of the big thread, messages/s"] = (
        big_size / (time.perf_counter() - start), big_size / filled, "filling it with add_messages x98")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="local,azure")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts and thread sizes")
    args = parser.parse_args()
    results = measure_on_backends(backend_list(args.backends),
                                  lambda kind, stores: measure(stores, kind, args.scale),
                                  lambda kind: console.print(f"measuring {kind} ..."))

    for kind, figures in results.items():
        table = Table("figure", "value", "baseline", "ratio", "baseline is", title=f"Memory on {kind}")
        for name, (value, base, what) in figures.items():
            table.add_row(name, f"{value:,.2f}", f"{base:,.2f}", f"{value / base:.2f}", what)
        console.print(table)
    console.print("history ratios near 1.0 mean the read costs the same whatever the thread's size.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
