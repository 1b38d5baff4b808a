"""Problem types and members (RFC 9457): each error says its own kind and names what it is about.

Over real HTTP on every backend (the session's `stowage serve`, tests/conftest.py):
a 404, 409, 412 or 422 of each domain carries the error class's ``type`` and its
extension members, with the values the client can act on (the current ETag of a
failed precondition, the ids asked for). In process: every StowageError class in
``shared`` has a type of its own, every member it sends is documented in the
OpenAPI Problem schema, and internal control flow does not derive from StowageError.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import shared.backends.aws as aws
import shared.domains  # noqa: F401  (registers every domain's errors)
import shared.storage.idempotency  # noqa: F401
from functions import problems
from functions.problems import MEMBER_SCHEMAS, PROBLEM_TYPE_BASE, error_classes, problem_schema
from shared.errors import Busy, NotFound, StowageError
from tests.e2e import problem

STANDARD = {"type", "title", "status", "detail", "instance"}


def kind(body: dict[str, Any], slug: str, **members: Any) -> None:
    """``body`` is a problem of type ``slug`` whose extension members are exactly ``members``."""
    assert body["type"] == PROBLEM_TYPE_BASE + slug, body
    assert {k: v for k, v in body.items() if k not in STANDARD} == members, body


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- in process


def _shared_errors() -> list[type[StowageError]]:
    return [cls for cls in error_classes() if cls.__module__.startswith("shared.")]


def test_every_error_class_in_shared_has_a_type_of_its_own():
    # A subclass that names neither a title nor a type is its parent's problem, refined for the
    # server's own use (e.g. KeyRefused keeps the reason a 401 must not reveal): not a type of its own.
    classes = [cls for cls in _shared_errors() if "title" in vars(cls) or "type_slug" in vars(cls)]
    slugs: dict[str, list[str]] = {}
    for cls in classes:
        slugs.setdefault(cls.type_slug, []).append(cls.__qualname__)
    assert {slug: names for slug, names in slugs.items() if len(names) > 1} == {}
    # The domains' errors are among them (the walk is not vacuous).
    assert {"thread-not-found", "object-version-mismatch", "checkpoint-not-found", "idempotency-key-reused",
            "session-not-active", "illegal-transition"} <= set(slugs)


def test_control_flow_exceptions_are_not_stowage_errors():
    assert not issubclass(aws._Done, StowageError) and not issubclass(aws._Retry, StowageError)
    assert issubclass(aws._Done, Exception) and issubclass(aws._Retry, Exception)
    private = [cls.__qualname__ for cls in _shared_errors() if cls.__name__.startswith("_")]
    assert private == []


def test_every_member_an_error_sends_is_documented_in_the_problem_schema():
    schema = problem_schema()
    assert schema["additionalProperties"] is True
    assert set(schema["required"]) == {"type", "title", "status", "detail"}
    for cls in error_classes():
        if not cls.__module__.startswith(("shared.", "functions.")):
            continue  # defined by a test
        for name in cls.problem_fields:
            assert name in MEMBER_SCHEMAS, f"{cls.__qualname__}.{name} has no schema in MEMBER_SCHEMAS"
            assert schema["properties"][name]["description"]


def test_an_error_cannot_send_a_member_that_overwrites_a_standard_one():
    with pytest.raises(TypeError, match="standard members"):
        type("Clash", (NotFound,), {"title": "Clash", "problem_fields": ("status",)})
    with pytest.raises(TypeError, match="type_slug"):
        type("BadSlug", (NotFound,), {"title": "Bad slug", "type_slug": "Bad Slug"})


def test_members_left_unset_are_left_out_and_busy_keeps_retry_after():
    app = FastAPI()
    problems.install(app)

    class Gone(NotFound):
        title = "Gone for this test"
        problem_fields = ("thing", "other")

        def __init__(self) -> None:
            super().__init__("the thing is gone")
            self.thing = "t1"
            self.other = None

    @app.get("/gone")
    def gone() -> None:
        raise Gone()

    @app.get("/busy")
    def busy() -> None:
        raise Busy("contention")

    with TestClient(app) as client:
        answer = client.get("/gone")
        assert answer.status_code == 404 and answer.headers["content-type"] == problems.PROBLEM_JSON
        kind(answer.json(), "gone-for-this-test", thing="t1")
        answer = client.get("/busy")
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        kind(answer.json(), "busy")


# --------------------------------------------------------------------------- objects over HTTP


def test_object_errors_name_the_key_the_version_and_the_current_etag(server):
    key = f"docs/{_id('o')}"
    url = f"/api/v1/objects/{key}"
    with server.client() as http, server.client("beta") as other:
        kind(problem(http.get(url), 404), "object-not-found", key=key)
        kind(problem(http.delete(url, headers={"If-Match": "*"}), 412), "object-version-mismatch",
             key=key, if_match="*")
        written = http.put(url, content=b"one", headers={"Content-Type": "text/plain"})
        assert written.status_code == 201, written.text
        version = written.headers["X-Stowage-Version-Id"]

        kind(problem(http.get(url, params={"version_id": "0000nope"}), 404), "object-version-not-found",
             key=key, version_id="0000nope")
        kind(problem(http.put(url, content=b"two", headers={"If-Match": '"stale"'}), 412),
             "object-version-mismatch", key=key, if_match="stale", current_etag=version)
        kind(problem(http.delete(url, headers={"If-Match": "stale"}), 412),
             "object-version-mismatch", key=key, if_match="stale", current_etag=version)
        kind(problem(http.put(url, content=b"two", headers={"If-None-Match": "*"}), 412),
             "object-exists", key=key, current_etag=version)
        # Another tenant's object is a missing one: same type, nothing about it.
        kind(problem(other.get(url), 404), "object-not-found", key=key)
        kind(problem(other.put(url, content=b"x", headers={"If-Match": version}), 412),
             "object-version-mismatch", key=key, if_match=version)

        retried = {"Idempotency-Key": _id("k")}
        assert http.put(url, content=b"three", headers=retried).status_code == 200
        kind(problem(http.put(url, content=b"four", headers=retried), 422), "idempotency-key-reused",
             idempotency_key=retried["Idempotency-Key"], op="objects.put")


# --------------------------------------------------------------------------- memory over HTTP


def test_memory_errors_name_the_thread_the_message_and_the_current_etag(server):
    with server.client() as http, server.client("beta") as other:
        missing = _id("t")
        kind(problem(http.get(f"/api/v1/threads/{missing}"), 404), "thread-not-found", thread_id=missing)
        created = http.post("/api/v1/threads", json={"resource": "user_1"})
        assert created.status_code == 201, created.text
        thread = created.json()
        tid = thread["thread_id"]
        kind(problem(http.post("/api/v1/threads", json={"resource": "user_1", "thread_id": tid}), 409),
             "thread-already-exists", thread_id=tid)
        kind(problem(other.get(f"/api/v1/threads/{tid}"), 404), "thread-not-found", thread_id=tid)
        kind(problem(http.patch(f"/api/v1/threads/{tid}", json={"title": "x"}, headers={"If-Match": '"old"'}), 412),
             "thread-changed", thread_id=tid, if_match="old", current_etag=thread["etag"])

        added = http.post(f"/api/v1/threads/{tid}/messages", json={"role": "user", "content": "hi"},
                          headers={"Idempotency-Key": "turn-1"})
        assert added.status_code == 201, added.text
        message = added.json()["messages"][0]
        mid = message["message_id"]
        kind(problem(http.patch(f"/api/v1/threads/{tid}/messages/{mid}", json={"content": "x"},
                                headers={"If-Match": "old"}), 412),
             "message-changed", thread_id=tid, message_id=mid, if_match="old", current_etag=message["etag"])
        kind(problem(http.delete(f"/api/v1/threads/{tid}/messages/{mid}", headers={"If-Match": "old"}), 412),
             "message-changed", thread_id=tid, message_id=mid, if_match="old", current_etag=message["etag"])
        gone = "msg_000000000099_00000000"
        kind(problem(http.get(f"/api/v1/threads/{tid}/messages/{gone}"), 404), "message-not-found",
             thread_id=tid, message_id=gone)
        kind(problem(http.post(f"/api/v1/threads/{tid}/messages", json={"role": "user", "content": "other"},
                               headers={"Idempotency-Key": "turn-1"}), 422),
             "idempotency-key-reused", idempotency_key="turn-1", op="memory.add_messages")


# --------------------------------------------------------------------------- checkpoints over HTTP


def test_checkpoint_errors_name_the_thread_namespace_checkpoint_and_runs(server):
    base = "/api/v1/checkpoints"
    with server.client() as http, server.client("beta") as other:
        thread = _id("cp")
        kind(problem(http.get(f"{base}/threads/{thread}/latest", params={"checkpoint_ns": "sub"}), 404),
             "checkpoint-not-found", thread_id=thread, checkpoint_ns="sub")
        kind(problem(http.get(f"{base}/threads/{thread}/checkpoints"), 404),
             "checkpoint-thread-not-found", thread_id=thread)
        kind(problem(http.delete(f"{base}/threads/{thread}"), 404), "checkpoint-thread-not-found", thread_id=thread)
        kind(problem(http.post(f"{base}/threads/{thread}/copy", json={"target_thread_id": _id("to")}), 404),
             "checkpoint-thread-not-found", thread_id=thread)
        kind(problem(http.post(f"{base}/threads/{thread}/prune", json={}), 404),
             "checkpoint-thread-not-found", thread_id=thread)
        runs = [_id("run"), _id("run")]
        kind(problem(http.post(f"{base}/runs/delete", json={"run_ids": runs}), 404),
             "run-checkpoints-not-found", run_ids=runs)

        body = {"checkpoint": {"type": "json", "data": base64.b64encode(b"{}").decode()}}
        stored = http.put(f"{base}/threads/{thread}/checkpoints/c1", json=body)
        assert stored.status_code == 201, stored.text
        kind(problem(http.get(f"{base}/threads/{thread}/checkpoints/c2"), 404),
             "checkpoint-not-found", thread_id=thread, checkpoint_ns="", checkpoint_id="c2")
        kind(problem(other.get(f"{base}/threads/{thread}/checkpoints/c1"), 404),
             "checkpoint-not-found", thread_id=thread, checkpoint_ns="", checkpoint_id="c1")


def test_every_problem_the_server_documents_allows_the_members(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schema = spec["components"]["schemas"]["Problem"]
    assert schema["additionalProperties"] is True
    assert {"thread_id", "key", "current_etag", "idempotency_key", "op", "run_ids"} <= set(schema["properties"])
    assert schema["properties"]["run_ids"]["type"] == "array"
