"""Suspended workflows, events and their timers: the same tests on local, Azurite and moto."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from shared import names
from shared.backends import Entity, TableOp
from shared.commands import CommandProcessor
from shared.domains.workflows.models import (
    CurrentStep,
    IllegalTransition,
    NotAwaitingApproval,
    Resumed,
    SuspendReason,
    WaitingForEvent,
    WorkflowStatus,
    parse_reason,
)
from shared.domains.workflows.service import WorkflowService
from shared.errors import Busy, Conflict, InvalidInput, InvalidKey, NotFound, PreconditionFailed, TooLarge
from shared.manager import StorageManager
from shared.storage.idempotency import IdempotencyKeyReused, marker_row
from shared.storage.retry import DEFAULT_POLICY


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def workflows(stores) -> WorkflowService:
    return WorkflowService(stores)


def isolated(stores) -> bool:
    """Whether the timer sees only this test's due entries (Azurite is shared by the session)."""
    return stores.settings.backend != "azure"


def wait_for(event_id: str, timeout: int | None = None) -> dict:
    return {"kind": "event", "event_id": event_id, "timeout_seconds": timeout}


def suspend(workflows, tenant, workflow_id, reason=None, *, name="etl", resource="user:1", step="load",
            context=None, **kwargs):
    return workflows.suspend(tenant, workflow_id, workflow_name=name, resource=resource, current_step=step,
                             context_state=context if context is not None else {"n": 1},
                             reason=reason or {"kind": "manual"}, **kwargs)


def ids(page) -> list[str]:
    return [w.workflow_id for w in page.items]


def every(workflows, tenant, **filters) -> list[str]:
    found, token = [], None
    while True:
        page = workflows.list(tenant, limit=2, continuation=token, **filters)
        assert len(page.items) <= 2
        found += ids(page)
        token = page.continuation
        if not token:
            return found


# --------------------------------------------------------------------------- suspend and resume


def test_resume_hands_out_the_context_and_step_once_and_marks_running(workflows, tenant):
    big = {"notes": "ü" * 150_000, "rows": list(range(1000))}  # offloaded to a blob
    created = suspend(workflows, tenant, "wf-1", wait_for("data_ready", 3600), step="transform", context=big,
                      resume_conditions={"needs": ["data_ready"]})
    assert created.status is WorkflowStatus.SUSPENDED and created.suspensions == 1 and not created.ready
    assert created.suspend_reason == {"kind": "event", "event_id": "data_ready", "timeout_seconds": 3600}
    assert created.wait_until is not None and created.resume_conditions == {"needs": ["data_ready"]}
    assert workflows.get(tenant, "wf-1", include_context=True).context_state == big

    resumed = workflows.resume(tenant, "wf-1")
    assert isinstance(resumed, Resumed)
    assert resumed.context_state == big and resumed.current_step == "transform"
    assert resumed.workflow.status is WorkflowStatus.RUNNING and resumed.workflow.resumed_at
    assert workflows.get(tenant, "wf-1").status is WorkflowStatus.RUNNING
    with pytest.raises(IllegalTransition, match="running → running"):
        workflows.resume(tenant, "wf-1")


def test_racing_resumers_exactly_one_gets_the_context(workflows, tenant):
    suspend(workflows, tenant, "race", context={"secret": "only once"})
    racers = 8
    barrier = threading.Barrier(racers)
    winners: list[Resumed] = []
    conflicts: list[Conflict] = []
    unexpected: list[BaseException] = []

    def race() -> None:
        barrier.wait()
        try:
            winners.append(workflows.resume(tenant, "race"))
        except IllegalTransition as exc:
            conflicts.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            unexpected.append(exc)

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unexpected == []
    assert len(winners) == 1 and winners[0].context_state == {"secret": "only once"}
    assert len(conflicts) == racers - 1
    assert all("running" in str(exc) for exc in conflicts)
    assert every(workflows, tenant, status="running") == ["race"]
    assert every(workflows, tenant, status="suspended") == []


def test_resuming_unknown_completed_or_running_is_404_or_409(workflows, tenant):
    with pytest.raises(NotFound):
        workflows.resume(tenant, "nobody")
    suspend(workflows, tenant, "done")
    workflows.resume(tenant, "done")
    with pytest.raises(IllegalTransition, match="running → running"):
        workflows.resume(tenant, "done")
    workflows.complete(tenant, "done", detail="all rows loaded")
    with pytest.raises(IllegalTransition, match="completed → running") as caught:
        workflows.resume(tenant, "done")
    assert caught.value.status == 409
    assert workflows.get(tenant, "done").detail == "all rows loaded"


