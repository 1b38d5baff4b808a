"""Checkpoints over real HTTP: `stowage serve` on each backend, and the remote saver's retries."""

from __future__ import annotations

import asyncio
import base64
import json
import operator
import random
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, TypedDict

import httpx
import pytest

from shared.errors import BackendUnavailable, Busy, InvalidInput
from shared.langgraph_savers import RemoteCheckpointSaver
from tests.e2e import problem

BASE = "/api/v1/checkpoints"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def value(data: bytes, kind: str = "bytes") -> dict:
    return {"type": kind, "data": b64(data)}


def put(http: httpx.Client, thread: str, checkpoint_id: str, *, ns: str = "", parent: str | None = None,
        versions: dict | None = None, values: dict | None = None, metadata: dict | None = None) -> httpx.Response:
    body = {"parent_checkpoint_id": parent, "checkpoint": value(checkpoint_id.encode(), "json"),
            "metadata": metadata or {}, "channel_versions": versions or {},
            "new_values": {name: value(data) for name, data in (values or {}).items()}}
    return http.put(f"{BASE}/threads/{thread}/checkpoints/{checkpoint_id}", params={"checkpoint_ns": ns}, json=body)


def chain(http: httpx.Client, thread: str, count: int, *, run_id: str = "run-1") -> list[str]:
    ids, parent = [], None
    for i in range(count):
        checkpoint_id = f"1ef{i:05d}-0000-6000-8000-000000000000"
        response = put(http, thread, checkpoint_id, parent=parent, versions={"n": str(i + 1)},
                       values={"n": str(i).encode()},
                       metadata={"source": "input" if i == 0 else "loop", "step": i - 1, "run_id": run_id})
        assert response.status_code == 201, response.text
        ids.append(checkpoint_id)
        parent = checkpoint_id
    return ids


@pytest.fixture
def thread() -> str:
    return "th-" + uuid.uuid4().hex[:10]


