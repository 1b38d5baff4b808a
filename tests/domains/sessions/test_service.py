"""Sessions service: the same tests on local, Azurite and moto."""

from __future__ import annotations

import itertools
import json
import threading
import uuid

import pytest

from shared import names
from shared.backends import Entity
from shared.commands import CommandProcessor
from shared.domains.memory.service import MemoryService
from shared.domains.sessions import service as service_module
from shared.domains.sessions.service import EXPIRY_QUANTUM, SessionNotActive, SessionService, SessionStatus
from shared.errors import (
    AlreadyExists,
    Busy,
    Conflict,
    InvalidInput,
    InvalidKey,
    NotFound,
    PreconditionFailed,
    TooLarge,
)
from shared.manager import StorageManager
from shared.storage.due import Budget
from shared.storage.idempotency import IdempotencyKeyReused, marker_row
from shared.storage.retry import RetryPolicy

# Expiry tests run on a clock of their own in the past, each earlier than the one before:
# Azurite is shared by the session, and the idle index is cross-tenant, so a test's
# ``now`` must never reach another test's sessions (those made on the real clock
# are due a day from now, those of earlier expiry tests later than this test's clock).
_CLOCKS = itertools.count()


def _past_clock() -> float:
    return 1_200_000_000.0 - next(_CLOCKS) * 1_000_000


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def sessions(stores) -> SessionService:
    return SessionService(stores)


def _run(count: int, target) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --------------------------------------------------------------------------- lifecycle


def test_create_get_update_end_round_trip(sessions, tenant):
    created = sessions.create(tenant, "user-1", metadata={"agent": "ceo", "tags": ["a", "é"]})
    assert created.status is SessionStatus.ACTIVE and created.user_id == "user-1"
    assert created.metadata == {"agent": "ceo", "tags": ["a", "é"]}
    assert (created.request_count, created.error_count, created.total_processing_time) == (0, 0, 0.0)
    assert created.version == 1 and created.etag == "1" and created.ended_at is None
    assert created.expires_at is not None and created.last_activity == created.created_at

    got = sessions.get(tenant, created.session_id)
    assert got == created

    updated = sessions.update_metadata(tenant, created.session_id, {"agent": "cfo"}, if_match=created.etag)
    assert updated.metadata == {"agent": "cfo"} and updated.version == 2
    assert sessions.get(tenant, created.session_id).metadata == {"agent": "cfo"}

    ended = sessions.end(tenant, created.session_id, "failed", reason="tool crashed")
    assert ended.status is SessionStatus.FAILED and ended.end_reason == "tool crashed"
    assert ended.ended_at is not None and ended.expires_at is None and ended.version == 3
    assert sessions.get(tenant, created.session_id).status is SessionStatus.FAILED


def test_session_ids_are_unique_per_tenant_and_validated(sessions, tenant):
    sessions.create(tenant, "u", session_id="chat:2024-01.a_b")
    with pytest.raises(AlreadyExists):
        sessions.create(tenant, "u", session_id="chat:2024-01.a_b")
    other = sessions.create(tenant + "x", "u", session_id="chat:2024-01.a_b")  # another tenant: no clash
    assert other.session_id == "chat:2024-01.a_b"
    for bad in ("", "a/b", "a b", "x" * 129, "é", "a#b", "a|b"):
        with pytest.raises(InvalidKey):
            sessions.create(tenant, "u", session_id=bad)
        with pytest.raises(InvalidKey):
            sessions.get(tenant, bad)
    with pytest.raises(InvalidKey):
        sessions.create(tenant, "user/1")
    with pytest.raises(InvalidInput):
        sessions.create("Not A Tenant", "u")
    assert sessions.list_active(tenant, "u").items[0].session_id == "chat:2024-01.a_b"


