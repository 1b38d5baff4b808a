"""The HTTP path of Azure Functions: the host calls ``AsgiFunctionApp``'s HTTP function, not uvicorn.

In Azure a request reaches the app as a ``func.HttpRequest`` handed to the indexed
``http_app_func`` (``function_app.py``), whose user function runs it through
``AsgiMiddleware`` on the worker's event loop. These tests index a fresh copy of the
function app (settings from the environment, as app settings are), build requests as
the host does and call that user function, and check that every answer is the one
`stowage serve` (uvicorn, tests/e2e.py) gives for the same request: authentication
failures, object writes and reads with ETags and conditions, a 413, hostile bodies and
problem+json errors.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import azure.functions as func
import httpx
import pytest

from tests.e2e import MAX_BYTES, Server, run_server

ROOT = Path(__file__).resolve().parents[1]
#: Headers whose values must be the same on both paths (ETags differ: each path has its own store).
SAME_HEADERS = ("content-type", "www-authenticate", "allow")


@dataclass
class Answer:
    """What a client gets back, whichever path served it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Context:
    """The invocation context the host passes (AsgiMiddleware reads these attributes)."""

    function_name: str = "http_app_func"
    function_directory: str = str(ROOT)
    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_context: Any = None
    retry_context: Any = None
    thread_local_storage: Any = None


class FunctionHost:
    """Calls the indexed HTTP function the way the Functions host does, on one event loop (the worker's)."""

    def __init__(self, module: Any) -> None:
        self.module = module
        (http,) = [f for f in module.app.get_functions() if f.get_function_name() == "http_app_func"]
        binding = json.loads(http.get_function_json())["bindings"][0]
        assert binding["type"] == "httpTrigger" and binding["route"] == "/{*route}"
        self.function = http.get_user_function()
        self.loop = asyncio.Runner()

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
                params: dict[str, str] | None = None, content_length: bool = True) -> Answer:
        query = f"?{urlencode(params)}" if params else ""
        sent = {"host": "stowage.azurewebsites.net", **(headers or {})}
        if body and content_length:
            sent["content-length"] = str(len(body))
        request = func.HttpRequest(method, f"https://stowage.azurewebsites.net{path}{query}", headers=sent,
                                   params=params or {}, route_params={"route": path.lstrip("/")}, body=body)
        response: func.HttpResponse = self.loop.run(self.function(request, _Context()))
        headers_out = {key.lower(): value for key, value in response.headers.items()}
        return Answer(response.status_code, headers_out, response.get_body())

    def close(self) -> None:
        if self.module.app.startup_task_done:  # the ASGI lifespan the first call started
            self.loop.run(self.module.app.middleware.notify_shutdown())
            self.module.app.startup_task_done = False
        self.loop.close()
        self.module.context.close()


