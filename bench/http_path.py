"""Server CPU per HTTP request: `stowage serve` against a bare Starlette route returning the same bytes.

    .venv/bin/python bench/http_path.py [--rounds 5] [--requests 1000] [--clients 1,4,16] [--workers 1,2]
                                   [--endpoints health,object_get,object_put,message_post,history]
                                   [--before-tree /path/to/an/older/copy] [--functions-requests 2000]

What is measured, per phase (one endpoint, one variant, one client count, one worker count):

* server CPU per request: CPU time of every thread of every process of the server (the
  supervisor and its workers, from ``/proc/<pid>/task/*/schedstat``, in ns) over the phase,
  divided by its requests; this counts the server's work whatever else the machine does;
* requests per second seen by the clients (wall clock: noisy on a shared machine).

The load comes from a separate client process (asyncio, raw sockets, keep-alive, one
connection per client, each connection warmed up before the phase starts). Variants:

* ``stowage``: `stowage serve --http-only --workers N` on the local backend, with uvicorn's
  default implementations (httptools and uvloop when installed);
* ``stowage-h11``: the same with ``--http h11 --loop asyncio`` (what `stowage serve` ran before
  uvicorn[standard]), to measure that lever alone;
* ``bare``: a Starlette app whose routes return the bytes, status and content type the stowage
  server answered for the same request (captured first), served by the same uvicorn with the
  same settings (workers, http and loop implementation, no access log);
* ``bare-h11``: the bare app on h11 and asyncio, the floor for ``stowage-h11``;
* ``fastapi`` (ask for it with ``--variants``): the same routes as a FastAPI app without
  parameters or dependencies, on the same server: the framework's own floor;
* ``before`` (with ``--before-tree``): `stowage serve` from another copy of the source tree, on
  h11 and asyncio (``--before-http``, ``--before-loop`` to change), one worker: the tree as it
  was before a change, to measure that change.

Rounds interleave every variant (in a shuffled order per round), and each figure is the
median and range over rounds of a per-round ratio against ``bare`` (or ``bare-h11``) in that
same round. Throughput scaling is the per-round ratio of 2 workers to 1 worker at the highest
client count. The Functions path is measured in this process: ``function_app.app``'s HTTP
function called as the host calls it (``get_functions()`` and the user function with a
``func.HttpRequest``), CPU per request from ``time.process_time``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this file would stand in for the
# standard library's ``http`` package: drop the folder (the repository root is added below).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request  # at module level: FastAPI resolves the bare handlers' annotations here

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STOWAGE = str(Path(sys.executable).with_name("stowage"))
TENANT = "bench"
OBJECT_BYTES = 1024


# --------------------------------------------------------------------------- the requests


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    #: The path; ``{i}`` is the client's number (writes go to a key or thread of their own: no contention).
    path: str
    body: bytes = b""
    content_type: str | None = None
    authenticated: bool = True


ENDPOINTS = {
    "health": Endpoint("health", "GET", "/api/health", authenticated=False),
    "object_get": Endpoint("object_get", "GET", "/api/v1/objects/bench/read"),
    "object_put": Endpoint("object_put", "PUT", "/api/v1/objects/bench/put-{i}", b"x" * OBJECT_BYTES,
                           "application/octet-stream"),
    "message_post": Endpoint("message_post", "POST", "/api/v1/threads/post-{i}/messages",
                             b'{"role": "user", "content": "hello, how are you today?"}', "application/json"),
    "history": Endpoint("history", "GET", "/api/v1/threads/read/messages?last=20"),
}


def request_bytes(endpoint: Endpoint, client: int, key: str, port: int) -> bytes:
    lines = [f"{endpoint.method} {endpoint.path.format(i=client)} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if endpoint.authenticated:
        lines.append(f"Authorization: Bearer {key}")
    if endpoint.method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(endpoint.body)}")
        lines.append(f"Content-Type: {endpoint.content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + endpoint.body


# --------------------------------------------------------------------------- the client process


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _client_main(port: int, requests: list[bytes], count: int, warmup: int) -> None:
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in requests]
    bad: list[int] = []

    async def run(index: int, times: int) -> None:
        reader, writer = connections[index]
        for _ in range(times):
            status = await _exchange(reader, writer, requests[index])
            if status >= 300:
                bad.append(status)

    await asyncio.gather(*(run(i, warmup) for i in range(len(requests))))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    share = [count // len(requests) + (1 if i < count % len(requests) else 0) for i in range(len(requests))]
    start = time.perf_counter()
    await asyncio.gather(*(run(i, share[i]) for i in range(len(requests))))
    elapsed = time.perf_counter() - start
    for _, writer in connections:
        writer.close()
    print(json.dumps({"seconds": elapsed, "bad": bad[:5], "bad_count": len(bad)}), flush=True)


def client_command(args: argparse.Namespace) -> int:
    spec = json.loads(Path(args.spec).read_text())
    requests = [bytes.fromhex(r) for r in spec["requests"]]
    try:
        import uvloop
        uvloop.run(_client_main(spec["port"], requests, spec["count"], spec["warmup"]))
    except ImportError:
        asyncio.run(_client_main(spec["port"], requests, spec["count"], spec["warmup"]))
    return 0


# --------------------------------------------------------------------------- the bare server


def bare_app() -> Any:
    """Routes answering what ``STOWAGE_BENCH_ANSWERS`` (a JSON file) recorded per endpoint: Starlette's, or
    with ``STOWAGE_BENCH_FRAMEWORK=fastapi`` FastAPI's (the framework's own floor, no parameters)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    answers = json.loads(Path(os.environ["STOWAGE_BENCH_ANSWERS"]).read_text())
    fastapi = os.environ.get("STOWAGE_BENCH_FRAMEWORK") == "fastapi"
    routes = []
    for name, answer in answers.items():
        endpoint = ENDPOINTS[name]
        body = bytes.fromhex(answer["body"])

        def make(body: bytes = body, answer: dict[str, Any] = answer) -> Any:
            async def handle(request: Request) -> Response:
                await request.body()
                return Response(body, status_code=answer["status"], media_type=answer["content_type"])
            return handle

        routes.append((endpoint.path.split("?")[0], make(), endpoint.method))
    if fastapi:
        from fastapi import FastAPI

        app = FastAPI()
        for path, handle, method in routes:
            app.add_api_route(path, handle, methods=[method])
        return app
    return Starlette(routes=[Route(path, handle, methods=[method]) for path, handle, method in routes])