def test_metadata_is_bounded_and_json_checked_before_anything_is_written(sessions, tenant):
    with pytest.raises(TooLarge):
        sessions.create(tenant, "u", session_id="big", metadata={"x": "y" * 20_000})
    with pytest.raises(InvalidInput):
        sessions.create(tenant, "u", session_id="nan", metadata={"x": float("nan")})
    with pytest.raises(InvalidInput):
        sessions.create(tenant, "u", session_id="obj", metadata={"x": object()})
    with pytest.raises(InvalidInput):
        sessions.create(tenant, "u", session_id="list", metadata=["not", "an", "object"])  # type: ignore[arg-type]
    assert sessions.list_active(tenant, "u").items == []
    for session_id in ("big", "nan", "obj", "list"):
        with pytest.raises(NotFound):
            sessions.get(tenant, session_id)
    session = sessions.create(tenant, "u")
    with pytest.raises(TooLarge):
        sessions.update_metadata(tenant, session.session_id, {"x": "y" * 20_000})
    assert sessions.get(tenant, session.session_id).version == 1


def test_only_an_active_session_can_end_and_the_error_names_both_states(sessions, tenant):
    session = sessions.create(tenant, "u")
    sessions.end(tenant, session.session_id, SessionStatus.CANCELLED)
    with pytest.raises(SessionNotActive) as raised:
        sessions.end(tenant, session.session_id, "completed")
    assert isinstance(raised.value, Conflict)
    assert "cancelled" in str(raised.value) and "completed" in str(raised.value)
    with pytest.raises(SessionNotActive, match="cancelled"):
        sessions.record(tenant, session.session_id)
    assert sessions.get(tenant, session.session_id).status is SessionStatus.CANCELLED
    with pytest.raises(InvalidInput):
        sessions.end(tenant, sessions.create(tenant, "u").session_id, "active")
    with pytest.raises(InvalidInput):
        sessions.end(tenant, session.session_id, "finished")


def test_metadata_if_match_ignores_metrics_but_catches_other_writers(sessions, tenant):
    session = sessions.create(tenant, "u", metadata={"v": 0})
    sessions.record(tenant, session.session_id, requests=3)  # activity does not move the ETag
    first = sessions.update_metadata(tenant, session.session_id, {"v": 1}, if_match=session.etag)
    with pytest.raises(PreconditionFailed):
        sessions.update_metadata(tenant, session.session_id, {"v": 2}, if_match=session.etag)
    with pytest.raises(PreconditionFailed):
        sessions.end(tenant, session.session_id, if_match=session.etag)
    assert sessions.get(tenant, session.session_id).metadata == {"v": 1}
    assert sessions.update_metadata(tenant, session.session_id, {"v": 3}, if_match="*").version == first.version + 1


def test_tenants_never_see_each_other(sessions, tenant):
    other = tenant + "x"
    session = sessions.create(tenant, "u", metadata={"secret": True})
    sessions.put_context(tenant, session.session_id, {"plan": "mine"})
    for call in (
        lambda: sessions.get(other, session.session_id),
        lambda: sessions.record(other, session.session_id),
        lambda: sessions.update_metadata(other, session.session_id, {}),
        lambda: sessions.end(other, session.session_id),
        lambda: sessions.get_context(other, session.session_id),
        lambda: sessions.put_context(other, session.session_id, {"plan": "theirs"}),
    ):
        with pytest.raises(NotFound):
            call()
    assert sessions.list_active(other, "u").items == []
    assert sessions.get(tenant, session.session_id).request_count == 0
    assert sessions.get_context(tenant, session.session_id).context == {"plan": "mine"}


# --------------------------------------------------------------------------- conversation thread


def test_the_conversation_is_a_memory_thread_of_the_user(stores, sessions, tenant):
    session = sessions.create(tenant, "user-7")
    memory = MemoryService(stores)
    thread = memory.get_thread(tenant, session.thread_id)
    assert thread.thread_id == session.session_id and thread.resource == "user-7"
    memory.add_message(tenant, session.thread_id, "user", "hello")
    memory.add_message(tenant, session.thread_id, "assistant", "hi")
    assert [m.content for m in memory.history(tenant, session.thread_id).items] == ["hello", "hi"]


