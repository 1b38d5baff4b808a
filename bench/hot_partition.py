"""Hot partition: many writers on ONE memory thread, against one writer and against spread threads.

    .venv/bin/python bench/hot_partition.py [--backends local,azure] [--writers 16] [--per-writer N]
                                            [--rounds 3] [--no-checkpoints]

A memory append (``MemoryService.add_message``) reads the thread entity and writes
one atomic batch conditional on its ETag (the head's ``last_seq`` moves, the
message is inserted), so writers of one thread take turns by optimistic
concurrency: a writer that lost the race reads again and retries
(``shared.storage.retry.retry_races``, 16 attempts, jittered backoff), and gives
up with ``Busy`` (503) when every attempt lost. Five cases, each writing the
same number of messages (``writers x per-writer``):

* ``1 writer``: one thread, one writer (no contention at all);
* ``hot``: ``writers`` threads of this process appending to ONE memory thread;
* ``hot, resend 503``: as ``hot``, but a writer told ``Busy`` (503) waits the
  ``Retry-After`` second the HTTP layer sends and sends the append again, as a
  client should; this case must end with every append stored;
* ``hot, 10 per call``: as ``hot``, but each call is ``add_messages`` of 10
  messages (one read and one batch of 11 entities per call);
* ``spread``: ``writers`` threads, each appending to its own memory thread.

For each case: messages/s, latency of one call (median and p99), lost races
(counted by wrapping ``conditional`` in the memory service module, the
context manager that turns a lost race into a retry; nothing else is replaced),
appends that failed (by error type), and a check of the stored thread: every seq
from 1 to the number of successful appends present exactly once, each writer's
returned seqs distinct, ``message_count`` and ``last_seq`` equal to it.

Optionally (on by default) the same three cases for checkpoints:
``CheckpointService.put`` of distinct checkpoints by ``writers`` threads to one
LangGraph thread (create-only rows, no head row; the service's group commit
batches concurrent puts to one partition), checked by counting the stored
checkpoints.

Cases run interleaved, ``--rounds`` rounds (the order rotates each round), and
the tables show the median and range over rounds. Ratios compare cases measured
in the same run. Figures depend on the machine (and on what else runs on it);
compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import backend_list, measure_on_backends

from shared import names
from shared.domains.checkpoints import _layout as checkpoint_layout
from shared.domains.checkpoints.models import TypedValue
from shared.domains.checkpoints.service import CheckpointService
from shared.domains.memory import _layout as memory_layout
from shared.domains.memory import service as memory_service_module
from shared.domains.memory.service import MemoryService
from shared.errors import Busy, StowageError
from shared.storage.retry import LostRace
from shared.stores import Stores

console = Console(width=190)
TEXT = "A typical chat message of a few sentences, about the length people type. " * 3
PER_WRITER = {"local": 200, "azure": 20, "aws": 10}
BATCH = 10
HOT_BATCHED = f"hot, {BATCH} per call"
CASES = ("1 writer", "hot", "hot, resend 503", HOT_BATCHED, "spread")
CHECKPOINT_CASES = ("1 writer", "hot", "spread")
#: What a client told 503 does: wait the Retry-After the HTTP layer sends (functions/problems.py), send again.
RETRY_AFTER_SECONDS = 1.0


# --------------------------------------------------------------------------- lost races


class _RaceCounter:
    """Counts lost races of memory appends: wraps the ``conditional`` the memory service uses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.lost = 0
        # Looked up in the module's namespace: the service calls it by its global name on every write.
        self._namespace = vars(memory_service_module)
        self._real: Callable[[], contextlib.AbstractContextManager[None]] = self._namespace["conditional"]

    @contextlib.contextmanager
    def _counting(self) -> Iterator[None]:
        try:
            with self._real():
                yield
        except LostRace:
            with self._lock:
                self.lost += 1
            raise

    def install(self) -> None:
        self._namespace["conditional"] = self._counting

    def uninstall(self) -> None:
        self._namespace["conditional"] = self._real

    def take(self) -> int:
        with self._lock:
            lost, self.lost = self.lost, 0
        return lost


# --------------------------------------------------------------------------- one run of one case


@dataclass
class Run:
    seconds: float
    attempted: int
    succeeded: int
    latencies: list[float]
    failures: Counter[str] = field(default_factory=Counter)
    failure_examples: dict[str, str] = field(default_factory=dict)
    lost_races: int = 0
    resent: int = 0
    check: str = "ok"
    per_call: int = 1

    @property
    def rate(self) -> float:
        """Messages (or puts) stored per second."""
        return self.succeeded * self.per_call / self.seconds


def _writers(count: int, per_writer: int, call: Callable[[int, int], Any]) -> tuple[list[list[Any]], Run]:
    """``count`` threads, each calling ``call(writer, i)`` ``per_writer`` times, started together:
    what each writer's calls returned, and the run (failed calls counted by error type)."""
    results: list[list[Any]] = [[] for _ in range(count)]
    latencies: list[list[float]] = [[] for _ in range(count)]
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(count + 1)

    def work(writer: int) -> None:
        barrier.wait()
        for i in range(per_writer):
            start = time.perf_counter()
            try:
                results[writer].append(call(writer, i))
            except StowageError as exc:
                name = f"{type(exc).__name__} ({exc.status})"
                with lock:
                    failures[name] += 1
                    examples.setdefault(name, str(exc)[:300])
                continue
            latencies[writer].append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(w,), name=f"writer-{w}") for w in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    run = Run(seconds, count * per_writer, len(flat), flat, failures, examples)
    return results, run