@pytest.mark.parametrize("path, illegal, target", [
    ([], "complete", "completed"),           # suspended → completed
    ([], "fail", "failed"),                  # suspended → failed
    ([], "suspend", "suspended"),            # suspended → suspended
    (["resume", "complete"], "cancel", "cancelled"),  # completed is terminal
    (["cancel"], "suspend", "suspended"),    # cancelled is terminal
    (["resume", "fail"], "complete", "completed"),
])
def test_illegal_transitions_are_409_naming_both_states(workflows, tenant, path, illegal, target):
    suspend(workflows, tenant, "w")
    actions = {"resume": lambda: workflows.resume(tenant, "w"), "complete": lambda: workflows.complete(tenant, "w"),
               "fail": lambda: workflows.fail(tenant, "w"), "cancel": lambda: workflows.cancel(tenant, "w"),
               "suspend": lambda: suspend(workflows, tenant, "w")}
    for step in path:
        actions[step]()
    before = workflows.get(tenant, "w")
    with pytest.raises(IllegalTransition) as caught:
        actions[illegal]()
    assert f"{before.status} → {target}" in str(caught.value)
    assert workflows.get(tenant, "w").etag == before.etag  # nothing written


def test_the_allowed_cycle_suspend_resume_suspend_complete(workflows, tenant):
    suspend(workflows, tenant, "w", wait_for("a"), step="one")
    workflows.resume(tenant, "w")
    second = suspend(workflows, tenant, "w", {"kind": "approval", "approver": "ops"}, step="two", context={"k": 2})
    assert second.suspensions == 2 and second.suspend_reason["kind"] == "approval"
    resumed = workflows.resume(tenant, "w")
    assert resumed.current_step == "two" and resumed.context_state == {"k": 2}
    done = workflows.complete(tenant, "w")
    assert done.status is WorkflowStatus.COMPLETED and done.finished_at
    suspend(workflows, tenant, "x", name="a")
    workflows.resume(tenant, "x")
    with pytest.raises(InvalidInput, match="cannot change"):
        suspend(workflows, tenant, "x", name="b")


def test_if_match_and_idempotency_keys(workflows, tenant):
    first = suspend(workflows, tenant, "w", idempotency_key="req-1")
    again = suspend(workflows, tenant, "w", idempotency_key="req-1")  # a retried request: no 409, no new suspension
    assert again.suspensions == 1 and again.etag == first.etag
    with pytest.raises(PreconditionFailed):
        workflows.resume(tenant, "w", if_match="999")
    resumed = workflows.resume(tenant, "w", if_match=first.etag)
    with pytest.raises(PreconditionFailed):
        workflows.complete(tenant, "w", if_match=first.etag)
    assert workflows.complete(tenant, "w", if_match=resumed.workflow.etag).status is WorkflowStatus.COMPLETED


# --------------------------------------------------------------------------- listing


def test_listing_by_resource_status_name_and_ready_is_paged(workflows, tenant):
    for i in range(5):
        suspend(workflows, tenant, f"a{i}", wait_for("go"), name="etl", resource="user:1")
    for i in range(3):
        suspend(workflows, tenant, f"b{i}", name="report", resource="user/2#x")
    workflows.resume(tenant, "a0")
    workflows.resume(tenant, "b0")
    workflows.cancel(tenant, "b1")
    workflows.deliver_event(tenant, "go", {"ok": True})  # a1..a4 become ready

    assert every(workflows, tenant) == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
    assert every(workflows, tenant, resource="user:1", status="suspended") == ["a1", "a2", "a3", "a4"]
    assert every(workflows, tenant, resource="user:1", status="running") == ["a0"]
    assert every(workflows, tenant, resource="user/2#x", status="cancelled") == ["b1"]
    assert every(workflows, tenant, resource="user/2#x") == ["b0", "b1", "b2"]
    assert every(workflows, tenant, status="suspended") == ["a1", "a2", "a3", "a4", "b2"]
    assert every(workflows, tenant, workflow_name="report") == ["b0", "b1", "b2"]
    assert every(workflows, tenant, workflow_name="report", status="running") == ["b0"]
    assert every(workflows, tenant, ready=True) == ["a1", "a2", "a3", "a4"]
    assert every(workflows, tenant, ready=True, workflow_name="report") == []
    assert every(workflows, tenant, ready=False, status="suspended") == ["b2"]
    assert workflows.list(tenant, ready=True, status="running").items == []
    workflows.resume(tenant, "a1")
    assert every(workflows, tenant, ready=True) == ["a2", "a3", "a4"]
    assert every(workflows, tenant, status="timed_out") == []
    with pytest.raises(InvalidInput):
        workflows.list(tenant, status="sleeping")


