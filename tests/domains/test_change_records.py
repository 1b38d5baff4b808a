"""Change records of the domains (issue 11): one per state change, in the change's own batch.

For objects, memory, sessions, workflows and checkpoints on every backend: each state-changing
operation leaves exactly one pending outbox record (domain, op, target, the acting
actor; timer work as the system), reads and refused or replayed writes leave none,
listings never show outbox rows, the sequencer moves the records into the tenant's
feed gapless and in each partition's order (and removes them from the partitions),
and another tenant's feed holds none of them. Every record is audited except the
ops the registry names (checkpoint puts and pending writes).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import names
from shared.config import BACKENDS
from shared.domains import domain as registered
from shared.domains.checkpoints.service import CheckpointService, TaskWrites, TypedValue
from shared.domains.domain import Domain, change_record
from shared.domains.memory.service import MemoryService
from shared.domains.objects.service import ObjectService
from shared.domains.sessions.service import SessionService
from shared.domains.workflows.service import WorkflowService
from shared.errors import NotFound, StowageError
from shared.request_context import SYSTEM, Actor, RequestContext, acting_as
from shared.storage.changefeed import OUTBOX_PREFIX
from shared.stores import Stores
from tests.domains.app_stores import app_stores

ACTOR = Actor("agent", "agent-7", "Planner", ("writer",))


@pytest.fixture(scope="module", params=BACKENDS, ids=list(BACKENDS))
def feed_stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Every app resource on one backend, shared by this module's tests of that backend."""
    yield from app_stores(request, tmp_path_factory, "changes")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Run:
    """One domain's scenario: what it did, and what each step should have recorded."""

    stores: Stores
    tenant: str
    #: (op, target type, target id, partition group, actor id) in the order the changes were made.
    expected: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    #: Reads to run while records are pending: none may record anything.
    reads: list[Callable[[], Any]] = field(default_factory=list)
    #: Listings to run while records are pending, with what each must return.
    listings: list[tuple[Callable[[], Any], Any]] = field(default_factory=list)
    #: Partitions (table, partition) that must be empty once their records are sequenced.
    emptied: list[tuple[str, str]] = field(default_factory=list)

    def pending(self) -> int:
        status = self.stores.changes.status(self.tenant)
        assert status.pending_exact
        return status.pending

    def step(self, op: str, target_type: str, target_id: str, group: str, action: Callable[[], Any], *,
             system: bool = False, records: int = 1) -> Any:
        """Run ``action`` (as the agent, or as nobody: the system) and check it added ``records`` records."""
        before = self.pending()
        if system:
            result = action()
        else:
            with acting_as(RequestContext(actor=ACTOR, source="http", trace_id="1" * 32, span_id="2" * 16)):
                result = action()
        assert self.pending() - before == records, f"{op} should add {records} change record(s)"
        if records:
            self.expected.append((op, target_type, target_id, group, SYSTEM.id if system else ACTOR.id))
        return result

    def unchanged(self, action: Callable[[], Any]) -> None:
        """A refused or replayed write records nothing."""
        before = self.pending()
        with acting_as(RequestContext(actor=ACTOR, source="http")):
            try:
                action()
            except StowageError:
                pass
        assert self.pending() == before


def _objects(run: Run) -> None:
    clock = Clock()
    objects = ObjectService(run.stores, clock=clock)
    t = run.tenant
    first = run.step("objects.put", "object", "docs/a", "o", lambda: objects.put(t, "docs/a", b"one",
                                                                               idempotency_key="p1"))
    run.unchanged(lambda: objects.put(t, "docs/a", b"one", idempotency_key="p1"))  # a replay
    run.unchanged(lambda: objects.put(t, "docs/a", b"x", if_match="0" * 20))  # refused: stale If-Match
    run.step("objects.put", "object", "docs/a", "o", lambda: objects.put(t, "docs/a", b"x" * 9000, if_match=first.version_id))
    run.step("objects.put", "object", "docs/b", "o", lambda: objects.put(t, "docs/b", b"two"))
    run.step("objects.put", "object", "tmp/c", "o", lambda: objects.put(t, "tmp/c", b"three", ttl_seconds=5))
    run.step("objects.delete", "object", "docs/b", "o", lambda: objects.delete(t, "docs/b"))
    run.unchanged(lambda: objects.delete(t, "docs/b"))  # NotFound
    clock.now += 10
    run.step("objects.expire", "object", "tmp/c", "o", lambda: objects.purge_expired(), system=True)
    run.reads += [lambda: objects.get(t, "docs/a"), lambda: objects.head(t, "docs/a"),
                  lambda: objects.versions(t, "docs/a"), lambda: list(objects.iter_keys(t))]
    run.listings += [(lambda: [i.key for i in objects.list(t).items], ["docs/a"]),
                     (lambda: len(objects.versions(t, "docs/a").items), 2)]


