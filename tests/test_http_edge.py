"""The HTTP edge over real sockets: keys, scopes and body limits are decided before a body is read.

The body mechanics (401/413 before the body, streamed 413, 408 for a body that stops)
do not depend on the backend: they run against a server of their own on the local
backend, with a one-second body timeout and a 64 KiB JSON ceiling. Scopes, domains,
the health views and bad keys run on every backend (the shared ``server`` fixture).
Raw sockets send the headers alone and read the answer before sending any body: an
answer that arrives proves the server did not wait for the body.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from shared import names
from shared.apikeys import INVALID_KEY
from shared.backends import Entity
from tests.e2e import MAX_BYTES, Server, problem, run_server

BODY_TIMEOUT = 1
JSON_CEILING = 64 * 1024
BIG = 50 * 1024 * 1024


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after answering

    def problem(self, status: int) -> dict:
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"] == "application/problem+json"
        document = json.loads(self.body)
        assert document["status"] == status and document["detail"]
        return document


def connect(url: str, timeout: float = 10) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: stowage", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> Answer:
    """One response (the socket's timeout bounds every wait), and whether the server then closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        closed = False
    return Answer(int(status_line.split()[1]), headers, body[:length], closed)


def exchange(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"",
             timeout: float = 10) -> Answer:
    """Send the head (and ``body``, possibly less than Content-Length says), then read the answer."""
    with connect(url, timeout) as sock:
        sock.sendall(head(method, path, headers) + body)
        return read_answer(sock)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --------------------------------------------------------------------------- the edge's own server


@pytest.fixture(scope="module")
def edge_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`stowage serve` on the local backend with a short body timeout and a small JSON ceiling."""
    data_dir = tmp_path_factory.mktemp("edge")
    with pytest.MonkeyPatch.context() as patch:  # only while the server and its keys are made
        patch.setenv("STOWAGE_BODY_TIMEOUT_SECONDS", str(BODY_TIMEOUT))
        patch.setenv("STOWAGE_MAX_JSON_BODY_BYTES", str(JSON_CEILING))
        running = run_server("local", request, data_dir)
        server = next(running)
    try:
        yield server
    finally:
        next(running, None)


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/api/v1/objects/huge"), ("POST", "/api/v1/threads"), ("POST", "/api/v1/events/e1"),
    ("PUT", "/api/v1/checkpoints/threads/t/checkpoints/c"),
])
def test_an_anonymous_huge_body_is_refused_401_before_it_is_sent(edge_server, method, path):
    answer = exchange(edge_server.url, method, path,
                      {"Content-Length": str(BIG), "Content-Type": "application/json"})
    assert "Bearer" in answer.problem(401)["detail"]
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.headers["connection"] == "close" and answer.closed  # the rest is never read


def test_a_bad_key_is_refused_before_the_body_too(edge_server):
    answer = exchange(edge_server.url, "POST", "/api/v1/threads",
                      {**bearer("stw_0123456789abcdef_" + "x" * 43), "Content-Length": str(BIG)})
    assert answer.problem(401)["detail"] == INVALID_KEY and answer.closed


@pytest.mark.parametrize(("method", "path", "ceiling"), [
    ("PUT", "/api/v1/objects/too/big", MAX_BYTES),
    ("POST", "/api/v1/threads", JSON_CEILING),
    ("PATCH", "/api/v1/sessions/s1", JSON_CEILING),
    ("POST", "/api/v1/events/e1", 1024 * 1024),
    ("PUT", "/api/v1/sessions/s1/context", 2 * MAX_BYTES + 1024),
    ("POST", "/api/v1/workflows/w1/suspend", MAX_BYTES + 64 * 1024),
])
def test_a_declared_length_over_the_route_ceiling_is_413_before_the_body(edge_server, method, path, ceiling):
    headers = {**bearer(edge_server.keys["alpha"]), "Content-Type": "application/json"}
    answer = exchange(edge_server.url, method, path, {**headers, "Content-Length": str(ceiling + 1)})
    assert f"the limit is {ceiling}" in answer.problem(413)["detail"]
    assert answer.closed
    huge = exchange(edge_server.url, method, path, {**headers, "Content-Length": str(BIG)})
    huge.problem(413)


def test_a_body_within_the_ceiling_is_served(edge_server):
    with edge_server.client() as http:
        thread = http.post("/api/v1/threads", json={"resource": "u1", "metadata": {"pad": "x" * 4000}})
        assert thread.status_code == 201, thread.text
        stored = http.put("/api/v1/objects/edge/fits", content=b"x" * MAX_BYTES)
        assert stored.status_code == 201, stored.text


def _send_chunked(sock: socket.socket, total: int, chunk: int = 16 * 1024) -> None:
    """``total`` bytes of chunked body, without the final chunk: the server has all of it to count."""
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sock.sendall(f"{size:x}\r\n".encode() + b"x" * size + b"\r\n")
        sent += size


@pytest.mark.parametrize(("path", "method", "ceiling"), [
    ("/api/v1/threads", "POST", JSON_CEILING), ("/api/v1/objects/streamed/big", "PUT", MAX_BYTES),
])
def test_a_chunked_body_is_stopped_at_the_ceiling_with_413(edge_server, path, method, ceiling):
    headers = {**bearer(edge_server.keys["alpha"]), "Transfer-Encoding": "chunked",
               "Content-Type": "application/json"}
    with connect(edge_server.url) as sock:
        sock.sendall(head(method, path, headers))
        _send_chunked(sock, ceiling + 1)
        answer = read_answer(sock)
    assert f"over the limit of {ceiling} bytes" in answer.problem(413)["detail"]
    assert answer.headers["connection"] == "close" and answer.closed
    with edge_server.client() as http:
        problem(http.get("/api/v1/objects/streamed/big"), 404)  # nothing was written


@pytest.mark.parametrize(("method", "path", "sent"), [
    pytest.param("POST", "/api/v1/threads", b'{"resource": "u1"', id="json-short"),
    pytest.param("PUT", "/api/v1/objects/edge/short", b"x" * 1000, id="object-short"),
    pytest.param("PUT", "/api/v1/objects/edge/none", b"", id="headers-only"),
])
def test_a_body_shorter_than_its_length_gets_408_and_the_connection_is_closed(edge_server, method, path, sent):
    headers = {**bearer(edge_server.keys["alpha"]), "Content-Length": "5000", "Content-Type": "application/json"}
    started = time.monotonic()
    answer = exchange(edge_server.url, method, path, headers, sent, timeout=BODY_TIMEOUT + 10)
    waited = time.monotonic() - started
    assert "did not arrive in time" in answer.problem(408)["detail"]
    assert answer.headers["connection"] == "close" and answer.closed
    print(f"408 after {waited:.2f}s (body timeout {BODY_TIMEOUT}s)")
    with edge_server.client() as http:
        problem(http.get("/api/v1/objects/edge/short"), 404)


def test_a_body_trickling_in_slower_than_allowed_gets_408(edge_server):
    """A byte every 0.3 s never waits the full timeout, but the whole body has a deadline."""
    headers = {**bearer(edge_server.keys["alpha"]), "Content-Length": "100"}
    with connect(edge_server.url, timeout=BODY_TIMEOUT + 10) as sock:
        sock.sendall(head("PUT", "/api/v1/objects/edge/trickle", headers))
        sock.settimeout(0.3)
        for _ in range(99):  # the socket read, not a sleep, paces the bytes
            sock.sendall(b"x")
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            assert first
            break
        else:
            pytest.fail("the server accepted a body trickling in for 30 s")
        sock.settimeout(10)
        answer = read_answer(sock)
    answer.problem(408)


def test_the_connection_stays_usable_after_a_refusal_without_a_body(edge_server):
    """A GET refused 401 has no body to skip, so the connection is kept alive."""
    with connect(edge_server.url) as sock:
        sock.settimeout(0.5)
        sock.sendall(head("GET", "/api/v1/objects", {}))
        answer = read_answer(sock)
        assert answer.status == 401 and not answer.closed
        sock.sendall(head("GET", "/api/v1/objects", bearer(edge_server.keys["alpha"])))
        assert read_answer(sock).status == 200


def _server_pid(server: Server) -> int | None:
    marker = f"STOWAGE_DATA_DIR={server.env['STOWAGE_DATA_DIR']}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"serve" in (entry / "cmdline").read_bytes() and marker in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except OSError:
            continue
    return None


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_large_anonymous_bodies_do_not_grow_the_server(edge_server):
    """The issue's measure: four invalid 50 MB JSON bodies took the server from 65 MB to 988 MB."""
    pid = _server_pid(edge_server)
    if pid is None or not os.path.exists(f"/proc/{pid}/status"):
        pytest.skip("cannot find the server's process in /proc to measure it")
    before = _rss_bytes(pid)
    body = b"{" * BIG  # not JSON, and over every ceiling
    with httpx.Client(base_url=edge_server.url, timeout=60) as http:
        for _ in range(4):
            problem(http.post("/api/v1/threads", content=body, headers={"Content-Type": "application/json"}), 401)
            problem(http.post("/api/v1/threads", content=body,
                              headers={**bearer(edge_server.keys["alpha"]), "Content-Type": "application/json"}),
                    413)
    grown = _rss_bytes(pid) - before
    print(f"server RSS {before / 2**20:.0f} MiB before, grew {grown / 2**20:.1f} MiB over 8 refused 50 MB bodies")
    assert grown < 40 * 2**20


# --------------------------------------------------------------------------- scopes, domains, health: every backend


@dataclass(frozen=True)
class Keys:
    tenant: str
    read_only: str
    objects_only: str
    admin_only: str
    actor: dict


@pytest.fixture(scope="module")
def scoped(server: Server) -> Keys:
    tenant = "scoped-" + uuid.uuid4().hex[:8]

    def make(*options: str) -> dict:
        made = server.cli("keys", "create", "--tenant", tenant, "--json", *options)
        assert made.returncode == 0, made.stderr
        return json.loads(made.stdout)

    return Keys(
        tenant=tenant,
        read_only=make("--scope", "read")["api_key"],
        objects_only=make("--scopes", "read,write", "--domain", "objects")["api_key"],
        admin_only=make("--scope", "admin")["api_key"],
        actor=make("--actor", "Grace Hopper", "--role", "reviewer", "--role", "ops", "--label", "agent"),
    )


def test_a_read_only_key_reads_and_gets_403_on_writes(server, scoped):
    with httpx.Client(base_url=server.url, headers=bearer(scoped.read_only), timeout=30) as http:
        assert http.get("/api/v1/objects").status_code == 200
        assert http.get("/api/v1/threads", params={"resource": "u1"}).status_code == 200
        assert http.head("/api/v1/objects/missing").status_code == 404
        assert "'write' scope" in problem(http.put("/api/v1/objects/k", content=b"x"), 403)["detail"]
        problem(http.post("/api/v1/threads", json={"resource": "u1"}), 403)
        problem(http.delete("/api/v1/objects/k"), 403)
        problem(http.post("/api/v1/workflows/w1/resume"), 403)
    # Refused before the body: the answer comes while the body is still unsent.
    answer = exchange(server.url, "PUT", "/api/v1/objects/k", {**bearer(scoped.read_only), "Content-Length": str(BIG)})
    answer.problem(403)
    assert answer.closed


def test_a_domain_limited_key_gets_403_in_other_domains(server, scoped):
    with httpx.Client(base_url=server.url, headers=bearer(scoped.objects_only), timeout=30) as http:
        assert http.put("/api/v1/objects/mine", content=b"x").status_code == 201
        assert http.get("/api/v1/objects/mine").content == b"x"
        assert "not 'memory'" in problem(http.get("/api/v1/threads", params={"resource": "u1"}), 403)["detail"]
        problem(http.post("/api/v1/sessions", json={"user_id": "u1"}), 403)
        problem(http.get("/api/v1/workflows"), 403)
        problem(http.post("/api/v1/events/e1", json={}), 403)
        problem(http.get("/api/v1/checkpoints/threads"), 403)
        assert http.get("/api/v1/health").status_code == 200  # any valid key


def test_an_admin_only_key_neither_reads_nor_writes(server, scoped):
    with httpx.Client(base_url=server.url, headers=bearer(scoped.admin_only), timeout=30) as http:
        assert "'read' scope" in problem(http.get("/api/v1/objects"), 403)["detail"]
        problem(http.put("/api/v1/objects/k", content=b"x"), 403)


def test_keys_list_shows_scopes_domains_actor_and_roles(server, scoped):
    listed = server.cli("keys", "list", "--tenant", scoped.tenant, "--json")
    assert listed.returncode == 0, listed.stderr
    by_id = {item["key_id"]: item for item in json.loads(listed.stdout)}
    assert len(by_id) == 4
    agent = by_id[scoped.actor["key_id"]]
    assert (agent["scopes"], agent["domains"], agent["actor"], agent["roles"]) == (
        ["read", "write"], None, "Grace Hopper", ["reviewer", "ops"])
    assert sorted(tuple(item["scopes"]) for item in by_id.values()) == [
        ("admin",), ("read",), ("read", "write"), ("read", "write")]
    assert [item["domains"] for item in by_id.values() if item["domains"]] == [["objects"]]
    table = server.cli("keys", "list", "--tenant", scoped.tenant)
    assert table.returncode == 0 and "scopes" in table.stdout and "actor" in table.stdout
    refused = server.cli("keys", "create", "--tenant", scoped.tenant, "--scope", "delete")
    assert refused.returncode == 2 and "scopes must be" in refused.stdout


def test_anonymous_health_has_no_detail_and_the_authenticated_one_has(server):
    anonymous = httpx.get(server.url + "/api/health")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok", "backend": server.backend}
    detailed = httpx.get(server.url + "/api/v1/health", headers=bearer(server.keys["alpha"]))
    assert detailed.status_code == 200
    assert detailed.json() == {"status": "ok", "backend": server.backend, "detail": None}
    problem(httpx.get(server.url + "/api/v1/health"), 401)


@pytest.mark.parametrize("bad_id", ["0123456/89abcdef", "0123456#89abcdef", "0123456?89abcdef", "../../../..x"])
def test_a_key_id_a_table_cannot_hold_gets_the_same_401(server, bad_id):
    secret = server.keys["alpha"].split("_", 2)[2]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        reference = problem(http.get("/api/v1/objects", headers=bearer(f"stw_{secrets.token_hex(8)}_{secret}")), 401)
        refused = problem(http.get("/api/v1/objects", headers=bearer(f"stw_{bad_id}_{secret}")), 401)
    assert refused["detail"] == reference["detail"] == INVALID_KEY


def test_unknown_paths_are_404_for_a_valid_key_and_401_without(server):
    with server.client() as http:
        problem(http.get("/api/v1/nothing-here"), 404)
    problem(httpx.get(server.url + "/api/v1/nothing-here"), 401)
    assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_a_key_stored_before_scopes_existed_still_works_over_http(server):
    tenant = "old-" + uuid.uuid4().hex[:8]
    key_id = secrets.token_hex(8)
    key = f"stw_{key_id}_{secrets.token_urlsafe(32)}"
    server.stores.table(names.TABLE_APIKEYS).insert(Entity("apikey", key_id, {
        "tenant": tenant, "digest": hashlib.sha256(key.encode()).hexdigest(), "label": "",
        "created_at": "2024-01-01T00:00:00+00:00"}))
    with httpx.Client(base_url=server.url, headers=bearer(key), timeout=30) as http:
        assert http.put("/api/v1/objects/old-key", content=b"still works").status_code == 201
        assert http.get("/api/v1/objects/old-key").content == b"still works"
    listed = json.loads(server.cli("keys", "list", "--tenant", tenant, "--json").stdout)
    assert [(item["key_id"], item["scopes"]) for item in listed] == [(key_id, ["read", "write"])]


# --------------------------------------------------------------------------- the Functions host's path


def test_the_edge_also_guards_the_function_apps_asgi_path(tmp_path):
    """The Functions host calls the app through AsgiMiddleware with the body already read: same answers."""
    import asyncio

    import azure.functions as func

    from functions.context import AppContext
    from functions.http_api import create_api
    from shared.apikeys import ApiKeyService
    from shared.config import Settings

    context = AppContext(Settings(data_dir=tmp_path, max_json_body_bytes=1000))
    _, key = ApiKeyService(context.stores).create("fn")
    _, reader = ApiKeyService(context.stores).create("fn", scopes="read")
    middleware = func.AsgiMiddleware(create_api(context))

    async def call(method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, dict]:
        request = func.HttpRequest(method=method, url="http://localhost" + path, headers=headers, body=body)
        response = await middleware.handle_async(request)
        return response.status_code, json.loads(response.get_body() or b"null")

    async def scenario() -> None:
        auth = bearer(key)["Authorization"]
        assert (await call("POST", "/api/v1/threads", b"{" * 5000))[0] == 401
        assert (await call("POST", "/api/v1/threads", b"{}", Authorization=bearer(reader)["Authorization"]))[0] == 403
        status, document = await call("POST", "/api/v1/threads", b"{}", Authorization=auth,
                                      **{"Content-Length": "two"})
        assert status == 400 and document["detail"] == "Content-Length is not a number"
        assert (await call("POST", "/api/v1/threads", b"{" * 5000, Authorization=auth,
                           **{"Content-Length": "5000"}))[0] == 413
        assert (await call("POST", "/api/v1/threads", b"{" * 5000, Authorization=auth))[0] == 413  # counted
        status, thread = await call("POST", "/api/v1/threads", b'{"resource": "u1"}', Authorization=auth,
                                    **{"Content-Type": "application/json"})
        assert status == 201 and thread["resource"] == "u1"
        assert await call("GET", "/api/health") == (200, {"status": "ok", "backend": "local"})

    try:
        asyncio.run(scenario())
    finally:
        context.close()