def test_a_stale_index_entry_is_skipped_and_removed_an_in_flight_one_kept(workflows, stores, tenant):
    suspend(workflows, tenant, "w")  # seq 1, suspended
    index = stores.backend.table(names.TABLE_WORKFLOWS)
    # What a crash between the writes of a change leaves behind: an entry of a state the workflow is not in.
    index.upsert(Entity(f"{tenant}|st|completed", "w", {"seq": 1}))
    index.upsert(Entity(f"{tenant}|st|running", "w", {"seq": 2}))  # a change to running still in flight
    assert workflows.list(tenant, status="completed").items == []
    assert workflows.list(tenant, status="running").items == []
    assert [e.row_key for e in index.query(f"{tenant}|st|completed").items] == []
    assert [e.row_key for e in index.query(f"{tenant}|st|running").items] == ["w"]
    assert ids(workflows.list(tenant, status="suspended")) == ["w"]
    workflows.resume(tenant, "w")  # the entry it files is the one at seq 2: listed now
    assert ids(workflows.list(tenant, status="running")) == ["w"]
    assert index.query(f"{tenant}|st|suspended").items == []  # the old state's entry was removed after


# --------------------------------------------------------------------------- events


def test_an_event_readies_every_waiting_workflow_with_the_payload_merged(workflows, stores, tenant):
    other_tenant = tenant + "x"
    suspend(workflows, tenant, "w1", wait_for("data_ready", 600), context={"keep": "mine"})
    suspend(workflows, tenant, "w2", wait_for("data_ready"), context={"events": {"earlier": 1}, "k": [1, 2]})
    suspend(workflows, tenant, "w3", wait_for("data_ready"))
    suspend(workflows, tenant, "other-event", wait_for("other"))
    suspend(workflows, tenant, "manual")
    suspend(workflows, other_tenant, "w1", wait_for("data_ready"))

    assert workflows.deliver_event(tenant, "data_ready", {"rows": 42}) == 3
    for workflow_id in ("w1", "w2", "w3"):
        workflow = workflows.get(tenant, workflow_id, include_context=True)
        assert workflow.status is WorkflowStatus.SUSPENDED and workflow.ready
        assert workflow.ready_reason == "event:data_ready" and workflow.wait_until is None
        assert workflow.context_state["events"]["data_ready"] == {"rows": 42}
    assert workflows.get(tenant, "w1", include_context=True).context_state["keep"] == "mine"
    assert workflows.get(tenant, "w2", include_context=True).context_state == {
        "events": {"earlier": 1, "data_ready": {"rows": 42}}, "k": [1, 2]}
    assert not workflows.get(tenant, "other-event").ready and not workflows.get(tenant, "manual").ready
    assert not workflows.get(other_tenant, "w1").ready
    index = stores.backend.table(names.TABLE_WORKFLOWS)
    assert index.query(f"{tenant}|e|data_ready").items == []  # nobody waits any more
    assert [e.row_key for e in index.query(f"{tenant}|e|other").items] == ["other-event"]
    assert workflows.deliver_event(tenant, "data_ready", {"rows": 43}) == 0  # already ready: nothing changes
    assert workflows.resume(tenant, "w3").context_state["events"]["data_ready"] == {"rows": 42}


def test_a_redelivery_readies_nothing_twice_even_after_a_crash_or_a_new_wait(workflows, stores, tenant):
    suspend(workflows, tenant, "w", wait_for("data_ready"))
    assert workflows.deliver_event(tenant, "data_ready", {"v": 1}, delivery_id="d1") == 1
    assert workflows.deliver_event(tenant, "data_ready", {"v": 1}, delivery_id="d1") == 1  # the first one's count
    workflows.resume(tenant, "w")
    waiting_again = suspend(workflows, tenant, "w", wait_for("data_ready"))
    # As if the first delivery had crashed before recording its count: each workflow's marker still holds.
    index = stores.backend.table(names.TABLE_WORKFLOWS)
    for entry in index.query(f"{tenant}|dl").items:
        index.delete(entry.partition_key, entry.row_key)
    assert workflows.deliver_event(tenant, "data_ready", {"v": 1}, delivery_id="d1") == 0
    assert workflows.get(tenant, "w").etag == waiting_again.etag and not workflows.get(tenant, "w").ready
    assert workflows.deliver_event(tenant, "data_ready", {"v": 2}, delivery_id="d2") == 1
    assert workflows.resume(tenant, "w").context_state["events"]["data_ready"] == {"v": 2}


class _Recording:
    """Delegates to a table and records which partitions were read (a test spy, not a backend)."""

    def __init__(self, table) -> None:
        self._table = table
        self.queried: list[str] = []
        self.read: list[str] = []

    def query(self, partition_key, **kwargs):
        self.queried.append(partition_key)
        return self._table.query(partition_key, **kwargs)

    def query_all(self, partition_key, **kwargs):
        self.queried.append(partition_key)
        return self._table.query_all(partition_key, **kwargs)

    def get(self, partition_key, row_key):
        self.read.append(partition_key)
        return self._table.get(partition_key, row_key)

    def scan(self, **kwargs):
        raise AssertionError("delivery must not scan")

    def __getattr__(self, name):
        return getattr(self._table, name)