def test_openapi_documents_every_checkpoint_route(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    routes = {(method.upper(), path) for path, item in spec["paths"].items() for method in item
              if path.startswith(BASE)}
    assert routes == {
        ("GET", f"{BASE}/threads"), ("DELETE", f"{BASE}/threads/{{thread_id}}"),
        ("GET", f"{BASE}/threads/{{thread_id}}/latest"), ("GET", f"{BASE}/threads/{{thread_id}}/checkpoints"),
        ("PUT", f"{BASE}/threads/{{thread_id}}/checkpoints/{{checkpoint_id}}"),
        ("GET", f"{BASE}/threads/{{thread_id}}/checkpoints/{{checkpoint_id}}"),
        ("PUT", f"{BASE}/threads/{{thread_id}}/checkpoints/{{checkpoint_id}}/writes/{{task_id}}"),
        ("POST", f"{BASE}/threads/{{thread_id}}/copy"), ("POST", f"{BASE}/threads/{{thread_id}}/prune"),
        ("POST", f"{BASE}/runs/delete")}
    put_op = spec["paths"][f"{BASE}/threads/{{thread_id}}/checkpoints/{{checkpoint_id}}"]["put"]
    assert {"201", "200", "400", "401", "413", "422"} <= set(put_op["responses"])
    body = put_op["requestBody"]["content"]["application/json"]["schema"]
    assert "$ref" not in json.dumps(body)  # nested models inlined: the schema resolves on its own
    assert body["properties"]["new_values"]["additionalProperties"]["properties"]["data"]["type"] == "string"
    assert "404" in spec["paths"][f"{BASE}/threads/{{thread_id}}/latest"]["get"]["responses"]


def test_put_get_list_round_trip(server, thread):
    with server.client() as http:
        ids = chain(http, thread, 5)
        again = put(http, thread, ids[-1], parent=ids[-2], versions={"n": "5"}, metadata={"step": 3})
        assert again.status_code == 200  # replaced, not created
        child = put(http, thread, "1ef99999-0000-6000-8000-000000000000", ns="child:1", metadata={"step": 0})
        assert child.status_code == 201 and child.json()["checkpoint_ns"] == "child:1"

        latest = http.get(f"{BASE}/threads/{thread}/latest").json()
        assert latest["checkpoint_id"] == ids[-1] and latest["parent_checkpoint_id"] == ids[-2]
        assert {name: base64.b64decode(v["data"]) for name, v in latest["values"].items()} == {"n": b"4"}
        assert latest["channel_versions"] == {"n": "5"} and latest["metadata"] == {"step": 3}
        first = http.get(f"{BASE}/threads/{thread}/checkpoints/{ids[0]}").json()
        assert first["metadata"] == {"source": "input", "step": -1, "run_id": "run-1"}
        assert base64.b64decode(first["checkpoint"]["data"]) == ids[0].encode()
        problem(http.get(f"{BASE}/threads/{thread}/checkpoints/{ids[0]}", params={"checkpoint_ns": "child:1"}), 404)

        root = http.get(f"{BASE}/threads/{thread}/checkpoints", params={"checkpoint_ns": ""}).json()
        assert [c["checkpoint_id"] for c in root["items"]] == ids[::-1]
        every = http.get(f"{BASE}/threads/{thread}/checkpoints").json()["items"]
        assert [c["checkpoint_ns"] for c in every] == ["child:1"] + [""] * 5
        older = http.get(f"{BASE}/threads/{thread}/checkpoints",
                         params={"checkpoint_ns": "", "before": ids[2], "filter": json.dumps({"source": "loop"})})
        assert [c["checkpoint_id"] for c in older.json()["items"]] == [ids[1]]
        collected, token = [], None
        while True:
            params = {"checkpoint_ns": "", "limit": 2, **({"continuation": token} if token else {})}
            page = http.get(f"{BASE}/threads/{thread}/checkpoints", params=params).json()
            collected += [c["checkpoint_id"] for c in page["items"]]
            token = page["continuation"]
            if not token:
                break
        assert collected == ids[::-1]
        threads = http.get(f"{BASE}/threads", params={"limit": 1000}).json()["items"]
        assert thread in {t["thread_id"] for t in threads}


def test_pending_writes_are_idempotent_over_http(server, thread):
    with server.client() as http:
        ids = chain(http, thread, 1)
        url = f"{BASE}/threads/{thread}/checkpoints/{ids[0]}/writes/task-1"
        body = {"task_path": "p", "writes": [{"idx": 0, "channel": "x", "value": value(b"1")},
                                             {"idx": -3, "channel": "__interrupt__", "value": value(b"ask")}]}
        assert http.put(url, json=body).json() == {"written": 2, "kept": 0}
        body["writes"][1]["value"] = value(b"ask again")
        assert http.put(url, json=body).json() == {"written": 1, "kept": 1}
        writes = http.get(f"{BASE}/threads/{thread}/latest").json()["pending_writes"]
        assert [(w["idx"], w["channel"], base64.b64decode(w["value"]["data"])) for w in writes] == [
            (-3, "__interrupt__", b"ask again"), (0, "x", b"1")]


def test_another_tenant_gets_404_everywhere_and_changes_nothing(server, thread):
    with server.client("alpha") as alpha, server.client("beta") as beta:
        ids = chain(alpha, thread, 3, run_id=f"run-{thread}")
        reads = [
            beta.get(f"{BASE}/threads/{thread}/latest"),
            beta.get(f"{BASE}/threads/{thread}/checkpoints/{ids[0]}"),
            beta.get(f"{BASE}/threads/{thread}/checkpoints"),
            beta.delete(f"{BASE}/threads/{thread}"),
            beta.post(f"{BASE}/threads/{thread}/copy", json={"target_thread_id": "stolen"}),
            beta.post(f"{BASE}/threads/{thread}/prune", json={"strategy": "delete"}),
            beta.post(f"{BASE}/runs/delete", json={"run_ids": [f"run-{thread}"]}),
        ]
        for response in reads:
            problem(response, 404)
        # Writes land in the caller's own tenant: same names, separate data.
        url = f"{BASE}/threads/{thread}/checkpoints/{ids[-1]}/writes/task"
        assert beta.put(url, json={"writes": [{"idx": 0, "channel": "x", "value": value(b"beta")}]}).status_code == 200
        assert put(beta, thread, ids[-1], metadata={"who": "beta"}).status_code == 201
        assert beta.get(f"{BASE}/threads/{thread}/latest").json()["metadata"] == {"who": "beta"}
        mine = alpha.get(f"{BASE}/threads/{thread}/latest").json()
        assert mine["pending_writes"] == [] and mine["metadata"]["run_id"] == f"run-{thread}"
        assert len(alpha.get(f"{BASE}/threads/{thread}/checkpoints").json()["items"]) == 3
        assert beta.delete(f"{BASE}/threads/{thread}").status_code == 204
        assert len(alpha.get(f"{BASE}/threads/{thread}/checkpoints").json()["items"]) == 3


def test_maintenance_over_http(server, thread):
    with server.client() as http:
        ids = chain(http, thread, 4, run_id=f"run-{thread}")
        copied = http.post(f"{BASE}/threads/{thread}/copy", json={"target_thread_id": f"{thread}-copy"})
        assert copied.status_code == 201 and copied.json() == {"copied": 4}
        pruned = http.post(f"{BASE}/threads/{thread}/prune", json={"strategy": "keep_latest"})
        assert pruned.json() == {"deleted": 3}
        assert [c["checkpoint_id"] for c in http.get(f"{BASE}/threads/{thread}/checkpoints").json()["items"]] == ids[-1:]
        assert http.post(f"{BASE}/runs/delete", json={"run_ids": [f"run-{thread}"]}).json() == {"deleted": 5}
        problem(http.get(f"{BASE}/threads/{thread}-copy/checkpoints"), 404)
        chain(http, thread, 1, run_id="other")
        assert http.delete(f"{BASE}/threads/{thread}").status_code == 204
        problem(http.delete(f"{BASE}/threads/{thread}"), 404)
        problem(http.post(f"{BASE}/threads/{thread}/prune", json={"strategy": "sometimes"}), 422)


def test_bad_requests_are_problems_and_write_nothing(server, thread):
    with server.client() as http:
        url = f"{BASE}/threads/{thread}/checkpoints/c1"
        problem(http.put(url, json={"checkpoint": {"type": "json", "data": "not base64!"}}), 400)
        problem(http.put(f"{BASE}/threads/bad%20thread/checkpoints/c1",
                         json={"checkpoint": value(b"x")}), 400)
        problem(http.put(url, content=b"{not json", headers={"Content-Type": "application/json"}), 422)
        problem(http.put(url, json={"checkpoint": value(b"x"), "new_values": {"a": value(b"1")}}), 400)
        problem(http.get(f"{BASE}/threads/{thread}/checkpoints", params={"filter": "[1]"}), 400)
        limit = 48 * 1024 * 1024 * 4 // 3 + 1024 * 1024
        too_big = json.dumps({"checkpoint": value(b"x"), "metadata": {"pad": "x" * limit}}).encode()
        assert "limit" in problem(http.put(url, content=too_big, headers={"Content-Type": "application/json"}),
                                  413)["detail"]
        problem(http.get(f"{BASE}/threads/{thread}/latest"), 404)  # nothing was written
        with server.client(None) as anonymous:
            problem(anonymous.get(f"{BASE}/threads"), 401)


def test_remote_saver_round_trips_multi_megabyte_values(server, thread):
    from langgraph.checkpoint.base import empty_checkpoint

    big = random.randbytes(5 * 1024 * 1024)
    screenshot = random.randbytes(3 * 1024 * 1024)
    with RemoteCheckpointSaver(server.url, server.keys["alpha"]) as saver:
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"image": big, "note": "hello"}
        checkpoint["channel_versions"] = {"image": saver.get_next_version(None, None),
                                          "note": saver.get_next_version(None, None)}
        config = saver.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, checkpoint,
                           {"source": "input", "step": -1}, checkpoint["channel_versions"])
        saver.put_writes(config, [("screenshot", screenshot)], "task-1")
        stored = saver.get_tuple({"configurable": {"thread_id": thread}})
        assert stored.checkpoint["channel_values"] == {"image": big, "note": "hello"}
        assert stored.pending_writes == [("task-1", "screenshot", screenshot)]
        with pytest.raises(InvalidInput):
            saver.put_writes({"configurable": {"thread_id": "bad thread", "checkpoint_id": "c1"}}, [], "t")


