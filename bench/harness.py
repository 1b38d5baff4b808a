"""What every benchmark shares: timing loops and settings for a backend, emulators started on demand."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.config import Settings  # noqa: E402
from tests.emulators import start_azurite, start_moto  # noqa: E402

T = TypeVar("T")


def rate(count: int, action: Callable[[int], object]) -> float:
    """Calls per second of ``action(i)`` for i in range(count)."""
    start = time.perf_counter()
    for i in range(count):
        action(i)
    return count / (time.perf_counter() - start)


def settings_for(kind: str, workdir: Path, stack: ExitStack) -> Settings:
    """Settings for ``kind``; Azurite or moto is started under ``stack`` when needed."""
    if kind == "local":
        return Settings(backend="local", data_dir=workdir / "local")
    if kind == "azure":
        azurite = stack.enter_context(start_azurite(workdir / "azurite"))
        return Settings(backend="azure", azure_connection_string=azurite.connection_string)
    if kind == "aws":
        moto = stack.enter_context(start_moto(workdir / "moto"))
        return Settings(backend="aws", aws_endpoint_url=moto.endpoint_url, aws_bucket=f"bench-{uuid.uuid4().hex[:8]}")
    raise SystemExit(f"unknown backend {kind!r}: choose local, azure or aws")


def backend_list(text: str) -> list[str]:
    return [kind.strip() for kind in text.split(",") if kind.strip()]


def measure_on_backends(kinds: list[str], measure: Callable[[str, Any], T], announce: Callable[[str], None]) -> dict[str, T]:
    """``measure(kind, stores)`` on each backend in turn, every app resource created first."""
    from shared.stores import Stores

    results: dict[str, T] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            stores = Stores.from_settings(settings_for(kind, Path(tmp), stack))
            try:
                stores.ensure()
                announce(kind)
                results[kind] = measure(kind, stores)
            finally:
                stores.close()
    return results


# --------------------------------------------------------------------------- rounds, load, server processes


def median_range(values: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of ``values``: the way every interleaved figure is reported."""
    import statistics

    return statistics.median(values), min(values), max(values)


def machine_load() -> str:
    """The 1/5/15-minute load averages against the CPU count, to print beside wall-clock figures."""
    import os

    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def process_cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds a process (and, by default, its live child processes) used so far.

    Linux ``/proc``, in clock ticks (10 ms): read it over a phase long enough for that grain.
    """
    import os

    def own(one: int) -> float:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # exited meanwhile
        # After the command name: state is field 3, utime field 14, stime field 15 (1-based, man 5 proc).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    total, pending = 0.0, [pid]
    while pending:
        one = pending.pop()
        total += own(one)
        if children:
            for task in Path(f"/proc/{one}/task").glob("*/children"):
                try:
                    pending.extend(int(child) for child in task.read_text().split())
                except OSError:
                    pass
    return total


class ServedStowage:
    """A running ``stowage serve``: its base URL, an API key for ``tenant`` and the server's pid."""

    def __init__(self, url: str, api_key: str, tenant: str, pid: int, data_dir: Path) -> None:
        self.url, self.api_key, self.tenant, self.pid, self.data_dir = url, api_key, tenant, pid, data_dir

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


def _serve_flags(stowage: str, environment: dict[str, str]) -> list[str]:
    """HTTP only, one process: the flags this version of ``stowage serve`` spells that with."""
    import subprocess

    usage = subprocess.run([stowage, "serve", "--help"], cwd=ROOT, env=environment, capture_output=True,
                           text=True, timeout=60).stdout
    flags = ["--http-only"] if "--http-only" in usage else ["--no-workers"]
    if "--workers" in usage.replace("--no-workers", ""):
        flags += ["--workers", "1"]
    return flags


def stowage_server(data_dir: Path, *, tenant: str = "bench", env: dict[str, str] | None = None,
                   log_level: str = "info", deadline: float = 60.0) -> Any:
    """A context manager: ``stowage serve`` (HTTP only) on a free loopback port, on the local backend
    in ``data_dir`` unless ``env`` says otherwise, with a fresh API key for ``tenant``.

    The key is made with ``stowage keys create`` against the same settings before the server
    starts; the server's output goes to ``data_dir/server.log``.
    """
    import json
    import os
    import subprocess
    from contextlib import contextmanager

    import httpx

    from tests.emulators import free_port

    stowage = str(Path(sys.executable).with_name("stowage"))

    @contextmanager
    def running() -> Any:
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        environment = {**os.environ, "STOWAGE_BACKEND": "local", "STOWAGE_DATA_DIR": str(data_dir),
                       "PYTHONPATH": str(ROOT), **(env or {})}
        made = subprocess.run([stowage, "keys", "create", "--tenant", tenant, "--json"], cwd=ROOT,
                              env=environment, capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise RuntimeError(f"stowage keys create failed: {made.stderr}")
        api_key = json.loads(made.stdout)["api_key"]
        log_path = data_dir / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen([stowage, "serve", *_serve_flags(stowage, environment), "--port", str(port),
                                     "--log-level", log_level],
                                    cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            try:
                give_up = time.monotonic() + deadline
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"stowage serve exited with {proc.returncode}:\n{log_path.read_text()}")
                    try:
                        if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > give_up:
                        raise RuntimeError(f"stowage serve did not answer within {deadline:.0f} s")
                    time.sleep(0.1)  # polling for readiness, not synchronising work
                yield ServedStowage(url, api_key, tenant, proc.pid, data_dir)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    return running()
