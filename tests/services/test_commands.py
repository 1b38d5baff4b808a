"""Queue commands: idempotent application, poison with reasons, replay, on every backend."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from shared import names
from shared.commands import CommandClient, CommandProcessor, PoisonQueue, envelope_json_schema
from shared.errors import BackendUnavailable, InvalidInput
from shared.objects import ObjectService

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "commands.schema.json"


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _envelope(tenant: str, **payload) -> str:
    return json.dumps({"version": 1, "op": "objects.put", "tenant": tenant,
                       "idempotency_key": uuid.uuid4().hex, "payload": payload})


def test_a_redelivered_command_is_applied_once(stores, tenant):
    processor = CommandProcessor(stores)
    body = _envelope(tenant, key="cfg/a", json={"n": 1})
    assert processor.process(body).status == "applied"
    assert processor.process(body, dequeue_count=2).status == "applied"  # same result, no new version
    objects = ObjectService(stores)
    assert json.loads(objects.get(tenant, "cfg/a").data) == {"n": 1}
    assert len(objects.versions(tenant, "cfg/a").items) == 1


def test_text_binary_delete_and_large_payload_by_reference(stores, tenant):
    client, processor = CommandClient(stores), CommandProcessor(stores)
    big = "β" * (200 * 1024)
    client.send("objects.put", tenant, {"key": "doc", "text": big})
    client.send("objects.put", tenant, {"key": "bin", "base64": base64.b64encode(b"\x00\xff").decode()})
    queue = stores.queue(names.QUEUE_COMMANDS)
    handled = 0
    while batch := queue.queue.receive(max_messages=10, visibility_timeout=30):
        for message in batch:
            if tenant in message.body or "payload_ref" in message.body:
                assert processor.process(message.body).status == "applied"
                handled += 1
            queue.queue.delete(message.receipt)
    assert handled == 2
    objects = ObjectService(stores)
    assert objects.get(tenant, "doc").data.decode() == big
    assert objects.get(tenant, "bin").data == b"\x00\xff"
    assert list(stores.blobs().list_all(f"commands/payloads/{tenant}/")) == []  # consumed payload blob deleted
    delete = json.dumps({"version": 1, "op": "objects.delete", "tenant": tenant,
                         "idempotency_key": "d1", "payload": {"key": "doc"}})
    assert processor.process(delete).status == "applied"
    assert processor.process(delete).status == "duplicate"


@pytest.mark.parametrize("body, reason", [
    ("not json", "not JSON"),
    ('{"version": 2, "op": "objects.put"}', "envelope is invalid"),
    ('{"version": 1, "op": "objects.nope", "tenant": "a", "idempotency_key": "k", "payload": {}}', "envelope is invalid"),
    ('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload": {"key": "x"}}',
     "exactly one of 'json', 'text' or 'base64'"),
    ('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload": {"key": "../x", "text": ""}}',
     "InvalidKey"),
    ('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload_ref": "blob:v1:none/such"}',
     "names no blob"),
])
def test_invalid_messages_go_to_poison_with_their_reason_and_can_be_replayed(stores, body, reason):
    processor = CommandProcessor(stores)
    outcome = processor.process(body, message_id="m-1")
    assert outcome.status == "poisoned" and reason in outcome.detail
    entries = PoisonQueue(stores).list()
    mine = [e for e in entries if e.body == body]
    assert len(mine) == 1 and reason in mine[0].reason
    assert PoisonQueue(stores).replay({mine[0].message_id}) == 1
    assert all(e.body != body for e in PoisonQueue(stores).list())
    replayed = [m for m in stores.queue(names.QUEUE_COMMANDS).peek() if m.body == body]
    assert len(replayed) == 1


def test_a_passing_failure_is_raised_for_retry_and_its_reason_kept(stores, tenant, monkeypatch):
    processor = CommandProcessor(stores)
    body = _envelope(tenant, key="k", text="v")

    def unavailable(*args, **kwargs):
        raise BackendUnavailable("simulated outage")

    monkeypatch.setattr(ObjectService, "put", unavailable)
    with pytest.raises(BackendUnavailable):
        processor.process(body, dequeue_count=3)
    assert processor.failure_reason(body) == "BackendUnavailable: simulated outage"


def test_the_producer_validates_before_sending(stores, tenant):
    with pytest.raises(InvalidInput):
        CommandClient(stores).send("objects.put", tenant, {"key": "k"})


def test_published_schema_matches_the_code_and_validates_envelopes():
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == envelope_json_schema(), "regenerate docs/commands.schema.json: stowage command-schema"
    jsonschema.validate(json.loads(_envelope("acme", key="k", json=[1, 2])), published)
    for invalid in (
        {"version": 1, "op": "objects.put", "tenant": "a"},  # no idempotency key, no payload
        {"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k"},  # no payload
        {"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k",
         "payload": {"key": "x", "text": "a", "json": 1}},  # two contents
        {"version": 2, "op": "objects.delete", "tenant": "a", "idempotency_key": "k", "payload": {"key": "x"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(invalid, published)