def test_delivery_reads_the_event_index_not_every_workflow(workflows, tenant):
    for i in range(12):
        suspend(workflows, tenant, f"busy{i:02d}", wait_for("something-else"))
    suspend(workflows, tenant, "waiting-a", wait_for("data_ready"))
    suspend(workflows, tenant, "waiting-b", wait_for("data_ready"))
    workflows._table = _Recording(workflows._table)
    assert workflows.deliver_event(tenant, "data_ready", None) == 2
    assert set(workflows._table.queried) == {f"{tenant}|e|data_ready"}
    # Each waiting workflow's partition, and its (now stale) entry in the event index, read before removal.
    assert set(workflows._table.read) == {f"{tenant}|w|waiting-a", f"{tenant}|w|waiting-b", f"{tenant}|e|data_ready"}


# --------------------------------------------------------------------------- timers


def test_the_timer_times_out_waits_and_readies_schedules(workflows, stores, tenant):
    start = time.time()
    suspend(workflows, tenant, "event", wait_for("data_ready", 60))
    suspend(workflows, tenant, "approval", {"kind": "approval", "approver": "ops", "timeout_seconds": 60})
    at = datetime.fromtimestamp(start + 120, tz=UTC).isoformat()
    suspend(workflows, tenant, "scheduled", {"kind": "schedule", "resume_at": at})
    suspend(workflows, tenant, "no-timeout", wait_for("data_ready"))
    suspend(workflows, tenant, "came-in-time", wait_for("early", 60))
    workflows.deliver_event(tenant, "early", {"in": "time"})
    past = datetime.fromtimestamp(start - 5, tz=UTC).isoformat()
    assert suspend(workflows, tenant, "overdue", {"kind": "schedule", "resume_at": past}).ready

    before = {w.workflow_id: w.etag for w in workflows.list(tenant).items}
    workflows.process_due(now=start + 30)
    assert {w.workflow_id: w.etag for w in workflows.list(tenant).items} == before  # nothing due yet

    first = workflows.process_due(now=start + 90)
    timed_out = workflows.get(tenant, "event")
    assert timed_out.status is WorkflowStatus.TIMED_OUT
    assert timed_out.suspend_reason == {"kind": "event", "event_id": "data_ready", "timeout_seconds": 60}
    assert "data_ready" in timed_out.timeout_reason and timed_out.finished_at
    assert "approval" in workflows.get(tenant, "approval").timeout_reason
    assert workflows.get(tenant, "came-in-time").status is WorkflowStatus.SUSPENDED
    assert workflows.get(tenant, "no-timeout").status is WorkflowStatus.SUSPENDED
    assert not workflows.get(tenant, "scheduled").ready
    with pytest.raises(IllegalTransition, match="timed_out → running"):
        workflows.resume(tenant, "event")

    second = workflows.process_due(now=start + 150)
    scheduled = workflows.get(tenant, "scheduled")
    assert scheduled.ready and scheduled.ready_reason == "schedule" and scheduled.status is WorkflowStatus.SUSPENDED
    assert every(workflows, tenant, ready=True) == ["came-in-time", "overdue", "scheduled"]
    assert every(workflows, tenant, status="timed_out") == ["approval", "event"]
    settled = {w.workflow_id: w.etag for w in workflows.list(tenant).items}
    third = workflows.process_due(now=start + 150)
    assert {w.workflow_id: w.etag for w in workflows.list(tenant).items} == settled  # idempotent
    if isolated(stores):
        assert first == {"timed_out": 2, "readied": 0, "skipped": 1}
        assert second == {"timed_out": 0, "readied": 1, "skipped": 0}
        assert third == {"timed_out": 0, "readied": 0, "skipped": 0}


def test_a_due_entry_of_an_earlier_suspension_does_nothing(workflows, tenant):
    start = time.time()
    suspend(workflows, tenant, "w", wait_for("data_ready", 60))
    workflows.resume(tenant, "w")
    workflows.process_due(now=start + 90)
    assert workflows.get(tenant, "w").status is WorkflowStatus.RUNNING
    suspend(workflows, tenant, "w", wait_for("data_ready", 60))
    workflows.resume(tenant, "w")
    suspend(workflows, tenant, "w", wait_for("data_ready", 600))  # the third suspension has a longer wait
    workflows.process_due(now=start + 90)
    assert workflows.get(tenant, "w").status is WorkflowStatus.SUSPENDED
    workflows.process_due(now=start + 700)
    assert workflows.get(tenant, "w").status is WorkflowStatus.TIMED_OUT


def test_the_timer_works_in_chunks(workflows, tenant):
    start = time.time()
    for i in range(5):
        suspend(workflows, tenant, f"w{i}", wait_for("never", 60))
    runs = 0
    while any(w.status is WorkflowStatus.SUSPENDED for w in workflows.list(tenant).items):
        counts = workflows.process_due(now=start + 90, limit=2)
        assert sum(counts.values()) <= 2
        runs += 1
        assert runs < 50, "the timer made no progress"
    assert runs >= 3
    assert every(workflows, tenant, status="timed_out") == [f"w{i}" for i in range(5)]