def test_a_retried_creation_reuses_the_thread_a_first_attempt_made(stores, sessions, tenant):
    memory = MemoryService(stores)
    memory.create_thread(tenant, "user-7", thread_id="s-retry")  # a first attempt got this far, then crashed
    session = sessions.create(tenant, "user-7", session_id="s-retry")
    assert session.thread_id == "s-retry"
    assert memory.get_thread(tenant, "s-retry").resource == "user-7"

    memory.create_thread(tenant, "someone-else", thread_id="s-taken")
    with pytest.raises(AlreadyExists):
        sessions.create(tenant, "user-7", session_id="s-taken")
    with pytest.raises(NotFound):
        sessions.get(tenant, "s-taken")


# --------------------------------------------------------------------------- metrics


def test_concurrent_records_add_up_exactly(sessions, tenant):
    session = sessions.create(tenant, "u")

    def work(worker: int) -> None:
        for i in range(25):
            while True:  # as a client does on 503: Busy means nothing was written, so sending again is safe
                try:
                    sessions.record(tenant, session.session_id, requests=1, processing_time=0.1 * (worker + 1),
                                    errors=1 if i % 5 == 0 else 0)
                    break
                except Busy:
                    continue

    _run(8, work)
    final = sessions.get(tenant, session.session_id)
    assert final.request_count == 200
    assert final.error_count == 8 * 5
    assert final.total_processing_time == sum(25 * round(0.1 * (w + 1) * 1_000_000) for w in range(8)) / 1_000_000
    assert final.total_processing_time == 90.0
    assert final.version == 1 and final.status is SessionStatus.ACTIVE


def test_record_refreshes_last_activity_and_validates(sessions, tenant):
    start = _past_clock()
    session = sessions.create(tenant, "u", now=start)
    later = sessions.record(tenant, session.session_id, requests=2, processing_time=1.5, errors=1, now=start + 60)
    assert later.last_activity > session.last_activity
    assert (later.request_count, later.error_count, later.total_processing_time) == (2, 1, 1.5)
    assert later.updated_at > session.updated_at
    earlier = sessions.record(tenant, session.session_id, requests=0, now=start + 10)  # a late writer
    assert earlier.last_activity == later.last_activity, "last_activity never moves backwards"
    for bad in ({"requests": -1}, {"errors": -1}, {"processing_time": -0.5}, {"requests": 1.5},
                {"processing_time": float("inf")}, {"requests": True}):
        with pytest.raises(InvalidInput):
            sessions.record(tenant, session.session_id, **bad)
    with pytest.raises(NotFound):
        sessions.record(tenant, "missing")
    assert sessions.get(tenant, session.session_id).request_count == 2


def test_record_with_an_idempotency_key_counts_once(sessions, tenant):
    session = sessions.create(tenant, "u")
    sessions.record(tenant, session.session_id, requests=5, idempotency_key="req-1")
    again = sessions.record(tenant, session.session_id, requests=5, idempotency_key="req-1")
    assert again.request_count == 5
    assert sessions.record(tenant, session.session_id, requests=5, idempotency_key="req-2").request_count == 10


# --------------------------------------------------------------------------- listing


def test_list_active_sessions_of_a_user_newest_first_in_pages(sessions, tenant):
    start = _past_clock()
    for i in range(5):
        sessions.create(tenant, "alice", session_id=f"s{i}", now=start + i)
    sessions.create(tenant, "bob", session_id="b0")
    sessions.end(tenant, "s2")
    seen, token = [], None
    while True:
        page = sessions.list_active(tenant, "alice", limit=2, continuation=token)
        assert len(page.items) <= 2
        seen += [s.session_id for s in page.items]
        token = page.continuation
        if not token:
            break
    assert seen == ["s4", "s3", "s1", "s0"]
    assert all(s.status is SessionStatus.ACTIVE for s in sessions.list_active(tenant, "alice").items)
    assert [s.session_id for s in sessions.list_active(tenant, "bob").items] == ["b0"]
    assert sessions.list_active(tenant, "carol").items == []
    with pytest.raises(InvalidInput):
        sessions.list_active(tenant, "alice", continuation="garbage!")


