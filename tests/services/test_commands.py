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
from shared.domains.objects.service import ObjectService

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
    assert processor.process(body, dequeue_count=2).status == "duplicate"  # same result, no new version
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
    # The payload's key has the rule of HTTP's path parameter, so the envelope itself is refused.
    ('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload": {"key": "../x", "text": ""}}',
     "envelope is invalid: objects.put.payload.key: String should match pattern"),
    ('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload_ref": "blob:v1:none/such"}',
     "payload_ref refused"),
    (('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k",'
      ' "payload_ref": "blob:v1:commands/payloads/a/none"}'), "names no blob"),
])
def test_invalid_messages_go_to_poison_with_their_reason_and_can_be_replayed(stores, body, reason):
    processor = CommandProcessor(stores)
    outcome = processor.process(body, message_id="m-1")
    assert outcome.status == "poisoned" and reason in outcome.detail
    entries = PoisonQueue(stores).list()
    mine = [e for e in entries if e.body == body]
    assert len(mine) == 1 and reason in mine[0].reason
    assert PoisonQueue(stores).replay({mine[0].message_id}).moved == [mine[0].message_id]
    assert all(e.body != body for e in PoisonQueue(stores).list())
    replayed = [m for m in stores.queue(names.QUEUE_COMMANDS).peek() if m.body == body]
    assert len(replayed) == 1


def test_a_passing_failure_is_raised_for_retry_and_its_reason_kept(stores, tenant, monkeypatch):
    processor = CommandProcessor(stores)
    body = _envelope(tenant, key="k", text="v")

    def unavailable(*args, **kwargs):
        raise BackendUnavailable("simulated outage")

    monkeypatch.setattr(ObjectService, "put_outcome", unavailable)
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


# --------------------------------------------------------------------------- references a message may use


def _victim_object(stores, tenant: str) -> tuple[bytes, str]:
    """Another tenant's object large enough to live in a blob; its data and blob key."""
    data = b"secret " * 4096  # above the inline limit
    ObjectService(stores).put(tenant, "private/report", data, "text/plain")
    [blob] = list(stores.blobs().list_all(f"tenants/{tenant}/"))
    return data, blob.key


def _take(stores, queue_name: str = names.QUEUE_COMMANDS):
    """The one message of a raw queue, deleted from it (Azurite is shared: nothing may come back later)."""
    queue = stores.backend.queue(queue_name)
    [message] = queue.receive(max_messages=32, visibility_timeout=30)
    queue.delete(message.receipt)
    return message


def _ref_envelope(tenant: str, ref: str, op: str = "objects.put") -> str:
    return json.dumps({"version": 1, "op": op, "tenant": tenant, "idempotency_key": uuid.uuid4().hex,
                       "payload_ref": ref})


def test_a_payload_ref_to_another_tenants_object_is_poison_and_touches_nothing(stores, tenant):
    victim = tenant + "v"
    data, blob_key = _victim_object(stores, victim)
    processor = CommandProcessor(stores)
    outcome = processor.process(_ref_envelope(tenant, f"blob:v1:{blob_key}"))
    assert outcome.status == "poisoned"
    assert "payload_ref refused" in outcome.detail and f"commands/payloads/{tenant}/" in outcome.detail
    assert stores.blobs().get(blob_key).data == data  # neither read into the attacker's tenant nor deleted
    assert ObjectService(stores).get(victim, "private/report").data == data
    assert ObjectService(stores).list(tenant).items == []


@pytest.mark.parametrize("ref", [
    "blob:v1:commands/payloads/{victim}/p",  # another tenant's payload
    "blob:v1:commands/payloads/{tenant}/../{victim}/p",  # climbing out
    "blob:v1:commands/payloads/{tenant}/./p",
    "blob:v1:commands/payloads/{tenant}//p",
    "blob:v1:commands/payloads/{tenant}/",  # the prefix itself
    "blob:v1:commands/payloads/{tenant}",
    "blob:v1:stowage-backups/commands/payloads/{tenant}/p",  # "another container" is just another key
    "blob:v1:/commands/payloads/{tenant}/p",
    "blob:v1:commands\\payloads\\{tenant}\\p",
    "blob:v2:commands/payloads/{tenant}/p",
    "commands/payloads/{tenant}/p",
    "blob:v1:offload/queues/stowage-commands/p",  # the claim-check area is not for payloads
])
def test_a_payload_ref_outside_the_tenants_payload_prefix_is_poison(stores, tenant, ref):
    victim = tenant + "v"
    stores.blobs().put(f"commands/payloads/{victim}/p", b'{"key": "stolen", "text": "x"}')
    outcome = CommandProcessor(stores).process(_ref_envelope(tenant, ref.format(tenant=tenant, victim=victim)))
    assert outcome.status == "poisoned" and "payload_ref refused" in outcome.detail, outcome.detail
    assert stores.blobs().exists(f"commands/payloads/{victim}/p")
    assert ObjectService(stores).list(tenant).items == []


def test_a_payload_ref_of_an_invalid_tenant_is_poison(stores):
    outcome = CommandProcessor(stores).process(_ref_envelope("../x", "blob:v1:commands/payloads/../x/p"))
    assert outcome.status == "poisoned" and "not a valid tenant name" in outcome.detail


