"""Hostile input over real HTTP, on every backend: a 400 or 422 problem, and nothing written.

Every JSON route of threads, messages, sessions, workflows, events and
checkpoints gets, in turn, a lone surrogate as a string value, a lone surrogate
as an object key, and 10,000-deep nesting; checkpoint values get base64 with a
non-ASCII character; path and query parameters get lone surrogates too. Each
answer must be a problem (400 or 422, ``application/problem+json``), never a
500, and a read afterwards (or the raw index partition) shows nothing changed.

Bodies are raw bytes: ``json.dumps`` writes a lone surrogate as the ``\\ud800``
escape, which ``json.loads`` turns back into a string no backend can store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from shared import names
from tests.e2e import problem

TENANT = "alpha"
MARK = "@HOSTILE@"
SURROGATE = json.dumps("\ud800").encode()  # b'"\\ud800"', as any JSON producer writes it
HOSTILE = {
    "surrogate value": SURROGATE,
    "surrogate key": json.dumps({"\udc00": 1}).encode(),
    "10,000 deep": b"[" * 10_000 + b"]" * 10_000,
}
JSON = {"Content-Type": "application/json"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def splice(document: object, hostile: bytes) -> bytes:
    """``document`` as JSON with its one ``"@HOSTILE@"`` string replaced by the hostile JSON text."""
    raw = json.dumps(document).encode()
    assert raw.count(json.dumps(MARK).encode()) == 1
    return raw.replace(json.dumps(MARK).encode(), hostile)


def refused(response: httpx.Response) -> dict:
    """A 400 or 422 problem+json; its body."""
    assert response.status_code in (400, 422), (response.status_code, response.text[:500])
    return problem(response, response.status_code)


def send(http: httpx.Client, method: str, path: str, document: object, hostile: bytes, **kwargs) -> dict:
    return refused(http.request(method, path, content=splice(document, hostile), headers=JSON, **kwargs))


def raw_rows(server, table: str, partition: str) -> list[str]:
    """Row keys straight from the server's table: stale index entries show here, not in listings."""
    return [e.row_key for e in server.stores.backend.table(table).query_all(partition)]


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with server.client(TENANT) as client:
        yield client


@pytest.fixture(params=list(HOSTILE.values()), ids=list(HOSTILE))
def hostile(request) -> bytes:
    return request.param


def test_the_bodies_carry_what_they_claim():
    assert SURROGATE == b'"\\ud800"' and json.loads(SURROGATE) == "\ud800"
    assert json.loads(HOSTILE["surrogate key"]) == {"\udc00": 1}
    assert splice({"a": [MARK]}, SURROGATE) == b'{"a": ["\\ud800"]}'


# --------------------------------------------------------------------------- memory


def test_threads_refuse_hostile_bodies_and_leave_no_index_entry(server, http, hostile):
    resource, thread_id = unique("user"), unique("thread")
    for document in ({"resource": resource, "thread_id": thread_id, "metadata": {"m": MARK}},
                     {"resource": resource, "thread_id": thread_id, "title": MARK},
                     {"resource": resource, "thread_id": thread_id, "metadata": {"m": 1}, "extra": MARK}):
        send(http, "POST", "/api/v1/threads", document, hostile)
    problem(http.get(f"/api/v1/threads/{thread_id}"), 404)
    assert http.get("/api/v1/threads", params={"resource": resource}).json()["items"] == []
    assert raw_rows(server, names.TABLE_MEMORY, f"{TENANT}|r|{resource}") == []
    assert raw_rows(server, names.TABLE_MEMORY, f"{TENANT}|t|{thread_id}") == []

    created = http.post("/api/v1/threads", json={"resource": resource, "metadata": {"m": 1}}).json()
    path = f"/api/v1/threads/{created['thread_id']}"
    send(http, "PATCH", path, {"metadata": {"m": MARK}}, hostile)
    send(http, "PATCH", path, {"title": MARK}, hostile)
    after = http.get(path).json()
    assert (after["etag"], after["metadata"], after["title"]) == (created["etag"], {"m": 1}, None)


