"""Every change is attributable, on every backend: who (the key's actor, the queue, a timer), from where
(the request's trace and correlation ids), and refused requests are audited without a write each.

Records are read back through the change feed (``stores.changes.sequence`` then ``changes``), as the
audit log reads them. Key changes and failures of unknown keys belong to the reserved platform tenant,
whose feed is shared by the tests of one Azurite session, so those are found by their key id.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest
from starlette.testclient import TestClient

from functions import timers
from functions.context import AppContext
from functions.edge import Edge
from functions.http_api import create_api
from shared import names
from shared.apikeys import (
    EVENTS_PARTITION_PREFIX,
    PLATFORM_TENANT,
    ApiKeyService,
    FailureAudit,
    KeyRefused,
)
from shared.backends import Entity
from shared.commands import CommandProcessor
from shared.config import Settings
from shared.domains import Job
from shared.errors import AlreadyExists, InvalidInput, Unauthorized
from shared.request_context import SYSTEM, Actor, RequestContext, acting_as, current
from shared.storage.changefeed import OUTBOX_PREFIX, Change, ChangeFeed
from shared.stores import Stores

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def _tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def context(settings: Settings) -> Iterator[AppContext]:
    instance = AppContext(settings)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def client(context: AppContext) -> Iterator[TestClient]:
    with TestClient(create_api(context)) as test_client:
        yield test_client


def feed_of(stores: Stores, tenant: str) -> list[Change]:
    """Every sequenced change of ``tenant``, after sequencing what is pending."""
    stores.changes.sequence(tenant)
    found: list[Change] = []
    token = None
    while True:
        page = stores.changes.changes(tenant, limit=1000, continuation=token)
        found += page.items
        token = page.continuation
        if token is None:
            return found


def platform_changes(stores: Stores, target_id: str) -> list[Change]:
    return [c for c in feed_of(stores, PLATFORM_TENANT) if c.target_id == target_id]


def find_edge(app: Any) -> Edge:
    layer = app.middleware_stack
    while not isinstance(layer, Edge):
        layer = layer.app
    return layer


# --------------------------------------------------------------------------- HTTP


def test_a_change_over_http_carries_the_keys_actor_and_the_requests_trace(context, client):
    tenant = _tenant()
    info, key = ApiKeyService(context.stores).create(tenant, actor_name="Ada Lovelace", actor_type="user",
                                                     roles=["reviewer", "ops:oncall"])
    headers = {"Authorization": f"Bearer {key}", "traceparent": f"00-{TRACE}-{SPAN}-01",
               "x-stowage-session-id": "s-42", "x-stowage-workflow-id": "wf.7",
               "x-stowage-agent-id": "planner", "x-stowage-user-id": "not valid!"}
    # An async route (objects put) and a sync one run on the thread pool (memory create_thread).
    assert client.put("/api/v1/objects/notes/a", content=b"x", headers=headers).status_code == 201
    created = client.post("/api/v1/threads", json={"resource": "u1"}, headers=headers)
    assert created.status_code == 201, created.text

    changes = feed_of(context.stores, tenant)
    assert {c.domain for c in changes} >= {"objects", "memory"}
    for change in changes:
        assert change.actor == {"type": "user", "id": info.key_id, "name": "Ada Lovelace",
                                "roles": ["reviewer", "ops:oncall"]}, change
        assert change.context == {"source": "http", "trace_id": TRACE, "span_id": SPAN, "session_id": "s-42",
                                  "workflow_id": "wf.7", "agent_id": "planner"}, change  # bad user id left out


@pytest.mark.parametrize("traceparent", [
    "garbage", f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE.upper()}x-{SPAN}-01", "",
])
def test_a_bad_traceparent_is_ignored_and_the_change_still_attributed(context, client, traceparent):
    tenant = _tenant()
    info, key = ApiKeyService(context.stores).create(tenant)
    answer = client.put("/api/v1/objects/k", content=b"x",
                        headers={"Authorization": f"Bearer {key}", "traceparent": traceparent,
                                 "x-stowage-session-id": "x" * 129})
    assert answer.status_code == 201
    (change,) = feed_of(context.stores, tenant)
    assert change.actor == {"type": "agent", "id": info.key_id}  # the default actor type: a program
    assert change.context == {"source": "http"}


def test_the_key_can_name_its_actor_id(context, client):
    tenant = _tenant()
    _, key = ApiKeyService(context.stores).create(tenant, actor_type="user", actor_id="ada@example.com")
    assert client.put("/api/v1/objects/k", content=b"x", headers={"Authorization": f"Bearer {key}"}).status_code == 201
    (change,) = feed_of(context.stores, tenant)
    assert change.actor == {"type": "user", "id": "ada@example.com"}


async def _context_seen_by_run_storage(context: AppContext, read: bool) -> RequestContext:
    return await context.run_storage(current, read=read)


@pytest.mark.parametrize("backend_kind", ["local"], indirect=True)
@pytest.mark.parametrize("read", [False, True])
def test_run_storage_carries_the_context_into_the_pool(context, read):
    mine = RequestContext(source="http", trace_id=TRACE, span_id=SPAN)
    seen = contextvars.copy_context()
    with acting_as(mine):
        got = asyncio.run(_context_seen_by_run_storage(context, read))
    assert got is mine
    assert seen.run(current) is not mine


def test_a_context_is_immutable_and_makes_its_record_json_once():
    ids = {"session_id": "s1"}
    actor = Actor("user", "u1", "Ada", ("ops",))
    mine = RequestContext(actor=actor, source="http", ids=ids)
    ids["session_id"], ids["user_id"] = "changed", "u2"  # the caller's dict changing later changes nothing
    assert mine.ids == {"session_id": "s1"} and mine == RequestContext(actor=actor, source="http",
                                                                       ids={"session_id": "s1"})
    with pytest.raises(TypeError):
        mine.ids["user_id"] = "u2"  # type: ignore[index]
    assert json.loads(mine.json_text) == mine.as_json() == {"source": "http", "session_id": "s1"}
    assert json.loads(actor.json_text) == actor.as_json() == {"type": "user", "id": "u1", "name": "Ada",
                                                              "roles": ["ops"]}
    assert mine.json_text is mine.json_text and actor.json_text is actor.json_text  # made once, then kept
    assert json.loads(mine.with_ids(workflow_id="w").json_text) == {"source": "http", "session_id": "s1",
                                                                   "workflow_id": "w"}
    with pytest.raises(InvalidInput):
        _ = Actor("user", "u\ud800").json_text  # a lone surrogate is not text any store keeps
    with pytest.raises(InvalidInput):
        _ = RequestContext(ids={"session_id": "s\udfff"}).json_text


# --------------------------------------------------------------------------- queue, timer, outside


def test_a_queue_command_is_the_queue_systems_work(context):
    tenant = _tenant()
    body = json.dumps({"version": 1, "op": "objects.put", "tenant": tenant, "idempotency_key": "1",
                       "payload": {"key": "hello", "text": "world"}})
    with acting_as(RequestContext(source="http", trace_id=TRACE, span_id=SPAN)):  # not carried into the command
        outcome = CommandProcessor(context.stores).process(body, message_id="m-1")
    assert outcome.status != "poisoned", outcome
    (change,) = feed_of(context.stores, tenant)
    assert change.actor == {"type": "system", "id": "queue"}
    assert change.context == {"source": "queue", "message_id": "m-1"}


def test_an_envelope_cannot_claim_an_actor(context):
    """An actor claim is unauthenticated: an envelope naming one does not validate (poison)."""
    tenant = _tenant()
    body = json.dumps({"version": 1, "op": "objects.put", "tenant": tenant, "idempotency_key": "1",
                       "actor": {"type": "user", "id": "ceo"}, "payload": {"key": "hello", "text": "world"}})
    assert CommandProcessor(context.stores).process(body).status == "poisoned"
    assert feed_of(context.stores, tenant) == []


def test_a_timer_job_is_the_systems_work(context):
    tenant = _tenant()
    seen: list[RequestContext] = []

    def run(objects: Any) -> int:
        seen.append(current())
        objects.put(tenant, "by-timer", b"x")
        return 1

    bp = func.Blueprint()
    timers._timer(bp, Job("attribution_probe", "0 0 * * * *", run, "test"), lambda: context.objects)
    app = func.FunctionApp()
    app.register_functions(bp)
    (function,) = app.get_functions()
    function.get_user_function()(timer=TimerRequest(past_due=False))

    (change,) = feed_of(context.stores, tenant)
    assert change.actor == {"type": "system", "id": "timer"}
    assert change.context == {"source": "timer", "job": "attribution_probe"}
    assert current() == RequestContext() and current().actor == SYSTEM  # restored after the run


# --------------------------------------------------------------------------- key creation and revocation


def test_key_creation_and_revocation_write_one_record_each_in_the_keys_batch(context):
    stores = context.stores
    keys = ApiKeyService(stores)
    tenant = _tenant()
    with acting_as(RequestContext(actor=SYSTEM, source="cli")):
        info, key = keys.create(tenant, label="ci", actor_name="Ada", roles=["ops"])
        # The outbox row sits in the key row's partition: it was written by the same atomic batch.
        pending = [row for row in stores.table(names.TABLE_APIKEYS).query_all("apikey", prefix=OUTBOX_PREFIX)
                   if row.get("target_id") == info.key_id]
        assert len(pending) == 1 and pending[0].get("op") == "apikeys.create"
        keys.revoke(info.key_id)
        keys.revoke(info.key_id)  # already revoked: nothing changes, nothing is recorded
    assert [i.key_id for i in keys.list(tenant)] == [info.key_id]  # outbox rows are not keys

    records = platform_changes(stores, info.key_id)
    assert [r.op for r in records] == ["apikeys.create", "apikeys.revoke"]
    create = records[0]
    assert (create.domain, create.target_type, create.tenant) == ("apikeys", "api_key", PLATFORM_TENANT)
    assert create.details == {"tenant": tenant, "label": "ci", "scopes": ["read", "write"], "actor_type": "agent",
                              "actor_name": "Ada", "roles": ["ops"]}
    assert create.context == {"source": "cli"}
    secret = key.split("_", 2)[2]
    text = json.dumps([r.details for r in records])
    assert secret not in text and "digest" not in text
    assert feed_of(stores, tenant) == []  # the key's tenant feed holds none of them


class _FixedIdKeys(ApiKeyService):
    key_id = secrets.token_hex(8)

    @staticmethod
    def _new_key_id() -> str:
        return _FixedIdKeys.key_id


def test_a_failed_key_creation_leaves_no_record(context):
    keys = _FixedIdKeys(context.stores)
    keys.create(_tenant())
    with pytest.raises(AlreadyExists):
        keys.create(_tenant())  # the same key id: the batch (key row + record) is refused as a whole
    with pytest.raises(InvalidInput):
        keys.create(PLATFORM_TENANT)  # reserved
    assert [r.op for r in platform_changes(context.stores, keys.key_id)] == ["apikeys.create"]


# --------------------------------------------------------------------------- refused requests


class CountingTable:
    """The real changes table, counting the calls that write."""

    WRITES = ("insert", "upsert", "update", "delete", "batch")

    def __init__(self, table: Any) -> None:
        self._table = table
        self.writes = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._table, name)
        if name not in self.WRITES:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.writes += 1
            return attribute(*args, **kwargs)

        return counted


class Clock:
    def __init__(self, now: float = 1_000_020.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _counting_audit(stores: Stores, clock: Clock, **options: Any) -> tuple[FailureAudit, CountingTable]:
    table = CountingTable(stores.table(names.TABLE_CHANGES))
    feed = ChangeFeed(table, {names.TABLE_CHANGES: table})
    return FailureAudit(lambda: feed, lambda: table, clock=clock, **options), table


def test_a_thousand_failed_authentications_cost_a_bounded_number_of_writes(context):
    stores = context.stores
    keys = ApiKeyService(stores)
    clock = Clock()
    audit, table = _counting_audit(stores, clock)
    tenant = _tenant()
    info, key = keys.create(tenant)
    wrong_secret = f"stw_{info.key_id}_{secrets.token_urlsafe(32)}"
    for _ in range(1000):
        with pytest.raises(KeyRefused) as refused:
            keys.authenticate(wrong_secret)
        audit.authentication_failed(refused.value)
        assert str(refused.value) == "the API key is not valid; send 'Authorization: Bearer stw_...' with a key " \
                                     "from `stowage keys create`"  # one message for every cause
    assert table.writes == 0 and audit.tallies() == 1 and not audit.due()
    clock.now += 60
    assert audit.due()
    assert audit.flush() == 1
    assert table.writes <= 4  # the record, and the feed's hint (its due index and directory)
    assert audit.flush() == 0 and audit.tallies() == 0

    (record,) = [c for c in feed_of(stores, tenant) if c.domain == "auth"]
    assert (record.op, record.target_type, record.target_id) == ("auth.failed", "api_key", info.key_id)
    assert record.details["count"] == 1000 and record.details["reason"] == "mismatch"
    assert record.details["window_seconds"] == 60.0 and record.details["window_start"] == 1_000_020.0 // 60 * 60
    assert record.actor == {"type": "agent", "id": info.key_id, "claimed": True}
    keys.authenticate(key)  # the real key still works


def test_failure_tallies_are_bounded_and_the_rest_is_one_overflow_count(context):
    stores = context.stores
    clock = Clock()
    audit, table = _counting_audit(stores, clock, max_tallies=16)
    marker = secrets.token_hex(4)
    for n in range(1000):  # 1000 distinct unknown key ids
        audit.authentication_failed(KeyRefused("unknown", f"{marker}{n:08x}"))
    assert audit.tallies() == 16
    clock.now += 120
    assert audit.flush() == 17
    assert table.writes <= 17 + 3
    mine = [c for c in feed_of(stores, PLATFORM_TENANT)
            if c.target_id.startswith(marker) or (c.details or {}).get("reason") == "overflow"]
    assert sum(c.details["count"] for c in mine if c.target_id.startswith(marker)) == 16
    assert [c.details["count"] for c in mine if c.details.get("reason") == "overflow"][-1] == 984


def test_refused_requests_over_http_are_recorded_once_per_window(context, client):
    stores = context.stores
    tenant = _tenant()
    keys = ApiKeyService(stores)
    reader, read_key = keys.create(tenant, scopes="read", actor_name="Reader")
    _, writer_key = keys.create(tenant)
    assert client.get("/api/health").status_code == 200  # builds the middleware stack
    clock = Clock()
    edge = find_edge(client.app)
    edge.failures, table = _counting_audit(stores, clock)
    unknown = secrets.token_hex(8)
    for _ in range(5):
        answer = client.put("/api/v1/objects/k", content=b"x",
                            headers={"Authorization": f"Bearer stw_{unknown}_{secrets.token_urlsafe(32)}"})
        assert answer.status_code == 401
    for _ in range(3):
        assert client.put("/api/v1/objects/k", content=b"x",
                          headers={"Authorization": f"Bearer {read_key}"}).status_code == 403
    assert client.get("/api/v1/objects/k", headers={"Authorization": "Basic x"}).status_code == 401
    assert table.writes == 0
    clock.now += 60
    assert client.put("/api/v1/objects/k", content=b"x",
                      headers={"Authorization": f"Bearer {writer_key}"}).status_code == 201  # flushes
    assert 0 < table.writes <= 3 * 3 and not edge.failures.due()

    denied = [c for c in feed_of(stores, tenant) if c.domain == "authorization"]
    assert [(c.op, c.target_id, c.details["count"], c.details["reason"]) for c in denied] == [
        ("authorization.denied", reader.key_id, 3, "scope:write")]
    assert denied[0].actor == {"type": "agent", "id": reader.key_id, "name": "Reader"}
    (failed,) = platform_changes(stores, unknown)
    assert (failed.op, failed.details["count"], failed.details["reason"]) == ("auth.failed", 5, "unknown")
    rows = stores.table(names.TABLE_CHANGES).query_all(EVENTS_PARTITION_PREFIX + tenant, prefix=OUTBOX_PREFIX)
    assert list(rows) == []  # sequenced: nothing left pending


def test_a_failure_record_that_cannot_be_written_does_not_fail_the_request(context):
    class Refusing:
        def insert(self, entity: Entity) -> str:
            raise Unauthorized("storage refused")  # any StowageError

    clock = Clock()
    audit = FailureAudit(lambda: context.stores.changes, Refusing, clock=clock)
    audit.authentication_failed(KeyRefused("malformed"))
    clock.now += 60
    assert audit.flush() == 0 and audit.failed_writes == 1 and audit.tallies() == 0


def test_the_open_windows_failures_are_written_at_shutdown(context):
    tenant = _tenant()
    reader, read_key = ApiKeyService(context.stores).create(tenant, scopes="read")
    with TestClient(create_api(context)) as test_client:
        assert test_client.get("/api/health").status_code == 200
        edge = find_edge(test_client.app)
        edge.failures, table = _counting_audit(context.stores, Clock())
        assert test_client.delete("/api/v1/objects/k", headers={"Authorization": f"Bearer {read_key}"}
                                  ).status_code == 403
        assert table.writes == 0
    assert table.writes > 0  # the lifespan's shutdown flushed the open window
    (denied,) = [c for c in feed_of(context.stores, tenant) if c.domain == "authorization"]
    assert (denied.target_id, denied.details["count"]) == (reader.key_id, 1)