def bare_command(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("bench.http:bare_app", factory=True, host="127.0.0.1", port=args.port, workers=args.workers,
                http=args.http, loop=args.loop, access_log=False, log_level="warning")
    return 0


def _use_tree(tree: str) -> None:
    """Import ``cli``, ``functions``, ``shared`` and ``function_app`` from ``tree`` instead of this one."""
    sys.path.insert(0, tree)
    sys.path.remove(str(ROOT))
    os.chdir(tree)
    for name in [m for m in sys.modules if m.split(".")[0] in ("cli", "functions", "shared", "function_app")]:
        del sys.modules[name]


def prepare_command(args: argparse.Namespace) -> int:
    """Prepare ``--data-dir`` with the code of ``--tree`` (its row formats may differ); print the key."""
    if args.tree:
        _use_tree(args.tree)
    print(prepare(Path(args.data_dir)))
    return 0


def functions_command(args: argparse.Namespace) -> int:
    """Print, as JSON, :func:`functions_path`'s figures for ``--tree``'s function app (default: this one)."""
    if args.tree:
        _use_tree(args.tree)
    names = args.endpoints.split(",")
    print(json.dumps(functions_path(Path(args.data_dir), args.key, names, args.requests, args.rounds)))
    return 0


def before_command(args: argparse.Namespace) -> int:
    """`stowage serve` of another source tree, forced onto h11 and asyncio (its uvicorn had neither httptools
    nor uvloop installed; they are installed now)."""
    import uvicorn

    _use_tree(args.tree)
    original = uvicorn.Config.__init__

    def forced(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **{**kw, "http": args.http, "loop": args.loop})

    uvicorn.Config.__init__ = forced  # type: ignore[method-assign]
    from cli.main import main  # the other tree's

    return main(["serve", "--no-workers", "--port", str(args.port), "--log-level", "warning"])


# --------------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, pending = [root], [root]
    while pending:
        pid = pending.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found.extend(children)
        pending.extend(children)
    return found


def cpu_ms(pids: list[int]) -> float:
    """CPU time of every thread of these processes, in ms (``/proc/<pid>/task/<tid>/schedstat``: ns on CPU;
    finer than the 10 ms ticks of ``stat``). A thread that ends during a phase takes its time with it: the
    server's threads (loop, thread pool) live through a phase."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e6


@dataclass
class Server:
    name: str
    workers: int
    port: int
    proc: subprocess.Popen[bytes]
    #: The API key of the data this server reads.
    key: str

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_ready(server: Server, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"server {server.name} exited with {server.proc.returncode}")
        try:
            # Any answer: the bare app has /api/health only when health is measured.
            answered = httpx.get(f"http://127.0.0.1:{server.port}/api/health", timeout=2).status_code in (200, 404)
            # Every worker is up once as many processes as workers (plus the supervisor) exist.
            if answered and (server.workers == 1 or len(server.pids()) >= server.workers + 1):
                time.sleep(0.5)  # not synchronisation: lets the workers finish their imports
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server {server.name} did not answer")


def prepare(data_dir: Path) -> str:
    """The tenant's key, an object to read, a thread with history to read, a thread per writing client."""
    from shared.apikeys import SCOPES, ApiKeyService
    from shared.config import Settings
    from shared.domains.memory import MemoryService
    from shared.domains.objects import ObjectService
    from shared.stores import Stores

    stores = Stores.from_settings(Settings(backend="local", data_dir=data_dir))
    try:
        stores.ensure()
        _, key = ApiKeyService(stores).create(TENANT, label="bench", scopes=SCOPES)
        ObjectService(stores).put(TENANT, "bench/read", b"r" * OBJECT_BYTES, "application/octet-stream")
        memory = MemoryService(stores)
        memory.create_thread(TENANT, "bench", thread_id="read")
        memory.add_messages(TENANT, "read", [{"role": "user", "content": f"message {n}"} for n in range(40)])
        for client in range(64):
            memory.create_thread(TENANT, "bench", thread_id=f"post-{client}")
    finally:
        stores.close()
    return key


def capture(port: int, key: str, names: list[str]) -> dict[str, Any]:
    """What the stowage server answers for each endpoint: the bytes the bare app will send."""
    import httpx

    answers = {}
    for name in names:
        endpoint = ENDPOINTS[name]
        headers = {"Authorization": f"Bearer {key}"} if endpoint.authenticated else {}
        if endpoint.content_type:
            headers["Content-Type"] = endpoint.content_type
        response = httpx.request(endpoint.method, f"http://127.0.0.1:{port}{endpoint.path.format(i=63)}",
                                 headers=headers, content=endpoint.body or None)
        assert response.status_code < 300, response.text
        answers[name] = {"status": response.status_code, "body": response.content.hex(),
                         "content_type": response.headers["content-type"]}
    return answers


def run_phase(server: Server, endpoint: Endpoint, clients: int, count: int, workdir: Path) -> dict[str, float]:
    spec = workdir / "spec.json"
    spec.write_text(json.dumps({
        "port": server.port, "count": count, "warmup": 20,
        "requests": [request_bytes(endpoint, i, server.key, server.port).hex() for i in range(clients)]}))
    client = subprocess.Popen([sys.executable, __file__, "client", "--spec", str(spec)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    if client.stdout.readline().strip() != "ready":
        raise SystemExit(f"{server.name}/w{server.workers} {endpoint.name} x{clients}: the client failed")
    pids = server.pids()
    before = cpu_ms(pids)
    client.stdin.write("go\n")
    client.stdin.flush()
    result = json.loads(client.stdout.readline())
    after = cpu_ms(pids)
    client.wait()
    if result["bad_count"]:
        raise SystemExit(f"{server.name} {endpoint.name}: {result['bad_count']} bad answers, e.g. {result['bad']}")
    return {"cpu_ms": (after - before) / count, "rps": count / result["seconds"]}


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


# --------------------------------------------------------------------------- the Functions path


class _InvocationContext:
    function_name = "http_app_func"
    function_directory = str(ROOT)
    trace_context = None
    retry_context = None
    thread_local_storage = None

    def __init__(self) -> None:
        self.invocation_id = str(uuid.uuid4())


def functions_path(data_dir: Path, key: str, names: list[str], count: int, rounds: int) -> dict[str, list[float]]:
    """CPU ms per request through ``AsgiFunctionApp``'s HTTP function, as the Functions host calls it."""
    import importlib

    import azure.functions as func

    os.environ.update(STOWAGE_BACKEND="local", STOWAGE_DATA_DIR=str(data_dir))
    module = importlib.import_module("function_app")
    (http,) = [f for f in module.app.get_functions() if f.get_function_name() == "http_app_func"]
    function = http.get_user_function()
    results: dict[str, list[float]] = {name: [] for name in names}
    with asyncio.Runner() as runner:
        for _ in range(rounds):
            for name in random.sample(names, len(names)):
                endpoint = ENDPOINTS[name]
                path, _, query = endpoint.path.format(i=0).partition("?")
                headers = {"host": "stowage.azurewebsites.net"}
                if endpoint.authenticated:
                    headers["authorization"] = f"Bearer {key}"
                if endpoint.body:
                    headers |= {"content-length": str(len(endpoint.body)), "content-type": endpoint.content_type or ""}
                params = dict(part.split("=") for part in query.split("&")) if query else {}
                url = f"https://stowage.azurewebsites.net{endpoint.path.format(i=0)}"

                def one(endpoint: Endpoint = endpoint, url: str = url, headers: dict[str, str] = headers,
                        params: dict[str, str] = params, path: str = path, name: str = name) -> None:
                    request = func.HttpRequest(endpoint.method, url, headers=headers, params=params,
                                               route_params={"route": path.lstrip("/")}, body=endpoint.body)
                    response = runner.run(function(request, _InvocationContext()))
                    if response.status_code >= 300:
                        raise SystemExit(f"functions path {name}: {response.status_code} {response.get_body()!r}")

                for _ in range(20):
                    one()
                start = time.process_time()
                for _ in range(count):
                    one()
                results[name].append((time.process_time() - start) * 1000 / count)
    module.context.close()
    return results


# --------------------------------------------------------------------------- main


def main_command(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.endpoints.split(",") if n.strip()]
    client_counts = [int(c) for c in args.clients.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.before_tree:
        variants.append("before")
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    data_dir = workdir / "data"
    key = prepare(data_dir)
    env = {**os.environ, "STOWAGE_BACKEND": "local", "STOWAGE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
           "STOWAGE_BENCH_ANSWERS": str(workdir / "answers.json")}
    servers: list[Server] = []
    before_env, before_key = env, key
    if args.before_tree:  # its own data: the other tree's code may store rows in another format
        before_env = {**env, "STOWAGE_DATA_DIR": str(workdir / "before-data")}
        before_key = subprocess.run([sys.executable, __file__, "prepare", "--tree", args.before_tree, "--data-dir",
                                     before_env["STOWAGE_DATA_DIR"]], check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1]

    def start(name: str, workers: int) -> Server:
        port = free_port()
        if name.startswith("stowage"):
            extra = ["--http", "h11", "--loop", "asyncio"] if name.endswith("h11") else []
            command = [STOWAGE, "serve", "--http-only", "--workers", str(workers), "--port", str(port),
                       "--log-level", "warning", *extra]
        elif name.startswith("bare") or name == "fastapi":
            extra = ["--http", "h11", "--loop", "asyncio"] if name.endswith("h11") else []
            command = [sys.executable, __file__, "bare", "--port", str(port), "--workers", str(workers), *extra]
        else:
            command = [sys.executable, __file__, "before", "--tree", args.before_tree, "--port", str(port),
                       "--http", args.before_http, "--loop", args.before_loop]
        server_env = before_env if name == "before" else env
        if name == "fastapi":
            server_env = {**env, "STOWAGE_BENCH_FRAMEWORK": "fastapi"}
        proc = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                                if not args.verbose else None)
        server = Server(name, workers, port, proc, before_key if name == "before" else key)
        servers.append(server)
        wait_ready(server)
        return server

    try:
        first = start("stowage", 1)
        (workdir / "answers.json").write_text(json.dumps(capture(first.port, key, names)))
        running: dict[tuple[str, int], Server] = {("stowage", 1): first}
        for variant in variants:
            for workers in worker_counts:
                if variant == "before" and workers != 1:
                    continue
                if (variant, workers) not in running:
                    running[(variant, workers)] = start(variant, workers)
        print(f"servers up: {', '.join(f'{v}/w{w}' for v, w in running)}; load average {os.getloadavg()}",
              flush=True)
        # samples[(variant, workers, endpoint, clients)] -> per-round figures
        samples: dict[tuple[str, int, str, int], list[dict[str, float]]] = {}
        for round_number in range(args.rounds):
            for name in names:
                for clients in client_counts:
                    order = list(running)
                    random.shuffle(order)
                    for variant, workers in order:
                        figures = run_phase(running[(variant, workers)], ENDPOINTS[name], clients, args.requests,
                                            workdir)
                        samples.setdefault((variant, workers, name, clients), []).append(figures)
            print(f"round {round_number + 1}/{args.rounds} done; load average {os.getloadavg()}", flush=True)
    finally:
        for server in servers:
            server.stop()

    def per_round(variant: str, workers: int, name: str, clients: int, what: str) -> list[float]:
        return [s[what] for s in samples.get((variant, workers, name, clients), [])]

    def ratio(a: list[float], b: list[float]) -> list[float]:
        return [x / y for x, y in zip(a, b) if y]

    print("\nserver CPU per request, ms: median (range) over rounds; ratio to the bare route in the same round")
    print("| endpoint | clients | workers | variant | CPU ms/req | x bare | req/s |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name in names:
        for clients in client_counts:
            for workers in worker_counts:
                for variant in variants:
                    cpu = per_round(variant, workers, name, clients, "cpu_ms")
                    if not cpu:
                        continue
                    floor = ("bare-h11" if variant == "stowage-h11" or (variant == "before" and args.before_http == "h11")
                             else "bare")
                    floor_cpu = per_round(floor, workers, name, clients, "cpu_ms")
                    print(f"| {name} | {clients} | {workers} | {variant} | {spread(cpu)} | "
                          f"{spread(ratio(cpu, floor_cpu)) if variant != floor else '1'} | "
                          f"{spread(per_round(variant, workers, name, clients, 'rps'))} |")
    if 1 in worker_counts and 2 in worker_counts:
        top = max(client_counts)
        print(f"\nthroughput with 2 workers / 1 worker at {top} clients (per-round ratio)")
        for variant in variants:
            for name in names:
                two = per_round(variant, 2, name, top, "rps")
                if two:
                    print(f"  {variant:12s} {name:14s} {spread(ratio(two, per_round(variant, 1, name, top, 'rps')))}")
    if args.functions_requests:
        print("\nthe Functions path (AsgiFunctionApp's HTTP function, as the host calls it): CPU ms per request, "
              "median (range) over rounds, each tree in a process of its own, trees alternating per round")
        trees = {"after": (None, str(data_dir), key)}
        if args.before_tree:
            trees["before"] = (args.before_tree, before_env["STOWAGE_DATA_DIR"], before_key)
        measured: dict[str, dict[str, list[float]]] = {tree: {name: [] for name in names} for tree in trees}
        for _ in range(args.rounds):
            for tree, (path, data, tree_key) in random.sample(list(trees.items()), len(trees)):
                command = [sys.executable, __file__, "functions", "--data-dir", data, "--key", tree_key,
                           "--endpoints", ",".join(names), "--requests", str(args.functions_requests), "--rounds", "1"]
                if path:
                    command += ["--tree", path]
                out = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
                for name, values in json.loads(out.strip().splitlines()[-1]).items():
                    measured[tree][name] += values
        for name in names:
            row = "  ".join(f"{tree} {spread(measured[tree][name])}" for tree in trees)
            ratio_text = ""
            if "before" in trees:
                ratio_text = f"  after/before {spread(ratio(measured['after'][name], measured['before'][name]))}"
            print(f"  {name:14s} {row}{ratio_text}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    client = sub.add_parser("client", help="(internal) the load generator")
    client.add_argument("--spec", required=True)
    client.set_defaults(run=client_command)
    bare = sub.add_parser("bare", help="(internal) the bare Starlette server")
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--workers", type=int, default=1)
    bare.add_argument("--http", default="auto")
    bare.add_argument("--loop", default="auto")
    bare.set_defaults(run=bare_command)
    prep = sub.add_parser("prepare", help="(internal) the data another tree's server reads")
    prep.add_argument("--tree")
    prep.add_argument("--data-dir", required=True)
    prep.set_defaults(run=prepare_command)
    functions = sub.add_parser("functions", help="(internal) the Functions path of a tree, in a process of its own")
    functions.add_argument("--tree")
    functions.add_argument("--data-dir", required=True)
    functions.add_argument("--key", required=True)
    functions.add_argument("--endpoints", required=True)
    functions.add_argument("--requests", type=int, required=True)
    functions.add_argument("--rounds", type=int, required=True)
    functions.set_defaults(run=functions_command)
    before = sub.add_parser("before", help="(internal) `stowage serve` from another tree")
    before.add_argument("--tree", required=True)
    before.add_argument("--port", type=int, required=True)
    before.add_argument("--http", default="h11")
    before.add_argument("--loop", default="asyncio")
    before.set_defaults(run=before_command)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--variants", default="stowage,bare,stowage-h11,bare-h11")
    parser.add_argument("--before-tree", help="also serve this copy of the source tree (h11, asyncio, 1 worker)")
    parser.add_argument("--before-http", default="h11", help="the before tree's HTTP parser (default: h11)")
    parser.add_argument("--before-loop", default="asyncio", help="the before tree's event loop (default: asyncio)")
    parser.add_argument("--functions-requests", type=int, default=500,
                        help="requests per round through the Functions path (0: skip)")
    parser.add_argument("--verbose", action="store_true", help="show the servers' output")
    parser.set_defaults(run=main_command)
    return parser


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    sys.exit(arguments.run(arguments))