def test_remote_saver_lists_across_threads_sync_and_async(server, thread):
    from langgraph.checkpoint.base import empty_checkpoint

    marker = uuid.uuid4().hex
    with RemoteCheckpointSaver(server.url, server.keys["beta"]) as saver:
        for suffix in ("a", "b"):
            saver.put({"configurable": {"thread_id": f"{thread}-{suffix}", "checkpoint_ns": ""}}, empty_checkpoint(),
                      {"source": "input", "step": -1, "marker": marker}, {})
        found = [t.config["configurable"]["thread_id"] for t in saver.list(None, filter={"marker": marker})]
        assert found == [f"{thread}-a", f"{thread}-b"]  # threads in id order, through the thread index

        async def listed() -> list[str]:
            try:
                return [t.config["configurable"]["thread_id"]
                        async for t in saver.alist(None, filter={"marker": marker}, limit=1)]
            finally:
                await saver.aclose()

        assert asyncio.run(listed()) == [f"{thread}-a"]


# --------------------------------------------------------------------------- retries (no server fixture)


class _Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, headers) of the server's script."""

    def do_GET(self) -> None:
        status, headers = self.server.script.pop(0) if self.server.script else (404, {})
        self.server.seen.append(self.path)
        body = json.dumps({"type": "x", "title": "t", "status": status, "detail": f"scripted {status}"}).encode()
        self.send_response(status)
        for name, content in {**headers, "Content-Type": "application/problem+json"}.items():
            self.send_header(name, content)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.script, server.seen = [], []
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    yield server
    server.shutdown()
    server.server_close()


