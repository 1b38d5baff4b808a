"""The end-to-end harness: `stowage serve` as a real process on a loopback port.

The ``server`` fixture (tests/conftest.py) starts one server per backend for the
whole session; e2e test modules of every domain share it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.config import Settings
from shared.stores import Stores
from tests.emulators import free_port

ROOT = Path(__file__).resolve().parents[1]
STOWAGE = str(Path(sys.executable).with_name("stowage"))
MAX_BYTES = 1024 * 1024
MAX_DEQUEUE = 3
TENANTS = ("alpha", "beta")


def until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def problem(response: httpx.Response, status: int) -> dict:
    """Assert a problem+json error with this status; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


@dataclass
class Server:
    url: str
    env: dict[str, str]
    stores: Stores
    keys: dict[str, str]

    @property
    def backend(self) -> str:
        return self.env["STOWAGE_BACKEND"]

    def client(self, tenant: str | None = "alpha") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([STOWAGE, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)

    def log(self) -> str:
        return (Path(self.env["STOWAGE_DATA_DIR"]) / "server.log").read_text()


def backend_environment(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """STOWAGE_* settings that point a server process at this backend's emulator."""
    if kind == "azure":
        azurite = request.getfixturevalue("azurite")
        return {"STOWAGE_AZURE_CONNECTION_STRING": azurite.connection_string}
    if kind == "aws":
        moto = request.getfixturevalue("moto_server")  # also puts fake credentials in os.environ
        tag = uuid.uuid4().hex[:8]
        return {"STOWAGE_AWS_ENDPOINT_URL": moto.endpoint_url, "STOWAGE_AWS_BUCKET": f"e2e-{tag}",
                "STOWAGE_AWS_TABLE_PREFIX": f"e2e{tag}-", "STOWAGE_AWS_QUEUE_PREFIX": f"e2e{tag}-"}
    return {}


def run_server(kind: str, request: pytest.FixtureRequest, data_dir: Path) -> Iterator[Server]:
    """Start `stowage serve` on ``kind`` with fast queue retries; yield it; stop it."""
    host_json = json.loads((ROOT / "host.json").read_text())
    host_json["extensions"]["queues"].update(
        maxDequeueCount=MAX_DEQUEUE, visibilityTimeout="00:00:00", maxPollingInterval="00:00:01")
    host_path = data_dir / "host.json"
    host_path.write_text(json.dumps(host_json))
    port = free_port()
    backend_env = backend_environment(kind, request)  # first: starting moto sets credentials in os.environ
    env = {**os.environ, "STOWAGE_BACKEND": kind, "STOWAGE_DATA_DIR": str(data_dir),
           "STOWAGE_MAX_OBJECT_BYTES": str(MAX_BYTES), "PORT": str(port), "PYTHONPATH": str(ROOT), **backend_env}
    keys = {}
    for tenant in TENANTS:
        made = subprocess.run([STOWAGE, "keys", "create", "--tenant", tenant, "--json"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        keys[tenant] = json.loads(made.stdout)["api_key"]
    # A key with every scope for the first tenant, for what must reach the admin routes (schemathesis).
    made = subprocess.run([STOWAGE, "keys", "create", "--tenant", TENANTS[0], "--scope", "read,write,admin", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    keys[f"{TENANTS[0]}-admin"] = json.loads(made.stdout)["api_key"]
    log = open(data_dir / "server.log", "w")
    # No timers: the emulators are shared with service tests that drive the same timer code with
    # explicit clocks, and a real timer firing mid-run would act on their data.
    proc = subprocess.Popen([STOWAGE, "serve", "--host-json", str(host_path), "--app", "tests.e2e_app:app",
                             "--no-timers"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (data_dir / "server.log").read_text()
        try:
            return httpx.get(url + "/api/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    stores = None
    try:
        until(healthy, "the server to answer", timeout=180.0)  # a loaded 2-core machine starts it slowly
        stores = Stores.from_settings(Settings.from_env(env, settings_file=data_dir / "absent.json"))
        yield Server(url, env, stores, keys)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        if stores is not None:
            stores.close()