def test_listing_repairs_an_end_that_crashed_before_updating_the_index(stores, sessions, tenant):
    session = sessions.create(tenant, "alice", session_id="half-ended")
    table = stores.table(names.TABLE_SESSIONS)
    entity = table.get(f"{tenant}|s|half-ended", "session")
    entity.properties["status"] = "completed"  # the session ended; the crash left its index entry
    table.update(entity, if_match=entity.etag)
    user_partition = f"{tenant}|u|alice"
    assert len(list(table.query_all(user_partition))) == 1
    assert sessions.list_active(tenant, "alice").items == []
    assert list(table.query_all(user_partition)) == [], "the stale entry was removed"
    assert sessions.get(tenant, session.session_id).status is SessionStatus.COMPLETED


# --------------------------------------------------------------------------- task context


def test_context_round_trip_with_versions_and_if_match(sessions, tenant):
    session = sessions.create(tenant, "u")
    with pytest.raises(NotFound):
        sessions.get_context(tenant, session.session_id)
    with pytest.raises(PreconditionFailed):
        sessions.put_context(tenant, session.session_id, {"step": 0}, if_match="1")  # nothing to match yet
    first = sessions.put_context(tenant, session.session_id, {"step": 1, "plan": ["a", "b"]})
    assert first.version == 1 and first.etag == "1"
    second = sessions.put_context(tenant, session.session_id, {"step": 2}, if_match=first.etag)
    assert second.version == 2
    with pytest.raises(PreconditionFailed):
        sessions.put_context(tenant, session.session_id, {"step": 99}, if_match=first.etag)
    got = sessions.get_context(tenant, session.session_id)
    assert (got.version, got.context) == (2, {"step": 2})
    assert sessions.put_context(tenant, session.session_id, {"step": 3}, if_match="*").version == 3
    with pytest.raises(NotFound):
        sessions.put_context(tenant, "missing", {"x": 1})
    with pytest.raises(NotFound):
        sessions.get_context(tenant, "missing")
    with pytest.raises(InvalidInput):
        sessions.put_context(tenant, session.session_id, ["not", "an", "object"])  # type: ignore[arg-type]
    assert sessions.get_context(tenant, session.session_id).version == 3


def test_a_5_mb_context_round_trips_through_offload(stores, sessions, tenant):
    session = sessions.create(tenant, "u")
    big = {"documents": [{"id": i, "text": f"{i:06d} " + "lorem ipsum é " * 40} for i in range(9000)]}
    size = len(json.dumps(big, ensure_ascii=False, separators=(",", ":")).encode())
    assert size > 5_000_000
    stored = sessions.put_context(tenant, session.session_id, big)
    assert stored.size == size
    raw = stores.table(names.TABLE_SESSIONS).table.get(f"{tenant}|s|{session.session_id}", "context")
    assert "context" not in raw.properties and "_offload" in raw.properties, "the context went to a blob"
    assert sessions.get_context(tenant, session.session_id).context == big
    sessions.put_context(tenant, session.session_id, {"small": True})
    assert sessions.get_context(tenant, session.session_id).context == {"small": True}
    blobs = list(stores.blobs(names.CONTAINER_DATA).list_all(f"offload/tables/{names.TABLE_SESSIONS}/"))
    assert not any(b.size >= 5_000_000 for b in blobs), "the replaced context's blob was deleted"


def test_context_size_limit_is_checked_before_anything_is_written(stores, tenant):
    small = SessionService(stores)
    small.max_context_bytes = 1000
    session = small.create(tenant, "u")
    with pytest.raises(TooLarge):
        small.put_context(tenant, session.session_id, {"x": "y" * 1000})
    with pytest.raises(NotFound):
        small.get_context(tenant, session.session_id)


def test_concurrent_conditional_context_writers_lose_nothing(sessions, tenant):
    session = sessions.create(tenant, "u")
    sessions.put_context(tenant, session.session_id, {"counter": 0})

    def add(_: int) -> None:
        for _ in range(5):
            while True:
                current = sessions.get_context(tenant, session.session_id)
                try:
                    sessions.put_context(tenant, session.session_id, {"counter": current.context["counter"] + 1},
                                         if_match=current.etag)
                    break
                except PreconditionFailed:
                    continue

    _run(4, add)
    final = sessions.get_context(tenant, session.session_id)
    assert final.context == {"counter": 20} and final.version == 21