def test_a_claim_check_outside_the_commands_queue_prefix_is_poison_and_touches_nothing(stores, tenant):
    data, blob_key = _victim_object(stores, tenant + "v")
    stores.blobs().put(f"offload/queues/{names.QUEUE_COMMANDS_POISON}/x", b"{}")
    processor = CommandProcessor(stores)
    for key in (blob_key, f"offload/queues/{names.QUEUE_COMMANDS_POISON}/x",
                f"offload/queues/{names.QUEUE_COMMANDS}/../../{blob_key}"):
        outcome = processor.process(json.dumps({"$claimCheck": f"blob:v1:{key}"}))
        assert outcome.status == "poisoned" and "claim check refused" in outcome.detail, outcome.detail
    assert stores.blobs().get(blob_key).data == data
    assert stores.blobs().exists(f"offload/queues/{names.QUEUE_COMMANDS_POISON}/x")


def test_a_queue_delivers_a_foreign_claim_check_unresolved_and_deleting_it_keeps_the_blob(stores, tenant):
    data, blob_key = _victim_object(stores, tenant + "v")
    queue = stores.queue(names.QUEUE_COMMANDS_POISON)
    body = json.dumps({"$claimCheck": f"blob:v1:{blob_key}"})
    queue.queue.send(body)
    [message] = queue.receive(max_messages=32, visibility_timeout=30)
    assert message.body == body  # not resolved: the text it is
    queue.delete(message.receipt)
    assert stores.blobs().get(blob_key).data == data


def test_a_claim_check_of_the_commands_queue_is_applied_and_its_blob_deleted(stores, tenant):
    body = _envelope(tenant, key="big", text="x" * (40 * 1024))
    stores.queue(names.QUEUE_COMMANDS).send(body)  # above the threshold: goes by claim check
    raw = _take(stores)
    assert "$claimCheck" in raw.body
    processor = CommandProcessor(stores)
    assert processor.process(raw.body).status == "applied"
    assert list(stores.blobs().list_all(f"offload/queues/{names.QUEUE_COMMANDS}/")) == []
    assert processor.process(raw.body).status == "duplicate"


# --------------------------------------------------------------------------- redelivery and failures


def _sent_by_client(stores, tenant: str, payload: dict) -> str:
    """Send a large command with CommandClient; the raw message it put on the queue."""
    CommandClient(stores).send("objects.put", tenant, payload)
    raw = _take(stores)
    assert "payload_ref" in raw.body
    return raw.body


def test_a_redelivered_applied_payload_ref_command_is_a_duplicate(stores, tenant):
    body = _sent_by_client(stores, tenant, {"key": "doc", "text": "β" * (40 * 1024)})
    processor = CommandProcessor(stores)
    assert processor.process(body).status == "applied"
    assert list(stores.blobs().list_all(f"commands/payloads/{tenant}/")) == []
    outcome = processor.process(body, dequeue_count=2)
    assert outcome.status == "duplicate", outcome.detail
    assert PoisonQueue(stores).list() == []
    assert len(ObjectService(stores).versions(tenant, "doc").items) == 1


def test_a_duplicate_removes_the_payload_blob_a_stopped_first_delivery_left(stores, tenant):
    payload = {"key": "doc", "text": "x" * (40 * 1024)}
    body = _sent_by_client(stores, tenant, payload)
    key = json.loads(body)["payload_ref"].removeprefix("blob:v1:")
    processor = CommandProcessor(stores)
    assert processor.process(body).status == "applied"
    stores.blobs().put(key, json.dumps(payload).encode())  # as if the first delivery stopped before deleting it
    assert processor.process(body).status == "duplicate"
    assert not stores.blobs().exists(key)
    # The same key with another payload blob: a duplicate too, and that blob is not the marker's to delete.
    other = json.loads(body) | {"payload_ref": f"blob:v1:commands/payloads/{tenant}/other"}
    stores.blobs().put(f"commands/payloads/{tenant}/other", json.dumps(payload).encode())
    assert processor.process(json.dumps(other)).status == "duplicate"
    assert stores.blobs().exists(f"commands/payloads/{tenant}/other")


def test_an_unexpected_exception_is_retried_and_its_type_and_message_kept(stores, tenant, monkeypatch):
    processor = CommandProcessor(stores)
    body = _envelope(tenant, key="k", text="v")

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(ObjectService, "put_outcome", broken)
    with pytest.raises(TypeError):
        processor.process(body, dequeue_count=5)
    assert processor.failure_reason(body) == "TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    stores.backend.queue(names.QUEUE_COMMANDS_POISON).send(body)  # the host's move after the last attempt
    [entry] = PoisonQueue(stores).list()
    assert entry.reason == "TypeError: unsupported operand type(s) for +: 'int' and 'str'"
    assert entry.dequeue_count == 5 and entry.body == body and entry.replayable


@pytest.mark.parametrize("body, reason", [
    ("[" * 10_000 + "]" * 10_000, "nests deeper"),
    ('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload": '
     '{"key": "x", "json": ' + "[" * 10_000 + "]" * 10_000 + "}}", "nests deeper"),
    (('{"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "k", "payload": '
      '{"key": "x", "json": NaN}}'), "not standard JSON"),
])
def test_a_message_too_deep_or_not_standard_json_is_poison_at_once(stores, body, reason):
    outcome = CommandProcessor(stores).process(body)
    assert outcome.status == "poisoned" and reason in outcome.detail, outcome.detail