def test_two_timer_instances_at_once_apply_each_timeout_once(workflows, stores, tenant):
    start = time.time()
    for i in range(6):
        suspend(workflows, tenant, f"w{i}", wait_for("never", 60))
    results: list[dict] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(WorkflowService(stores).process_due(now=start + 90))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    assert all(w.status is WorkflowStatus.TIMED_OUT and w.etag == "2" for w in workflows.list(tenant).items)
    total = sum(r["timed_out"] for r in results)
    assert total == 6 if isolated(stores) else total >= 6


# --------------------------------------------------------------------------- approval, commands, tenancy


def test_approval_makes_ready_once(workflows, tenant):
    suspend(workflows, tenant, "w", {"kind": "approval", "approver": "ops", "timeout_seconds": 600})
    approved = workflows.approve(tenant, "w", approved_by="alice", comment="fine")
    assert approved.ready and approved.ready_reason == "approval" and approved.wait_until is None
    assert approved.approval["approved_by"] == "alice" and approved.approval["comment"] == "fine"
    assert datetime.fromisoformat(approved.approval["approved_at"]).tzinfo is not None  # stored as epoch s
    with pytest.raises(NotAwaitingApproval, match="already") as caught:
        workflows.approve(tenant, "w")
    assert isinstance(caught.value, Conflict) and caught.value.status == 409
    assert caught.value.title == "Not awaiting approval" and caught.value.ready_reason == "approval"
    workflows.process_due(now=time.time() + 900)  # approved in time: no timeout
    assert workflows.resume(tenant, "w").workflow.ready_reason == "approval"
    suspend(workflows, tenant, "e", wait_for("x"))
    with pytest.raises(Conflict, match="event"):
        workflows.approve(tenant, "e")


def _envelope(tenant: str, op: str, key: str, payload: dict) -> str:
    return json.dumps({"version": 1, "op": op, "tenant": tenant, "idempotency_key": key, "payload": payload})


def test_queue_commands_apply_once_under_redelivery(stores, workflows, tenant):
    processor = CommandProcessor(stores)
    suspend_body = _envelope(tenant, "workflows.suspend", "s1", {
        "workflow_id": "q", "workflow_name": "etl", "resource": "user:1", "current_step": "wait",
        "context_state": {"n": 1}, "suspend_reason": wait_for("data_ready", 3600)})
    assert processor.process(suspend_body).status == "applied"
    assert processor.process(suspend_body, dequeue_count=2).status == "duplicate"
    assert workflows.get(tenant, "q").suspensions == 1

    deliver = _envelope(tenant, "workflows.deliver_event", "e1", {"event_id": "data_ready", "payload": {"x": 1}})
    assert processor.process(deliver).status == "applied"
    workflows.resume(tenant, "q")
    suspend(workflows, tenant, "q", wait_for("data_ready"))
    processor.process(deliver, dequeue_count=2)  # redelivered after the workflow waits again
    assert not workflows.get(tenant, "q").ready

    cancel = _envelope(tenant, "workflows.cancel", "c1", {"workflow_id": "q", "detail": "no longer needed"})
    assert processor.process(cancel).status == "applied"
    assert processor.process(cancel, dequeue_count=2).status == "duplicate"
    assert workflows.get(tenant, "q").status is WorkflowStatus.CANCELLED

    suspend(workflows, tenant, "a", {"kind": "approval"})
    approve = _envelope(tenant, "workflows.approve", "a1", {"workflow_id": "a", "approved_by": "bob"})
    assert processor.process(approve).status == "applied"
    assert processor.process(approve, dequeue_count=2).status == "duplicate"
    assert workflows.get(tenant, "a").approval["approved_by"] == "bob"

    illegal = _envelope(tenant, "workflows.complete", "x1", {"workflow_id": "a"})
    outcome = processor.process(illegal)
    assert outcome.status == "poisoned" and "suspended → completed" in outcome.detail


def test_tenants_never_see_each_other(workflows, tenant):
    other = tenant + "x"
    suspend(workflows, tenant, "private", {"kind": "approval"}, context={"secret": 1})
    for attempt in (lambda: workflows.get(other, "private"), lambda: workflows.resume(other, "private"),
                    lambda: workflows.cancel(other, "private"), lambda: workflows.complete(other, "private"),
                    lambda: workflows.fail(other, "private"), lambda: workflows.approve(other, "private")):
        with pytest.raises(NotFound):
            attempt()
    assert workflows.list(other).items == [] and workflows.list(other, status="suspended").items == []
    assert workflows.deliver_event(other, "data_ready", {}) == 0
    assert workflows.get(tenant, "private").status is WorkflowStatus.SUSPENDED