def _memory(run: Run) -> None:
    memory = MemoryService(run.stores)
    t = run.tenant
    thread = run.step("memory.create_thread", "thread", "th1", "th1",
                      lambda: memory.create_thread(t, "user-1", thread_id="th1", title="T", idempotency_key="c1"))
    run.unchanged(lambda: memory.create_thread(t, "user-1", thread_id="th1", title="T", idempotency_key="c1"))
    run.step("memory.update_thread", "thread", "th1", "th1",
             lambda: memory.update_thread(t, thread.thread_id, metadata={"topic": "x"}))
    first, second = run.step("memory.add_messages", "thread", "th1", "th1", lambda: memory.add_messages(
        t, "th1", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]))
    run.step("memory.add_messages", "thread", "th1", "th1", lambda: memory.add_message(t, "th1", "user", "more"))
    run.step("memory.update_message", "message", first.message_id, "th1",
             lambda: memory.update_message(t, "th1", first.message_id, content="hi!"))
    run.step("memory.delete_message", "message", second.message_id, "th1",
             lambda: memory.delete_message(t, "th1", second.message_id))
    run.unchanged(lambda: memory.delete_message(t, "th1", second.message_id))  # NotFound
    run.step("memory.create_thread", "thread", "th2", "th2", lambda: memory.create_thread(t, "user-1", thread_id="th2"))
    run.step("memory.add_messages", "thread", "th2", "th2", lambda: memory.add_message(t, "th2", "user", "bye"))
    run.step("memory.delete_thread", "thread", "th2", "th2", lambda: memory.delete_thread(t, "th2"))
    run.unchanged(lambda: memory.delete_thread(t, "th2"))  # NotFound
    run.reads += [lambda: memory.get_thread(t, "th1"), lambda: memory.history(t, "th1", last=10),
                  lambda: memory.get_message(t, "th1", first.message_id)]
    run.listings += [(lambda: [m.content for m in memory.history(t, "th1", last=50).items], ["hi!", "more"]),
                     (lambda: [m.content for m in memory.history(t, "th1", after=0, limit=50).items], ["hi!", "more"]),
                     (lambda: [m.content for m in memory.history(t, "th1", order="desc").items], ["more", "hi!"]),
                     (lambda: [x.thread_id for x in memory.list_threads(t, "user-1").items], ["th1"]),
                     (lambda: memory.get_thread(t, "th1").message_count, 2)]
    run.emptied.append((names.TABLE_MEMORY, f"{t}|t|th2"))


def _sessions(run: Run) -> None:
    sessions = SessionService(run.stores)
    t = run.tenant
    # A session comes with its memory thread, which records its own creation.
    run.step("sessions.create", "session", "s1", "s1",
             lambda: sessions.create(t, "user-1", session_id="s1", metadata={"a": 1}, idempotency_key="k1"),
             records=2)
    run.expected.insert(len(run.expected) - 1, ("memory.create_thread", "thread", "s1", "m-s1", ACTOR.id))
    run.unchanged(lambda: sessions.create(t, "user-1", session_id="s1", metadata={"a": 1}, idempotency_key="k1"))
    run.step("sessions.record", "session", "s1", "s1", lambda: sessions.record(t, "s1", requests=2, errors=1))
    run.step("sessions.update_metadata", "session", "s1", "s1", lambda: sessions.update_metadata(t, "s1", {"b": 2}))
    run.step("sessions.put_context", "session", "s1", "s1", lambda: sessions.put_context(t, "s1", {"plan": [1, 2]}))
    run.step("sessions.put_context", "session", "s1", "s1", lambda: sessions.put_context(t, "s1", {"plan": [3]}))
    run.step("sessions.end", "session", "s1", "s1", lambda: sessions.end(t, "s1", "completed"))
    run.unchanged(lambda: sessions.end(t, "s1", "completed"))  # 409: ended already
    run.unchanged(lambda: sessions.record(t, "s1"))  # 409
    created = time.time() - sessions.idle_seconds - 60
    run.step("sessions.create", "session", "s2", "s2", lambda: sessions.create(t, "user-2", session_id="s2", now=created),
             records=2)
    run.expected.insert(len(run.expected) - 1, ("memory.create_thread", "thread", "s2", "m-s2", ACTOR.id))
    run.step("sessions.expire", "session", "s2", "s2", lambda: sessions.expire_idle(), system=True)
    run.unchanged(lambda: sessions.expire_idle())  # nothing left to expire
    run.reads += [lambda: sessions.get(t, "s1"), lambda: sessions.get_context(t, "s1"),
                  lambda: sessions.list_active(t, "user-1")]
    run.listings += [(lambda: sessions.get_context(t, "s1").context, {"plan": [3]}),
                     (lambda: sessions.get(t, "s1").request_count, 2)]