# --------------------------------------------------------------------------- expiry


def test_idle_sessions_expire_and_active_ones_are_refiled(stores, tenant):
    sessions = SessionService(stores)
    sessions.idle_seconds = 100
    start = _past_clock()
    idle = sessions.create(tenant, "u", session_id="idle", now=start)
    busy = sessions.create(tenant, "u", session_id="busy", now=start)
    done = sessions.create(tenant, "u", session_id="done", now=start)
    sessions.end(tenant, done.session_id)
    assert sessions.expire_idle(now=start + 99) == 0, "nothing is due yet"
    sessions.record(tenant, busy.session_id, now=start + 50)

    assert sessions.expire_idle(now=start + 101) == 1
    expired = sessions.get(tenant, idle.session_id)
    assert expired.status is SessionStatus.EXPIRED and expired.ended_at and "idle" in (expired.end_reason or "")
    assert sessions.get(tenant, busy.session_id).status is SessionStatus.ACTIVE
    assert sessions.get(tenant, done.session_id).status is SessionStatus.COMPLETED
    assert [s.session_id for s in sessions.list_active(tenant, "u").items] == ["busy"]
    assert sessions.expire_idle(now=start + 101) == 0, "a second run does nothing"

    assert sessions.expire_idle(now=start + 149) == 0, "busy was refiled under its new deadline"
    assert sessions.expire_idle(now=start + 151) == 1
    assert sessions.get(tenant, busy.session_id).status is SessionStatus.EXPIRED
    assert sessions.list_active(tenant, "u").items == []
    with pytest.raises(SessionNotActive, match="expired"):
        sessions.record(tenant, busy.session_id)
    idle_entries = list(stores.table(names.TABLE_SESSIONS).query_all(f"!idle|t|{tenant}"))
    assert idle_entries == [], "every handled index entry was removed"


def test_expiry_works_in_chunks_and_on_several_instances_at_once(stores, tenant):
    start = _past_clock()
    maker = SessionService(stores)
    maker.idle_seconds = 100
    for i in range(24):
        maker.create(tenant, "u", session_id=f"s{i:02d}", now=start + i)
    assert maker.expire_idle(now=start + 105, limit=3) == 3, "the first chunk: the three oldest due"
    assert maker.expire_idle(now=start + 105, limit=3) == 3, "the next run resumes"
    ended: list[int] = []
    lock = threading.Lock()

    def timer(_: int) -> None:
        instance = SessionService(stores)  # each thread is another function instance
        instance.idle_seconds = 100
        count = instance.expire_idle(now=start + 1000, limit=500)
        with lock:
            ended.append(count)

    _run(4, timer)
    assert sum(ended) == 18, f"each session is ended by exactly one instance: {ended}"
    statuses = {maker.get(tenant, f"s{i:02d}").status for i in range(24)}
    assert statuses == {SessionStatus.EXPIRED}
    assert maker.expire_idle(now=start + 1000) == 0


def test_activity_racing_the_timer_either_keeps_the_session_or_gets_409(stores, tenant):
    start = _past_clock()
    sessions = SessionService(stores)
    sessions.idle_seconds = 100
    for i in range(6):
        sessions.create(tenant, "u", session_id=f"r{i}", now=start)
    outcomes: dict[str, str] = {}

    def worker(i: int) -> None:
        if i == 0:
            sessions.expire_idle(now=start + 150)
            return
        try:
            sessions.record(tenant, f"r{i}", now=start + 120)
            outcomes[f"r{i}"] = "recorded"
        except SessionNotActive:
            outcomes[f"r{i}"] = "expired"

    _run(6, worker)
    for i in range(1, 6):
        session = sessions.get(tenant, f"r{i}")
        expected = SessionStatus.ACTIVE if outcomes[f"r{i}"] == "recorded" else SessionStatus.EXPIRED
        assert session.status is expected
        assert session.request_count == (1 if outcomes[f"r{i}"] == "recorded" else 0)
    assert sessions.get(tenant, "r0").status is SessionStatus.EXPIRED