def test_invalid_input_is_refused_before_anything_is_written(stores, workflows, tenant):
    for bad_id in ("", "a/b", "a b", "x" * 129, "a|b"):
        with pytest.raises(InvalidKey):
            suspend(workflows, tenant, bad_id)
    with pytest.raises(InvalidKey):
        workflows.deliver_event(tenant, "bad event", {})
    bad_reasons = [{"kind": "sleep"}, {"kind": "event"}, {"kind": "event", "event_id": "e", "timeout_seconds": 0},
                   {"kind": "schedule", "resume_at": "2030-01-01T00:00:00"}, "manual",
                   {"kind": "schedule", "resume_at": 0}, {"kind": "schedule", "resume_at": 1.9e9}, {"event_id": "e"}]
    for reason in bad_reasons:
        with pytest.raises(InvalidInput, match="suspend_reason"):
            suspend(workflows, tenant, "w", reason)
    with pytest.raises(InvalidInput, match="object"):
        suspend(workflows, tenant, "w", context=[1, 2])
    with pytest.raises(InvalidInput, match="events"):
        suspend(workflows, tenant, "w", context={"events": "mine"})
    with pytest.raises(InvalidInput):
        suspend(workflows, tenant, "w", context={"x": float("nan")})
    with pytest.raises(InvalidInput):
        suspend(workflows, "Bad Tenant", "w")
    with pytest.raises(InvalidInput, match="resume"):
        workflows.transition(tenant, "w", "running")
    small = WorkflowService(stores)
    small.max_context_bytes = 1000
    with pytest.raises(TooLarge):
        suspend(small, tenant, "w", context={"x": "y" * 1001})
    in_ten_years = (datetime.now(UTC) + timedelta(days=3700)).isoformat()
    with pytest.raises(InvalidInput, match="10 years"):
        suspend(workflows, tenant, "w", {"kind": "schedule", "resume_at": in_ten_years})
    assert workflows.list(tenant).items == []
    with pytest.raises(NotFound):
        workflows.get(tenant, "w")


def test_storage_manager_facade(stores, tenant):
    storage = StorageManager(stores, tenant)
    storage.workflows.suspend("w", workflow_name="etl", resource="user:1", current_step="s",
                              context_state={"a": 1}, reason={"kind": "event", "event_id": "go"})
    assert storage.workflows.deliver_event("go", {"b": 2}) == 1
    resumed = storage.workflows.resume("w")
    assert resumed.context_state == {"a": 1, "events": {"go": {"b": 2}}}
    assert [w.workflow_id for w in storage.workflows.list(status="running").items] == ["w"]
    assert "process_due" not in dir(storage.workflows) and "resume" in dir(storage.workflows)


# --------------------------------------------------------------------------- seed 000: integer step indexes


@pytest.mark.parametrize("step", [0, 7, 2**53 - 1, "7", "load"])
def test_current_step_is_an_index_or_a_name_and_comes_back_with_its_type(workflows, tenant, step):
    suspended = suspend(workflows, tenant, "w", step=step)
    assert suspended.current_step == step and type(suspended.current_step) is type(step)
    stored = workflows.get(tenant, "w")
    assert stored.current_step == step and type(stored.current_step) is type(step)
    assert [w.current_step for w in workflows.list(tenant).items] == [step]
    resumed = workflows.resume(tenant, "w")
    assert resumed.current_step == step and type(resumed.current_step) is type(step)
    # A running workflow suspended again may switch from a name to an index, and back.
    other = 8 if isinstance(step, str) else "next"
    suspend(workflows, tenant, "w", step=other)
    assert workflows.resume(tenant, "w").current_step == other


@pytest.mark.parametrize("step", [-1, 2**53, True, 1.0, 1.5, "", "x" * 1001, "a\nb", None, [1]])
def test_an_invalid_current_step_is_refused(workflows, tenant, step):
    with pytest.raises(InvalidInput, match="current_step"):
        suspend(workflows, tenant, "w", step=step)
    with pytest.raises(NotFound):
        workflows.get(tenant, "w")


def test_an_integer_step_arrives_through_the_queue(stores, workflows, tenant):
    body = json.dumps({"version": 1, "op": "workflows.suspend", "tenant": tenant, "idempotency_key": "k1",
                       "payload": {"workflow_id": "w", "workflow_name": "etl", "resource": "user:1",
                                   "current_step": 3, "context_state": {}, "suspend_reason": {"kind": "manual"}}})
    assert CommandProcessor(stores).process(body).status == "applied"
    assert workflows.resume(tenant, "w").current_step == 3
    for bad in (True, -1, 2.5):
        poisoned = CommandProcessor(stores).process(body.replace('"current_step": 3', f'"current_step": {json.dumps(bad)}')
                                                        .replace('"k1"', f'"k{bad}"'))
        assert poisoned.status == "poisoned" and "current_step" in poisoned.detail


