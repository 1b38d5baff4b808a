"""Schemathesis over every operation of the served API: the OpenAPI document says what the server does.

`st run` (schemathesis's CLI, every phase: examples, coverage, fuzzing, stateful) against
`stowage serve` on the local backend, with a real API key, every check, derandomized
generation (the same cases every run), a few examples per operation, and no example
database or crash cache kept between runs. It fails on any 5xx, any response that breaks
its declared schema, status, content type or headers, any 405 without the right
``Allow``, any schema-invalid request accepted, and any schema-valid request refused,
except where the refusal follows a rule OpenAPI cannot state (:func:`exemptions`; each
exemption is printed with its reason).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import Server, run_server

ST = str(Path(sys.executable).with_name("st"))
MAX_EXAMPLES = 5
#: schemathesis's own default for positive_data_acceptance, which the exemptions below extend.
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
#: Schema-valid requests refused by a rule that relates two values, or a value and the server's
#: state or clock, which OpenAPI cannot state: (operation, status, why).
UNSTATABLE = [
    ("PUT /api/v1/objects/{key}", "400", "If-Match and If-None-Match cannot be combined"),
    ("POST /api/v1/threads/{thread_id}/messages", "400", "parent_message_id must name a message of the same thread"),
    ("POST /api/v1/workflows/{workflow_id}/suspend", "400", "resume_at may be at most 10 years after now"),
    ("POST /api/v1/checkpoints/threads/{thread_id}/copy", "400", "the target thread must differ from the source"),
    ("PUT /api/v1/checkpoints/threads/{thread_id}/checkpoints/{checkpoint_id}", "400",
     "every channel in new_values needs a version in channel_versions"),
    ("PUT /api/v1/checkpoints/threads/{thread_id}/checkpoints/{checkpoint_id}/writes/{task_id}", "400",
     "each write's idx appears once per call"),
]
IF_MATCH = "an If-Match ETag the client made up fails the precondition"
CONTINUATION = "continuation tokens are opaque: only those the server issued are taken"
IDEMPOTENCY = ("an Idempotency-Key the generator reuses with another request is refused (422), "
               "as a reused key must never apply a different request")
#: Checks that do not apply to an operation: (operation, check, why).
NOT_APPLICABLE = [
    ("GET /api/v1/sessions/{session_id}/context", "ensure_resource_availability",
     "a session starts without a task context: it is 404 until one is PUT, not made by creating the session"),
]


@pytest.fixture(scope="module")
def local_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from run_server("local", request, tmp_path_factory.mktemp("schemathesis-local"))


def exemptions(document: dict) -> dict[str, list[tuple[str, str]]]:
    """Per operation, the statuses a schema-valid request may also get, and why."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            name = f"{method.upper()} {path}"
            parameters = {(p["in"], p["name"].lower()) for p in operation.get("parameters", [])}
            if ("header", "if-match") in parameters:
                found.setdefault(name, []).append(("412", IF_MATCH))
            if ("query", "continuation") in parameters:
                found.setdefault(name, []).append(("400", CONTINUATION))
            if ("header", "idempotency-key") in parameters:
                found.setdefault(name, []).append(("422", IDEMPOTENCY))
    for name, status, why in UNSTATABLE:
        found.setdefault(name, []).append((status, why))
    return found


def config(document: dict) -> str:
    """schemathesis.toml for the run: derandomized, nothing kept between runs, every check."""
    lines = [
        "workers = 1",
        "[cache]",
        "enabled = false  # no crash files from an earlier run are replayed",
        "[generation]",
        'database = "none"',
        "deterministic = true",
        f"max-examples = {MAX_EXAMPLES}",
        "[checks]",
        "enabled = true",
        "[output.truncation]",
        "enabled = false",
    ]
    for name, reasons in sorted(exemptions(document).items()):
        statuses = POSITIVE_DEFAULT + sorted({status for status, _ in reasons})
        lines += ["[[operations]]", f"include-name = {json.dumps(name)}",
                  *[f"# {status}: {why}" for status, why in reasons],
                  f"checks.positive_data_acceptance.expected-statuses = {json.dumps(statuses)}"]
    for name, check, why in NOT_APPLICABLE:
        lines += ["[[operations]]", f"include-name = {json.dumps(name)}", f"# {why}", f"checks.{check}.enabled = false"]
    return "\n".join(lines) + "\n"


def test_every_operation_conforms_to_the_document(local_server: Server, tmp_path: Path) -> None:
    document = httpx.get(local_server.url + "/openapi.json").json()
    for name, reasons in sorted(exemptions(document).items()):
        for status, why in reasons:
            print(f"positive_data_acceptance also takes {status} on {name}: {why}")
    for name, check, why in NOT_APPLICABLE:
        print(f"{check} is not run on {name}: {why}")
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(config(document))
    run = subprocess.run(
        [ST, "--config-file", str(settings), "run", local_server.url + "/openapi.json",
         "--header", f"Authorization: Bearer {local_server.keys['alpha-admin']}", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-30_000:]
    assert f"Tested: {sum(len(item) for item in document['paths'].values())}" in output  # every operation ran
