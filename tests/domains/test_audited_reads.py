"""Audited reads (issue 11, setting ``audit_reads``): reads of objects and contexts leave one record each.

On every backend, with ``audit_reads`` on: ``ObjectService.get`` (``objects.read``),
``SessionService.get_context`` (``sessions.read_context``) and ``WorkflowService.get``
with the context (``workflows.read_context``) each write exactly one audited record
per successful read, attributed to the reader, with digests of what was read and
never the data; a read that fails (404, expired) and the reads that return no
content (head, versions, a session, a workflow without its context) write none; a
read whose record cannot be written fails and returns nothing (fail closed); an
object read served from the content cache is recorded too. The records are sequenced
into the reader's tenant feed only and become audit entries of category
``data_access``. With the setting off (the default) the same reads write nothing.
The HTTP routes reach these methods: an in-process app over the same stores shows
the key's actor on the records, nothing for a 404, and a 503 problem when the
record cannot be written.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from functions.context import AppContext
from functions.http_api import create_api
from shared import names
from shared.apikeys import ApiKeyService
from shared.backends import TableOp
from shared.config import BACKENDS
from shared.domains.audit import AuditService
from shared.domains.objects.models import INLINE_MAX_BYTES
from shared.domains.objects.service import ObjectService
from shared.domains.sessions.service import SessionService
from shared.domains.workflows.service import WorkflowService
from shared.errors import BackendUnavailable, Busy, NotFound
from shared.request_context import Actor, RequestContext, acting_as
from shared.storage.changefeed import OUTBOX_PREFIX, Change
from shared.storage.mutate import Outbox
from shared.stores import Stores
from tests.domains.app_stores import app_stores

READER = Actor("user", "reader-1", "Rita Reader", ("auditor",))
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
READS = ("objects.read", "sessions.read_context", "workflows.read_context")


@dataclass
class Both:
    """One backend seen twice: with ``audit_reads`` on (``audited``) and with the default (``quiet``)."""

    audited: Stores
    quiet: Stores


@pytest.fixture(scope="module", params=BACKENDS, ids=list(BACKENDS))
def both(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Both]:
    for quiet in app_stores(request, tmp_path_factory, "audited-reads"):
        assert quiet.settings.audit_reads is False  # the default
        yield Both(Stores(quiet.backend, replace(quiet.settings, audit_reads=True)), quiet)


def _tenant() -> str:
    return "ar" + uuid.uuid4().hex[:10]


def _as_reader() -> Any:
    return acting_as(RequestContext(actor=READER, source="http", trace_id=TRACE, span_id=SPAN))


def pending(stores: Stores, tenant: str) -> int:
    status = stores.changes.status(tenant)
    assert status.pending_exact
    return status.pending


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


@dataclass
class Scene:
    """A tenant with an object (small and large), a session with a context, a workflow with a context.

    Written as the system and sequenced, so the tenant has nothing pending when a test starts.
    """

    tenant: str
    objects: ObjectService
    sessions: SessionService
    workflows: WorkflowService
    small: bytes
    large: bytes
    #: The SHA-256 each write recorded, by target id, from the feed: what the read records must repeat.
    written: dict[str, str]

    def read(self, op: str) -> Any:
        """The successful read of ``op``."""
        if op == "objects.read":
            return self.objects.get(self.tenant, "docs/small")
        if op == "sessions.read_context":
            return self.sessions.get_context(self.tenant, "s1")
        return self.workflows.get(self.tenant, "w1", include_context=True)


def scene(stores: Stores) -> Scene:
    tenant = _tenant()
    objects, sessions, workflows = ObjectService(stores), SessionService(stores), WorkflowService(stores)
    small, large = b'{"plan": "secret-small"}', b"secret-large " * (INLINE_MAX_BYTES // 10)
    assert len(large) > INLINE_MAX_BYTES  # in a blob, so the content cache is in play
    objects.put(tenant, "docs/small", small, "application/json")
    objects.put(tenant, "docs/large", large)
    sessions.create(tenant, "user-1", session_id="s1")
    sessions.put_context(tenant, "s1", {"plan": "secret-context"})
    sessions.create(tenant, "user-1", session_id="s-empty")
    workflows.suspend(tenant, "w1", workflow_name="flow", resource="r1", current_step=1,
                      context_state={"n": "secret-workflow"}, reason={"kind": "manual"})
    written: dict[str, str] = {}
    for change in feed_of(stores, tenant):
        details = change.details or {}
        digest = details.get("sha256") or details.get("context_sha256")
        if digest:
            written[change.target_id] = str(digest)
    assert pending(stores, tenant) == 0
    return Scene(tenant, objects, sessions, workflows, small, large, written)


def _no_data(change: Change) -> None:
    text = json.dumps(change.details)
    assert "secret" not in text, change  # digests, never what was read


# --------------------------------------------------------------------------- the services


@pytest.mark.parametrize("op", READS)
def test_an_audited_read_writes_one_record_naming_the_reader(both: Both, op: str) -> None:
    run = scene(both.audited)
    with _as_reader():
        result = run.read(op)
    assert pending(both.audited, run.tenant) == 1
    with _as_reader():
        run.read(op)
    assert pending(both.audited, run.tenant) == 2  # every read, not the first one only

    changes = feed_of(both.audited, run.tenant)[-2:]
    domain = op.split(".")[0]
    for change in changes:
        assert (change.domain, change.op, change.audited) == (domain, op, True)
        assert change.actor == READER.as_json()
        assert change.context == {"source": "http", "trace_id": TRACE, "span_id": SPAN}
        _no_data(change)
    first = changes[0]
    details = first.details
    if op == "objects.read":
        assert first.target_type == "object" and first.target_id == "docs/small"
        assert details == {"version_id": result.info.version_id, "size": len(run.small),
                           "sha256": hashlib.sha256(run.small).hexdigest()}
        assert details["sha256"] == run.written["docs/small"]
    elif op == "sessions.read_context":
        assert first.target_type == "session" and first.target_id == "s1"
        assert details["version"] == result.version == 1 and details["size"] == result.size
        assert details["sha256"] == run.written["s1"]
    else:
        assert first.target_type == "workflow" and first.target_id == "w1"
        assert details["seq"] == 1 and details["status"] == "suspended"
        assert details["context_sha256"] == run.written["w1"]


def test_failed_reads_and_reads_without_content_record_nothing(both: Both) -> None:
    run = scene(both.audited)
    t = run.tenant
    version = run.objects.head(t, "docs/small").version_id
    failing: list[Callable[[], Any]] = [
        lambda: run.objects.get(t, "docs/none"),
        lambda: run.objects.get(t, "docs/small", "0" * 20),  # no such version
        lambda: run.sessions.get_context(t, "s-none"),
        lambda: run.sessions.get_context(t, "s-empty"),  # a session without a context yet
        lambda: run.workflows.get(t, "w-none", include_context=True),
        lambda: run.objects.get("ar" + uuid.uuid4().hex[:10], "docs/small"),  # another tenant's key
    ]
    with _as_reader():
        for read in failing:
            with pytest.raises(NotFound):
                read()
        run.objects.head(t, "docs/small")
        run.objects.versions(t, "docs/small")
        list(run.objects.list(t).items)
        run.sessions.get(t, "s1")
        assert run.workflows.get(t, "w1").context_state is None  # without its context
        run.workflows.list(t)
    assert pending(both.audited, t) == 0
    with _as_reader():  # and the store is writable: the next good read records
        assert run.objects.get(t, "docs/small", version).data == run.small
    assert pending(both.audited, t) == 1


def test_an_expired_object_read_records_nothing(both: Both) -> None:
    now = [1_000_000.0]
    objects = ObjectService(both.audited, clock=lambda: now[0])
    tenant = _tenant()
    objects.put(tenant, "tmp/x", b"short-lived", ttl_seconds=5)
    feed_of(both.audited, tenant)
    with _as_reader():
        assert objects.get(tenant, "tmp/x").data == b"short-lived"
        now[0] += 10
        with pytest.raises(NotFound):
            objects.get(tenant, "tmp/x")
    assert pending(both.audited, tenant) == 1  # the read before it expired


def test_reads_served_from_the_content_cache_are_recorded_too(both: Both) -> None:
    run = scene(both.audited)
    hits = run.objects.content_cache_hits
    with _as_reader():
        for _ in range(3):
            assert run.objects.get(run.tenant, "docs/large").data == run.large
    assert run.objects.content_cache_hits - hits >= 2  # the later reads came from the cache
    reads = [c for c in feed_of(both.audited, run.tenant) if c.op == "objects.read"]
    assert len(reads) == 3
    assert all(c.details["sha256"] == run.written["docs/large"] and c.details["size"] == len(run.large)
               for c in reads)


def test_with_the_setting_off_reads_record_nothing(both: Both) -> None:
    run = scene(both.quiet)
    with _as_reader():
        for op in READS:
            run.read(op)
        run.objects.get(run.tenant, "docs/large")
    assert pending(both.quiet, run.tenant) == 0
    assert not [c for c in feed_of(both.quiet, run.tenant) if c.op in READS]


class _RefusingOutbox(Outbox):
    """An outbox whose feed is throttled: filing the record's hint fails."""

    def ops(self, partition: str, record: Any) -> list[TableOp]:
        raise Busy("the change feed is throttled (test)")