# --------------------------------------------------------------------------- queue commands


def _envelope(op: str, tenant: str, payload: dict, key: str | None = None) -> str:
    return json.dumps({"version": 1, "op": op, "tenant": tenant, "idempotency_key": key or uuid.uuid4().hex,
                       "payload": payload})


def test_every_command_applies_once_under_redelivery(stores, sessions, tenant):
    processor = CommandProcessor(stores)
    for body, check in (
        (_envelope("sessions.create", tenant, {"session_id": "q1", "user_id": "u", "metadata": {"a": 1}}),
         lambda: sessions.get(tenant, "q1").metadata == {"a": 1}),
        (_envelope("sessions.record", tenant, {"session_id": "q1", "requests": 3, "processing_time": 0.5}),
         lambda: sessions.get(tenant, "q1").request_count == 3),
        (_envelope("sessions.update_metadata", tenant, {"session_id": "q1", "metadata": {"a": 2}}),
         lambda: sessions.get(tenant, "q1").version == 2),
        (_envelope("sessions.put_context", tenant, {"session_id": "q1", "context": {"step": 1}}),
         lambda: sessions.get_context(tenant, "q1").version == 1),
        (_envelope("sessions.end", tenant, {"session_id": "q1", "status": "completed", "reason": "done"}),
         lambda: sessions.get(tenant, "q1").status is SessionStatus.COMPLETED),
    ):
        assert processor.process(body).status == "applied"
        assert processor.process(body).status == "duplicate"
        assert check(), body
    final = sessions.get(tenant, "q1")
    assert (final.request_count, final.total_processing_time, final.version) == (3, 0.5, 3)


def test_commands_that_can_never_apply_are_poisoned_with_their_reason(stores, sessions, tenant):
    processor = CommandProcessor(stores)
    session = sessions.create(tenant, "u")
    sessions.end(tenant, session.session_id)
    outcome = processor.process(_envelope("sessions.record", tenant, {"session_id": session.session_id}))
    assert outcome.status == "poisoned" and "completed" in outcome.detail
    taken = processor.process(_envelope("sessions.create", tenant, {"session_id": session.session_id,
                                                                    "user_id": "someone-else"}))
    assert taken.status == "poisoned"
    assert processor.process(_envelope("sessions.record", tenant, {"session_id": "a/b"})).status == "poisoned"
    MemoryService(stores).create_thread(tenant, "someone-else", thread_id="thread-taken")
    clash = processor.process(_envelope("sessions.create", tenant, {"session_id": "thread-taken", "user_id": "u"}))
    assert clash.status == "poisoned" and "thread" in clash.detail
    assert sessions.get(tenant, session.session_id).request_count == 0


def test_concurrent_redelivered_record_commands_count_each_once(stores, sessions, tenant):
    session = sessions.create(tenant, "u")
    bodies = [_envelope("sessions.record", tenant, {"session_id": session.session_id, "processing_time": 0.25})
              for _ in range(12)]
    deliveries = bodies + bodies  # every message delivered twice, in parallel

    def worker(i: int) -> None:
        processor = CommandProcessor(stores)
        for body in deliveries[i::4]:
            processor.process(body)

    _run(4, worker)
    final = sessions.get(tenant, session.session_id)
    assert (final.request_count, final.total_processing_time) == (12, 3.0)


# --------------------------------------------------------------------------- facade


def test_storage_manager_offers_the_tenant_scoped_methods(stores, tenant):
    storage = StorageManager(stores, tenant)
    session = storage.sessions.create("user-1", metadata={"agent": "ceo"})
    storage.sessions.record(session.session_id, processing_time=0.2)
    storage.sessions.put_context(session.session_id, {"plan": [1, 2]})
    assert storage.sessions.get(session.session_id).request_count == 1
    assert storage.sessions.get_context(session.session_id).context == {"plan": [1, 2]}
    assert [s.session_id for s in storage.sessions.list_active("user-1").items] == [session.session_id]
    assert storage.sessions.end(session.session_id).status is SessionStatus.COMPLETED
    assert "expire_idle" not in dir(storage.sessions)


