"""/api/v1/changes and /api/v1/audit over HTTP, on every backend: scopes, answers, and bad input."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from functions.context import AppContext
from functions.http_api import create_api
from shared.apikeys import ApiKeyService
from shared.domains.audit import AuditService
from shared.storage.tlog import leaf_hash, verify_inclusion
from shared.stores import Stores


@pytest.fixture
def app(stores: Stores) -> Iterator[tuple[TestClient, str, dict[str, str]]]:
    tenant = f"ah{uuid.uuid4().hex[:10]}"
    keys = ApiKeyService(stores)
    headers = {
        "auditor": keys.create(tenant, scopes=("read", "admin"))[1],
        "admin": keys.create(tenant, scopes=("read", "write", "admin"))[1],
        "reader": keys.create(tenant, scopes=("read", "write"))[1],
        "stranger": keys.create(f"x{tenant}", scopes=("read", "write", "admin"))[1],
    }
    service = AuditService(stores)
    for i in range(4):
        service.record(tenant, "objects", "put", "object", f"h{i}", details={"i": i})
    service.sequence_changes(tenant)
    with TestClient(create_api(AppContext(stores.settings, stores))) as client:
        yield client, tenant, {name: f"Bearer {key}" for name, key in headers.items()}


def _get(client: TestClient, keys: dict[str, str], who: str, path: str, **params: object):
    return client.get(path, params=params, headers={"Authorization": keys[who]})


def test_reading_the_feed_and_the_log_needs_the_admin_scope(app) -> None:
    client, _, keys = app
    for path in ("/api/v1/changes", "/api/v1/audit/status", "/api/v1/audit/checkpoint", "/api/v1/audit/entries",
                 "/api/v1/audit/entries/1", "/api/v1/audit/proof/consistency?from=1"):
        answer = client.get(path, headers={"Authorization": keys["reader"]})
        assert answer.status_code == 403, (path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert client.get(path).status_code == 401


def test_the_auditor_reads_changes_status_checkpoint_entries_and_proofs(app) -> None:
    client, tenant, keys = app
    changes = _get(client, keys, "auditor", "/api/v1/changes", limit=2).json()
    assert [c["seq"] for c in changes["items"]] == [1, 2] and changes["continuation"]
    rest = _get(client, keys, "auditor", "/api/v1/changes", continuation=changes["continuation"]).json()
    assert [c["seq"] for c in rest["items"]] == [3, 4]
    status = _get(client, keys, "auditor", "/api/v1/audit/status").json()
    assert (status["newest_seq"], status["log_size"], status["newest_audited_seq"]) == (4, 4, 4)
    assert status["anchored_size"] is None  # STOWAGE_AUDIT_ANCHOR is not set
    checkpoint = _get(client, keys, "auditor", "/api/v1/audit/checkpoint")
    assert checkpoint.headers["content-type"].startswith("text/plain")
    assert checkpoint.text.startswith(f"stowage.dev/audit/{tenant}\n4\n")
    entries = _get(client, keys, "auditor", "/api/v1/audit/entries", target="h2").json()
    assert [e["seq"] for e in entries["items"]] == [3]
    proof = _get(client, keys, "auditor", "/api/v1/audit/entries/3").json()
    assert proof["entry"]["details"] == {"i": 2}
    assert verify_inclusion(leaf_hash(proof["entry"]["entry"].encode()), proof["entry"]["index"], proof["tree_size"],
                            [base64.b64decode(h) for h in proof["inclusion"]], base64.b64decode(proof["root_hash"]))
    consistency = _get(client, keys, "auditor", "/api/v1/audit/proof/consistency", **{"from": 2}).json()
    assert consistency["new_size"] == 4 and consistency["proof"]
    erased = client.delete("/api/v1/audit/entries/3/details", headers={"Authorization": keys["admin"]})
    assert erased.status_code == 200 and erased.json()["details"] is None and erased.json()["erased_at"]
    again = _get(client, keys, "auditor", "/api/v1/audit/entries/3").json()
    assert again["inclusion"] == proof["inclusion"] and again["entry"]["entry"] == proof["entry"]["entry"]


@pytest.mark.parametrize(("path", "params", "status"), [
    ("/api/v1/audit/entries", {"category": "nonsense"}, 422),
    ("/api/v1/audit/entries", {"from": "yesterday"}, 422),
    ("/api/v1/audit/entries", {"limit": 0}, 422),
    ("/api/v1/audit/entries", {"continuation": "garbage"}, 400),
    ("/api/v1/changes", {"continuation": "garbage"}, 400),
    ("/api/v1/changes", {"after": -1}, 422),
    ("/api/v1/audit/entries/abc", {}, 400),
    ("/api/v1/audit/entries/0", {}, 400),
    ("/api/v1/audit/entries/99", {}, 404),
    ("/api/v1/audit/proof/consistency", {"from": 0}, 422),
    ("/api/v1/audit/proof/consistency", {"from": 3, "to": 9}, 400),
    ("/api/v1/audit/proof/consistency", {"from": 3, "to": 2}, 400),
])
def test_bad_input_is_a_problem_not_a_500(app, path: str, params: dict[str, object], status: int) -> None:
    client, _, keys = app
    answer = _get(client, keys, "auditor", path, **params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_another_tenant_sees_nothing_of_it(app) -> None:
    client, _, keys = app
    assert _get(client, keys, "stranger", "/api/v1/audit/entries/1").status_code == 404
    assert _get(client, keys, "stranger", "/api/v1/audit/checkpoint").status_code == 404
    assert _get(client, keys, "stranger", "/api/v1/audit/proof/consistency", **{"from": 1}).status_code == 404
    assert _get(client, keys, "stranger", "/api/v1/audit/entries").json()["items"] == []
    assert _get(client, keys, "stranger", "/api/v1/changes").json()["items"] == []
    token = _get(client, keys, "auditor", "/api/v1/changes", limit=1).json()["continuation"]
    assert _get(client, keys, "stranger", "/api/v1/changes", continuation=token).status_code == 400
    assert client.delete("/api/v1/audit/entries/1/details",
                         headers={"Authorization": keys["stranger"]}).status_code == 404


def test_the_status_reports_the_newest_anchored_checkpoint(anchored_stores: Stores) -> None:
    tenant = f"ah{uuid.uuid4().hex[:10]}"
    key = ApiKeyService(anchored_stores).create(tenant, scopes=("read", "admin"))[1]
    service = AuditService(anchored_stores)
    with TestClient(create_api(AppContext(anchored_stores.settings, anchored_stores))) as client:
        def anchored() -> object:
            answer = client.get("/api/v1/audit/status", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, answer.text
            return answer.json()["anchored_size"]

        assert anchored() == 0  # configured, nothing anchored yet
        for round_size in (3, 2):
            for i in range(round_size):
                service.record(tenant, "objects", "put", "object", f"s{i}")
            service.sequence_changes(tenant)
        assert anchored() == 5
