"""End to end over real HTTP for memory: threads and messages on `stowage serve`, every backend."""

from __future__ import annotations

import base64
import json
import uuid

import httpx

from shared import names
from shared.commands import CommandClient
from shared.domains.memory.models import MAX_CONTENT_BYTES
from tests.e2e import problem, until


def _resource() -> str:
    return "user_" + uuid.uuid4().hex[:8]


def _thread(http: httpx.Client, resource: str | None = None, **fields) -> dict:
    created = http.post("/api/v1/threads", json={"resource": resource or _resource(), **fields})
    assert created.status_code == 201, created.text
    return created.json()


def test_openapi_documents_every_memory_route_with_models_and_errors(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/api/v1/threads", "post"): {"201", "409", "413", "422"},
        ("/api/v1/threads", "get"): {"200", "400", "422"},
        ("/api/v1/threads/{thread_id}", "get"): {"200", "404"},
        ("/api/v1/threads/{thread_id}", "patch"): {"200", "404", "412"},
        ("/api/v1/threads/{thread_id}", "delete"): {"204", "404"},
        ("/api/v1/threads/{thread_id}/messages", "post"): {"201", "404", "413", "422"},
        ("/api/v1/threads/{thread_id}/messages", "get"): {"200", "400", "404"},
        ("/api/v1/threads/{thread_id}/messages/{message_id}", "get"): {"200", "404"},
        ("/api/v1/threads/{thread_id}/messages/{message_id}", "patch"): {"200", "404", "412", "413"},
        ("/api/v1/threads/{thread_id}/messages/{message_id}", "delete"): {"204", "404", "412"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert statuses | {"401"} <= set(operation["responses"]), (path, method)
    schemas = spec["components"]["schemas"]
    assert schemas["MessageOut"]["properties"]["seq"]["description"]
    assert set(schemas["Role"]["enum"]) == {"user", "assistant", "system", "tool"}
    body = paths["/api/v1/threads/{thread_id}/messages"]["post"]["requestBody"]["content"]["application/json"]
    assert "anyOf" in body["schema"] or "oneOf" in body["schema"]  # one message or several


def test_threads_and_messages_round_trip(server):
    resource = _resource()
    with server.client() as http:
        created = http.post("/api/v1/threads", json={"resource": resource, "title": "Rome",
                                                     "metadata": {"project": "apollo"}})
        assert created.status_code == 201
        thread = created.json()
        tid = thread["thread_id"]
        assert created.headers["etag"] == f'"{thread["etag"]}"' and thread["message_count"] == 0
        _thread(http, resource, metadata={"project": "zeus"})

        one = http.post(f"/api/v1/threads/{tid}/messages", json={"role": "user", "content": "Plan a trip"})
        assert one.status_code == 201
        first = one.json()["messages"][0]
        assert first["seq"] == 1 and first["role"] == "user"
        turn = {"messages": [
            {"role": "assistant", "content": [{"type": "text", "text": "Day 1"}], "parent_message_id": first["message_id"]},
            {"role": "tool", "content": {"weather": "sunny"}, "metadata": {"tool": "forecast"}},
            {"role": "user", "content": "Thanks"},
        ]}
        many = http.post(f"/api/v1/threads/{tid}/messages", json=turn, headers={"Idempotency-Key": "turn-2"})
        assert [m["seq"] for m in many.json()["messages"]] == [2, 3, 4]
        replay = http.post(f"/api/v1/threads/{tid}/messages", json=turn, headers={"Idempotency-Key": "turn-2"})
        assert replay.status_code == 201  # the first answer's status
        assert [m["seq"] for m in replay.json()["messages"]] == [2, 3, 4]  # applied once
        # The same key with another request is refused, never answered as if applied.
        problem(http.post(f"/api/v1/threads/{tid}/messages", json={"messages": [{"role": "user", "content": "x"}]},
                          headers={"Idempotency-Key": "turn-2"}), 422)

        got = http.get(f"/api/v1/threads/{tid}")
        assert got.json()["message_count"] == 4 and got.json()["updated_at"] == many.json()["messages"][-1]["created_at"]
        stale = created.headers["etag"]
        problem(http.patch(f"/api/v1/threads/{tid}", json={"title": "Paris"}, headers={"If-Match": stale}), 412)
        renamed = http.patch(f"/api/v1/threads/{tid}", json={"title": "Paris"}, headers={"If-Match": got.headers["etag"]})
        assert renamed.status_code == 200 and renamed.json()["title"] == "Paris"
        assert renamed.json()["metadata"] == {"project": "apollo"}  # absent fields are kept

        listed = http.get("/api/v1/threads", params={"resource": resource}).json()
        assert [t["title"] for t in listed["items"]][1] == "Paris" and len(listed["items"]) == 2
        filtered = http.get("/api/v1/threads", params={"resource": resource,
                                                        "metadata": json.dumps({"project": "apollo"})}).json()
        assert [t["thread_id"] for t in filtered["items"]] == [tid]
        page = http.get("/api/v1/threads", params={"resource": resource, "limit": 1}).json()
        rest = http.get("/api/v1/threads", params={"resource": resource, "continuation": page["continuation"]}).json()
        assert [t["thread_id"] for t in page["items"] + rest["items"]] == [t["thread_id"] for t in listed["items"]]

        last = http.get(f"/api/v1/threads/{tid}/messages", params={"last": 2}).json()
        assert [m["seq"] for m in last["items"]] == [3, 4] and last["items"][0]["content"] == {"weather": "sunny"}
        older = http.get(f"/api/v1/threads/{tid}/messages", params={"continuation": last["continuation"]}).json()
        assert [m["seq"] for m in older["items"]] == [1, 2] and older["continuation"] is None
        window = http.get(f"/api/v1/threads/{tid}/messages",
                          params={"after": first["message_id"], "before": 4, "order": "desc"}).json()
        assert [m["seq"] for m in window["items"]] == [3, 2]

        second = many.json()["messages"][0]
        message_url = f"/api/v1/threads/{tid}/messages/{second['message_id']}"
        fetched = http.get(message_url)
        assert fetched.json()["parent_message_id"] == first["message_id"]
        edited = http.patch(message_url, json={"content": "Day 1: Colosseum"}, headers={"If-Match": fetched.headers["etag"]})
        assert edited.status_code == 200 and edited.json()["content"] == "Day 1: Colosseum"
        problem(http.patch(message_url, json={"content": "again"}, headers={"If-Match": fetched.headers["etag"]}), 412)
        problem(http.delete(message_url, headers={"If-Match": fetched.headers["etag"]}), 412)
        assert http.delete(message_url, headers={"If-Match": edited.headers["etag"]}).status_code == 204
        problem(http.get(message_url), 404)
        assert http.get(f"/api/v1/threads/{tid}").json()["message_count"] == 3

        assert http.delete(f"/api/v1/threads/{tid}").status_code == 204
        problem(http.get(f"/api/v1/threads/{tid}"), 404)
        problem(http.get(f"/api/v1/threads/{tid}/messages"), 404)
        problem(http.delete(f"/api/v1/threads/{tid}"), 404)


def test_another_tenant_gets_404_on_every_endpoint(server):
    resource = _resource()
    with server.client("alpha") as alpha, server.client("beta") as beta:
        tid = _thread(alpha, resource, title="alpha only")["thread_id"]
        message = alpha.post(f"/api/v1/threads/{tid}/messages", json={"role": "user", "content": "secret"}).json()
        mid = message["messages"][0]["message_id"]
        thread_url, message_url = f"/api/v1/threads/{tid}", f"/api/v1/threads/{tid}/messages/{mid}"
        problem(beta.get(thread_url), 404)
        problem(beta.patch(thread_url, json={"title": "mine now"}), 404)
        problem(beta.delete(thread_url), 404)
        problem(beta.post(f"{thread_url}/messages", json={"role": "user", "content": "intrusion"}), 404)
        problem(beta.get(f"{thread_url}/messages", params={"last": 5}), 404)
        problem(beta.get(message_url), 404)
        problem(beta.patch(message_url, json={"content": "changed"}), 404)
        problem(beta.delete(message_url), 404)
        assert beta.get("/api/v1/threads", params={"resource": resource}).json()["items"] == []
        theirs = alpha.get(thread_url).json()
        assert theirs["title"] == "alpha only" and theirs["message_count"] == 1
        assert alpha.get(message_url).json()["content"] == "secret"


def test_oversized_content_gets_413_and_nothing_is_written(server):
    with server.client() as http:
        tid = _thread(http)["thread_id"]
        big = {"role": "user", "content": "x" * (MAX_CONTENT_BYTES + 1)}
        problem(http.post(f"/api/v1/threads/{tid}/messages", json={"messages": [{"role": "user", "content": "ok"}, big]}),
                413)
        assert http.get(f"/api/v1/threads/{tid}").json()["message_count"] == 0
        assert http.get(f"/api/v1/threads/{tid}/messages").json()["items"] == []
        mid = http.post(f"/api/v1/threads/{tid}/messages", json={"role": "user", "content": "ok"}).json()
        problem(http.patch(f"/api/v1/threads/{tid}/messages/{mid['messages'][0]['message_id']}",
                           json={"metadata": {"big": "y" * 10_000}}), 413)


def test_bad_input_gets_400_or_422(server):
    with server.client() as http:
        tid = _thread(http)["thread_id"]
        problem(http.post("/api/v1/threads", json={"resource": "has space"}), 400)
        problem(http.post("/api/v1/threads", json={"resource": "u1", "thread_id": "a#b"}), 400)
        problem(http.post("/api/v1/threads", json={"title": "no resource"}), 422)
        problem(http.post(f"/api/v1/threads/{tid}/messages", json={"role": "robot", "content": "x"}), 422)
        problem(http.post(f"/api/v1/threads/{tid}/messages", json={"messages": []}), 422)
        problem(http.get(f"/api/v1/threads/{tid}/messages", params={"last": 0}), 422)
        problem(http.get(f"/api/v1/threads/{tid}/messages", params={"before": "nonsense"}), 400)
        problem(http.get(f"/api/v1/threads/{tid}/messages", params={"continuation": "garbage!"}), 400)
        problem(http.get("/api/v1/threads", params={"resource": "u1", "metadata": "[1]"}), 400)
        problem(http.get("/api/v1/threads"), 422)
        problem(http.get(f"/api/v1/threads/{tid}/messages/msg_000000000001_00000000"), 404)
        added = http.post(f"/api/v1/threads/{tid}/messages", json={"role": "user", "content": "x"}).json()
        message_url = f"/api/v1/threads/{tid}/messages/{added['messages'][0]['message_id']}"
        problem(http.patch(message_url, json={"content": None}), 400)
        problem(http.patch(message_url, json={"contents": "typo"}), 422)
        assert http.get(message_url).json()["content"] == "x"


def test_continuation_tokens_open_only_in_the_listing_that_issued_them(server):
    resource = _resource()
    deep = base64.urlsafe_b64encode(("[" * 5000 + "]" * 5000).encode()).decode().rstrip("=")
    with server.client("alpha") as alpha, server.client("beta") as beta:
        tid = _thread(alpha, resource)["thread_id"]
        _thread(alpha, resource)
        _thread(beta, resource)
        _thread(beta, resource)
        alpha.post(f"/api/v1/threads/{tid}/messages", json={"messages": [{"role": "user", "content": str(i)}
                                                                         for i in range(4)]})
        beta_tid = _thread(beta, resource, thread_id=tid)["thread_id"]
        beta.post(f"/api/v1/threads/{beta_tid}/messages", json={"messages": [{"role": "user", "content": str(i)}
                                                                             for i in range(4)]})
        listed = alpha.get("/api/v1/threads", params={"resource": resource, "limit": 1}).json()["continuation"]
        problem(beta.get("/api/v1/threads", params={"resource": resource, "continuation": listed}), 400)
        history = alpha.get(f"/api/v1/threads/{tid}/messages", params={"limit": 2}).json()["continuation"]
        problem(beta.get(f"/api/v1/threads/{tid}/messages", params={"continuation": history}), 400)
        assert len(alpha.get(f"/api/v1/threads/{tid}/messages", params={"continuation": history}).json()["items"]) == 2
        for token in (deep, deep + ".AAAAAAAAAAAAAAAAAAAAAA"):  # JSON nested 5,000 deep: refused unread
            problem(alpha.get("/api/v1/threads", params={"resource": resource, "continuation": token}), 400)
            problem(alpha.get(f"/api/v1/threads/{tid}/messages", params={"continuation": token}), 400)
        # The parent's id is checked as the document states it: an empty one breaks its pattern.
        problem(alpha.post(f"/api/v1/threads/{tid}/messages",
                           json={"role": "tool", "content": "", "parent_message_id": ""}), 422)


def test_queued_memory_commands_are_applied_by_the_running_worker(server):
    with server.client() as http:
        tid = _thread(http)["thread_id"]
        client = CommandClient(server.stores)
        payload = {"thread_id": tid, "messages": [{"role": "user", "content": "queued hello"},
                                                  {"role": "assistant", "content": "queued reply"}]}
        key = client.send("memory.add_messages", "alpha", payload)
        client.send("memory.add_messages", "alpha", payload, idempotency_key=key)  # as a redelivery would
        commands = server.stores.queue(names.QUEUE_COMMANDS)
        until(lambda: http.get(f"/api/v1/threads/{tid}").json()["message_count"] >= 2 and
              commands.approximate_length() == 0, "the worker to handle both messages")
        items = http.get(f"/api/v1/threads/{tid}/messages").json()["items"]
        assert [m["content"] for m in items] == ["queued hello", "queued reply"]


def test_a_reused_idempotency_key_on_create_replays_the_same_request_and_refuses_another(server):
    resource = _resource()
    with server.client() as http:
        key = {"Idempotency-Key": "create-" + uuid.uuid4().hex}
        first = http.post("/api/v1/threads", json={"resource": resource, "title": "A"}, headers=key)
        again = http.post("/api/v1/threads", json={"resource": resource, "title": "A"}, headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json()["thread_id"] == first.json()["thread_id"]
        problem(http.post("/api/v1/threads", json={"resource": resource, "title": "B"}, headers=key), 422)
        assert [t["title"] for t in http.get("/api/v1/threads", params={"resource": resource}).json()["items"]] == ["A"]
        # After the thread is deleted, the replay is not a server error.
        assert http.delete(f"/api/v1/threads/{first.json()['thread_id']}").status_code == 204
        assert http.post("/api/v1/threads", json={"resource": resource, "title": "A"}, headers=key).status_code < 500


def test_memory_problems_name_their_own_type(server):
    with server.client() as http:
        missing = problem(http.get("/api/v1/threads/no-such-thread"), 404)
        assert missing["title"] == "Thread not found" and missing["type"].endswith("/thread-not-found")
        tid = _thread(http)["thread_id"]
        gone = problem(http.get(f"/api/v1/threads/{tid}/messages/msg_000000000001_00000000"), 404)
        assert gone["type"].endswith("/message-not-found")
        taken = problem(http.post("/api/v1/threads", json={"resource": _resource(), "thread_id": tid}), 409)
        assert taken["type"].endswith("/thread-already-exists")
