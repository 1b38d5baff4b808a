"""The local backend's promises: killed at any instant, nothing acknowledged is lost or torn;
several processes can share one data directory."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from shared.backends import TableOp
from shared.backends.local import LocalBackend

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys
    from shared.backends.local import LocalBackend
    from shared.backends import Entity, TableOp
    backend = LocalBackend(sys.argv[1])
    backend.ensure(tables=["durable"], containers=["durable-blobs"], queues=["durable-q"])
    table, blobs, queue = backend.table("durable"), backend.blobs("durable-blobs"), backend.queue("durable-q")
    n = 0
    while True:
        # One atomic batch of 10 entities, a 200 KB blob and a message per step.
        table.batch([TableOp.insert(Entity(f"p{n}", f"r{i}", {"step": n, "pad": "x" * 2000})) for i in range(10)])
        blobs.put(f"b/{n}", bytes([n % 256]) * 200_000)
        queue.send(f"m{n}")
        print(f"ack {n}", flush=True)
        n += 1
""")

INCREMENTER = textwrap.dedent("""
    import sys
    from shared.backends.local import LocalBackend
    from shared.backends import Entity
    from shared.errors import PreconditionFailed
    table = LocalBackend(sys.argv[1]).table("shared")
    for _ in range(int(sys.argv[2])):
        while True:
            entity = table.get("counter", "c")
            entity.properties["n"] += 1
            try:
                table.update(entity, if_match=entity.etag)
                break
            except PreconditionFailed:
                continue
""")


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_killed_writer_loses_no_acknowledged_write_and_tears_none(tmp_path):
    writer = _python(WRITER, str(tmp_path))
    acknowledged = -1
    assert writer.stdout is not None
    for line in writer.stdout:
        acknowledged = int(line.split()[1])
        if acknowledged >= 60:
            break
    os.kill(writer.pid, signal.SIGKILL)  # mid-write: it never stops between steps
    writer.wait()
    assert acknowledged >= 60

    for name in ("tables.sqlite3", "blobs.sqlite3"):
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    backend = LocalBackend(tmp_path)
    table, blobs, queue = backend.table("durable"), backend.blobs("durable-blobs"), backend.queue("durable-q")
    for step in range(acknowledged + 1):
        assert len(list(table.query_all(f"p{step}"))) == 10
        assert blobs.get(f"b/{step}").data == bytes([step % 256]) * 200_000
    # The step in flight at the kill is all there or not there at all.
    in_flight = len(list(table.query_all(f"p{acknowledged + 1}")))
    assert in_flight in (0, 10)
    assert queue.approximate_length() >= acknowledged + 1
    backend.close()


def test_processes_sharing_a_data_dir_serialise_compare_and_swap(tmp_path):
    backend = LocalBackend(tmp_path)
    backend.ensure(tables=["shared"])
    from shared.backends import Entity

    backend.table("shared").insert(Entity("counter", "c", {"n": 0}))
    workers = [_python(INCREMENTER, str(tmp_path), "40") for _ in range(3)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    assert backend.table("shared").get("counter", "c")["n"] == 120
    backend.close()


# --------------------------------------------------------------------------- files: private from the start


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_fresh_data_dir_and_every_file_in_it_are_private_from_the_start(tmp_path):
    from shared.backends import Entity
    from cli.main import DEV_KEY_FILE, ensure_dev_key
    from shared.config import Settings
    from shared.stores import Stores

    data_dir = tmp_path / "fresh" / "data"
    previous = os.umask(0o022)  # the usual umask, under which files would be 0644 by default
    try:
        stores = Stores.from_settings(Settings(backend="local", data_dir=data_dir))
        stores.ensure()
        key, made = ensure_dev_key(stores)
        table = stores.backend.table("stowageobjects")
        table.batch([TableOp.insert(Entity("p", f"r{i}")) for i in range(3)])
        assert table.query("p", limit=1).continuation  # makes the token secret
        stores.blobs().put("a", b"x")
    finally:
        os.umask(previous)
    assert made and _mode(data_dir) == 0o700
    files = {path.name: _mode(path) for path in data_dir.iterdir()}
    expected = {"tables.sqlite3", "tables.sqlite3-wal", "tables.sqlite3-shm", "blobs.sqlite3", "blobs.sqlite3-wal",
                "blobs.sqlite3-shm", "token-secret", DEV_KEY_FILE}
    assert expected <= set(files), files
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}
    assert (data_dir / DEV_KEY_FILE).read_text().strip() == key
    assert ensure_dev_key(stores) == (key, False)
    stores.close()


def test_database_files_of_an_older_version_lose_group_and_other_access(tmp_path):
    for name in ("tables.sqlite3", "blobs.sqlite3"):
        sqlite3.connect(tmp_path / name).close()
        (tmp_path / name).chmod(0o644)
    LocalBackend(tmp_path).close()
    assert _mode(tmp_path / "tables.sqlite3") == 0o600 and _mode(tmp_path / "blobs.sqlite3") == 0o600


SIGNER = textwrap.dedent("""
    import sys
    from shared.backends.local import LocalBackend
    print(LocalBackend(sys.argv[1]).tokens.seal("scope", "state"), flush=True)
""")


def test_processes_sharing_a_data_dir_share_one_token_secret(tmp_path):
    signers = [_python(SIGNER, str(tmp_path)) for _ in range(4)]  # racing to make the secret
    tokens = set()
    for signer in signers:
        out, _ = signer.communicate(timeout=120)
        assert signer.returncode == 0
        tokens.add(out.strip())
    assert len(tokens) == 1
    assert LocalBackend(tmp_path).tokens.open("scope", tokens.pop()) == "state"
    secret = tmp_path / "token-secret"
    assert len(secret.read_bytes()) == 32 and _mode(secret) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".token-secret")] == []  # no drafts left


def test_a_configured_token_secret_is_used_and_no_file_is_made(tmp_path):
    backend = LocalBackend(tmp_path, token_secret="k" * 32)
    token = backend.tokens.seal("scope", "state")
    assert LocalBackend(tmp_path / "other", token_secret="k" * 32).tokens.open("scope", token) == "state"
    assert not (tmp_path / "token-secret").exists()
