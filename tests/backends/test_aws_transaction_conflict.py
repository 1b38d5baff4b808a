"""DynamoDB transaction conflicts are retried, on moto, by injecting them.

Real DynamoDB cancels a transaction that collides with a concurrent one on an item
(``TransactionCanceledException`` with reason ``TransactionConflict``), and refuses
a single-item write that collides with an in-flight transaction
(``TransactionConflictException``). botocore retries neither and moto never sends
them, so these tests make the backend's own DynamoDB client answer them: a
``before-call`` handler on the client's event system returns the error in place of
the call, for the first few calls or for all of them.

The backend sends such a write again (nothing of it was applied); every domain
therefore gets through a passing conflict, and a conflict that does not pass is
Busy (503, "retry"), never the 409 that would tell a caller its write clashed with
the data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from fastapi.testclient import TestClient

from functions.context import AppContext
from functions.http_api import create_api
from shared import names
from shared.backends.base import Entity
from shared.errors import BackendUnavailable, Busy, Conflict
from shared.domains.memory.service import MemoryService
from shared.domains.objects.service import ObjectService
from shared.domains.sessions.service import SessionService
from shared.stores import Stores

TENANT = "acme"


class ConflictInjector:
    """Answers DynamoDB calls with a transaction conflict: ``fail[operation]`` more
    times (``None``: always). Registered on every DynamoDB client boto3 makes."""

    def __init__(self) -> None:
        self.fail: dict[str, int | None] = {}
        self.injected: dict[str, int] = {}

    def register(self, client: Any) -> None:
        for operation in ("TransactWriteItems", "PutItem", "DeleteItem"):
            client.meta.events.register(f"before-call.dynamodb.{operation}", self._handler(operation))

    def _handler(self, operation: str) -> Any:
        def handle(params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
            left = self.fail.get(operation, 0)
            if left == 0:
                return None
            if left is not None:
                self.fail[operation] = left - 1
            self.injected[operation] = self.injected.get(operation, 0) + 1
            return AWSResponse("https://dynamodb.invalid/", 400, {}, None), self._error(operation, params)

        return handle

    @staticmethod
    def _error(operation: str, params: dict[str, Any]) -> dict[str, Any]:
        metadata = {"HTTPStatusCode": 400, "HTTPHeaders": {}}
        if operation != "TransactWriteItems":
            return {"Error": {"Code": "TransactionConflictException",
                              "Message": "Transaction is ongoing for the item"}, "ResponseMetadata": metadata}
        # As DynamoDB words it: the colliding item says TransactionConflict, the others None.
        count = len(json.loads(params["body"])["TransactItems"])
        reasons = [{"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]
        reasons += [{"Code": "None"}] * (count - 1)
        listed = ", ".join(reason["Code"] for reason in reasons)
        return {
            "Error": {"Code": "TransactionCanceledException",
                      "Message": f"Transaction cancelled, please refer cancellation reasons for specific "
                                 f"reasons [{listed}]"},
            "CancellationReasons": reasons,
            "ResponseMetadata": metadata,
        }


@pytest.fixture
def conflicts(monkeypatch: pytest.MonkeyPatch) -> ConflictInjector:
    """Every DynamoDB client boto3 creates from now on gets the injector."""
    injector = ConflictInjector()
    make_client = boto3.session.Session.client

    def client(self: boto3.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        made = make_client(self, service_name, *args, **kwargs)
        if service_name == "dynamodb":
            injector.register(made)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return injector


@pytest.fixture
def stores(conflicts: ConflictInjector, settings_for: Any, tmp_path: Path) -> Iterator[Stores]:
    instance = Stores.from_settings(settings_for("aws", tmp_path))
    instance.ensure()
    try:
        yield instance
    finally:
        instance.close()


def test_an_object_put_gets_through_passing_conflicts(stores, conflicts):
    objects = ObjectService(stores)
    conflicts.fail["TransactWriteItems"] = 2
    first = objects.put(TENANT, "agent_configs/ceo", b'{"name": "CEO"}', "application/json")
    assert conflicts.injected == {"TransactWriteItems": 2}
    # A conditional write too: the conflict is not mistaken for a changed object (412).
    conflicts.fail["TransactWriteItems"] = 2
    second = objects.put(TENANT, "agent_configs/ceo", b"x" * 20_000, "text/plain", if_match=first.version_id)
    assert conflicts.injected == {"TransactWriteItems": 4}
    assert objects.get(TENANT, "agent_configs/ceo").data == b"x" * 20_000
    assert [v.version_id for v in objects.versions(TENANT, "agent_configs/ceo").items] == [
        second.version_id, first.version_id]
    assert objects.get(TENANT, "agent_configs/ceo", first.version_id).data == b'{"name": "CEO"}'


def test_a_memory_append_gets_through_passing_conflicts_with_gapless_seqs(stores, conflicts):
    memory = MemoryService(stores)
    thread = memory.create_thread(TENANT, "user_1")
    memory.add_message(TENANT, thread.thread_id, "user", "one")
    conflicts.fail["TransactWriteItems"] = 2
    memory.add_messages(TENANT, thread.thread_id, [{"role": "assistant", "content": "two"},
                                                   {"role": "user", "content": "three"}])
    conflicts.fail["TransactWriteItems"] = 1
    memory.add_message(TENANT, thread.thread_id, "assistant", "four")
    assert conflicts.injected == {"TransactWriteItems": 3}
    history = memory.history(TENANT, thread.thread_id).items
    assert [(m.seq, m.content) for m in history] == [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
    assert memory.get_thread(TENANT, thread.thread_id).message_count == 4


def test_session_metrics_add_up_through_passing_conflicts(stores, conflicts):
    sessions = SessionService(stores)
    session = sessions.create(TENANT, "user_1")
    conflicts.fail["TransactWriteItems"] = 2  # a record is the session's update with its change record
    sessions.record(TENANT, session.session_id, requests=1, processing_time=0.5)
    assert conflicts.injected == {"TransactWriteItems": 2}
    conflicts.fail["TransactWriteItems"] = 2  # with an idempotency key, its marker joins the batch
    sessions.record(TENANT, session.session_id, requests=2, errors=1, idempotency_key="k1")
    sessions.record(TENANT, session.session_id, requests=2, errors=1, idempotency_key="k1")  # counted once
    assert conflicts.injected == {"TransactWriteItems": 4}
    final = sessions.get(TENANT, session.session_id)
    assert (final.request_count, final.error_count, final.total_processing_time) == (3, 1, 0.5)


def test_an_unconditional_single_write_gets_through_a_passing_conflict(stores, conflicts):
    table = stores.backend.table(names.TABLE_OBJECTS)
    conflicts.fail["PutItem"] = 3
    table.upsert(Entity("p", "r", {"n": 1}))
    conflicts.fail["DeleteItem"] = 1
    table.delete("p", "r")
    assert conflicts.injected == {"PutItem": 3, "DeleteItem": 1}


def test_a_conflict_that_does_not_pass_is_busy_503_not_conflict_409(stores, conflicts):
    objects = ObjectService(stores)
    objects.put(TENANT, "k", b"before")
    conflicts.fail["TransactWriteItems"] = None
    with pytest.raises(Busy) as caught:
        objects.put(TENANT, "k", b"after")
    assert isinstance(caught.value, BackendUnavailable) and not isinstance(caught.value, Conflict)
    assert caught.value.status == 503
    assert "TransactionConflict" in str(caught.value)
    assert conflicts.injected["TransactWriteItems"] > 1  # sent again before giving up
    conflicts.fail["PutItem"] = None
    with pytest.raises(Busy):
        stores.backend.table(names.TABLE_OBJECTS).upsert(Entity("p", "r", {"n": 1}))

    # Over HTTP: a 503 problem that says to retry, not a 409.
    conflicts.fail = {}
    context = AppContext(stores.settings, stores)
    _, key = context.api_keys.create(TENANT)
    conflicts.fail["TransactWriteItems"] = None
    with TestClient(create_api(context)) as client:
        response = client.put("/api/v1/objects/k", content=b"after", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["title"] == "Busy"
    assert response.headers["retry-after"] == "1"
    conflicts.fail = {}
    assert objects.get(TENANT, "k").data == b"before"