def test_remote_saver_retries_429_and_503_only_with_backoff(scripted):
    url = f"http://127.0.0.1:{scripted.server_address[1]}"
    config = {"configurable": {"thread_id": "t"}}
    with RemoteCheckpointSaver(url, "key", backoff_seconds=0.001) as saver:
        scripted.script[:] = [(503, {"Retry-After": "0"}), (429, {}), (503, {})]
        assert saver.get_tuple(config) is None  # three retries, then the scripted 404: no checkpoint
        assert len(scripted.seen) == 4
        scripted.seen.clear()
        scripted.script[:] = [(500, {}), (503, {})]
        with pytest.raises(BackendUnavailable):
            saver.get_tuple(config)  # 500 is not retried
        assert len(scripted.seen) == 1
    with RemoteCheckpointSaver(url, "key", backoff_seconds=0.001, max_retries=2) as saver:
        scripted.seen.clear()
        scripted.script[:] = [(503, {})] * 5
        with pytest.raises(Busy):  # the one "busy, send again" error (a BackendUnavailable)
            saver.get_tuple(config)
        assert len(scripted.seen) == 3  # bounded: the first try and two retries
        scripted.seen.clear()
        scripted.script[:] = [(429, {})] * 5
        with pytest.raises(Busy):
            saver.get_tuple(config)


