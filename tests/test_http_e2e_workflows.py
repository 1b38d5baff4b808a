"""End to end over real HTTP for suspended workflows and events, on every backend.

`stowage serve` runs as a separate process (the ``server`` fixture); events also
arrive through the commands queue, applied by the server's queue worker.
"""

from __future__ import annotations

import threading
import uuid

import httpx

from shared.commands import CommandClient
from tests.e2e import problem, until


def unique(prefix: str = "wf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def suspend_body(reason: dict | None = None, **overrides) -> dict:
    body = {"workflow_name": "etl", "resource": "user:42", "current_step": "load",
            "context_state": {"cursor": 17}, "suspend_reason": reason or {"kind": "manual"}}
    body.update(overrides)
    return body


def test_openapi_documents_every_workflow_route(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    expected = {
        ("/api/v1/workflows", "get"): {"400", "401", "422"},
        ("/api/v1/workflows/{workflow_id}", "get"): {"401", "404"},
        ("/api/v1/workflows/{workflow_id}/suspend", "post"): {"201", "409", "412", "413", "422"},
        ("/api/v1/workflows/{workflow_id}/resume", "post"): {"404", "409", "412"},
        ("/api/v1/workflows/{workflow_id}/complete", "post"): {"404", "409", "412"},
        ("/api/v1/workflows/{workflow_id}/fail", "post"): {"404", "409", "412"},
        ("/api/v1/workflows/{workflow_id}/cancel", "post"): {"404", "409", "412"},
        ("/api/v1/workflows/{workflow_id}/approve", "post"): {"404", "409", "412"},
        ("/api/v1/events/{event_id}", "post"): {"400", "401", "413"},
    }
    for (path, method), statuses in expected.items():
        operation = spec["paths"][path][method]
        assert statuses <= set(operation["responses"]), (path, method)
        assert "200" in operation["responses"]
    schemas = spec["components"]["schemas"]
    assert {"SuspendRequest", "WorkflowOut", "ResumeOut", "WorkflowPage", "DeliveryOut"} <= set(schemas)
    assert schemas["WorkflowOut"]["properties"]["ready"]["description"]
    kinds = {ref["$ref"].rsplit("/", 1)[1] for ref in schemas["SuspendRequest"]["properties"]["suspend_reason"]["oneOf"]}
    assert kinds == {"WaitingForEvent", "WaitingForApproval", "ScheduledResume", "ManualResume"}


def test_seed_flow_suspend_then_event_through_the_queue_then_resume(server):
    workflow_id = unique()
    with server.client("alpha") as http:
        created = http.post(f"/api/v1/workflows/{workflow_id}/suspend", json=suspend_body(
            {"kind": "event", "event_id": "data_ready", "timeout_seconds": 3600},
            current_step="transform", context_state={"cursor": 17, "batch": "2024-06"}))
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "suspended" and created.json()["wait_until"]
        assert created.headers["etag"] == f'"{created.json()["etag"]}"'

        CommandClient(server.stores).send("workflows.deliver_event", "alpha",
                                          {"event_id": "data_ready", "payload": {"rows": 1200, "source": "s3"}})
        ready = until(lambda: (r := http.get(f"/api/v1/workflows/{workflow_id}")).json()["ready"] and r,
                      "the queue worker to deliver the event")
        assert ready.json()["status"] == "suspended" and ready.json()["ready_reason"] == "event:data_ready"
        listed = http.get("/api/v1/workflows", params={"ready": "true", "workflow_name": "etl", "limit": 1000})
        assert workflow_id in [w["workflow_id"] for w in listed.json()["items"]]

        resumed = http.post(f"/api/v1/workflows/{workflow_id}/resume")
        assert resumed.status_code == 200, resumed.text
        body = resumed.json()
        assert body["current_step"] == "transform"
        assert body["context_state"] == {"cursor": 17, "batch": "2024-06",
                                         "events": {"data_ready": {"rows": 1200, "source": "s3"}}}
        assert body["workflow"]["status"] == "running"
        assert "running → running" in problem(http.post(f"/api/v1/workflows/{workflow_id}/resume"), 409)["detail"]
        done = http.post(f"/api/v1/workflows/{workflow_id}/complete", json={"detail": "loaded"})
        assert done.status_code == 200 and done.json()["status"] == "completed"
        assert "completed → running" in problem(http.post(f"/api/v1/workflows/{workflow_id}/resume"), 409)["detail"]


def test_racing_resumes_over_http_exactly_one_gets_the_context(server):
    workflow_id = unique()
    with server.client("alpha") as http:
        assert http.post(f"/api/v1/workflows/{workflow_id}/suspend",
                         json=suspend_body(context_state={"token": "once"})).status_code == 201
    racers = 8
    clients = [server.client("alpha") for _ in range(racers)]
    barrier = threading.Barrier(racers)
    responses: list[httpx.Response] = []

    def race(client: httpx.Client) -> None:
        barrier.wait()
        responses.append(client.post(f"/api/v1/workflows/{workflow_id}/resume"))

    threads = [threading.Thread(target=race, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * (racers - 1), [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200)
    assert winner.json()["context_state"] == {"token": "once"}
    for loser in responses:
        if loser.status_code == 409:
            assert "running" in problem(loser, 409)["detail"]


def test_transitions_listing_conditions_and_errors(server):
    resource = unique("res")
    first, second, third = unique(), unique(), unique()
    with server.client("alpha") as http:
        made = http.post(f"/api/v1/workflows/{first}/suspend", json=suspend_body(resource=resource))
        etag = made.headers["etag"]
        for workflow_id in (second, third):
            assert http.post(f"/api/v1/workflows/{workflow_id}/suspend",
                             json=suspend_body({"kind": "approval", "approver": "ops"}, resource=resource,
                                               workflow_name="review")).status_code == 201
        assert "suspended → completed" in problem(http.post(f"/api/v1/workflows/{first}/complete"), 409)["detail"]
        assert "suspended → suspended" in problem(
            http.post(f"/api/v1/workflows/{first}/suspend", json=suspend_body(resource=resource)), 409)["detail"]
        problem(http.post(f"/api/v1/workflows/{first}/resume", headers={"If-Match": '"999"'}), 412)
        resumed = http.post(f"/api/v1/workflows/{first}/resume", headers={"If-Match": etag})
        assert resumed.status_code == 200 and resumed.headers["etag"] != etag
        problem(http.post(f"/api/v1/workflows/{first}/fail", headers={"If-Match": etag}), 412)
        again = http.post(f"/api/v1/workflows/{first}/suspend", json=suspend_body(resource=resource,
                                                                                 current_step="retry"))
        assert again.status_code == 200 and again.json()["suspensions"] == 2

        approved = http.post(f"/api/v1/workflows/{second}/approve", json={"approved_by": "alice"})
        assert approved.json()["ready"] and approved.json()["approval"]["approved_by"] == "alice"
        problem(http.post(f"/api/v1/workflows/{second}/approve"), 409)
        cancelled = http.post(f"/api/v1/workflows/{third}/cancel", json={"detail": "not needed"})
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["detail"] == "not needed"

        def listed(**params) -> list[str]:
            found, token = [], None
            while True:
                page = http.get("/api/v1/workflows", params={**params, "limit": 1,
                                                               **({"continuation": token} if token else {})}).json()
                found += [w["workflow_id"] for w in page["items"]]
                token = page["continuation"]
                if not token:
                    return found

        assert listed(resource=resource, status="suspended") == sorted([first, second])
        assert listed(resource=resource, status="cancelled") == [third]
        assert listed(resource=resource, ready="true") == [second]
        assert listed(resource=resource) == sorted([first, second, third])
        assert set(listed(workflow_name="review", status="cancelled")) >= {third}
        got = http.get(f"/api/v1/workflows/{first}", params={"include_context": "true"})
        assert got.json()["context_state"] == {"cursor": 17} and got.json()["current_step"] == "retry"
        assert http.get(f"/api/v1/workflows/{first}").json()["context_state"] is None

        problem(http.get("/api/v1/workflows/nope-" + uuid.uuid4().hex), 404)
        problem(http.post("/api/v1/workflows/nope-" + uuid.uuid4().hex + "/resume"), 404)
        assert "workflow_id" in problem(http.post("/api/v1/workflows/bad%20id/suspend", json=suspend_body()),
                                        400)["detail"]
        problem(http.post(f"/api/v1/workflows/{unique()}/suspend",
                          json=suspend_body({"kind": "event"})), 422)
        problem(http.post(f"/api/v1/workflows/{unique()}/suspend", json=suspend_body(context_state=[1])), 422)
        problem(http.get("/api/v1/workflows", params={"status": "sleeping"}), 422)
        problem(http.get("/api/v1/workflows", params={"limit": 0}), 422)


def test_events_over_http_with_an_idempotency_key(server):
    event_id = unique("ev")
    waiting = [unique(), unique()]
    with server.client("alpha") as http:
        for workflow_id in waiting:
            http.post(f"/api/v1/workflows/{workflow_id}/suspend",
                      json=suspend_body({"kind": "event", "event_id": event_id}))
        key = unique("delivery")
        first = http.post(f"/api/v1/events/{event_id}", json={"ok": True}, headers={"Idempotency-Key": key})
        assert first.status_code == 200 and first.json() == {"event_id": event_id, "delivered": 2}
        http.post(f"/api/v1/workflows/{waiting[0]}/resume")
        http.post(f"/api/v1/workflows/{waiting[0]}/suspend",
                  json=suspend_body({"kind": "event", "event_id": event_id}))
        repeat = http.post(f"/api/v1/events/{event_id}", json={"ok": True}, headers={"Idempotency-Key": key})
        assert repeat.json()["delivered"] == 2
        # The key with another payload or another event is refused, never answered as if applied.
        problem(http.post(f"/api/v1/events/{event_id}", json={"ok": False}, headers={"Idempotency-Key": key}), 422)
        problem(http.post(f"/api/v1/events/{unique('ev')}", json={"ok": True}, headers={"Idempotency-Key": key}), 422)
        assert not http.get(f"/api/v1/workflows/{waiting[0]}").json()["ready"]  # nothing readied twice
        assert http.post(f"/api/v1/events/{event_id}").json()["delivered"] == 1  # empty body: null payload
        resumed = http.post(f"/api/v1/workflows/{waiting[0]}/resume").json()
        assert resumed["context_state"]["events"] == {event_id: None}
        problem(http.post(f"/api/v1/events/{event_id}", content=b"{not json",
                          headers={"Content-Type": "application/json"}), 400)
        problem(http.post(f"/api/v1/events/{event_id}", content=b"[" + b"1," * 600_000 + b"1]",
                          headers={"Content-Type": "application/json"}), 413)
        problem(http.post("/api/v1/events/bad%20event", json={}), 400)


def test_another_tenant_gets_404_on_every_endpoint(server):
    workflow_id = unique()
    event_id = unique("ev")
    with server.client("alpha") as alpha, server.client("beta") as beta:
        assert alpha.post(f"/api/v1/workflows/{workflow_id}/suspend",
                          json=suspend_body({"kind": "event", "event_id": event_id},
                                            context_state={"secret": "alpha"})).status_code == 201
        base = f"/api/v1/workflows/{workflow_id}"
        problem(beta.get(base), 404)
        problem(beta.get(base, params={"include_context": "true"}), 404)
        for action in ("resume", "complete", "fail", "cancel", "approve"):
            problem(beta.post(f"{base}/{action}"), 404)
        assert workflow_id not in [w["workflow_id"] for w in beta.get(
            "/api/v1/workflows", params={"status": "suspended", "limit": 1000}).json()["items"]]
        assert beta.post(f"/api/v1/events/{event_id}", json={"from": "beta"}).json()["delivered"] == 0
        # The same id in beta is beta's own workflow; alpha's is untouched.
        assert beta.post(f"{base}/suspend", json=suspend_body(context_state={"secret": "beta"})).status_code == 201
        mine = alpha.get(base, params={"include_context": "true"}).json()
        assert mine["context_state"] == {"secret": "alpha"} and not mine["ready"] and mine["status"] == "suspended"
        assert beta.post(f"{base}/resume").json()["context_state"] == {"secret": "beta"}
        assert alpha.post(f"{base}/resume").json()["context_state"] == {"secret": "alpha"}


def test_seed_000_integer_step_index_round_trips_with_its_type(server):
    indexed, named = unique(), unique()
    with server.client("alpha") as http:
        created = http.post(f"/api/v1/workflows/{indexed}/suspend", json=suspend_body(current_step=3))
        assert created.status_code == 201, created.text
        assert created.json()["current_step"] == 3
        assert http.get(f"/api/v1/workflows/{indexed}").json()["current_step"] == 3
        resumed = http.post(f"/api/v1/workflows/{indexed}/resume").json()
        assert resumed["current_step"] == 3 and isinstance(resumed["current_step"], int)
        assert http.post(f"/api/v1/workflows/{named}/suspend", json=suspend_body(current_step="3")).status_code == 201
        assert http.post(f"/api/v1/workflows/{named}/resume").json()["current_step"] == "3"
        for bad in (-1, 2**53, 1.5, True, "", None):
            refused = http.post(f"/api/v1/workflows/{unique()}/suspend", json=suspend_body(current_step=bad))
            assert refused.status_code in (400, 422), (bad, refused.text)
            problem(refused, refused.status_code)


def test_suspend_bodies_are_taken_or_refused_as_the_document_says(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("WaitingForEvent", "WaitingForApproval", "ScheduledResume", "ManualResume"):
        assert "kind" in schemas[name]["required"], name  # the discriminator: a body without it is refused
    step = schemas["SuspendRequest"]["properties"]["current_step"]["anyOf"]
    assert [branch["type"] for branch in step] == ["integer", "string"] and step[1]["pattern"]
    assert schemas["ScheduledResume"]["properties"]["resume_at"]["type"] == "string"
    with server.client("alpha") as http:
        # Found by schemathesis: each was schema-valid but refused, or schema-invalid but taken.
        whole = http.post(f"/api/v1/workflows/{unique()}/suspend", json=suspend_body(current_step=1305513.0))
        assert whole.status_code == 201, whole.text
        assert whole.json()["current_step"] == 1305513 and isinstance(whole.json()["current_step"], int)
        no_kind = {"context_state": {}, "current_step": "0", "resource": "0", "suspend_reason": {"event_id": "0"},
                   "workflow_name": "0"}
        problem(http.post(f"/api/v1/workflows/{unique()}/suspend", json=no_kind), 422)
        problem(http.post(f"/api/v1/workflows/{unique()}/suspend", json=suspend_body(current_step="a\x01b")), 422)
        for epoch in (0, 1.9e9):
            problem(http.post(f"/api/v1/workflows/{unique()}/suspend",
                              json=suspend_body({"kind": "schedule", "resume_at": epoch})), 422)
        for bad in (1.5, True, -1.0):
            problem(http.post(f"/api/v1/workflows/{unique()}/suspend", json=suspend_body(current_step=bad)), 422)


def test_suspend_with_an_idempotency_key_replays_or_refuses_a_reuse(server):
    workflow_id = unique()
    key = unique("key")
    with server.client("alpha") as http:
        path = f"/api/v1/workflows/{workflow_id}/suspend"
        first = http.post(path, json=suspend_body(), headers={"Idempotency-Key": key})
        assert first.status_code == 201
        http.post(f"/api/v1/workflows/{workflow_id}/resume")
        replay = http.post(path, json=suspend_body(), headers={"Idempotency-Key": key})
        assert replay.status_code == 201 and replay.json() == first.json()  # the first answer, as it was
        assert http.get(f"/api/v1/workflows/{workflow_id}").json()["status"] == "running"
        reused = problem(http.post(path, json=suspend_body(current_step="other"), headers={"Idempotency-Key": key}),
                         422)
        assert "idempotency key" in reused["detail"]
        problem(http.post(f"/api/v1/workflows/{workflow_id}/complete", headers={"Idempotency-Key": key}), 422)
        assert http.get(f"/api/v1/workflows/{workflow_id}").json()["status"] == "running"