def test_the_queue_takes_a_whole_number_float_step_as_an_index(stores, workflows, tenant):
    # JSON Schema counts 3.0 as an integer, so a producer's 3.0 is the step index 3.
    body = json.dumps({"version": 1, "op": "workflows.suspend", "tenant": tenant, "idempotency_key": "k1",
                       "payload": {"workflow_id": "w", "workflow_name": "etl", "resource": "user:1",
                                   "current_step": 3.0, "context_state": {}, "suspend_reason": {"kind": "manual"}}})
    assert CommandProcessor(stores).process(body).status == "applied"
    resumed = workflows.resume(tenant, "w").current_step
    assert resumed == 3 and type(resumed) is int


@pytest.mark.parametrize(("step", "expected"), [(3, 3), (1305513.0, 1305513), (0.0, 0), ("3", "3"), ("load", "load")])
def test_the_step_model_takes_indexes_whole_number_floats_and_names(step, expected):
    taken = TypeAdapter(CurrentStep).validate_python(step)
    assert taken == expected and type(taken) is type(expected)
    assert TypeAdapter(CurrentStep).validate_json(json.dumps(step)) == expected


@pytest.mark.parametrize("step", [True, False, 1.5, -1.0, -1, 2**53, float(2**53), "", "a\x01b", "a\nb", "\x85",
                                  None, [1]])
def test_the_step_model_refuses_what_the_schema_refuses(step):
    with pytest.raises(ValidationError):
        TypeAdapter(CurrentStep).validate_python(step)


