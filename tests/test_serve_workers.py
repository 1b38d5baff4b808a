"""`stowage serve --workers N`: N processes answer HTTP on one socket; queue pollers and timers run once.

Each test starts `stowage serve --workers 2` as a real process on a backend (local, Azurite,
moto), serving the function app this module defines (``--app tests.test_serve_workers:app``):
the production API, two anonymous routes that name the process answering, a timer that
fires every second and a queue trigger, both of which record the process they ran in.

* Two processes answer at once: one request holds its worker's event loop (it waits on a
  socket the test owns, blocking the loop on purpose), and a second request on a new
  connection must still be answered, by another process. With one worker it would wait.
* Timers and pollers run in exactly one process, the supervisor, which serves no HTTP:
  every timer firing and every message is recorded by that one pid, once per second for
  the timer, once per message for the queue.
* SIGTERM (and SIGINT) stop every process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import ROOT, STOWAGE, backend_environment, until
from tests.emulators import free_port

QUEUE = "serve-workers-probe"
PIDS_DIR = "STOWAGE_TEST_PIDS_DIR"
WORKERS = 2


# --------------------------------------------------------------------------- the served app


def _build() -> tuple[Any, Any]:
    """The function app the server processes import (through :func:`__getattr__`, not at collection)."""
    import azure.functions as func

    from functions.context import AppContext
    from functions.http_api import create_api
    from shared import names

    context = AppContext.from_env()
    api = create_api(context)
    pids = Path(os.environ[PIDS_DIR])

    @api.get("/api/probe/pid", include_in_schema=False)
    async def pid() -> dict[str, int]:
        return {"pid": os.getpid()}

    @api.get("/api/probe/hold", include_in_schema=False)
    async def hold(port: int) -> dict[str, int]:
        # Blocks this worker's event loop on purpose, until the test sends a byte on this connection.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as held:
            held.recv(1)
        return {"pid": os.getpid()}

    app = func.AsgiFunctionApp(app=api, http_auth_level=func.AuthLevel.ANONYMOUS)
    blueprint = func.Blueprint()

    @blueprint.function_name("probe_timer")
    @blueprint.timer_trigger(schedule="* * * * * *", arg_name="timer")
    def probe_timer(timer: func.TimerRequest) -> None:
        with open(pids / "timer", "a") as out:
            out.write(f"{os.getpid()} {int(time.time())}\n")

    @blueprint.function_name("probe_queue")
    @blueprint.queue_trigger(arg_name="msg", queue_name=QUEUE, connection=names.SETTING_QUEUE_CONNECTION)
    def probe_queue(msg: func.QueueMessage) -> None:
        with open(pids / "queue", "a") as out:
            out.write(f"{os.getpid()} {msg.get_body().decode()}\n")

    app.register_functions(blueprint)
    return app, context


_built: tuple[Any, Any] | None = None


def __getattr__(name: str) -> Any:
    """``app`` and ``context``, what `stowage serve --app tests.test_serve_workers:app` reads."""
    global _built
    if name in ("app", "context"):
        if _built is None:
            _built = _build()
        return _built[0] if name == "app" else _built[1]
    raise AttributeError(name)


# --------------------------------------------------------------------------- the server


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found |= {int(child) for child in task.read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(params=["local", "azure", "aws"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """`stowage serve --workers 2` on this backend, with timers; yields (process, url, pids dir, env)."""
    kind = request.param
    from tests.conftest import selected_backends

    if kind not in selected_backends():
        pytest.skip(f"backend {kind} not selected (STOWAGE_TEST_BACKENDS)")
    host_json = json.loads((ROOT / "host.json").read_text())
    host_json["extensions"]["queues"].update(visibilityTimeout="00:00:00", maxPollingInterval="00:00:01")
    (tmp_path / "host.json").write_text(json.dumps(host_json))
    pids = tmp_path / "pids"
    pids.mkdir()
    port = free_port()
    backend_env = backend_environment(kind, request)
    env = {**os.environ, "STOWAGE_BACKEND": kind, "STOWAGE_DATA_DIR": str(tmp_path / "data"), "PORT": str(port),
           "PYTHONPATH": str(ROOT), PIDS_DIR: str(pids), **backend_env}
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([STOWAGE, "serve", "--workers", str(WORKERS), "--host-json", str(tmp_path / "host.json"),
                                 "--app", "tests.test_serve_workers:app"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(url + "/api/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(ready, "the server to answer")
        yield proc, url, pids, env
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


def _answering_pid(url: str, path: str, timeout: float = 30) -> int:
    with httpx.Client(timeout=timeout) as client:  # a new connection each time
        response = client.get(url + path)
        assert response.status_code == 200, response.text
        return int(response.json()["pid"])


# --------------------------------------------------------------------------- tests


def test_two_worker_processes_answer_at_once_and_triggers_run_in_the_supervisor_only(served):
    proc, url, pids, env = served
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(60)
        held: dict[str, int] = {}
        holder = threading.Thread(target=lambda: held.update(
            pid=_answering_pid(url, f"/api/probe/hold?port={gate.getsockname()[1]}", timeout=90)))
        holder.start()
        connection, _ = gate.accept()  # one worker's event loop is now blocked, waiting on this connection
        with connection:
            other = _answering_pid(url, "/api/probe/pid", timeout=20)  # answered meanwhile: another process
            connection.sendall(b"x")
        holder.join(90)
    workers = _children(proc.pid)
    assert held["pid"] != other
    assert {held["pid"], other} <= workers, "HTTP is answered by the supervisor's worker processes"
    assert proc.pid not in (held["pid"], other), "the supervisor serves no HTTP"

    # The timer fires once a second, in the supervisor only.
    timer_file = pids / "timer"
    until(lambda: timer_file.is_file() and len(timer_file.read_text().splitlines()) >= 3, "three timer firings")
    firings = [line.split() for line in timer_file.read_text().splitlines()]
    assert {pid for pid, _ in firings} == {str(proc.pid)}
    seconds = [second for _, second in firings]
    assert len(seconds) == len(set(seconds)), f"a second fired twice: {seconds}"

    # Every message is handled once, in the supervisor.
    from shared.config import Settings
    from shared.stores import Stores

    stores = Stores.from_settings(Settings.from_env(env, settings_file=Path(env["STOWAGE_DATA_DIR"]) / "absent.json"))
    try:
        queue = stores.backend.queue(QUEUE)
        sent = [f"m-{uuid.uuid4().hex[:8]}-{n}" for n in range(10)]
        for body in sent:
            queue.send(body)
        queue_file = pids / "queue"

        def handled() -> list[list[str]]:
            lines = queue_file.read_text().splitlines() if queue_file.is_file() else []
            got = [line.split() for line in lines]
            return got if {body for _, body in got} >= set(sent) else []

        got = until(handled, "every message to be handled")
    finally:
        stores.close()
    assert {pid for pid, _ in got} == {str(proc.pid)}
    assert sorted(body for _, body in got if body in sent) == sorted(sent), "each message handled once"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_process(served, stop):
    proc, url, _, _ = served
    until(lambda: len(_children(proc.pid)) >= WORKERS, "the workers to start")
    workers = _children(proc.pid)
    proc.send_signal(stop)
    assert proc.wait(timeout=60) == 0
    until(lambda: not any(_alive(pid) for pid in workers), "every worker to exit", timeout=30)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/api/health", timeout=2)


def test_serve_defaults_to_a_worker_per_cpu_and_refuses_zero():
    from cli.main import build_parser

    assert build_parser().parse_args(["serve"]).workers == (os.cpu_count() or 1)
    assert build_parser().parse_args(["serve", "--workers", "3"]).workers == 3
    refused = subprocess.run([STOWAGE, "serve", "--workers", "0"], check=False, cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "STOWAGE_BACKEND": "local",
                                               "STOWAGE_DATA_DIR": "/nonexistent/never-created"})
    assert refused.returncode != 0 and "--workers must be at least 1" in refused.stdout + refused.stderr