def _workflows(run: Run) -> None:
    workflows = WorkflowService(run.stores)
    t = run.tenant
    event = {"kind": "event", "event_id": "go"}

    def suspend(wid: str, reason: dict[str, Any], **kwargs: Any) -> Any:
        return workflows.suspend(t, wid, workflow_name="flow", resource="r1", current_step=1,
                                 context_state={"n": 1}, reason=reason, **kwargs)

    run.step("workflows.suspend", "workflow", "w1", "w1", lambda: suspend("w1", event, idempotency_key="s1"))
    run.unchanged(lambda: suspend("w1", event, idempotency_key="s1"))  # a replay
    run.step("workflows.deliver_event", "workflow", "w1", "w1", lambda: workflows.deliver_event(t, "go", {"x": 1}))
    run.unchanged(lambda: workflows.deliver_event(t, "go", {"x": 1}))  # nobody waits any more
    run.step("workflows.resume", "workflow", "w1", "w1", lambda: workflows.resume(t, "w1"))
    run.unchanged(lambda: workflows.resume(t, "w1"))  # 409: running
    run.step("workflows.suspend", "workflow", "w1", "w1", lambda: suspend("w1", {"kind": "approval"}))
    run.step("workflows.approve", "workflow", "w1", "w1", lambda: workflows.approve(t, "w1", approved_by="ann"))
    run.step("workflows.resume", "workflow", "w1", "w1", lambda: workflows.resume(t, "w1"))
    run.step("workflows.complete", "workflow", "w1", "w1", lambda: workflows.complete(t, "w1"))
    run.step("workflows.suspend", "workflow", "w2", "w2", lambda: suspend("w2", {"kind": "manual"}))
    run.step("workflows.cancel", "workflow", "w2", "w2", lambda: workflows.cancel(t, "w2"))
    run.step("workflows.suspend", "workflow", "w3", "w3", lambda: suspend("w3", {"kind": "manual"}))
    run.step("workflows.resume", "workflow", "w3", "w3", lambda: workflows.resume(t, "w3"))
    run.step("workflows.fail", "workflow", "w3", "w3", lambda: workflows.fail(t, "w3", detail="boom"))
    run.step("workflows.suspend", "workflow", "w4", "w4", lambda: suspend("w4", {**event, "timeout_seconds": 60}))
    soon = datetime.now(UTC) + timedelta(seconds=30)
    run.step("workflows.suspend", "workflow", "w5", "w5",
             lambda: suspend("w5", {"kind": "schedule", "resume_at": soon.isoformat()}))
    later = time.time() + 120
    before = run.pending()
    workflows.process_due(now=later)  # the timer: as the system
    assert run.pending() - before == 2
    run.expected += [("workflows.timeout", "workflow", "w4", "w4", SYSTEM.id),
                     ("workflows.schedule", "workflow", "w5", "w5", SYSTEM.id)]
    run.unchanged(lambda: workflows.process_due(now=later))
    run.reads += [lambda: workflows.get(t, "w1", include_context=True), lambda: workflows.list(t)]
    run.listings += [(lambda: sorted(w.workflow_id for w in workflows.list(t).items), ["w1", "w2", "w3", "w4", "w5"]),
                     (lambda: [w.workflow_id for w in workflows.list(t, ready=True).items], ["w5"])]