# --------------------------------------------------------------------------- shared mechanics (issue #9)


def test_idle_expiry_is_fair_across_tenants_within_one_run(stores, tenant):
    """One tenant with many due sessions does not delay another tenant's expiry beyond one run."""
    start = _past_clock()
    sessions = SessionService(stores)
    sessions.idle_seconds = 100
    busy, quiet = tenant + "-busy", tenant + "-quiet"
    many = EXPIRY_QUANTUM + 15
    for i in range(many):
        sessions.create(busy, "u", session_id=f"b{i:03d}", now=start)
    sessions.create(quiet, "u", session_id="q", now=start + 1)
    # One run that can handle one quantum of the busy tenant and the quiet tenant's one session:
    # whichever tenant's turn comes first, the quiet one is served in this run.
    assert sessions.expire_idle(now=start + 200, limit=EXPIRY_QUANTUM + 1) == EXPIRY_QUANTUM + 1
    assert sessions.get(quiet, "q").status is SessionStatus.EXPIRED
    left = [s for s in (sessions.get(busy, f"b{i:03d}") for i in range(many)) if s.status is SessionStatus.ACTIVE]
    assert len(left) == many - EXPIRY_QUANTUM
    # Without a count limit a run keeps working while work remains (within its time budget).
    assert sessions.expire_idle(now=start + 200, budget=Budget(seconds=60)) == many - EXPIRY_QUANTUM
    assert sessions.list_active(busy, "u").items == []


def test_the_timer_job_runs_on_a_time_budget(stores, tenant):
    from shared.domains.sessions import DOMAIN

    job = next(j for j in DOMAIN.jobs if j.name == "expire_idle_sessions")
    assert job.schedule == "45 */5 * * * *"
    sessions = SessionService(stores)
    assert isinstance(job.run(sessions), int)


def test_an_idempotency_key_reused_for_another_request_is_422_and_changes_nothing(sessions, tenant):
    session = sessions.create(tenant, "u")
    sid = session.session_id
    first = sessions.record(tenant, sid, requests=2, idempotency_key="k-record")
    sessions.record(tenant, sid, requests=1)
    replay = sessions.record(tenant, sid, requests=2, idempotency_key="k-record")
    assert replay == first, "a replay answers the original result"
    with pytest.raises(IdempotencyKeyReused):
        sessions.record(tenant, sid, requests=3, idempotency_key="k-record")
    with pytest.raises(IdempotencyKeyReused):
        sessions.update_metadata(tenant, sid, {"a": 1}, idempotency_key="k-record")  # another op
    assert sessions.get(tenant, sid).request_count == 3

    meta = sessions.update_metadata(tenant, sid, {"a": 1}, idempotency_key="k-meta")
    assert sessions.update_metadata(tenant, sid, {"a": 1}, idempotency_key="k-meta") == meta
    with pytest.raises(IdempotencyKeyReused):
        sessions.update_metadata(tenant, sid, {"a": 2}, idempotency_key="k-meta")

    ctx = sessions.put_context(tenant, sid, {"step": 1}, idempotency_key="k-ctx")
    sessions.put_context(tenant, sid, {"step": 2})
    again = sessions.put_context_outcome(tenant, sid, {"step": 1}, idempotency_key="k-ctx")
    assert again.replayed and again.result == ctx and again.status == 201
    with pytest.raises(IdempotencyKeyReused):
        sessions.put_context(tenant, sid, {"step": 3}, idempotency_key="k-ctx")
    assert sessions.get_context(tenant, sid).context == {"step": 2}, "a replay does not revert a newer write"

    ended = sessions.end(tenant, sid, "failed", reason="x", idempotency_key="k-end")
    assert sessions.end(tenant, sid, "failed", reason="x", idempotency_key="k-end") == ended
    with pytest.raises(IdempotencyKeyReused):
        sessions.end(tenant, sid, "completed", idempotency_key="k-end")


