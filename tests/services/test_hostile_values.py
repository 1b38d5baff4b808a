"""Hostile JSON values at the service boundary, on local, Azurite and moto.

Lone surrogates, too deep nesting and values JSON cannot hold reach the services
from Python callers and queue commands as well as over HTTP. Each service refuses
them with InvalidInput before it writes anything: no index entry, no row, no
memory thread of a session.
"""

from __future__ import annotations

import json
import uuid

import pytest

from shared import names
from shared.domains.checkpoints.service import CheckpointService, TypedValue
from shared.commands import CommandProcessor
from shared.errors import InvalidInput, NotFound
from shared.jsonvalues import MAX_JSON_DEPTH
from shared.domains.memory.service import MemoryService
from shared.domains.sessions.service import SessionService, SessionStatus
from shared.domains.workflows.service import WorkflowService


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


#: JSON objects no service may store, each as a Python caller or a queue payload would hand it over.
BAD_OBJECTS = {
    "surrogate value": {"note": "caf\ud800"},
    "surrogate key": {"\udc00": 1},
    "deep": {"tree": nested(10_000)},
    "just too deep": {"tree": nested(MAX_JSON_DEPTH)},  # the object itself is one more level
    "nan": {"score": float("nan")},
    "non-string key": {"a": {1: "one"}},
}
BAD_TEXT = "x\ud800y"


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


def rows(stores, table: str, partition: str) -> list[str]:
    """Row keys of a partition, read straight from the table (no offload layer, no service)."""
    return [e.row_key for e in stores.backend.table(table).query_all(partition)]


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("bad", list(BAD_OBJECTS.values()), ids=list(BAD_OBJECTS))
def test_a_thread_with_bad_metadata_leaves_no_index_entry(stores, tenant, bad):
    memory = MemoryService(stores)
    with pytest.raises(InvalidInput):
        memory.create_thread(tenant, "user_1", thread_id="th", metadata=bad)
    assert rows(stores, names.TABLE_MEMORY, f"{tenant}|r|user_1") == []
    assert rows(stores, names.TABLE_MEMORY, f"{tenant}|t|th") == []
    assert memory.list_threads(tenant, "user_1").items == []
    with pytest.raises(NotFound):
        memory.get_thread(tenant, "th")


def test_a_thread_with_a_bad_title_leaves_no_index_entry(stores, tenant):
    memory = MemoryService(stores)
    with pytest.raises(InvalidInput, match="lone surrogate"):
        memory.create_thread(tenant, "user_1", title=BAD_TEXT)
    assert rows(stores, names.TABLE_MEMORY, f"{tenant}|r|user_1") == []


def test_bad_messages_and_edits_change_nothing(stores, tenant):
    memory = MemoryService(stores)
    thread = memory.create_thread(tenant, "user_1", thread_id="th", metadata={"a": 1})
    message = memory.add_message(tenant, "th", "user", "hello")
    for bad in [*BAD_OBJECTS.values(), BAD_TEXT]:
        with pytest.raises(InvalidInput):
            memory.add_message(tenant, "th", "user", bad)
        with pytest.raises(InvalidInput):
            memory.add_messages(tenant, "th", [{"role": "user", "content": "ok"},
                                               {"role": "user", "content": "ok", "metadata": bad}])
        with pytest.raises(InvalidInput):
            memory.update_message(tenant, "th", message.message_id, content=bad)
        with pytest.raises(InvalidInput):
            memory.update_thread(tenant, "th", metadata=bad)
        with pytest.raises(InvalidInput):
            memory.list_threads(tenant, "user_1", metadata=bad if isinstance(bad, dict) else {"a": bad})
    after = memory.get_thread(tenant, "th")
    assert (after.etag, after.message_count, after.metadata) == (memory.get_thread(tenant, "th").etag, 1, {"a": 1})
    assert after.etag != thread.etag  # the one good append moved it; nothing after did
    assert memory.get_message(tenant, "th", message.message_id).etag == message.etag


def test_a_queue_command_with_a_bad_value_is_poisoned_with_its_reason_and_writes_nothing(stores, tenant):
    # The producer is another process: its JSON carries the escape, as json.dumps writes a lone surrogate.
    body = json.dumps({"version": 1, "op": "memory.create_thread", "tenant": tenant,
                       "idempotency_key": uuid.uuid4().hex,
                       "payload": {"resource": "user_1", "metadata": {"k": "\ud800"}}})
    assert "\\ud800" in body
    outcome = CommandProcessor(stores).process(body)
    assert outcome.status == "poisoned" and "lone surrogate" in outcome.detail
    assert rows(stores, names.TABLE_MEMORY, f"{tenant}|r|user_1") == []


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("bad", list(BAD_OBJECTS.values()), ids=list(BAD_OBJECTS))
def test_a_session_with_bad_metadata_leaves_no_session_thread_or_index_entry(stores, tenant, bad):
    sessions = SessionService(stores)
    with pytest.raises(InvalidInput):
        sessions.create(tenant, "user_1", session_id="s1", metadata=bad)
    with pytest.raises(NotFound):
        sessions.get(tenant, "s1")
    assert rows(stores, names.TABLE_SESSIONS, f"{tenant}|u|user_1") == []
    assert rows(stores, names.TABLE_SESSIONS, f"{tenant}|s|s1") == []
    idle = rows(stores, names.TABLE_SESSIONS, SessionService._idle_pk(tenant, "s1"))
    assert [row for row in idle if row.endswith(f"|{tenant}|s1")] == []
    with pytest.raises(NotFound):
        MemoryService(stores).get_thread(tenant, "s1")