def _checkpoints(run: Run) -> None:
    checkpoints = CheckpointService(run.stores)
    t = run.tenant
    data = TypedValue("bytes", b"hello")

    def put(thread: str, cid: str, parent: str | None = None, run_id: str = "run-1", **kwargs: Any) -> Any:
        return checkpoints.put(t, thread, "", cid, TypedValue("json", b'{"one": 1}'), channel_versions={"a": cid},
                               new_values={"a": data}, metadata={"run_id": run_id}, parent_checkpoint_id=parent,
                               **kwargs)

    def put_writes() -> Any:
        return checkpoints.put_writes(t, "c1", "", "1", "task", [(0, "a", data), (1, "b", data)])

    run.step("checkpoints.put", "thread", "c1", "c1", lambda: put("c1", "1"))
    run.step("checkpoints.put_writes", "thread", "c1", "c1", put_writes)
    run.unchanged(put_writes)  # every write is stored already: nothing written
    run.unchanged(lambda: put("c1", "2", parent="1", writes=[TaskWrites("t", [(0, "a", "not a value")])]))  # refused
    # A put carrying its parent's pending writes is one change (the remote saver's one request).
    run.step("checkpoints.put", "thread", "c1", "c1", lambda: put("c1", "2", parent="1",
                                                                  writes=[TaskWrites("t2", [(0, "a", data)])]))
    run.step("checkpoints.put", "thread", "c1", "c1", lambda: put("c1", "3", parent="2", run_id="run-2"))
    run.step("checkpoints.put", "thread", "c3", "c3", lambda: put("c3", "1"))
    run.step("checkpoints.copy_thread", "thread", "c2", "c2", lambda: checkpoints.copy_thread(t, "c1", "c2"))
    run.unchanged(lambda: checkpoints.copy_thread(t, "c1", "c2"))  # again: every row is there already
    run.step("checkpoints.prune", "thread", "c2", "c2", lambda: checkpoints.prune(t, ["c2"]))  # keeps "3"
    run.unchanged(lambda: checkpoints.prune(t, ["c2"]))  # nothing left to prune
    run.step("checkpoints.delete_thread", "thread", "c2", "c2",
             lambda: checkpoints.delete_thread(t, "c2", idempotency_key="d1"))
    run.unchanged(lambda: checkpoints.delete_thread(t, "c2", idempotency_key="d1"))  # a replay
    run.unchanged(lambda: checkpoints.delete_thread(t, "c2"))  # NotFound
    run.step("checkpoints.delete_for_runs", "thread", "c1", "c1", lambda: checkpoints.delete_for_runs(t, ["run-2"]))
    run.unchanged(lambda: checkpoints.delete_for_runs(t, ["run-2"]))  # done already: 0
    run.step("checkpoints.prune", "thread", "c1", "c1", lambda: checkpoints.prune(t, ["c1"], "delete"))
    run.unchanged(lambda: checkpoints.prune(t, ["c1"], "delete"))  # NotFound
    run.reads += [lambda: checkpoints.get(t, "c3"), lambda: checkpoints.list(t, "c3"),
                  lambda: checkpoints.threads(t)]
    run.listings += [(lambda: [c.checkpoint_id for c in checkpoints.list(t, "c3").items], ["1"]),
                     (lambda: [c.checkpoint_id for c in checkpoints.list(t, "c3", checkpoint_ns="").items], ["1"]),
                     (lambda: checkpoints.get(t, "c3").values, {"a": data}),
                     (lambda: [x.thread_id for x in checkpoints.threads(t).items], ["c3"])]
    run.emptied += [(names.TABLE_CHECKPOINTS, f"{t}|t|c1"), (names.TABLE_CHECKPOINTS, f"{t}|t|c2")]


SCENARIOS: dict[str, Callable[[Run], None]] = {
    "objects": _objects, "memory": _memory, "sessions": _sessions, "workflows": _workflows,
    "checkpoints": _checkpoints,
}
#: Ops the registry marks as not audited (the feed carries them, the audit log skips them).
UNAUDITED = {"checkpoints": frozenset({"checkpoints.put", "checkpoints.put_writes"})}