class Served:
    """The same requests through `stowage serve`."""

    def __init__(self, server: Server) -> None:
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
                params: dict[str, str] | None = None, content_length: bool = True) -> Answer:
        content: Any = body if content_length else iter([body])  # an iterator is sent chunked
        response = self.http.request(method, path, headers=headers, params=params, content=content)
        return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from run_server("local", request, tmp_path_factory.mktemp("function-host-served"))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionHost]:
    """A fresh function_app, indexed once as the host indexes it, with the serve's limits."""
    data = tmp_path_factory.mktemp("function-host")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STOWAGE_BACKEND", "local")
        env.setenv("STOWAGE_DATA_DIR", str(data))
        env.setenv("STOWAGE_MAX_OBJECT_BYTES", str(MAX_BYTES))
        spec = importlib.util.spec_from_file_location("function_app_under_host", ROOT / "function_app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    function_host = FunctionHost(module)
    yield function_host
    function_host.close()


@pytest.fixture(scope="module")
def both(host: FunctionHost, served: Server) -> Iterator[dict[str, tuple[Any, str]]]:
    """Each path with an API key of its own for tenant alpha."""
    _, key = host.module.context.api_keys.create("alpha")
    through_serve = Served(served)
    yield {"functions": (host, key), "serve": (through_serve, served.keys["alpha"])}
    through_serve.http.close()


def send(both, method: str, path: str, *, key: bool | str = True, headers: dict[str, str] | None = None,
         **kwargs: Any) -> dict[str, Answer]:
    """The request on both paths, with each path's own key (``key=False``: none; a string: that key)."""
    answers = {}
    for name, (client, api_key) in both.items():
        sent = dict(headers or {})
        if key:
            sent["Authorization"] = f"Bearer {api_key if key is True else key}"
        answers[name] = client.request(method, path, headers=sent, **kwargs)
    return answers


#: Problem members whose values come from the path's own store (each path has one).
STORE_SPECIFIC = frozenset({"current_etag"})


def same_problem(answers: dict[str, Answer], status: int) -> dict[str, Any]:
    """Both answers are this problem+json, with equal bodies and headers; returns the body."""
    functions, served = answers["functions"], answers["serve"]
    for answer in (functions, served):
        assert answer.status == status, answer.body
        assert answer.headers["content-type"] == "application/problem+json"
    # Each path has its own store, so the ETags a problem reports differ; their presence must not.
    mine, theirs = functions.json(), served.json()
    assert mine.keys() == theirs.keys()
    assert {k: v for k, v in mine.items() if k not in STORE_SPECIFIC} == {
        k: v for k, v in theirs.items() if k not in STORE_SPECIFIC}
    assert same_headers(functions) == same_headers(served)
    return mine


def same_headers(answer: Answer) -> dict[str, str]:
    return {name: answer.headers[name] for name in SAME_HEADERS if name in answer.headers}


def key(prefix: str = "host") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- authentication


def test_no_key_and_a_bad_key_are_401_with_www_authenticate(both):
    for kwargs in ({"key": False}, {"key": "stw_0000000000000000_" + "x" * 43}, {"key": "not-a-key"}):
        answers = send(both, "GET", "/api/v1/objects/" + key(), **kwargs)
        same_problem(answers, 401)
        assert answers["functions"].headers["www-authenticate"] == 'Bearer realm="stowage"'


def test_a_body_without_a_key_is_401_not_413_and_nothing_is_written(both):
    path = "/api/v1/objects/" + key()
    same_problem(send(both, "PUT", path, key=False, body=b"x" * (MAX_BYTES + 1)), 401)
    same_problem(send(both, "PUT", path, key=False, body=b"small"), 401)
    same_problem(send(both, "GET", path), 404)


def test_anonymous_health_and_the_document_need_no_key(both):
    answers = send(both, "GET", "/api/health", key=False)
    assert answers["functions"].status == answers["serve"].status == 200
    assert answers["functions"].json() == answers["serve"].json() == {"status": "ok", "backend": "local"}
    documents = send(both, "GET", "/openapi.json", key=False)
    assert documents["functions"].json() == documents["serve"].json()


# --------------------------------------------------------------------------- objects with ETags


def test_object_put_get_head_with_etags_and_conditions(both):
    path = "/api/v1/objects/" + key()
    document = json.dumps({"name": "CEO", "role": "executive"}).encode()
    put = send(both, "PUT", path, body=document, headers={"Content-Type": "application/json"})
    etags = {}
    for name, answer in put.items():
        assert answer.status == 201, answer.body
        info = answer.json()
        assert answer.headers["etag"] == f'"{info["version_id"]}"' == f'"{answer.headers["x-stowage-version-id"]}"'
        assert (info["size"], info["content_type"]) == (len(document), "application/json")
        etags[name] = answer.headers["etag"]
    assert set(put["functions"].json()) == set(put["serve"].json())

    got = send(both, "GET", path)
    for name, answer in got.items():
        assert (answer.status, answer.body, answer.headers["etag"]) == (200, document, etags[name])
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["last-modified"].endswith(" GMT")

    for name, (client, api_key) in both.items():
        auth = {"Authorization": f"Bearer {api_key}"}
        head = client.request("HEAD", path, headers=auth)
        assert (head.status, head.headers["etag"], head.headers["content-length"]) == (200, etags[name],
                                                                                      str(len(document)))
        assert head.headers["content-type"] == "application/json" and head.body == b""
        unchanged = client.request("GET", path, headers={**auth, "If-None-Match": etags[name]})
        assert (unchanged.status, unchanged.body, unchanged.headers["etag"]) == (304, b"", etags[name])
        replaced = client.request("PUT", path, body=b"v2", headers={**auth, "If-Match": etags[name],
                                                                  "Content-Type": "text/plain"})
        assert replaced.status == 200 and replaced.headers["etag"] != etags[name]
        assert client.request("GET", path, headers=auth).body == b"v2"

    stale = send(both, "PUT", path, body=b"v3", headers={"If-Match": '"0000"', "Content-Type": "text/plain"})
    same_problem(stale, 412)
    for answer in send(both, "GET", path).values():
        assert answer.body == b"v2"  # the failed precondition wrote nothing


def test_an_object_over_the_limit_is_413_and_nothing_is_written(both):
    path = "/api/v1/objects/" + key()
    same_problem(send(both, "PUT", path, body=b"x" * (MAX_BYTES + 1)), 413)
    # No Content-Length (the serve path streams it chunked; the host passes the buffered body): counted as it comes.
    same_problem(send(both, "PUT", path, body=b"y" * (MAX_BYTES + 1), content_length=False), 413)
    same_problem(send(both, "GET", path), 404)
    at_limit = send(both, "PUT", path, body=b"z" * MAX_BYTES)
    assert answers_status(at_limit) == {201}


def answers_status(answers: dict[str, Answer]) -> set[int]:
    return {answer.status for answer in answers.values()}


# --------------------------------------------------------------------------- hostile bodies and errors


@pytest.mark.parametrize("body", [b"{not json", b"[" * 100_000 + b"]" * 100_000, b'{"a": "\\ud800"}',
                                  b"\xff\xfe not utf-8"],
                         ids=["invalid", "deeply-nested", "lone-surrogate", "not-utf8"])
def test_a_hostile_body_is_a_400_problem(both, body):
    answers = send(both, "POST", "/api/v1/events/ev-" + uuid.uuid4().hex[:8], body=body,
                   headers={"Content-Type": "application/json"})
    assert same_problem(answers, 400)["detail"]


def test_a_missing_object_is_a_404_problem_naming_the_path(both):
    path = "/api/v1/objects/" + key("missing")
    assert same_problem(send(both, "GET", path), 404)["instance"] == path


def test_a_malformed_id_and_a_wrong_method_are_problems_too(both):
    same_problem(send(both, "GET", "/api/v1/sessions/bad%20id"), 400)
    wrong = send(both, "DELETE", "/api/v1/sessions")
    same_problem(wrong, 405)
    assert wrong["functions"].headers["allow"] == "GET, POST"