def test_bad_session_changes_change_nothing(stores, tenant):
    sessions = SessionService(stores)
    session = sessions.create(tenant, "user_1", session_id="s1", metadata={"a": 1})
    for bad in BAD_OBJECTS.values():
        with pytest.raises(InvalidInput):
            sessions.put_context(tenant, "s1", bad)
        with pytest.raises(InvalidInput):
            sessions.update_metadata(tenant, "s1", bad)
    with pytest.raises(InvalidInput, match="lone surrogate"):
        sessions.end(tenant, "s1", SessionStatus.COMPLETED, reason=BAD_TEXT)
    with pytest.raises(NotFound):
        sessions.get_context(tenant, "s1")
    after = sessions.get(tenant, "s1")
    assert (after.version, after.metadata, after.status) == (session.version, {"a": 1}, SessionStatus.ACTIVE)


# --------------------------------------------------------------------------- workflows


def suspend(workflows, tenant, workflow_id, **overrides):
    arguments = {"workflow_name": "etl", "resource": "user_1", "current_step": "load",
                 "context_state": {"n": 1}, "reason": {"kind": "manual"}}
    arguments.update(overrides)
    return workflows.suspend(tenant, workflow_id, **arguments)


@pytest.mark.parametrize("field", ["context_state", "resume_conditions"])
@pytest.mark.parametrize("bad", list(BAD_OBJECTS.values()), ids=list(BAD_OBJECTS))
def test_a_workflow_with_a_bad_context_or_conditions_is_not_created(stores, tenant, bad, field):
    workflows = WorkflowService(stores)
    with pytest.raises(InvalidInput):
        suspend(workflows, tenant, "w1", **{field: bad})
    with pytest.raises(NotFound):
        workflows.get(tenant, "w1")
    for partition in (f"{tenant}|a", f"{tenant}|r|user_1", f"{tenant}|n|etl", f"{tenant}|w|w1"):
        assert rows(stores, names.TABLE_WORKFLOWS, partition) == []


def test_bad_texts_in_a_suspend_reason_or_a_note_are_refused(stores, tenant):
    workflows = WorkflowService(stores)
    with pytest.raises(InvalidInput):
        suspend(workflows, tenant, "w1", reason={"kind": "manual", "note": BAD_TEXT})
    with pytest.raises(InvalidInput):
        suspend(workflows, tenant, "w1", reason={"kind": "approval", "approver": BAD_TEXT})
    with pytest.raises(NotFound):
        workflows.get(tenant, "w1")
    suspend(workflows, tenant, "w1", reason={"kind": "approval"})
    with pytest.raises(InvalidInput):
        workflows.approve(tenant, "w1", comment=BAD_TEXT)
    with pytest.raises(InvalidInput):
        workflows.cancel(tenant, "w1", detail=BAD_TEXT)
    after = workflows.get(tenant, "w1")
    assert (after.status, after.ready, after.etag) == ("suspended", False, "1")


def test_a_bad_event_payload_readies_nothing_and_a_deep_valid_one_round_trips(stores, tenant):
    workflows = WorkflowService(stores)
    suspend(workflows, tenant, "w1", reason={"kind": "event", "event_id": "go"})
    for bad in [*BAD_OBJECTS.values(), BAD_TEXT, nested(MAX_JSON_DEPTH - 1)]:
        with pytest.raises(InvalidInput):
            workflows.deliver_event(tenant, "go", bad)
    assert not workflows.get(tenant, "w1").ready
    # Two levels down (events.go), the deepest payload accepted keeps the context within what suspend takes.
    deepest = nested(MAX_JSON_DEPTH - 3, {})
    assert workflows.deliver_event(tenant, "go", deepest) == 1
    resumed = workflows.resume(tenant, "w1")
    assert resumed.context_state == {"n": 1, "events": {"go": deepest}}
    suspend(workflows, tenant, "w1", context_state=resumed.context_state)
    assert workflows.resume(tenant, "w1").context_state == resumed.context_state


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("bad", list(BAD_OBJECTS.values()), ids=list(BAD_OBJECTS))
def test_a_checkpoint_with_bad_metadata_is_not_stored(stores, tenant, bad):
    checkpoints = CheckpointService(stores)
    with pytest.raises(InvalidInput):
        checkpoints.put(tenant, "th", "", "c1", TypedValue("json", b"{}"), metadata=bad,
                        channel_versions={"ch": "1"}, new_values={"ch": TypedValue("json", b"1")})
    with pytest.raises(NotFound):
        checkpoints.get(tenant, "th")
    assert rows(stores, names.TABLE_CHECKPOINTS, f"{tenant}|t|th") == []
    assert rows(stores, names.TABLE_CHECKPOINTS, f"{tenant}|threads") == []
    checkpoints.put(tenant, "th", "", "c1", TypedValue("json", b"{}"), metadata={"source": "loop"})
    with pytest.raises(InvalidInput):
        checkpoints.list(tenant, "th", metadata_filter=bad)