@pytest.mark.parametrize("domain_name", list(SCENARIOS))
def test_every_change_records_once_reads_none_and_the_feed_has_them_in_order(feed_stores: Stores,
                                                                             domain_name: str) -> None:
    tag = uuid.uuid4().hex[:10]
    tenant, other = f"fa{tag}", f"fb{tag}"
    run = Run(feed_stores, tenant)
    SCENARIOS[domain_name](run)
    pending = run.pending()
    assert pending == len(run.expected)

    for read in run.reads:  # reads record nothing
        with acting_as(RequestContext(actor=ACTOR, source="http")):
            read()
    for listing, wanted in run.listings:  # listings with records pending show none of them
        assert listing() == wanted
    assert run.pending() == pending

    report = feed_stores.changes.sequence(tenant)
    assert report.sequenced == {tenant: pending}
    assert feed_stores.changes.status(tenant).pending == 0
    changes = feed_stores.changes.changes(tenant, limit=1000).items
    assert [c.seq for c in changes] == list(range(1, pending + 1))  # gapless
    assert all(c.tenant == tenant for c in changes)
    assert {c.op for c in changes if not c.audited} == UNAUDITED.get(domain_name, frozenset())
    assert all(c.audited == registered(c.domain).audits(c.op) for c in changes)
    seen = [(c.op, c.target_type, c.target_id, str(c.actor["id"])) for c in changes]
    assert sorted(seen) == sorted((op, tt, tid, actor) for op, tt, tid, _, actor in run.expected)
    for group in {g for *_, g, _ in run.expected}:  # each partition's records in the order of its changes
        wanted = [(op, tt, tid, actor) for op, tt, tid, g, actor in run.expected if g == group]
        got = [entry for entry in seen if entry in wanted]
        assert got == wanted, group
    for change in changes:
        assert change.domain == change.op.split(".")[0]
        if change.actor["id"] == ACTOR.id:
            assert change.actor == ACTOR.as_json() and change.context["source"] == "http"
        else:
            assert change.actor == SYSTEM.as_json()
        assert "one" not in str(change.details) and "hello" not in str(change.details)  # digests, not data

    for table, partition in run.emptied:  # a deleted partition's records left for the sequencer, then gone
        assert list(feed_stores.table(table).table.query_all(partition)) == []
    for listing, wanted in run.listings:
        assert listing() == wanted

    assert feed_stores.changes.changes(other).items == []  # tenant isolation
    assert feed_stores.changes.status(other).pending == 0
    assert feed_stores.changes.sequence(other).total == 0


def test_the_registry_says_which_ops_are_audited() -> None:
    for name in SCENARIOS:
        entry = registered(name)
        assert entry.unaudited == UNAUDITED.get(name, frozenset()) and entry.audits(f"{name}.anything")
    # Checkpoint puts and pending writes (every graph step) are not audited; maintenance is.
    for op in ("checkpoints.put", "checkpoints.put_writes"):
        assert change_record("checkpoints", op, "thread", "th").audited is False
    for op in ("delete_thread", "copy_thread", "prune", "delete_for_runs"):
        assert change_record("checkpoints", f"checkpoints.{op}", "thread", "th").audited is True
    quiet = Domain(name="objects", tables=(), service=lambda stores: None, router="x:y",
                   unaudited=frozenset({"objects.put"}))
    assert quiet.record("objects.put", "object", "k").audited is False
    assert quiet.record("objects.delete", "object", "k").audited is True


def test_outbox_rows_of_an_object_tenant_are_never_listed_before_sequencing(feed_stores: Stores) -> None:
    """Objects share one partition per tenant with their outbox rows: listings use prefixes that exclude them."""
    objects = ObjectService(feed_stores)
    tenant = f"fo{uuid.uuid4().hex[:10]}"
    objects.put(tenant, "~outbox", b"a key that sorts like one")  # a user key cannot collide: keys are escaped
    objects.put(tenant, "z", b"z")
    raw = feed_stores.table(names.TABLE_OBJECTS).table
    assert sum(r.row_key.startswith(OUTBOX_PREFIX) for r in raw.query_all(tenant)) == 2
    assert [i.key for i in objects.list(tenant).items] == ["z", "~outbox"]
    assert objects.get(tenant, "~outbox").data == b"a key that sorts like one"
    feed_stores.changes.sequence(tenant)
    assert not any(r.row_key.startswith(OUTBOX_PREFIX) for r in raw.query_all(tenant))
    with pytest.raises(NotFound):
        objects.get(tenant, "~outbox|x")