def test_remote_saver_honours_retry_after():
    saver = RemoteCheckpointSaver("http://127.0.0.1:1", "key", backoff_seconds=0.5, max_backoff_seconds=30)
    try:
        assert saver._delay(0, httpx.Response(503, headers={"Retry-After": "7"})) == 7
        assert saver._delay(0, httpx.Response(503, headers={"Retry-After": "600"})) == 30
        assert saver._delay(0, httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0
        assert 0.25 <= saver._delay(0, httpx.Response(503)) <= 0.5
        assert 2 <= saver._delay(3, httpx.Response(503)) <= 4
        assert "key" not in repr(saver)
        with pytest.raises(BackendUnavailable):  # nothing listens on port 1; not retried
            saver.get_tuple({"configurable": {"thread_id": "t"}})
    finally:
        saver.close()


# --------------------------------------------------------------------------- one request per step (issue 10)


class _Requests:
    """Records every request the saver's real sync client sends (an httpx event hook)."""

    def __init__(self, saver: RemoteCheckpointSaver) -> None:
        self.seen: list[tuple[str, str, dict]] = []
        saver._client.event_hooks["request"].append(self._record)

    def _record(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else {}
        kind = "writes" if "/writes/" in request.url.path else request.method.lower()
        self.seen.append((kind, request.url.path, body))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.seen]


class _HeldSignal(threading.Event):
    """An Event that tells the test when a put_writes is held, and whose wait has no timeout: only a put
    or a flush releases it (so the test decides, not the clock)."""

    held = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        _HeldSignal.held.set()
        return super().wait()


class _StepState(TypedDict):
    log: Annotated[list[str], operator.add]


def _step_graph(saver: RemoteCheckpointSaver, fail_at: int | None = None):
    from langgraph.graph import END, START, StateGraph

    State = _StepState

    def node(name: str, index: int):
        def run(state: State) -> dict:
            if index == fail_at:
                raise RuntimeError(f"{name} failed")
            return {"log": [name]}
        return run

    builder = StateGraph(State)
    names = ["a", "b", "c"]
    for index, name in enumerate(names):
        builder.add_node(name, node(name, index))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    return builder.compile(checkpointer=saver)


def test_remote_saver_sends_a_steps_writes_with_the_next_checkpoint(server, thread):
    # A generous linger: the put that carries the writes comes within milliseconds, so the count does not
    # depend on the machine's load.
    with RemoteCheckpointSaver(server.url, server.keys["alpha"], writes_linger=1.0) as saver:
        requests = _Requests(saver)
        graph = _step_graph(saver)
        config = {"configurable": {"thread_id": thread}}
        assert graph.invoke({"log": ["start"]}, config) == {"log": ["start", "a", "b", "c"]}
        kinds = requests.kinds()
        assert "writes" not in kinds, kinds  # every step's writes rode in a put
        puts = [body for kind, _, body in requests.seen if kind == "put"]
        assert len(puts) == 5 and kinds.count("get") == 1  # input + 4 loop checkpoints, one read
        carried = [body for body in puts if body.get("writes")]
        assert len(carried) == 4  # the input's and each node's writes, with the checkpoint after them
        assert all(body["parent_checkpoint_id"] for body in carried)
        assert len(requests.seen) == 6  # one request per step, plus the first read
        history = list(saver.list(config))
        assert len(history) == 5 and history[0].checkpoint["channel_values"] == {"log": ["start", "a", "b", "c"]}
        assert [w[1] for w in history[1].pending_writes] == ["log"]  # stored with the parent, as put_writes does


class _CountedLingers(threading.Event):
    """A held put_writes' Event whose timed waits end at once (each is one linger gone by, without the clock);
    at the ``stop_at``-th it tells the test and then waits, untimed, for a put or a flush to settle it."""

    stop_at = 50
    reached = threading.Event()

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.rounds += 1
        if self.rounds < _CountedLingers.stop_at:
            return self.is_set()
        _CountedLingers.reached.set()
        return super().wait()


def test_held_writes_wait_for_a_slow_put_of_their_thread(server, thread):
    """On a loaded machine the put that carries a step's writes comes two slow round trips later: the writes
    keep waiting (past the 20 lingers they once gave up after) while a put of their thread is in flight."""
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import empty_checkpoint

    saver = RemoteCheckpointSaver(server.url, server.keys["alpha"], writes_linger=0.001)
    requests = _Requests(saver)
    root: RunnableConfig = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    config = saver.put(root, empty_checkpoint(), {"source": "input", "step": -1}, {})
    slow = empty_checkpoint()
    sending, release = threading.Event(), threading.Event()

    def hold_the_slow_put(request: httpx.Request) -> None:
        if request.url.path.endswith(slow["id"]):
            sending.set()
            assert release.wait(30)

    saver._client.event_hooks["request"].append(hold_the_slow_put)
    slow_put = threading.Thread(target=saver.put, args=(root, slow, {"source": "fork", "step": -1}, {}))
    slow_put.start()
    assert sending.wait(30)  # the slow put is on the wire (and counted in flight since before it was serialised)
    saver.make_event = _CountedLingers
    _CountedLingers.reached = threading.Event()
    writer = threading.Thread(target=saver.put_writes, args=(config, [("x", 1)], "task-1"))
    writer.start()
    assert _CountedLingers.reached.wait(30)  # 50 lingers, still held: a put of the thread is in flight
    release.set()
    slow_put.join(30)
    child = empty_checkpoint()
    saver.put(config, child, {"source": "loop", "step": 0}, {})
    writer.join(30)
    assert not writer.is_alive() and not slow_put.is_alive()
    assert "writes" not in requests.kinds(), requests.kinds()  # carried, not sent alone
    carrying = [body for kind, path, body in requests.seen if kind == "put" and path.endswith(child["id"])]
    assert [task["task_id"] for task in carrying[0]["writes"]] == ["task-1"]
    stored = saver.get_tuple(config)
    assert stored is not None and stored.pending_writes == [("task-1", "x", 1)]
    saver.close()


def test_held_writes_are_sent_before_a_read_and_on_close(server, thread):
    from langgraph.checkpoint.base import empty_checkpoint

    saver = RemoteCheckpointSaver(server.url, server.keys["alpha"], writes_linger=1.0)
    saver.make_event = _HeldSignal
    requests = _Requests(saver)
    config = saver.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, empty_checkpoint(),
                       {"source": "input", "step": -1}, {})
    errors: list[BaseException] = []

    def put_writes(task: str) -> None:
        try:
            saver.put_writes(config, [("x", task)], task)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    # A read of the thread sends the held writes first (no put will come: the graph stopped here).
    _HeldSignal.held = threading.Event()
    writer = threading.Thread(target=put_writes, args=("task-1",))
    writer.start()
    assert _HeldSignal.held.wait(30)
    stored = saver.get_tuple({"configurable": {"thread_id": thread}})
    writer.join(30)
    assert not writer.is_alive() and not errors
    assert stored.pending_writes == [("task-1", "x", "task-1")]
    assert requests.kinds()[-2:] == ["writes", "get"]  # the writes, then the read

    # Closing sends them too: an exception between put_writes and put loses nothing.
    _HeldSignal.held = threading.Event()
    writer = threading.Thread(target=put_writes, args=("task-2",))
    writer.start()
    assert _HeldSignal.held.wait(30)
    saver.close()
    writer.join(30)
    assert not writer.is_alive() and not errors
    with RemoteCheckpointSaver(server.url, server.keys["alpha"], writes_linger=0) as other:
        stored = other.get_tuple({"configurable": {"thread_id": thread}})
    assert sorted(stored.pending_writes) == [("task-1", "x", "task-1"), ("task-2", "x", "task-2")]


