"""Shared fixtures: real emulators, settings per backend, a backend per test.

Every backend test runs against all three backends: ``local`` (SQLite in the
test's tmp_path), ``azure`` (Azurite) and ``aws`` (moto server). The emulators
are started once per session, lazily (only when a test needs that backend), on
free loopback ports, and stopped at the end. An emulator that cannot start makes
its tests fail with the reason; nothing is skipped silently.

``STOWAGE_TEST_BACKENDS=local,aws`` restricts the run; every excluded backend's
tests are reported as skipped with the reason (see ``pytest -rs``).

Fixtures for later suites:

* ``backend_kind``: "local", "azure" or "aws" (parametrised).
* ``settings_for(kind, tmp_path, **overrides)``: Settings for one backend,
  isolated per call (AWS bucket and name prefixes are unique).
* ``settings``: Settings for the current ``backend_kind``.
* ``backend``: ``create_backend(settings)``, closed afterwards.
* ``names``: unique container, table and queue names for this test.
* ``blobs`` / ``table`` / ``queue``: the stores for those names, ensured.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.backends import Backend, BlobStore, QueueStore, TableStore, create_backend
from shared.config import BACKENDS, Settings

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / "node_modules" / ".bin" / "azurite"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
STARTUP_DEADLINE = 60.0
ENV_BACKENDS = "STOWAGE_TEST_BACKENDS"


# --------------------------------------------------------------------------- configuration


def selected_backends() -> tuple[str, ...]:
    """The backends STOWAGE_TEST_BACKENDS names (default: all three)."""
    raw = os.environ.get(ENV_BACKENDS, "").strip()
    if not raw:
        return BACKENDS
    chosen = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    unknown = [kind for kind in chosen if kind not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"{ENV_BACKENDS} names unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    return chosen


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes seconds (time-based queue semantics, bulk data)")
    selected_backends()  # a typo in STOWAGE_TEST_BACKENDS is a usage error, not a silent skip


def pytest_report_header(config: pytest.Config) -> str:
    return f"stowage backends under test: {', '.join(selected_backends())} (set {ENV_BACKENDS} to restrict)"


# --------------------------------------------------------------------------- emulator processes


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
    """Poll ``ready`` until it holds; fail with the log when the process dies or the deadline passes."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with code {proc.returncode} before it was ready. Log:\n{_log_tail(log)}", pytrace=False)
        if ready():
            return
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"{name} was not ready within {STARTUP_DEADLINE:.0f} s. Log:\n{_log_tail(log)}", pytrace=False)
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite (blob, queue, table) in memory on free loopback ports, for the session."""
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE}: run `npm install` in {REPO}", pytrace=False)
    if shutil.which("node") is None:
        pytest.fail("Azurite needs Node.js (`node` is not on PATH)", pytrace=False)
    workdir = tmp_path_factory.mktemp("azurite")
    log = workdir / "azurite.log"
    ports = Azurite(free_port(), free_port(), free_port())
    command = [
        str(AZURITE), "--silent", "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
        "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", str(ports.blob_port), "--queuePort", str(ports.queue_port), "--tablePort", str(ports.table_port),
    ]  # fmt: skip
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            pytest.fail(f"could not start Azurite ({AZURITE}): {exc}", pytrace=False)
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


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto server (S3, DynamoDB, SQS) on a free loopback port, with fake credentials set for the session."""
    executable = Path(sys.executable).parent / "moto_server"
    if not executable.exists():
        pytest.fail(f"moto_server is not installed at {executable}: pip install -r requirements-dev.txt", pytrace=False)
    workdir = tmp_path_factory.mktemp("moto")
    log = workdir / "moto.log"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(
                [str(executable), "-H", "127.0.0.1", "-p", str(port)],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as exc:
            pytest.fail(f"could not start moto_server ({executable}): {exc}", pytrace=False)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answered HTTP, so it is up
        except OSError:
            return False

    patch = pytest.MonkeyPatch()
    try:
        _wait_ready("moto_server", proc, log, answers)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
            patch.delenv(name, raising=False)
        yield Moto(endpoint)
    finally:
        patch.undo()
        _stop(proc)


# --------------------------------------------------------------------------- settings and backends


def unique(prefix: str, length: int = 12) -> str:
    return prefix + uuid.uuid4().hex[:length]


@pytest.fixture
def settings_for(request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """``settings_for(kind, tmp_path, **overrides)``: isolated Settings for one backend.

    Starts the backend's emulator on first use. AWS settings get a bucket and
    DynamoDB/SQS name prefixes of their own, so tests never see each other's data.
    """

    def make(kind: str, tmp_path: Path, **overrides: object) -> Settings:
        if kind == "local":
            values: dict[str, object] = {"backend": "local", "data_dir": Path(tmp_path)}
        elif kind == "azure":
            emulator: Azurite = request.getfixturevalue("azurite")
            values = {"backend": "azure", "azure_connection_string": emulator.connection_string}
        elif kind == "aws":
            moto: Moto = request.getfixturevalue("moto_server")
            tag = uuid.uuid4().hex[:10]
            values = {
                "backend": "aws",
                "aws_endpoint_url": moto.endpoint_url,
                "aws_region": "us-east-1",
                "aws_bucket": f"stowage-test-{tag}",
                "aws_table_prefix": f"t{tag}-",
                "aws_queue_prefix": f"q{tag}-",
            }
        else:
            raise ValueError(f"unknown backend kind {kind!r}; expected one of {BACKENDS}")
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture(params=BACKENDS, ids=list(BACKENDS))
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind not in selected_backends():
        pytest.skip(f"{ENV_BACKENDS} excludes {kind}")
    return kind


@pytest.fixture
def settings(backend_kind: str, tmp_path: Path, settings_for: Callable[..., Settings]) -> Settings:
    """Settings for the current backend, isolated to this test."""
    return settings_for(backend_kind, tmp_path)


@pytest.fixture
def backend(settings: Settings) -> Iterator[Backend]:
    instance = create_backend(settings)
    try:
        yield instance
    finally:
        instance.close()


@dataclass(frozen=True)
class Names:
    """Resource names unique to one test (valid on every backend)."""

    container: str
    table: str
    queue: str


@pytest.fixture
def names() -> Names:
    return Names(container=unique("c-"), table=unique("t"), queue=unique("q-"))


@pytest.fixture
def resources(backend: Backend, names: Names) -> Names:
    """This test's container, table and queue, created."""
    backend.ensure(containers=[names.container], tables=[names.table], queues=[names.queue])
    return names


@pytest.fixture
def blobs(backend: Backend, names: Names) -> BlobStore:
    backend.ensure(containers=[names.container])
    return backend.blobs(names.container)


@pytest.fixture
def table(backend: Backend, names: Names) -> TableStore:
    backend.ensure(tables=[names.table])
    return backend.table(names.table)


@pytest.fixture
def queue(backend: Backend, names: Names) -> QueueStore:
    backend.ensure(queues=[names.queue])
    return backend.queue(names.queue)
