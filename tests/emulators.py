"""Azurite and moto server as processes on free loopback ports, for tests and benchmarks.

moto runs under :mod:`tests.moto_serial`, which applies one request at a time:
``moto_server`` serves requests concurrently and moto's DynamoDB transactions and
S3 conditional writes are not atomic under concurrency (see that module).

Both context managers raise :class:`EmulatorError` (with the emulator's log) when
the emulator is missing, dies, or is not ready in time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / "node_modules" / ".bin" / "azurite"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STARTUP_DEADLINE = 60.0
FAKE_AWS_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}
_AWS_VARIABLES_TO_HIDE = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL")


class EmulatorError(RuntimeError):
    """An emulator could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _wait_ready(name: str, proc: subprocess.Popen, log: Path, ready: Callable[[], bool]) -> None:
    """Poll ``ready`` until it holds; raise with the log when the process dies or the deadline passes."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        if proc.poll() is not None:
            raise EmulatorError(f"{name} exited with code {proc.returncode} before it was ready. Log:\n{_log_tail(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            _stop(proc)
            raise EmulatorError(f"{name} was not ready within {STARTUP_DEADLINE:.0f} s. Log:\n{_log_tail(log)}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate; kill when it lingers (moto waits for idle request threads; both keep data in memory only)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _spawn(name: str, command: list[str], workdir: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        try:
            return subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise EmulatorError(f"could not start {name} ({command[0]}): {exc}") from exc


@dataclass(frozen=True)
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        base = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint={base}:{self.queue_port}/{AZURITE_ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{AZURITE_ACCOUNT};"
        )


@contextmanager
def start_azurite(workdir: Path) -> Iterator[Azurite]:
    """Azurite (blob, queue, table) in memory on free loopback ports."""
    if not AZURITE.exists():
        raise EmulatorError(f"Azurite is not installed at {AZURITE}: run `npm install` in {REPO}")
    if shutil.which("node") is None:
        raise EmulatorError("Azurite needs Node.js (`node` is not on PATH)")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "azurite.log"
    ports = Azurite(free_port(), free_port(), free_port())
    command = [
        str(AZURITE), "--silent", "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
        "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", str(ports.blob_port), "--queuePort", str(ports.queue_port), "--tablePort", str(ports.table_port),
    ]  # fmt: skip
    proc = _spawn("Azurite", command, workdir, log)
    try:
        _wait_ready(
            "Azurite", proc, log,
            lambda: all(_port_open(p) for p in (ports.blob_port, ports.queue_port, ports.table_port)),
        )  # fmt: skip
        yield ports
    finally:
        _stop(proc)


@dataclass(frozen=True)
class Moto:
    endpoint_url: str


@contextmanager
def start_moto(workdir: Path) -> Iterator[Moto]:
    """moto server (S3, DynamoDB, SQS) on a free loopback port, with fake AWS credentials in the environment.

    Served by :mod:`tests.moto_serial` (one request at a time), not ``moto_server``.
    """
    missing = [name for name in ("moto", "flask", "werkzeug") if importlib.util.find_spec(name) is None]
    if missing:
        raise EmulatorError(f"moto server needs {', '.join(missing)} in {sys.executable}: "
                            "pip install -r requirements-dev.txt")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "moto.log"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # -P: the launcher's directory (tests/) is not put first on sys.path.
    command = [sys.executable, "-P", str(Path(__file__).with_name("moto_serial.py")), "-H", "127.0.0.1", "-p", str(port)]
    proc = _spawn("moto_server", command, workdir, log)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answered HTTP, so it is up
        except OSError:
            return False

    saved = {name: os.environ.get(name) for name in (*FAKE_AWS_ENVIRONMENT, *_AWS_VARIABLES_TO_HIDE)}
    try:
        _wait_ready("moto_server", proc, log, answers)
        os.environ.update(FAKE_AWS_ENVIRONMENT)
        for name in _AWS_VARIABLES_TO_HIDE:
            os.environ.pop(name, None)
        yield Moto(endpoint)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _stop(proc)
