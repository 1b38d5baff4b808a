"""End to end over real HTTP for objects, auth and queue commands.

`stowage serve` runs as a separate process on each backend (the ``server``
fixture), sharing its backend with this test and with the CLI.
"""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest

from shared import names
from shared.commands import CommandClient
from tests.e2e import MAX_BYTES, MAX_DEQUEUE
from tests.e2e import problem as _problem
from tests.e2e import until as _until


def test_health_is_anonymous_and_reports_the_backend(server):
    response = httpx.get(server.url + "/api/health")
    assert response.status_code == 200 and response.json()["backend"] == server.backend
    assert response.json()["status"] == "ok"


def test_openapi_and_docs_are_served(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/api/v1/objects/{key}" in spec["paths"]
    put = spec["paths"]["/api/v1/objects/{key}"]["put"]
    assert {"401", "409", "412", "413"} <= set(put["responses"])
    assert httpx.get(server.url + "/docs").status_code == 200


def test_requests_without_a_valid_key_are_refused(server):
    with server.client(None) as anonymous:
        assert "Bearer" in _problem(anonymous.get("/api/v1/objects"), 401)["detail"]
        assert anonymous.get("/api/v1/objects").headers["www-authenticate"].startswith("Bearer")
        _problem(anonymous.get("/api/v1/objects", headers={"Authorization": "Bearer nonsense"}), 401)
        forged = server.keys["alpha"][:-4] + "AAAA"
        _problem(anonymous.get("/api/v1/objects", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_a_revoked_key_stops_working_at_once(server):
    made = json.loads(server.cli("keys", "create", "--tenant", "gamma", "--json").stdout)
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    assert httpx.get(server.url + "/api/v1/objects", headers=headers).status_code == 200
    assert server.cli("keys", "revoke", made["key_id"]).returncode == 0
    _problem(httpx.get(server.url + "/api/v1/objects", headers=headers), 401)


def test_object_round_trip_with_etags_and_conditions(server):
    key = f"agent_configs/{uuid.uuid4().hex[:8]}"
    with server.client() as http:
        created = http.put(f"/api/v1/objects/{key}", json={"name": "CEO"})
        assert created.status_code == 201
        etag = created.headers["etag"]
        assert etag == f'"{created.json()["version_id"]}"'
        got = http.get(f"/api/v1/objects/{key}")
        assert got.json() == {"name": "CEO"} and got.headers["content-type"] == "application/json"
        assert got.headers["etag"] == etag
        assert http.get(f"/api/v1/objects/{key}", headers={"If-None-Match": etag}).status_code == 304
        head = http.head(f"/api/v1/objects/{key}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(b'{"name":"CEO"}'))

        _problem(http.put(f"/api/v1/objects/{key}", content=b"x", headers={"If-None-Match": "*"}), 412)  # RFC 9110
        updated = http.put(f"/api/v1/objects/{key}", content=b"v2", headers={"If-Match": etag,
                                                                           "Content-Type": "text/plain"})
        assert updated.status_code == 200 and updated.headers["etag"] != etag
        _problem(http.put(f"/api/v1/objects/{key}", content=b"v3", headers={"If-Match": etag}), 412)
        _problem(http.delete(f"/api/v1/objects/{key}", headers={"If-Match": etag}), 412)

        versions = http.get(f"/api/v1/objects/{key}", params={"versions": "true"}).json()["items"]
        assert [v["is_current"] for v in versions] == [True, False]
        old = http.get(f"/api/v1/objects/{key}", params={"version_id": versions[1]["version_id"]})
        assert old.json() == {"name": "CEO"}
        listed = http.get("/api/v1/objects", params={"prefix": "agent_configs/"}).json()["items"]
        assert key in [item["key"] for item in listed]

        assert http.delete(f"/api/v1/objects/{key}", headers={"If-Match": updated.headers["etag"]}).status_code == 204
        _problem(http.get(f"/api/v1/objects/{key}"), 404)


def test_binary_content_round_trips_byte_for_byte(server):
    data = os.urandom(300_000)
    with server.client() as http:
        assert http.put("/api/v1/objects/models/adapter.bin", content=data,
                        headers={"Content-Type": "application/octet-stream"}).status_code in (200, 201)
        got = http.get("/api/v1/objects/models/adapter.bin")
        assert got.content == data and got.headers["content-type"] == "application/octet-stream"


def test_another_tenant_gets_404_for_everything(server):
    key = f"private/{uuid.uuid4().hex[:8]}"
    with server.client("alpha") as alpha, server.client("beta") as beta:
        assert alpha.put(f"/api/v1/objects/{key}", content=b"alpha only").status_code == 201
        _problem(beta.get(f"/api/v1/objects/{key}"), 404)
        assert beta.head(f"/api/v1/objects/{key}").status_code == 404
        _problem(beta.get(f"/api/v1/objects/{key}", params={"versions": "true"}), 404)
        _problem(beta.delete(f"/api/v1/objects/{key}"), 404)
        assert key not in [i["key"] for i in beta.get("/api/v1/objects", params={"prefix": "private/"}).json()["items"]]
        assert alpha.get(f"/api/v1/objects/{key}").content == b"alpha only"


def test_oversized_bodies_get_413_and_nothing_is_written(server):
    with server.client() as http:
        _problem(http.put("/api/v1/objects/too/big", content=b"x" * (MAX_BYTES + 1)), 413)
        _problem(http.get("/api/v1/objects/too/big"), 404)

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(3):
                yield b"y" * (MAX_BYTES // 2)

        _problem(http.put("/api/v1/objects/too/streamed", content=chunks()), 413)
        _problem(http.get("/api/v1/objects/too/streamed"), 404)


@pytest.mark.parametrize("raw_path", ["a/%2E%2E/b", "a//b", "a/%00b", "x" * 300, "a%5Cb"])
def test_bad_keys_get_400(server, raw_path):
    with server.client() as http:
        body = _problem(http.put("/api/v1/objects/" + raw_path, content=b"x"), 400)
        assert "key" in body["detail"]


def test_bad_parameters_get_422(server):
    with server.client() as http:
        _problem(http.get("/api/v1/objects", params={"limit": "0"}), 422)
        _problem(http.put("/api/v1/objects/k", content=b"x", params={"ttl_seconds": "-5"}), 422)
        _problem(http.get("/api/v1/objects", params={"continuation": "garbage!"}), 400)


def test_a_queued_command_is_applied_by_the_running_worker(server):
    key = f"queued/{uuid.uuid4().hex[:8]}"
    CommandClient(server.stores).send("objects.put", "alpha", {"key": key, "json": {"via": "queue"}})
    with server.client() as http:
        response = _until(lambda: (r := http.get(f"/api/v1/objects/{key}")).status_code == 200 and r,
                          "the worker to apply the command")
        assert response.json() == {"via": "queue"}
        _problem(server.client("beta").get(f"/api/v1/objects/{key}"), 404)


def test_an_invalid_envelope_is_poisoned_with_its_reason_and_listed_by_the_cli(server):
    marker = uuid.uuid4().hex
    server.stores.queue(names.QUEUE_COMMANDS).send(json.dumps({"version": 1, "op": "objects.put", "marker": marker}))

    def listed():
        entries = json.loads(server.cli("poison", "list", "--json").stdout)
        return [e for e in entries if marker in e["body"]]

    entry = _until(listed, "the message to reach the poison queue")[0]
    assert "envelope is invalid" in entry["reason"]


def test_a_failing_message_is_retried_then_poisoned_after_max_dequeues(server):
    from tests.e2e_app import ALWAYS_FAILS_QUEUE

    marker = f"fail-{uuid.uuid4().hex}"
    backend = server.stores.backend
    backend.queue(ALWAYS_FAILS_QUEUE).send(marker)
    poison = backend.queue(ALWAYS_FAILS_QUEUE + names.POISON_SUFFIX)
    _until(lambda: any(m.body == marker for m in poison.peek()), "the message to be poisoned")
    assert not any(m.body == marker for m in backend.queue(ALWAYS_FAILS_QUEUE).peek())
    log = server.log()
    assert f"always fails (attempt {MAX_DEQUEUE})" in log
    assert f"always fails (attempt {MAX_DEQUEUE + 1})" not in log
