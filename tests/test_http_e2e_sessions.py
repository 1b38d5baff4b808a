"""End to end over real HTTP for sessions and task context, on every backend."""

from __future__ import annotations

import uuid

import httpx

from shared.commands import CommandClient
from shared.domains.memory.service import MemoryService
from tests.e2e import MAX_BYTES, problem, until


def _user() -> str:
    return "user-" + uuid.uuid4().hex[:8]


def _create(http: httpx.Client, user: str, **body) -> dict:
    response = http.post("/api/v1/sessions", json={"user_id": user, **body})
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == f'"{response.json()["version"]}"'
    return response.json()


def test_every_route_is_documented_with_models_and_error_statuses(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    expected = {
        ("/api/v1/sessions", "post"): {"201", "400", "401", "409", "413", "422"},
        ("/api/v1/sessions", "get"): {"200", "400", "401", "422"},
        ("/api/v1/sessions/{session_id}", "get"): {"200", "400", "401", "404"},
        ("/api/v1/sessions/{session_id}", "patch"): {"200", "401", "404", "412", "413"},
        ("/api/v1/sessions/{session_id}/end", "post"): {"200", "401", "404", "409", "412"},
        ("/api/v1/sessions/{session_id}/metrics", "post"): {"200", "401", "404", "409"},
        ("/api/v1/sessions/{session_id}/context", "put"): {"200", "201", "401", "404", "412", "413"},
        ("/api/v1/sessions/{session_id}/context", "get"): {"200", "401", "404"},
    }
    for (path, method), statuses in expected.items():
        operation = spec["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, method)
        assert "$ref" in str(operation["responses"]["200" if "200" in statuses else "201"]), (path, method)
    schemas = spec["components"]["schemas"]
    assert schemas["SessionOut"]["properties"]["request_count"]["description"]
    assert schemas["RecordMetrics"]["properties"]["processing_time"]["description"]
    assert "requestBody" in spec["paths"]["/api/v1/sessions/{session_id}/context"]["put"]


def test_session_lifecycle_with_metrics_and_etags(server):
    user = _user()
    with server.client() as http:
        session = _create(http, user, metadata={"agent": "ceo"})
        sid = session["session_id"]
        assert session["status"] == "active" and session["thread_id"] == sid and session["expires_at"]

        for body in ({"requests": 1, "processing_time": 0.25}, {"requests": 2, "processing_time": 0.5, "errors": 1}):
            assert http.post(f"/api/v1/sessions/{sid}/metrics", json=body).status_code == 200
        got = http.get(f"/api/v1/sessions/{sid}")
        assert got.status_code == 200 and got.headers["etag"] == '"1"', "metrics leave the ETag alone"
        assert (got.json()["request_count"], got.json()["error_count"], got.json()["total_processing_time"]) == (3, 1, 0.75)
        assert got.json()["last_activity"] > session["last_activity"]

        patched = http.patch(f"/api/v1/sessions/{sid}", json={"metadata": {"agent": "cfo"}}, headers={"If-Match": '"1"'})
        assert patched.status_code == 200 and patched.headers["etag"] == '"2"'
        assert patched.json()["metadata"] == {"agent": "cfo"}
        problem(http.patch(f"/api/v1/sessions/{sid}", json={"metadata": {}}, headers={"If-Match": '"1"'}), 412)
        problem(http.post(f"/api/v1/sessions/{sid}/end", json={}, headers={"If-Match": '"1"'}), 412)

        ended = http.post(f"/api/v1/sessions/{sid}/end", json={"status": "failed", "reason": "tool crashed"})
        assert ended.status_code == 200 and ended.json()["status"] == "failed" and ended.json()["ended_at"]
        detail = problem(http.post(f"/api/v1/sessions/{sid}/end", json={"status": "completed"}), 409)["detail"]
        assert "failed" in detail and "completed" in detail
        problem(http.post(f"/api/v1/sessions/{sid}/metrics", json={}), 409)
        assert http.get(f"/api/v1/sessions/{sid}").json()["request_count"] == 3

        problem(http.post("/api/v1/sessions", json={"user_id": user, "session_id": sid}), 409)


def test_an_idempotency_key_counts_a_retried_request_once(server):
    with server.client() as http:
        sid = _create(http, _user())["session_id"]
        key = {"Idempotency-Key": uuid.uuid4().hex}
        for _ in range(3):
            assert http.post(f"/api/v1/sessions/{sid}/metrics", json={"requests": 4}, headers=key).status_code == 200
        assert http.get(f"/api/v1/sessions/{sid}").json()["request_count"] == 4


def test_an_idempotency_key_reused_for_other_figures_is_422_and_a_replay_answers_the_first_result(server):
    with server.client() as http:
        sid = _create(http, _user())["session_id"]
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = http.post(f"/api/v1/sessions/{sid}/metrics", json={"requests": 4}, headers=key)
        assert first.status_code == 200
        assert http.post(f"/api/v1/sessions/{sid}/metrics", json={"requests": 1}).status_code == 200
        replay = http.post(f"/api/v1/sessions/{sid}/metrics", json={"requests": 4}, headers=key)
        assert replay.status_code == 200 and replay.json() == first.json()
        body = problem(http.post(f"/api/v1/sessions/{sid}/metrics", json={"requests": 5}, headers=key), 422)
        assert "idempotency key" in body["detail"]
        assert http.get(f"/api/v1/sessions/{sid}").json()["request_count"] == 5


def test_list_active_sessions_of_a_user(server):
    user = _user()
    with server.client() as http:
        ids = [_create(http, user)["session_id"] for _ in range(3)]
        _create(http, _user())
        assert http.post(f"/api/v1/sessions/{ids[1]}/end", json={"status": "cancelled"}).status_code == 200
        seen, token = [], None
        while True:
            params = {"user_id": user, "status": "active", "limit": 1, **({"continuation": token} if token else {})}
            page = http.get("/api/v1/sessions", params=params).json()
            seen += [item["session_id"] for item in page["items"]]
            token = page["continuation"]
            if not token:
                break
        assert seen == [ids[2], ids[0]], "active only, newest first"
        problem(http.get("/api/v1/sessions", params={"user_id": user, "status": "completed"}), 422)
        problem(http.get("/api/v1/sessions"), 422)
        problem(http.get("/api/v1/sessions", params={"user_id": "a/b"}), 400)


def test_task_context_versions_if_match_and_limits(server):
    with server.client() as http:
        sid = _create(http, _user())["session_id"]
        path = f"/api/v1/sessions/{sid}/context"
        problem(http.get(path), 404)
        first = http.put(path, json={"step": 1, "plan": ["search", "write"]})
        assert first.status_code == 201 and first.headers["etag"] == '"1"' and first.json()["version"] == 1
        second = http.put(path, json={"step": 2}, headers={"If-Match": first.headers["etag"]})
        assert second.status_code == 200 and second.headers["etag"] == '"2"'
        problem(http.put(path, json={"step": 99}, headers={"If-Match": first.headers["etag"]}), 412)
        got = http.get(path)
        assert got.json()["context"] == {"step": 2} and got.headers["etag"] == '"2"' and got.json()["version"] == 2

        big = {"notes": "é" * 300_000, "items": list(range(20_000))}  # well over the offload threshold
        assert http.put(path, json=big).status_code == 200
        assert http.get(path).json()["context"] == big

        problem(http.put(path, json=["not", "an", "object"]), 400)
        problem(http.put(path, content=b"{not json", headers={"Content-Type": "application/json"}), 400)
        problem(http.put(path, json={"x": "y" * (MAX_BYTES + 10)}), 413)
        assert http.get(path).json()["version"] == 3
        problem(http.put("/api/v1/sessions/missing-session/context", json={"x": 1}), 404)


def test_the_conversation_is_the_memory_thread_of_the_session(server):
    user = _user()
    with server.client() as http:
        session = _create(http, user)
    memory = MemoryService(server.stores)
    thread = memory.get_thread("alpha", session["thread_id"])
    assert thread.resource == user
    memory.add_message("alpha", session["thread_id"], "user", "hello")
    assert [m.content for m in memory.history("alpha", session["thread_id"]).items] == ["hello"]


def test_another_tenant_gets_404_on_every_endpoint(server):
    user = _user()
    with server.client("alpha") as alpha, server.client("beta") as beta:
        session = _create(alpha, user, metadata={"secret": True})
        sid = session["session_id"]
        assert alpha.put(f"/api/v1/sessions/{sid}/context", json={"plan": "alpha"}).status_code == 201
        problem(beta.get(f"/api/v1/sessions/{sid}"), 404)
        problem(beta.patch(f"/api/v1/sessions/{sid}", json={"metadata": {}}), 404)
        problem(beta.post(f"/api/v1/sessions/{sid}/end", json={}), 404)
        problem(beta.post(f"/api/v1/sessions/{sid}/metrics", json={}), 404)
        problem(beta.get(f"/api/v1/sessions/{sid}/context"), 404)
        problem(beta.put(f"/api/v1/sessions/{sid}/context", json={"plan": "beta"}), 404)
        assert beta.get("/api/v1/sessions", params={"user_id": user}).json()["items"] == []
        after = alpha.get(f"/api/v1/sessions/{sid}").json()
        assert (after["status"], after["request_count"], after["metadata"]) == ("active", 0, {"secret": True})
        assert alpha.get(f"/api/v1/sessions/{sid}/context").json()["context"] == {"plan": "alpha"}


def test_bad_requests_get_400_or_422_and_no_key_gets_401(server):
    with server.client() as http:
        problem(http.post("/api/v1/sessions", json={"user_id": "a b"}), 400)
        problem(http.post("/api/v1/sessions", json={"user_id": "u", "session_id": "x" * 129}), 400)
        problem(http.post("/api/v1/sessions", json={"user_id": "u", "metadata": {"x": "y" * 20_000}}), 413)
        problem(http.post("/api/v1/sessions", json={}), 422)
        problem(http.get("/api/v1/sessions/bad%20id"), 400)
        sid = _create(http, _user())["session_id"]
        problem(http.post(f"/api/v1/sessions/{sid}/metrics", json={"requests": -1}), 422)
        problem(http.post(f"/api/v1/sessions/{sid}/end", json={"status": "active"}), 422)
        problem(http.post(f"/api/v1/sessions/{sid}/end", json={"status": "finished"}), 422)
    with server.client(None) as anonymous:
        problem(anonymous.get(f"/api/v1/sessions/{sid}"), 401)


def test_queued_session_commands_are_applied_by_the_running_worker(server):
    sid = "queued-" + uuid.uuid4().hex[:8]
    client = CommandClient(server.stores)
    client.send("sessions.create", "alpha", {"session_id": sid, "user_id": "queue-user"})
    with server.client() as http:
        until(lambda: http.get(f"/api/v1/sessions/{sid}").status_code == 200, "the worker to create the session")
        client.send("sessions.record", "alpha", {"session_id": sid, "requests": 2, "processing_time": 0.5})
        client.send("sessions.put_context", "alpha", {"session_id": sid, "context": {"via": "queue"}})
        until(lambda: http.get(f"/api/v1/sessions/{sid}").json()["request_count"] == 2, "the record command")
        until(lambda: http.get(f"/api/v1/sessions/{sid}/context").status_code == 200, "the context command")
        assert http.get(f"/api/v1/sessions/{sid}/context").json()["context"] == {"via": "queue"}
        assert http.get(f"/api/v1/sessions/{sid}").json()["total_processing_time"] == 0.5
        problem(server.client("beta").get(f"/api/v1/sessions/{sid}"), 404)
