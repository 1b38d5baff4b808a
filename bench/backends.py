"""Throughput of the backend primitives on local, Azurite and moto, measured in one run.

    .venv/bin/python bench/backends.py [--backends local,azure,aws] [--scale 1.0]

Prints operations per second for blob put/get, table upsert/get/query,
100-entity batches and queue send/receive on each backend, and the local
backend's batched inserts as a ratio of raw ``sqlite3.executemany`` of the same
rows in the same process. Emulators are started on loopback, as the tests do.
Figures depend on the machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import backend_list, rate, settings_for  # noqa: E402
from shared.backends import Backend, Entity, TableOp, create_backend  # noqa: E402
from shared.config import Settings  # noqa: E402

console = Console()
BLOB = b"x" * 4096
PROPS = {"role": "assistant", "content": "a short message " * 8, "tokens": 42, "score": 0.5}



def measure(backend: Backend, n: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    container, table_name, queue_name = f"bench-{tag}", f"bench{tag}", f"bench-{tag}"
    backend.ensure(containers=[container], tables=[table_name], queues=[queue_name])
    blobs, table, queue = backend.blobs(container), backend.table(table_name), backend.queue(queue_name)
    figures: dict[str, float] = {}
    figures["blob put 4 KiB"] = rate(n, lambda i: blobs.put(f"b/{i}", BLOB))
    figures["blob get 4 KiB"] = rate(n, lambda i: blobs.get(f"b/{i}"))
    figures["table upsert"] = rate(n, lambda i: table.upsert(Entity("p", f"r{i:08d}", PROPS)))
    figures["table get"] = rate(n, lambda i: table.get("p", f"r{i:08d}"))
    pages = max(n // 20, 5)
    figures["table query, 100/page"] = rate(
        pages, lambda i: table.query("p", start=f"r{(i * 37) % max(n - 100, 1):08d}", limit=100)) * 100
    batches = max(n // 100, 3)
    figures["batch of 100, entities/s"] = rate(
        batches, lambda i: table.batch([TableOp.insert(Entity(f"batch{i}", f"r{j:03d}", PROPS)) for j in range(100)])
    ) * 100
    figures["queue send"] = rate(n, lambda i: queue.send(f"message {i}"))
    received = 0
    start = time.perf_counter()
    while received < n:
        messages = queue.receive(max_messages=32, visibility_timeout=60)
        if not messages:
            break
        for message in messages:
            queue.delete(message.receipt)
        received += len(messages)
    figures["queue receive+delete"] = received / (time.perf_counter() - start)
    return figures


def local_batch_vs_sqlite(rows: int) -> tuple[float, float]:
    """Rows/s of LocalBackend batches and of raw executemany, same rows, same settings."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = create_backend(Settings(backend="local", data_dir=Path(tmp) / "stowage"))
        backend.ensure(tables=["ratio"])
        table = backend.table("ratio")
        ops = [[TableOp.insert(Entity(f"p{b}", f"r{j:03d}", PROPS)) for j in range(100)] for b in range(rows // 100)]
        start = time.perf_counter()
        for batch in ops:
            table.batch(batch)
        ours = rows / (time.perf_counter() - start)
        backend.close()

        conn = sqlite3.connect(Path(tmp) / "raw.sqlite3", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE e (tbl TEXT, pk TEXT, rk TEXT, props TEXT, etag TEXT, "
                     "PRIMARY KEY (tbl, pk, rk)) WITHOUT ROWID")
        # The baseline does what any raw-sqlite store of these rows must: serialise each
        # row's properties and write it in one transaction per 100 rows; no validation.
        start = time.perf_counter()
        for b in range(rows // 100):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO e VALUES (?,?,?,?,?)",
                             [("ratio", f"p{b}", f"r{j:03d}", json.dumps(PROPS), os.urandom(12).hex())
                              for j in range(100)])
            conn.execute("COMMIT")
        raw = rows / (time.perf_counter() - start)
        conn.close()
    return ours, raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="local,azure,aws")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()
    kinds = backend_list(args.backends)
    counts = {"local": int(2000 * args.scale), "azure": int(300 * args.scale), "aws": int(300 * args.scale)}
    results: dict[str, dict[str, float]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            settings = settings_for(kind, Path(tmp), stack)
            backend = create_backend(settings)
            console.print(f"measuring {kind} ({counts[kind]} operations per figure) ...")
            results[kind] = measure(backend, counts[kind])
            backend.close()
        ours, raw = local_batch_vs_sqlite(int(20_000 * args.scale))

    table = Table("operation", *[f"{k} ops/s" for k in kinds], title="Backend primitives")
    for name in next(iter(results.values())):
        table.add_row(name, *[f"{results[k][name]:,.0f}" for k in kinds])
    console.print(table)
    console.print(f"local batched inserts: {ours:,.0f} rows/s; raw sqlite3 executemany: {raw:,.0f} rows/s; "
                  f"ratio {ours / raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
