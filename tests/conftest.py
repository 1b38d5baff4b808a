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
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.backends import Backend, BlobStore, QueueStore, TableStore, create_backend
from shared.config import BACKENDS, Settings
from tests.e2e import Server, run_server
from tests.emulators import Azurite, EmulatorError, Moto, free_port, start_azurite, start_moto  # noqa: F401

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


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite (blob, queue, table) in memory on free loopback ports, for the session."""
    with ExitStack() as stack:
        try:
            emulator = stack.enter_context(start_azurite(tmp_path_factory.mktemp("azurite")))
        except EmulatorError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield emulator


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto server (S3, DynamoDB, SQS) on a free loopback port, with fake credentials set for the session."""
    with ExitStack() as stack:
        try:
            emulator = stack.enter_context(start_moto(tmp_path_factory.mktemp("moto")))
        except EmulatorError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield emulator


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


# --------------------------------------------------------------------------- end-to-end server


@pytest.fixture(scope="session", params=BACKENDS, ids=list(BACKENDS))
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`stowage serve` as a real process on this backend, shared by every e2e module."""
    kind: str = request.param
    if kind not in selected_backends():
        pytest.skip(f"{ENV_BACKENDS} excludes {kind}")
    yield from run_server(kind, request, tmp_path_factory.mktemp(f"e2e-{kind}"))