def test_a_failing_node_keeps_its_error_write(server, thread):
    with RemoteCheckpointSaver(server.url, server.keys["alpha"]) as saver:
        graph = _step_graph(saver, fail_at=1)
        config = {"configurable": {"thread_id": thread}}
        with pytest.raises(RuntimeError, match="b failed"):
            graph.invoke({"log": ["start"]}, config)
    with RemoteCheckpointSaver(server.url, server.keys["alpha"]) as reader:
        latest = reader.get_tuple(config)
    assert latest.checkpoint["channel_values"]["log"] == ["start", "a"]
    assert [channel for _, channel, _ in latest.pending_writes] == ["__error__"]


def test_a_refused_carrying_put_still_stores_the_writes(server, thread):
    from langgraph.checkpoint.base import empty_checkpoint

    saver = RemoteCheckpointSaver(server.url, server.keys["alpha"], writes_linger=1.0)
    saver.make_event = _HeldSignal
    config = saver.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, empty_checkpoint(),
                       {"source": "input", "step": -1}, {})
    _HeldSignal.held = threading.Event()
    writer = threading.Thread(target=saver.put_writes, args=(config, [("x", 1)], "task-1"))
    writer.start()
    assert _HeldSignal.held.wait(30)
    child = empty_checkpoint()
    child["id"] = "bad id"  # refused by the server: the carried writes are sent again on their own
    with pytest.raises(InvalidInput):
        saver.put(config, child, {"source": "loop", "step": 0}, {})
    writer.join(30)
    assert not writer.is_alive()
    stored = saver.get_tuple(config)
    assert stored.pending_writes == [("task-1", "x", 1)]
    saver.close()


def test_put_with_writes_over_http_is_atomic(server, thread):
    with server.client() as http:
        ids = chain(http, thread, 1)
        url = f"{BASE}/threads/{thread}/checkpoints/c2"
        body = {"parent_checkpoint_id": ids[0], "checkpoint": value(b"c2", "json"), "channel_versions": {"n": "2"},
                "new_values": {"n": value(b"2")},
                "writes": [{"task_id": "task-1", "task_path": "p",
                            "writes": [{"idx": 0, "channel": "x", "value": value(b"1")},
                                       {"idx": 0, "channel": "y", "value": value(b"dup")}]}]}
        problem(http.put(url, json=body), 400)  # idx twice: refused before anything is written
        problem(http.put(url, json={**body, "writes": [{"task_id": "t", "writes": [{"idx": "0", "channel": "x",
                                                                                    "value": value(b"1")}]}]}), 422)
        problem(http.put(url, json={**body, "parent_checkpoint_id": None}), 400)
        problem(http.get(url), 404)
        assert http.get(f"{BASE}/threads/{thread}/checkpoints/{ids[0]}").json()["pending_writes"] == []

        body["writes"][0]["writes"].pop()
        stored = http.put(url, json=body)
        assert stored.status_code == 201, stored.text
        parent = http.get(f"{BASE}/threads/{thread}/checkpoints/{ids[0]}").json()
        assert [(w["task_id"], w["task_path"], w["idx"], w["channel"]) for w in parent["pending_writes"]] == [
            ("task-1", "p", 0, "x")]
        assert http.get(f"{BASE}/threads/{thread}/latest").json()["checkpoint_id"] == "c2"
        spec = httpx.get(server.url + "/openapi.json").json()
        schema = spec["paths"][f"{BASE}/threads/{{thread_id}}/checkpoints/{{checkpoint_id}}"]["put"]["requestBody"]
        carried = schema["content"]["application/json"]["schema"]["properties"]["writes"]
        assert carried["type"] == "array" and {"task_id", "writes"} <= set(carried["items"]["properties"])