def test_a_queue_command_reusing_a_key_with_another_payload_is_poisoned(stores, sessions, tenant):
    processor = CommandProcessor(stores)
    session = sessions.create(tenant, "u")
    key = uuid.uuid4().hex
    first = _envelope("sessions.record", tenant, {"session_id": session.session_id, "requests": 1}, key)
    assert processor.process(first).status == "applied"
    other = _envelope("sessions.record", tenant, {"session_id": session.session_id, "requests": 5}, key)
    outcome = processor.process(other)
    assert outcome.status == "poisoned" and "idempotency key" in outcome.detail
    assert processor.process(first).status == "duplicate"
    assert sessions.get(tenant, session.session_id).request_count == 1

    create = _envelope("sessions.create", tenant, {"session_id": "qc", "user_id": "u"}, "create-key")
    assert processor.process(create).status == "applied"
    assert processor.process(create).status == "duplicate"
    assert [s.session_id for s in sessions.list_active(tenant, "u").items].count("qc") == 1


def test_exhausted_retries_are_busy_not_conflict(stores, tenant, monkeypatch):
    sessions = SessionService(stores)
    session = sessions.create(tenant, "u")
    monkeypatch.setattr(service_module, "_POLICY", RetryPolicy(attempts=3, base=0.0, cap=0.0))

    def always_lose(*args, **kwargs):
        raise PreconditionFailed("the ETag moved")

    for write in ("insert", "update", "batch"):
        monkeypatch.setattr(sessions._table, write, always_lose)
    with pytest.raises(Busy):
        sessions.record(tenant, session.session_id)
    with pytest.raises(Busy):
        sessions.put_context(tenant, session.session_id, {"a": 1})
    monkeypatch.undo()
    with pytest.raises(PreconditionFailed):  # a client's stale If-Match stays a 412
        sessions.update_metadata(tenant, session.session_id, {}, if_match="7")


def test_rows_carry_fmt_and_rows_without_it_are_read(stores, sessions, tenant):
    table = stores.table(names.TABLE_SESSIONS)
    session = sessions.create(tenant, "alice", session_id="f1")
    sessions.put_context(tenant, "f1", {"a": 1})
    sessions.record(tenant, "f1", idempotency_key="k")
    pk = f"{tenant}|s|f1"
    assert table.get(pk, "session")["fmt"] == 2 and table.get(pk, "context")["fmt"] == 2
    assert [row["fmt"] for row in table.query_all(f"{tenant}|u|alice")] == [2]
    assert [row["fmt"] for row in table.query_all(pk, prefix="i|")] == [1]
    for row_key in ("session", "context"):  # as an earlier release wrote them
        entity = table.get(pk, row_key)
        del entity.properties["fmt"]
        table.update(entity, if_match=entity.etag)
    assert sessions.get(tenant, "f1").request_count == 1 and sessions.get(tenant, "f1").version == session.version
    assert sessions.get_context(tenant, "f1").context == {"a": 1}
    assert sessions.record(tenant, "f1").request_count == 2


def test_markers_and_idle_entries_of_earlier_releases_still_work(stores, tenant):
    table = stores.table(names.TABLE_SESSIONS)
    sessions = SessionService(stores)
    sessions.idle_seconds = 100
    start = _past_clock()
    sessions.create(tenant, "u", session_id="old", now=start)
    # A marker without a fingerprint, as releases before shared markers wrote it: a replay.
    table.insert(Entity(f"{tenant}|s|old", marker_row("legacy-key"), {"at": start}))
    assert sessions.record_outcome(tenant, "old", requests=4, idempotency_key="legacy-key").replayed
    assert sessions.get(tenant, "old").request_count == 0
    # The idle entry in the hash-sharded index of earlier releases, not in the due index.
    for entry in list(table.query_all(f"!idle|t|{tenant}")):
        table.delete(entry.partition_key, entry.row_key)
    legacy = Entity("!idle|07", f"{int(start) + 100:012d}|{tenant}|old")
    table.upsert(legacy)
    assert sessions.expire_idle(now=start + 150) == 1
    assert sessions.get(tenant, "old").status is SessionStatus.EXPIRED
    assert not [e for e in table.query_all("!idle|07") if e.row_key == legacy.row_key]