def _refuse_outbox_rows(monkeypatch: pytest.MonkeyPatch, stores: Stores, table_name: str) -> None:
    """Make ``table_name`` refuse every write that carries an outbox row (as a backend failure)."""
    table = stores.table(table_name)
    for method in ("insert", "upsert", "batch"):
        original = getattr(table, method)

        def refusing(arg: Any, *args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
            entities = [op.entity for op in arg] if isinstance(arg, list | tuple) else [arg]
            if any(e.row_key.startswith(OUTBOX_PREFIX) for e in entities):
                raise BackendUnavailable("the table did not answer (test)")
            return _original(arg, *args, **kwargs)

        monkeypatch.setattr(table, method, refusing)


_TABLE_OF = {"objects.read": names.TABLE_OBJECTS, "sessions.read_context": names.TABLE_SESSIONS,
             "workflows.read_context": names.TABLE_WORKFLOWS}


@pytest.mark.parametrize("op", READS)
@pytest.mark.parametrize("failure", ["hint", "row"])
def test_a_read_whose_record_cannot_be_written_fails(both: Both, op: str, failure: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = scene(both.audited)
    with monkeypatch.context() as patch:
        if failure == "hint":
            patch.setattr(both.audited, "outbox", lambda tenant, table: _RefusingOutbox(None, tenant, table))
            expected: type[Exception] = Busy
        else:
            _refuse_outbox_rows(patch, both.audited, _TABLE_OF[op])
            expected = BackendUnavailable
        with _as_reader(), pytest.raises(expected):
            run.read(op)
    assert pending(both.audited, run.tenant) == 0  # nothing served, nothing recorded
    with _as_reader():
        run.read(op)  # the store answers again: so does the read, recorded
    assert pending(both.audited, run.tenant) == 1


def test_read_records_reach_the_readers_feed_only_and_become_data_access_entries(both: Both) -> None:
    run = scene(both.audited)
    other = scene(both.audited)
    with _as_reader():
        for op in READS:
            run.read(op)
    audit = AuditService(both.audited)
    audit.sequence_changes(run.tenant)
    audit.sequence_changes(other.tenant)
    assert all(c.op not in READS for c in feed_of(both.audited, other.tenant))  # tenant isolation

    entries = []
    token = None
    while True:
        page = audit.entries(run.tenant, actor=READER.id, limit=100, continuation=token)
        entries += page.items
        token = page.continuation
        if token is None:
            break
    assert sorted(e.event for e in entries) == sorted(READS)
    for entry in entries:
        assert entry.category == "data_access", entry.event
        assert entry.level == "info"
        assert entry.actor == READER.as_json()
        assert entry.context.get("trace_id") == TRACE
        assert "secret" not in entry.entry  # the leaf holds a salted hash of the details only
    data_access = audit.entries(run.tenant, category="data_access", actor=READER.id, limit=100).items
    assert len(data_access) == len(READS)


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def client(both: Both) -> Iterator[TestClient]:
    context = AppContext(both.audited.settings, both.audited)  # not closed here: the module's fixture closes the stores
    with TestClient(create_api(context)) as test_client:
        yield test_client


def test_http_reads_are_recorded_with_the_keys_actor(both: Both, client: TestClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    http = client
    run = scene(both.audited)
    info, key = ApiKeyService(both.audited).create(run.tenant, actor_name="Rita", actor_type="user")
    headers = {"Authorization": f"Bearer {key}", "traceparent": f"00-{TRACE}-{SPAN}-01"}
    feed_of(both.audited, run.tenant)

    got = http.get("/api/v1/objects/docs/small", headers=headers)
    assert got.status_code == 200 and got.content == run.small
    got = http.get("/api/v1/sessions/s1/context", headers=headers)
    assert got.status_code == 200 and got.json()["context"] == {"plan": "secret-context"}
    got = http.get("/api/v1/workflows/w1", params={"include_context": "true"}, headers=headers)
    assert got.status_code == 200 and got.json()["context_state"] == {"n": "secret-workflow"}
    assert http.get("/api/v1/workflows/w1", headers=headers).status_code == 200  # without the context
    assert http.get("/api/v1/objects/docs/none", headers=headers).status_code == 404
    assert http.get("/api/v1/sessions/s-empty/context", headers=headers).status_code == 404

    reads = [c for c in feed_of(both.audited, run.tenant) if c.op in READS]
    assert sorted(c.op for c in reads) == sorted(READS)
    for change in reads:
        assert change.actor == {"type": "user", "id": info.key_id, "name": "Rita"}
        assert change.context["source"] == "http" and change.context["trace_id"] == TRACE

    _refuse_outbox_rows(monkeypatch, both.audited, names.TABLE_OBJECTS)
    refused = http.get("/api/v1/objects/docs/small", headers=headers)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert b"secret" not in refused.content
    assert pending(both.audited, run.tenant) == 0