def test_the_schemas_say_what_validation_enforces():
    step = TypeAdapter(CurrentStep).json_schema()
    integer, text = step["anyOf"]
    assert integer == {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
    assert text["type"] == "string" and text["pattern"] == r"^[^\x00-\x1f\x7f-\x9f]*$"
    reasons = TypeAdapter(SuspendReason).json_schema()["$defs"]
    for name in ("WaitingForEvent", "WaitingForApproval", "ScheduledResume", "ManualResume"):
        assert reasons[name]["required"][0] == "kind", name  # the discriminator must be sent
        assert "default" not in reasons[name]["properties"]["kind"], name
    with pytest.raises(InvalidInput, match="suspend_reason"):
        parse_reason({"note": "no kind"})
    # Python callers building a model directly still get the kind by default.
    assert WaitingForEvent(event_id="go").kind == "event"
    assert parse_reason(WaitingForEvent(event_id="go")) == WaitingForEvent(event_id="go")
    assert parse_reason({"kind": "schedule", "resume_at": datetime(2030, 1, 1, tzinfo=UTC)}).resume_at.year == 2030


# --------------------------------------------------------------------------- mechanics shared with every domain


def test_a_replay_answers_the_first_result_and_status(workflows, tenant):
    first = workflows.suspend_outcome(tenant, "w", workflow_name="etl", resource="user:1", current_step="a",
                                      context_state={"n": 1}, reason={"kind": "manual"}, idempotency_key="k1")
    assert first.status == 201 and not first.replayed
    workflows.resume(tenant, "w")
    again = workflows.suspend_outcome(tenant, "w", workflow_name="etl", resource="user:1", current_step="a",
                                      context_state={"n": 1}, reason={"kind": "manual"}, idempotency_key="k1")
    assert again.replayed and again.status == 201 and again.result == first.result  # as first answered
    assert workflows.get(tenant, "w").status is WorkflowStatus.RUNNING  # nothing applied twice
    applied = workflows.transition_outcome(tenant, "w", "completed", detail="ok", idempotency_key="k2")
    replayed = workflows.transition_outcome(tenant, "w", "completed", detail="ok", idempotency_key="k2")
    assert replayed.replayed and replayed.result == applied.result and replayed.status == 200


def test_an_idempotency_key_reused_for_another_request_is_422_and_writes_nothing(workflows, tenant):
    suspend(workflows, tenant, "w", context={"n": 1}, idempotency_key="k1")
    before = workflows.get(tenant, "w")
    reuses = [
        lambda: suspend(workflows, tenant, "w", context={"n": 2}, idempotency_key="k1"),  # other body
        lambda: suspend(workflows, tenant, "w", step="other", idempotency_key="k1"),
        lambda: workflows.cancel(tenant, "w", idempotency_key="k1"),  # other op
    ]
    for reuse in reuses:
        with pytest.raises(IdempotencyKeyReused) as caught:
            reuse()
        assert caught.value.status == 422
    assert workflows.get(tenant, "w").etag == before.etag
    workflows.cancel(tenant, "w", detail="a", idempotency_key="c1")
    with pytest.raises(IdempotencyKeyReused):
        workflows.cancel(tenant, "w", detail="b", idempotency_key="c1")


def test_a_delivery_id_reused_for_another_event_or_payload_is_422(workflows, tenant):
    suspend(workflows, tenant, "w", wait_for("go"))
    assert workflows.deliver_event_outcome(tenant, "go", {"v": 1}, delivery_id="d1").result == 1
    replay = workflows.deliver_event_outcome(tenant, "go", {"v": 1}, delivery_id="d1")
    assert replay.replayed and replay.result == 1
    for event_id, payload in (("go", {"v": 2}), ("other", {"v": 1})):
        with pytest.raises(IdempotencyKeyReused):
            workflows.deliver_event(tenant, event_id, payload, delivery_id="d1")


def test_a_marker_of_an_earlier_release_replays_the_current_state(workflows, stores, tenant):
    created = suspend(workflows, tenant, "w")
    stores.table(names.TABLE_WORKFLOWS).insert(Entity(f"{tenant}|w|w", marker_row("old-key"), {"at": 1.0}))
    again = suspend(workflows, tenant, "w", context={"other": True}, idempotency_key="old-key")
    assert again.etag == created.etag and again.suspensions == 1


class _AlwaysLosing:
    """Delegates to a table, but every conditional write loses its race (a test spy, not a backend)."""

    def __init__(self, table) -> None:
        self._table = table
        self.batches = 0

    def batch(self, operations):
        self.batches += 1
        raise PreconditionFailed("the ETag moved")

    def update(self, entity, *, if_match=None):
        return self.batch([entity])

    def insert(self, entity):
        return self.batch([entity])

    def __getattr__(self, name):
        return getattr(self._table, name)


def test_exhausted_retries_are_busy_503_not_a_conflict(workflows, tenant):
    suspend(workflows, tenant, "w")
    losing = workflows._table = _AlwaysLosing(workflows._table)
    with pytest.raises(Busy) as caught:
        workflows.resume(tenant, "w")
    assert caught.value.status == 503 and not isinstance(caught.value, Conflict)
    assert losing.batches == DEFAULT_POLICY.attempts
    with pytest.raises(PreconditionFailed):  # a client's stale If-Match stays a 412, decided once
        workflows.resume(tenant, "w", if_match="999")
    assert losing.batches == DEFAULT_POLICY.attempts


def test_every_row_carries_fmt(workflows, stores, tenant):
    suspend(workflows, tenant, "w", wait_for("go", 600), idempotency_key="k1")
    workflows.deliver_event(tenant, "go", {"x": 1}, delivery_id="d1")
    table = stores.table(names.TABLE_WORKFLOWS)
    partitions = [f"{tenant}|w|w", f"{tenant}|a", f"{tenant}|st|suspended", f"{tenant}|ready", f"{tenant}|dl",
                  workflows._due.partition(tenant)]
    rows = [row for partition in partitions for row in table.query_all(partition)]
    assert {row.partition_key for row in rows} == set(partitions)
    assert all(row.get("fmt") == 1 for row in rows), [(r.partition_key, r.row_key) for r in rows
                                                       if r.get("fmt") != 1]


def test_thousands_of_short_waits_of_one_tenant_do_not_delay_another_tenants_timeout(workflows, stores, tenant):
    start = time.time()
    suspend(workflows, tenant, "mine", wait_for("never", 60))
    noisy = tenant + "noisy"
    due = workflows._due
    # The noisy tenant's waits, filed as suspensions in flight would leave them (their workflows are not written).
    due.file(noisy, "ghost-0|1|timeout", int(start) + 60)
    rows = [Entity(due.partition(noisy), due.row_key(int(start) + 60, f"ghost-{i}|1|timeout"), {"fmt": 1})
            for i in range(1, 2000)]
    raw = stores.backend.table(names.TABLE_WORKFLOWS)
    for offset in range(0, len(rows), 100):
        raw.batch([TableOp.upsert(row) for row in rows[offset:offset + 100]])

    counts = workflows.process_due(now=start + 90, limit=300)  # one run, far fewer items than the backlog
    assert workflows.get(tenant, "mine").status is WorkflowStatus.TIMED_OUT
    assert counts["timed_out"] >= 1 and sum(counts.values()) <= 300
    assert len(list(raw.query_all(due.partition(noisy)))) == 2000  # in flight: kept for the next runs
    assert workflows.process_due(now=start + 90, seconds=0) == {"timed_out": 0, "readied": 0, "skipped": 0}


def test_waits_filed_in_the_due_shards_of_an_earlier_release_still_time_out(workflows, stores, tenant):
    start = time.time()
    suspend(workflows, tenant, "w", wait_for("never", 60))
    table = stores.table(names.TABLE_WORKFLOWS)
    for entry in list(table.query_all(workflows._due.partition(tenant))):
        table.delete(entry.partition_key, entry.row_key)
    legacy = Entity("!due|07", f"{int(start) + 60:012d}|{tenant}|w|1|timeout")
    table.upsert(legacy)
    workflows.process_due(now=start + 90)
    assert workflows.get(tenant, "w").status is WorkflowStatus.TIMED_OUT
    with pytest.raises(NotFound):
        table.get(legacy.partition_key, legacy.row_key)
