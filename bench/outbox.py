"""The cost the change feed's outbox adds to a write, and sequencing throughput (issue 11).

    .venv/bin/python bench/outbox.py [--backends local,azure] [--rounds 7] [--count 300]

The same writes with and without their change record, on one backend and in one
process: ``Stores(record_changes=False)`` (the flag exists for this baseline only)
hands the services an outbox that records nothing. Each round runs both variants
``--count`` times, in alternating order (with first in odd rounds, without first in
even ones), so drift and machine load fall on both; the figure is the ratio of
their times (with / without: 1.00 is free), reported as median and range over the
rounds. Target (issue 11): at most 1.3x on local and Azurite. The same ratio of
the process's CPU time is printed beside it: on a machine shared with other work
it moves less than wall-clock time (local writes are CPU-bound: SQLite in WAL
mode with ``synchronous=NORMAL`` does not wait for the disk on commit).

* ``objects put``: a 1 KiB object to a new key (head + version, + the outbox row);
* ``memory add_message``: one chat-sized message appended to a thread (thread
  update + message, + the outbox row).

After each recorded phase (untimed for the ratio) the sequencer moves the
records into the tenant's feed; its rate is reported as entries/s.

Figures depend on the machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import backend_list, machine_load, measure_on_backends, median_range

from shared.domains.memory.service import MemoryService
from shared.domains.objects.service import ObjectService
from shared.storage.due import Budget
from shared.stores import Stores

TEXT = "A typical chat message of a few sentences, about the length people type. " * 3
DATA = b"x" * 1024


def _timed(count: int, action: Callable[[int], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``action(i)`` for i in range(count)."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        action(i)
    return time.perf_counter() - start, time.process_time() - cpu


def measure(kind: str, stores: Stores, rounds: int, count: int) -> dict[str, Any]:
    baseline = Stores(stores.backend, stores.settings, record_changes=False)
    tenant = "bench" + uuid.uuid4().hex[:8]
    services = {True: (ObjectService(stores), MemoryService(stores)),
                False: (ObjectService(baseline), MemoryService(baseline))}
    threads = {recorded: services[recorded][1].create_thread(tenant, "bench").thread_id for recorded in services}
    stores.changes.sequence(tenant)

    def put(recorded: bool, tag: str) -> Callable[[int], object]:
        objects = services[recorded][0]
        return lambda i: objects.put(tenant, f"{tag}/{i:06d}", DATA)

    def append(recorded: bool, tag: str) -> Callable[[int], object]:
        memory = services[recorded][1]
        return lambda i: memory.add_message(tenant, threads[recorded], "user", TEXT)

    figures: dict[str, Any] = {}
    sequenced, sequencing_seconds = 0, 0.0
    for name, make in (("objects put", put), ("memory add_message", append)):
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        rates: dict[bool, list[float]] = {True: [], False: []}
        make(True, "warm")(0), make(False, "warm")(0)
        for n in range(rounds):
            seconds, cpu = {}, {}
            for recorded in ((True, False) if n % 2 == 0 else (False, True)):
                seconds[recorded], cpu[recorded] = _timed(count, make(recorded, f"{name[:3]}{n}{int(recorded)}"))
                rates[recorded].append(count / seconds[recorded])
                if recorded:
                    start = time.perf_counter()
                    report = stores.changes.sequence(tenant, Budget(seconds=600.0))
                    sequencing_seconds += time.perf_counter() - start
                    sequenced += report.total
            ratios.append(seconds[True] / seconds[False])
            cpu_ratios.append(cpu[True] / cpu[False] if cpu[False] else float("nan"))
        figures[name] = {"ratio": median_range(ratios), "cpu_ratio": median_range(cpu_ratios),
                         "with_per_s": median_range(rates[True])[0], "without_per_s": median_range(rates[False])[0]}
    figures["sequencing entries/s"] = sequenced / sequencing_seconds if sequencing_seconds else 0.0
    figures["_sequenced"] = sequenced
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=backend_list, default=["local", "azure"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=300, help="writes per variant and round")
    args = parser.parse_args()
    print(machine_load())
    results = measure_on_backends(args.backends, lambda kind, stores: measure(kind, stores, args.rounds, args.count),
                                  lambda kind: print(f"measuring {kind} ...", flush=True))
    print(f"{'backend':8} {'write':20} {'with/without (median, range)':30} {'CPU time ratio':22} "
          f"{'with/s':>7} {'without/s':>10}")
    for kind, figures in results.items():
        for name in ("objects put", "memory add_message"):
            median, low, high = figures[name]["ratio"]
            cpu_median, cpu_low, cpu_high = figures[name]["cpu_ratio"]
            print(f"{kind:8} {name:20} {median:5.2f}x ({low:.2f}-{high:.2f}){'':14} "
                  f"{cpu_median:5.2f}x ({cpu_low:.2f}-{cpu_high:.2f}){'':4} "
                  f"{figures[name]['with_per_s']:7.0f} {figures[name]['without_per_s']:10.0f}")
        print(f"{kind:8} {'sequencing':20} {figures['sequencing entries/s']:.0f} entries/s "
              f"({figures['_sequenced']} entries)")


if __name__ == "__main__":
    main()