def test_messages_refuse_hostile_bodies_and_append_nothing(http, hostile):
    thread = http.post("/api/v1/threads", json={"resource": unique("user")}).json()
    path = f"/api/v1/threads/{thread['thread_id']}/messages"
    for document in ({"role": "user", "content": MARK},
                     {"role": "user", "content": [{"type": "text", "text": MARK}]},
                     {"role": "user", "content": {"k": MARK}},
                     {"role": "user", "content": "hi", "metadata": {"m": MARK}},
                     {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": MARK}]}):
        send(http, "POST", path, document, hostile)
    assert http.get(f"/api/v1/threads/{thread['thread_id']}").json()["message_count"] == 0
    assert http.get(path).json()["items"] == []

    message = http.post(path, json={"role": "user", "content": "hello"}).json()["messages"][0]
    one = f"{path}/{message['message_id']}"
    send(http, "PATCH", one, {"content": MARK}, hostile)
    send(http, "PATCH", one, {"metadata": {"m": MARK}}, hostile)
    after = http.get(one).json()
    assert (after["etag"], after["content"], after["metadata"]) == (message["etag"], "hello", {})


# --------------------------------------------------------------------------- sessions


def test_sessions_refuse_hostile_bodies_and_create_nothing(server, http, hostile):
    user, session_id = unique("user"), unique("session")
    for document in ({"user_id": user, "session_id": session_id, "metadata": {"m": MARK}},
                     {"user_id": user, "session_id": session_id, "extra": MARK}):
        send(http, "POST", "/api/v1/sessions", document, hostile)
    problem(http.get(f"/api/v1/sessions/{session_id}"), 404)
    problem(http.get(f"/api/v1/threads/{session_id}"), 404)  # nor its memory thread
    assert http.get("/api/v1/sessions", params={"user_id": user}).json()["items"] == []
    assert raw_rows(server, names.TABLE_SESSIONS, f"{TENANT}|u|{user}") == []


def test_session_routes_refuse_hostile_bodies_and_change_nothing(http, hostile):
    session = http.post("/api/v1/sessions", json={"user_id": unique("user"), "metadata": {"m": 1}}).json()
    path = f"/api/v1/sessions/{session['session_id']}"
    send(http, "PATCH", path, {"metadata": {"m": MARK}}, hostile)
    send(http, "PUT", f"{path}/context", {"c": MARK}, hostile)
    send(http, "PUT", f"{path}/context", {"c": [1, {"d": MARK}]}, hostile)
    send(http, "POST", f"{path}/metrics", {"requests": MARK}, hostile)
    send(http, "POST", f"{path}/metrics", {"requests": 1, "extra": MARK}, hostile)  # even a field it ignores
    send(http, "POST", f"{path}/end", {"status": "completed", "reason": MARK}, hostile)
    after = http.get(path).json()
    assert (after["version"], after["metadata"], after["request_count"], after["status"]) == (
        session["version"], {"m": 1}, 0, "active")
    problem(http.get(f"{path}/context"), 404)


# --------------------------------------------------------------------------- workflows and events


def suspend_body(**overrides) -> dict:
    body = {"workflow_name": "etl", "resource": "user:42", "current_step": "load",
            "context_state": {"cursor": 17}, "suspend_reason": {"kind": "manual"}}
    body.update(overrides)
    return body


def test_suspend_refuses_hostile_bodies_and_creates_nothing(server, http, hostile):
    workflow_id, resource = unique("wf"), unique("res")
    path = f"/api/v1/workflows/{workflow_id}/suspend"
    for document in (suspend_body(resource=resource, context_state={"c": MARK}),
                     suspend_body(resource=resource, resume_conditions={"r": MARK}),
                     suspend_body(resource=resource, current_step=MARK),
                     suspend_body(resource=resource, workflow_name=MARK),
                     suspend_body(resource=resource, suspend_reason={"kind": "manual", "note": MARK}),
                     suspend_body(resource=resource, suspend_reason={"kind": "approval", "approver": MARK})):
        send(http, "POST", path, document, hostile)
    problem(http.get(f"/api/v1/workflows/{workflow_id}"), 404)
    assert http.get("/api/v1/workflows", params={"resource": resource}).json()["items"] == []
    assert raw_rows(server, names.TABLE_WORKFLOWS, f"{TENANT}|w|{workflow_id}") == []


def test_workflow_routes_refuse_hostile_bodies_and_change_nothing(http, hostile):
    event_id, waiting, running = unique("ev"), unique("wf"), unique("wf")
    reason = {"kind": "event", "event_id": event_id}
    assert http.post(f"/api/v1/workflows/{waiting}/suspend", json=suspend_body(suspend_reason=reason)).is_success
    send(http, "POST", f"/api/v1/events/{event_id}", {"payload": MARK}, hostile)
    send(http, "POST", f"/api/v1/events/{event_id}", [1, MARK], hostile)
    assert not http.get(f"/api/v1/workflows/{waiting}").json()["ready"]

    assert http.post(f"/api/v1/workflows/{running}/suspend", json=suspend_body()).is_success
    assert http.post(f"/api/v1/workflows/{running}/resume").json()["current_step"] == "load"
    send(http, "POST", f"/api/v1/workflows/{running}/suspend", suspend_body(context_state={"c": MARK}), hostile)
    send(http, "POST", f"/api/v1/workflows/{running}/complete", {"detail": MARK}, hostile)
    after = http.get(f"/api/v1/workflows/{running}", params={"include_context": "true"}).json()
    assert (after["status"], after["suspensions"], after["context_state"]) == ("running", 1, {"cursor": 17})

    approval = unique("wf")
    assert http.post(f"/api/v1/workflows/{approval}/suspend",
                     json=suspend_body(suspend_reason={"kind": "approval"})).is_success
    send(http, "POST", f"/api/v1/workflows/{approval}/approve", {"comment": MARK}, hostile)
    send(http, "POST", f"/api/v1/workflows/{approval}/cancel", {"detail": MARK}, hostile)
    after = http.get(f"/api/v1/workflows/{approval}").json()
    assert (after["status"], after["ready"], after["etag"]) == ("suspended", False, "1")


# --------------------------------------------------------------------------- checkpoints


CHECKPOINTS = "/api/v1/checkpoints/threads"
VALUE = {"type": "json", "data": "e30="}  # base64 of b"{}"


def test_checkpoint_routes_refuse_hostile_bodies_and_store_nothing(http, hostile):
    thread = unique("th")
    url = f"{CHECKPOINTS}/{thread}/checkpoints/c1"
    for document in ({"checkpoint": VALUE, "metadata": {"m": MARK}},
                     {"checkpoint": {"type": MARK, "data": "e30="}},
                     {"checkpoint": VALUE, "channel_versions": {"ch": MARK}, "new_values": {"ch": VALUE}},
                     {"checkpoint": VALUE, "channel_versions": {"ch": "1"}, "new_values": {"ch": MARK}}):
        send(http, "PUT", url, document, hostile)
    problem(http.get(f"{CHECKPOINTS}/{thread}/latest"), 404)

    assert http.put(url, json={"checkpoint": VALUE, "metadata": {"run_id": "run-1"}}).status_code == 201
    for document in ({"writes": [{"idx": 0, "channel": MARK, "value": VALUE}]},
                     {"writes": [{"idx": 0, "channel": "ch", "value": {"type": "json", "data": MARK}}]},
                     {"task_path": MARK, "writes": [{"idx": 0, "channel": "ch", "value": VALUE}]}):
        send(http, "PUT", f"{url}/writes/task-1", document, hostile)
    send(http, "POST", f"{CHECKPOINTS}/{thread}/copy", {"target_thread_id": MARK}, hostile)
    send(http, "POST", f"{CHECKPOINTS}/{thread}/prune", {"strategy": MARK}, hostile)
    send(http, "POST", "/api/v1/checkpoints/runs/delete", {"run_ids": [MARK]}, hostile)
    stored = http.get(url).json()
    assert stored["checkpoint_id"] == "c1" and stored["pending_writes"] == []


@pytest.mark.parametrize("data", ["é", "e30é", "ZQ==\u00a0", "\u0661\u0662\u0663\u0664"])
def test_checkpoint_base64_with_non_ascii_is_refused(http, data):
    thread = unique("th")
    url = f"{CHECKPOINTS}/{thread}/checkpoints/c1"
    bad = {"type": "json", "data": data}
    for document in ({"checkpoint": bad},
                     {"checkpoint": VALUE, "channel_versions": {"ch": "1"}, "new_values": {"ch": bad}}):
        refused(http.put(url, content=json.dumps(document, ensure_ascii=False).encode(), headers=JSON))
    problem(http.get(f"{CHECKPOINTS}/{thread}/latest"), 404)
    assert http.put(url, json={"checkpoint": VALUE}).status_code == 201
    refused(http.put(f"{url}/writes/task-1", content=json.dumps(
        {"writes": [{"idx": 0, "channel": "ch", "value": bad}]}, ensure_ascii=False).encode(), headers=JSON))
    assert http.get(url).json()["pending_writes"] == []


# --------------------------------------------------------------------------- path and query parameters


LONE = quote("\ud800".encode("utf-8", "surrogatepass"))  # %ED%A0%80: the UTF-8 form of a surrogate, invalid


def test_path_parameters_with_lone_surrogates_are_problems(http):
    assert LONE == "%ED%A0%80"
    for method, path in (("GET", f"/api/v1/threads/{LONE}"), ("GET", f"/api/v1/threads/x{LONE}/messages"),
                         ("GET", f"/api/v1/sessions/{LONE}"), ("GET", f"/api/v1/sessions/{LONE}/context"),
                         ("GET", f"/api/v1/workflows/{LONE}"), ("POST", f"/api/v1/workflows/{LONE}/resume"),
                         ("POST", f"/api/v1/events/{LONE}"), ("GET", f"{CHECKPOINTS}/{LONE}/latest"),
                         ("DELETE", f"{CHECKPOINTS}/{LONE}")):
        response = http.request(method, path)
        assert response.status_code in (400, 404, 422), (method, path, response.text)
        problem(response, response.status_code)


def test_query_parameters_with_lone_surrogates_or_deep_json_are_problems(http):
    thread = unique("th")
    assert http.put(f"{CHECKPOINTS}/{thread}/checkpoints/c1", json={"checkpoint": VALUE}).status_code == 201
    surrogate_object = json.dumps({"k": "\ud800"})  # '{"k": "\\ud800"}'
    for path, params in (("/api/v1/threads", {"resource": "user-1", "metadata": surrogate_object}),
                         ("/api/v1/threads", {"resource": "user-1", "metadata": json.dumps({"\ud800": 1})}),
                         ("/api/v1/threads", {"resource": "user-1", "metadata": "[" * 1000 + "]" * 1000}),
                         (f"{CHECKPOINTS}/{thread}/checkpoints", {"filter": surrogate_object}),
                         (f"{CHECKPOINTS}/{thread}/checkpoints", {"filter": '{"a":' * 500 + "1" + "}" * 500})):
        refused(http.get(path, params=params))
    # Starlette decodes invalid UTF-8 in a query to U+FFFD: valid text, so a listing may simply find nothing.
    for path in (f"/api/v1/threads?resource={LONE}", f"/api/v1/sessions?user_id={LONE}",
                 f"/api/v1/workflows?resource={LONE}", f"{CHECKPOINTS}/{thread}/latest?checkpoint_ns={LONE}"):
        response = http.get(path)
        assert response.status_code in (200, 400, 404, 422), (path, response.text)
        if response.status_code == 200:
            assert response.json()["items"] == []
        else:
            problem(response, response.status_code)
