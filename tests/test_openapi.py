"""The OpenAPI document says what the server enforces, and the server answers as it says.

The document is checked as a document (every ``$ref`` resolves, it is valid OpenAPI,
ids carry the service's pattern, errors are problem+json); the declared rules are
checked against the app in process (a refused id is the same 400 whichever layer
refuses it, ``idx: false`` is refused, 405 carries ``Allow``). tests/test_schemathesis.py
checks the whole document against a running server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from functions.context import AppContext
from functions.http.audit import SEQ_PATTERN
from functions.http_api import create_api
from functions.problems import PROBLEM_JSON
from shared.config import Settings
from shared.domains.sessions.service import ENDED_STATUSES
from shared.keys import ID_PATTERN

PROBLEM = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    context = AppContext(Settings(data_dir=Path(tmp_path_factory.mktemp("openapi"))))
    yield context
    context.close()


@pytest.fixture(scope="module")
def client(context: AppContext) -> Iterator[TestClient]:
    _, key = context.api_keys.create("acme")
    with TestClient(create_api(context), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def document(context: AppContext) -> dict[str, Any]:
    return create_api(context).openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from refs(value, f"{where}/{index}")


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --------------------------------------------------------------------------- the document


def test_every_ref_resolves(document):
    found = list(refs(document))
    assert found
    unresolved = []
    for where, ref in found:
        try:
            resolve(document, ref)
        except (KeyError, TypeError, AssertionError):
            unresolved.append(f"{where}: {ref}")
    assert not unresolved, unresolved


def test_the_document_is_valid_openapi(document):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


#: Query parameters that are ids (check_id in the service), by path.
QUERY_IDS = {("/api/v1/sessions", "user_id"), ("/api/v1/threads", "resource"),
             ("/api/v1/checkpoints/threads/{thread_id}/checkpoints", "before")}


def test_path_and_query_ids_carry_the_services_rule(document):
    checked = set()
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            name, schema = parameter["name"], parameter.get("schema", {})
            bounds = (schema.get("minLength"), schema.get("maxLength"))
            if parameter["in"] == "path" and name in ("key", "task_id"):  # an object key; a task id is any text
                assert bounds == (1, 256) and schema["pattern"], (path, method, name)
            elif parameter["in"] == "path" and name == "seq":  # a sequence number, not an id
                assert (schema.get("pattern"), *bounds) == (SEQ_PATTERN, 1, 19), (path, method, name)
            elif parameter["in"] == "path" or (path, name) in QUERY_IDS:
                assert (schema.get("pattern"), *bounds) == (ID_PATTERN, 1, 128), (path, method, name)
                checked.add((path, name))
    assert len(checked) > 15 and QUERY_IDS <= checked


def test_optional_parameters_are_absent_or_a_value_never_null(document):
    for path, method, operation in operations(document):
        for parameter in operation.get("parameters", []):
            assert "null" not in str(parameter.get("schema", {}).get("anyOf", "")), (path, method, parameter["name"])


def test_errors_are_documented_as_problem_json(document):
    for path, method, operation in operations(document):
        answers = operation["responses"]
        if operation.get("security"):
            assert {"401", "403", "503"} <= set(answers), (path, method)
        if operation.get("parameters") or operation.get("requestBody"):
            assert {"400", "422"} <= set(answers), (path, method)
        if operation.get("requestBody"):
            assert {"408", "413"} <= set(answers), (path, method)
        for status, answer in answers.items():
            if status.startswith(("4", "5")) and "Health" not in str(answer):
                assert answer["content"] == PROBLEM, (path, method, status)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas  # never sent


def test_end_session_offers_every_ended_status_but_not_active(document):
    schemas = document["components"]["schemas"]
    status = resolve(document, schemas["EndSession"]["properties"]["status"]["$ref"])
    assert set(status["enum"]) == {s.value for s in ENDED_STATUSES} and "active" not in status["enum"]


def test_head_object_documents_any_content_type(document):
    answer = document["paths"]["/api/v1/objects/{key}"]["head"]["responses"]["200"]
    assert answer["content"] == {"*/*": {}}
    assert {"ETag", "Last-Modified"} <= set(answer["headers"])


def test_pending_write_idx_is_an_integer(document):
    body = document["paths"]["/api/v1/checkpoints/threads/{thread_id}/checkpoints/{checkpoint_id}/writes/{task_id}"]
    schema = body["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["writes"]["items"]["properties"]["idx"]["type"] == "integer"


# --------------------------------------------------------------------------- the server agrees


def problem(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    return response.json()


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/api/v1/sessions", "GET, POST"),
    ("POST", "/api/v1/objects/a/b", "DELETE, GET, HEAD, PUT"),
    ("PUT", "/api/v1/threads/t1", "DELETE, GET, PATCH"),
    ("GET", "/api/v1/workflows/w1/resume", "POST"),
    ("POST", "/api/health", "GET"),
])
def test_405_lists_every_method_the_path_has(client, method, path, allowed):
    response = client.request(method, path)
    problem(response, 405)
    assert response.headers["allow"] == allowed


def test_a_malformed_id_is_400_whichever_layer_refuses_it(client):
    for response in (client.get("/api/v1/sessions/bad%20id"),                       # path: the schema
                     client.get("/api/v1/sessions", params={"user_id": "a/b"}),      # query: the schema
                     client.post("/api/v1/sessions", json={"user_id": "a b"}),       # body: the schema
                     client.put("/api/v1/objects/" + "x" * 257, content=b"x")):      # over 256 characters
        body = problem(response, 400)
        assert body["title"] in ("Invalid key", "Invalid input")
    detail = problem(client.get("/api/v1/workflows/bad%20id"), 400)["detail"]
    assert "workflow_id" in detail and "1-128 letters" in detail


def test_ending_a_session_as_active_is_refused_by_the_schema(client):
    session = client.post("/api/v1/sessions", json={"user_id": "u1"}).json()
    problem(client.post(f"/api/v1/sessions/{session['session_id']}/end", json={"status": "active"}), 422)
    ended = client.post(f"/api/v1/sessions/{session['session_id']}/end", json={"status": "cancelled"})
    assert ended.status_code == 200 and ended.json()["status"] == "cancelled"


def test_a_pending_write_idx_must_be_an_integer_not_a_boolean(client):
    base = "/api/v1/checkpoints/threads/t1/checkpoints"
    assert client.put(f"{base}/c1", json={"checkpoint": {"type": "json", "data": "e30="}}).status_code == 201
    value = {"type": "json", "data": "MQ=="}
    for idx in (False, True, "0", 0.5):
        refused = client.put(f"{base}/c1/writes/task1", json={"writes": [{"idx": idx, "channel": "a", "value": value}]})
        problem(refused, 422)
    stored = client.put(f"{base}/c1/writes/task1", json={"writes": [{"idx": 0.0, "channel": "a", "value": value},
                                                                    {"idx": 1, "channel": "b", "value": value}]})
    assert stored.status_code == 200 and stored.json() == {"written": 2, "kept": 0}
    writes = client.get(f"{base}/c1").json()["pending_writes"]
    assert [(w["idx"], w["channel"]) for w in writes] == [(0, "a"), (1, "b")]


def test_a_version_listing_is_documented_by_a_resolvable_schema(client, document):
    client.put("/api/v1/objects/docs/a", content=b"1")
    listing = client.get("/api/v1/objects/docs/a", params={"versions": "true"})
    assert listing.status_code == 200 and listing.json()["items"][0]["key"] == "docs/a"
    schema = document["paths"]["/api/v1/objects/{key}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert resolve(document, schema["schema"]["anyOf"][0]["$ref"])["title"] == "ObjectPage"


def test_a_key_with_a_line_break_is_refused_not_cut_or_unrouted(client):
    for raw in ("nl%0A", "a%0Ab", "a%0D"):
        assert "key" in problem(client.put("/api/v1/objects/" + raw, content=b"x"), 400)["detail"]
    problem(client.get("/api/v1/objects/nl"), 404)  # "nl" and a line break was never written as "nl"


def test_numbers_in_bodies_are_json_numbers_not_booleans_or_strings(client):
    session = client.post("/api/v1/sessions", json={"user_id": "u2"}).json()
    metrics = f"/api/v1/sessions/{session['session_id']}/metrics"
    for body in ({"errors": False}, {"requests": True}, {"requests": "3"}, {"processing_time": "1.5"},
                 {"processing_time": True}):
        problem(client.post(metrics, json=body), 422)
    counted = client.post(metrics, json={"requests": 2.0, "errors": 1, "processing_time": 1})
    assert counted.status_code == 200
    assert (counted.json()["request_count"], counted.json()["error_count"]) == (2, 1)


def test_if_none_match_on_put_is_only_the_star(client, document):
    parameters = document["paths"]["/api/v1/objects/{key}"]["put"]["parameters"]
    (if_none_match,) = [p for p in parameters if p["name"] == "If-None-Match"]
    assert if_none_match["schema"]["const"] == "*"
    problem(client.put("/api/v1/objects/inm", content=b"x", headers={"If-None-Match": '"abc"'}), 422)
    assert client.put("/api/v1/objects/inm", content=b"x", headers={"If-None-Match": "*"}).status_code == 201