def memory_case(stores: Stores, memory: MemoryService, races: _RaceCounter, tenant: str, case: str,
                writers: int, per_writer: int) -> Run:
    total = writers * per_writer
    per_call = BATCH if case == HOT_BATCHED else 1
    count, each = (1, total) if case == "1 writer" else (writers, max(1, per_writer // per_call))
    threads = [memory.create_thread(tenant, "bench_user").thread_id
               for _ in range(writers if case == "spread" else 1)]
    resent = [0]
    resent_lock = threading.Lock()
    batch = [{"role": "user", "content": TEXT}] * per_call

    def append(writer: int, i: int) -> list[int]:
        while True:
            try:
                return [m.seq for m in memory.add_messages(tenant, threads[writer % len(threads)], batch)]
            except Busy:
                # Nothing was written (every attempt lost its race), so sending it again is safe.
                if case != "hot, resend 503":
                    raise
                with resent_lock:
                    resent[0] += 1
                time.sleep(RETRY_AFTER_SECONDS)  # the client's pause, as told by Retry-After

    races.take()
    results, run = _writers(count, each, append)
    run.lost_races = races.take()
    run.resent = resent[0]
    run.per_call = per_call
    run.check = _check_threads(stores, tenant, threads, [[seq for seqs in per for seq in seqs] for per in results])
    return run


def _check_threads(stores: Stores, tenant: str, threads: list[str], results: list[list[int]]) -> str:
    """Every seq 1..n once per thread (n = successful appends to it), and the head agreeing."""
    raw = stores.backend.table(names.TABLE_MEMORY)
    problems = []
    for index, thread_id in enumerate(threads):
        returned = [seq for w, seqs in enumerate(results) if w % len(threads) == index for seq in seqs]
        pk = memory_layout.thread_pk(tenant, thread_id)
        stored = sorted(memory_layout.integer(e, "seq") for e in raw.query_all(pk, prefix=memory_layout.MESSAGE_PREFIX))
        head = raw.get(pk, memory_layout.THREAD_ROW)
        n = len(returned)
        if len(set(returned)) != n:
            problems.append(f"{thread_id}: {n - len(set(returned))} seqs handed out twice")
        if stored != list(range(1, n + 1)):
            missing = sorted(set(range(1, n + 1)) - set(stored))
            extra = len(stored) - len(set(stored)) + len(set(stored) - set(range(1, n + 1)))
            problems.append(f"{thread_id}: {n} appended, {len(stored)} stored, missing {missing[:5]}, extra {extra}")
        if sorted(returned) != stored:
            problems.append(f"{thread_id}: seqs returned to writers differ from those stored")
        count, last = memory_layout.integer(head, "message_count"), memory_layout.integer(head, "last_seq")
        if count != n or last != n:
            problems.append(f"{thread_id}: head says count {count}, last_seq {last}, expected {n}")
    return "; ".join(problems) or f"ok: seq 1..n once each on {len(threads)} thread(s)"


def checkpoint_case(stores: Stores, checkpoints: CheckpointService, tenant: str, case: str,
                    writers: int, per_writer: int) -> Run:
    total = writers * per_writer
    count, each = {"1 writer": (1, total), "hot": (writers, per_writer), "spread": (writers, per_writer)}[case]
    threads = [f"lg-{uuid.uuid4().hex[:12]}" for _ in range(writers if case == "spread" else 1)]
    state = TypedValue("json", b'{"messages": ["' + TEXT.encode() + b'"]}')
    counter = iter(range(10**9))
    lock = threading.Lock()

    def put(writer: int, i: int) -> str:
        with lock:
            n = next(counter)
        checkpoint_id = f"1f0{n:09d}-w{writer:02d}"
        checkpoints.put(tenant, threads[writer % len(threads)], "", checkpoint_id, state,
                        channel_versions={"messages": f"{n:09d}"}, new_values={"messages": state},
                        metadata={"source": "loop", "step": i, "writer": writer},
                        parent_checkpoint_id=None if i == 0 else f"parent-w{writer:02d}")
        return checkpoint_id

    results, run = _writers(count, each, put)
    raw = stores.backend.table(names.TABLE_CHECKPOINTS)
    problems = []
    for index, thread_id in enumerate(threads):
        returned = {cid for w, ids in enumerate(results) if w % len(threads) == index for cid in ids}
        stored = sum(1 for _ in raw.query_all(checkpoint_layout.thread_pk(tenant, thread_id),
                                              prefix=checkpoint_layout.CHECKPOINT_PREFIX))
        if stored != len(returned):
            problems.append(f"{thread_id}: {len(returned)} put, {stored} stored")
    run.check = "; ".join(problems) or f"ok: every put stored once on {len(threads)} thread(s)"
    return run


# --------------------------------------------------------------------------- rounds and report


def measure(stores: Stores, kind: str, writers: int, per_writer: int, rounds: int,
            with_checkpoints: bool) -> dict[str, dict[str, list[Run]]]:
    memory = MemoryService(stores)
    checkpoints = CheckpointService(stores)
    races = _RaceCounter()
    races.install()
    tenant = "bench" + uuid.uuid4().hex[:8]
    runs: dict[str, dict[str, list[Run]]] = {"memory": {c: [] for c in CASES}}
    if with_checkpoints:
        runs["checkpoints"] = {c: [] for c in CHECKPOINT_CASES}
    try:
        memory.add_message(tenant, memory.create_thread(tenant, "warmup").thread_id, "user", TEXT)  # connections
        for r in range(rounds):
            order = CASES[r % len(CASES):] + CASES[:r % len(CASES)]
            for case in order:
                run = memory_case(stores, memory, races, tenant, case, writers, per_writer)
                runs["memory"][case].append(run)
                console.print(f"  round {r + 1} memory {case:>8}: {run.rate:8,.0f} msg/s, "
                              f"{run.lost_races:5} lost races, {run.resent} resent, {sum(run.failures.values())} failed; {run.check}")
                if with_checkpoints and case in CHECKPOINT_CASES:
                    run = checkpoint_case(stores, checkpoints, tenant, case, writers, per_writer)
                    runs["checkpoints"][case].append(run)
                    console.print(f"  round {r + 1} checkpoints {case:>8}: {run.rate:8,.0f} puts/s, "
                                  f"{sum(run.failures.values())} failed; {run.check}")
    finally:
        races.uninstall()
    return runs


def _spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(kind: str, domain: str, cases: dict[str, list[Run]], writers: int, per_writer: int) -> None:
    unit = "messages/s" if domain == "memory" else "puts/s"
    table = Table("case", unit, "÷ 1 writer", "÷ spread", "latency p50 ms", "latency p99 ms",
                  "lost races / call" if domain == "memory" else "lost races", "resent after 503", "failed",
                  "stored rows check",
                  title=f"{domain} on {kind}: {writers} writers x {per_writer} each, "
                        f"{len(cases['hot'])} rounds, median (range)")
    single = [run.rate for run in cases["1 writer"]]
    spread = [run.rate for run in cases["spread"]]
    for case, runs in cases.items():
        rates = [run.rate for run in runs]
        to_single = [a / b for a, b in zip(rates, single)]
        to_spread = [a / b for a, b in zip(rates, spread)]
        failures: Counter[str] = Counter()
        for run in runs:
            failures.update(run.failures)
        failed = ", ".join(f"{n} {name}" for name, n in failures.items()) or "0"
        races = (_spread([run.lost_races / max(run.succeeded, 1) for run in runs], "{:.2f}")
                 if domain == "memory" else "n/a")
        checks = {run.check.split(":")[0] for run in runs}
        table.add_row(case, _spread(rates), _spread(to_single, "{:.2f}"), _spread(to_spread, "{:.2f}"),
                      _spread([_percentile(run.latencies, 0.5) * 1000 for run in runs], "{:.1f}"),
                      _spread([_percentile(run.latencies, 0.99) * 1000 for run in runs], "{:.1f}"),
                      races, str(sum(run.resent for run in runs)), failed, "ok" if checks == {"ok"} else "FAILED")
    console.print(table)
    for case, runs in cases.items():
        for run in runs:
            if not run.check.startswith("ok"):
                console.print(f"  [red]{domain} {case}: {run.check}[/red]")
            for name, example in run.failure_examples.items():
                console.print(f"  {domain} {case} failure {name}: {example}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="local,azure")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--per-writer", type=int, default=None,
                        help=f"appends per writer (default per backend: {PER_WRITER})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-checkpoints", action="store_true", help="skip the checkpoint cases")
    args = parser.parse_args()
    if args.writers < 2 or args.rounds < 1:
        raise SystemExit("--writers must be at least 2 and --rounds at least 1")
    # azure-core's HTTP pool keeps 10 connections per host; more writer threads open and drop
    # extra ones, and urllib3 warns on each. Counted as part of the cost, not shown as noise.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    per_writer: dict[str, int] = {}

    def run(kind: str, stores: Stores) -> dict[str, dict[str, list[Run]]]:
        per_writer[kind] = args.per_writer or PER_WRITER.get(kind, 20)
        return measure(stores, kind, args.writers, per_writer[kind], args.rounds, not args.no_checkpoints)

    results = measure_on_backends(backend_list(args.backends), run,
                                  lambda kind: console.print(f"measuring {kind} ..."))
    failed = False
    for kind, domains in results.items():
        for domain, cases in domains.items():
            report(kind, domain, cases, args.writers, per_writer[kind])
            failed = failed or any(not run.check.startswith("ok") for runs in cases.values() for run in runs)
    console.print("'hot' ÷ 'spread' is what one partition costs against the same writers on their own partitions;"
                  " 'lost races / call' is how many reads and conditional batches were wasted per successful call.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
