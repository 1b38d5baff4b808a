"""Sessions: a user's working session with metadata, exact metrics and a task context.

The stored layout (partitions, row keys, row codecs) is in
:mod:`shared.domains.sessions._layout`; in short: one partition per session (the
session, its task context and idempotency markers), one per user listing their
active sessions, and an idle index (:class:`~shared.storage.due.DueIndex`).

Guarantees:

* Metrics, metadata and status change through :func:`shared.storage.mutate.mutate`:
  read, then write conditional on the ETag read, retried on a lost race (bounded,
  with jitter), so concurrent ``record`` calls add up exactly; when every attempt
  loses, :class:`~shared.errors.Busy` (503, send again). Processing time is summed
  in whole microseconds, exact in any order.
* A session's ``version`` (its ETag) moves on metadata changes and on ending, not on
  metrics: recording activity never makes a client's If-Match fail. The context's ETag
  is its own ``version``, which grows by one on every write. A stale If-Match is a
  412 decided from the row read, never retried.
* Idempotency keys (HTTP ``Idempotency-Key``, queue envelopes) leave a marker in the
  session's partition, in the same atomic batch as the change: a replay answers the
  first result; the same key with another request is refused (422). Markers written
  before fingerprints existed still count as a replay.
* The session entity is the truth. Its index entries are written before it at
  creation and removed after it ends, so a crash leaves at worst a stale entry:
  listing re-reads every session it lists (it has to, for the metrics), skips stale
  entries and deletes those of ended sessions.
* Expiry scans nothing: the timer reads the idle index up to ``now``, round-robin
  over tenants within a time budget, so one tenant's backlog never delays another
  tenant's expiry beyond one run. ``record`` does not move the entry; the timer,
  finding a session whose activity is newer, files it again under its new deadline.
  Ending is conditional on the ETag the timer read, so two timers never end a
  session twice, and an activity racing the timer either lands first (the session
  lives) or gets 409 (it expired). Entries are deleted only after they are handled,
  so an interrupted run resumes where it was. Until the timer runs, activity keeps
  a session alive even past its idle limit. An ended session's entry stays until
  its deadline, when the timer drops it. Entries of the legacy hash-sharded index
  (``!idle|00``..``15``) are drained by the same timer.
* The conversation is the memory thread ``thread_id`` (= session id, resource = user
  id), created with the session; a retried creation reuses it.
* Change records (:mod:`shared.storage.changefeed`): every change of the session or
  its context writes one in its batch, in the session's partition:
  ``sessions.create`` (the memory thread records its own ``memory.create_thread``),
  ``sessions.record`` (the figures added), ``sessions.update_metadata`` (a SHA-256 of
  the new metadata), ``sessions.end``, ``sessions.expire`` (the idle timer, as the
  system) and ``sessions.put_context`` (version, size and SHA-256 of the stored JSON,
  never the context). No-ops (an expiry finding the session active) and replays
  record nothing. Every read of the partition is by row key or the ``context``
  prefix, so outbox rows (``~outbox|``) are never read as session data.
* Audited reads (setting ``audit_reads``, ``STOWAGE_AUDIT_READS``, off by default):
  each :meth:`SessionService.get_context` that finds a context writes one record
  (``sessions.read_context``: version, size and SHA-256 of the stored JSON, the same
  SHA-256 its ``sessions.put_context`` recorded; never the context) as an outbox
  insert of its own in the session's partition, before the context is returned. A
  read that fails (404) records nothing; a record that cannot be written fails the
  read with that error, so an audited read is never served unrecorded (a crash in
  between leaves a record of a read nobody received). Reading the session itself
  records nothing. Cost: one more table write per audited read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared import names
from shared.backends import Entity, Page, TableOp
from shared.domains.domain import change_record
from shared.domains.memory.service import MemoryService
from shared.domains.sessions._layout import (
    CONTEXT_ROW,
    IDLE_PREFIX,
    SESSION_ROW,
    ContextRow,
    SessionRow,
    deadline,
    legacy_idle_entry,
    legacy_idle_shards,
    session_pk,
    user_entry,
    user_pk,
    user_row,
    user_row_session,
)
from shared.domains.sessions.models import (
    ENDED_STATUSES,
    MAX_METADATA_BYTES,
    MAX_PROCESSING_SECONDS_PER_RECORD,
    MAX_REASON_LENGTH,
    MAX_REQUESTS_PER_RECORD,
    Session,
    SessionNotActive,
    SessionStatus,
    TaskContext,
)
from shared.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed
from shared.jsonvalues import check_json_value
from shared.keys import check_id, check_tenant
from shared.storage.changefeed import ChangeRecord, canonical_digest
from shared.storage.due import Budget, DueEntry, DueIndex
from shared.storage.idempotency import Idempotency, IdempotencyKeyReused, lookup
from shared.storage.mutate import Change, Codec, Outcome, RecordOf, find, mutate
from shared.storage.retry import RetryPolicy
from shared.storage.rows import json_field, stored_time
from shared.stores import Stores

__all__ = [
    "ENDED_STATUSES", "MAX_METADATA_BYTES", "MAX_PROCESSING_SECONDS_PER_RECORD", "MAX_REASON_LENGTH",
    "MAX_REQUESTS_PER_RECORD", "Session", "SessionNotActive", "SessionService", "SessionStatus", "TaskContext",
]

R = TypeVar("R")

# A user-index entry without its session is a creation in progress for this long, then stale.
STALE_INDEX_GRACE_SECONDS = 900
#: How long one run of the idle timer works at most (it runs every 5 minutes).
EXPIRY_BUDGET_SECONDS = 45.0
#: Entries of one tenant handled per round of the idle timer before the next tenant's turn.
EXPIRY_QUANTUM = 25
#: One session's entity is a hot row by design (every request of an agent records on it).
_POLICY = RetryPolicy(attempts=40)
_SESSION_CODEC: Codec[Session] = Codec(encode=Session.to_json, decode=Session.from_json)


def _metadata_json(metadata: dict[str, Any] | None) -> str:
    return json_field({} if metadata is None else metadata, "metadata", max_bytes=MAX_METADATA_BYTES,
                      require_object=True)


def _now(at: float | None = None) -> float:
    return stored_time(time.time() if at is None else at)


@dataclass(frozen=True)
class _Applied:
    """What a session mutation did: the outcome, the row as it now stands (None on a replay),
    and whether this call wrote it."""

    outcome: Outcome[Session]
    row: SessionRow | None
    changed: bool


class SessionService:
    """Sessions of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_SESSIONS)
        self._stores = stores
        # Index entries are tiny and never offloaded: the due index works on the table as stored.
        self._idle = DueIndex(self._table.table, IDLE_PREFIX, quantum=EXPIRY_QUANTUM)
        self._memory = MemoryService(stores)
        self.idle_seconds = stores.settings.session_idle_seconds
        self.max_context_bytes = stores.settings.max_object_bytes
        #: Whether :meth:`get_context` records each read (``STOWAGE_AUDIT_READS``).
        self.audit_reads = stores.settings.audit_reads

    # -- keys, kept for callers that inspect the layout

    @staticmethod
    def _idle_pk(tenant: str, session_id: str) -> str:
        """The idle-index partition holding ``session_id``'s entry."""
        return f"{IDLE_PREFIX}{tenant}"

    @staticmethod
    def _check(tenant: str, session_id: str) -> None:
        check_tenant(tenant)
        check_id(session_id, "session id")

    # -- reading

    def _read(self, tenant: str, session_id: str) -> Entity:
        entity = find(self._table, session_pk(tenant, session_id), SESSION_ROW)
        if entity is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return entity

    def _result(self, session_id: str, row: SessionRow) -> Session:
        return row.result(session_id, self.idle_seconds)

    def get(self, tenant: str, session_id: str) -> Session:
        """The session; NotFound when absent (or another tenant's)."""
        self._check(tenant, session_id)
        return self._result(session_id, SessionRow.decode(self._read(tenant, session_id)))

    def list_active(self, tenant: str, user_id: str, *, limit: int = 100,
                    continuation: str | None = None) -> Page[Session]:
        """Active sessions of a user, newest first. A page may hold fewer than ``limit``
        sessions (stale index entries are skipped); follow ``continuation`` until None."""
        check_tenant(tenant)
        check_id(user_id, "user id")
        partition = user_pk(tenant, user_id)
        page = self._table.query(partition, limit=limit, continuation=continuation)
        items: list[Session] = []
        now = time.time()
        for entry in page.items:
            session_id = user_row_session(entry.row_key)
            entity = find(self._table, session_pk(tenant, session_id), SESSION_ROW)
            if entity is None:
                if float(entry.get("created", now)) < now - STALE_INDEX_GRACE_SECONDS:
                    self._forget(entry)  # left by a creation that crashed
                continue
            row = SessionRow.decode(entity)
            if not row.active:
                self._forget(entry)  # left by an end that crashed halfway
                continue
            items.append(self._result(session_id, row))
        return Page(items, page.continuation)

    # -- creating

    def create(self, tenant: str, user_id: str, *, session_id: str | None = None,
               metadata: dict[str, Any] | None = None, now: float | None = None,
               idempotency_key: str | None = None) -> Session:
        """Start an active session for ``user_id``, with its memory thread.

        ``session_id`` defaults to a new random id; AlreadyExists when it is taken.
        A retry after a failure reuses the thread a first attempt made. ``now`` is the
        time of creation (default: the clock).
        """
        return self.create_outcome(tenant, user_id, session_id=session_id, metadata=metadata, now=now,
                                   idempotency_key=idempotency_key).result

    def create_outcome(self, tenant: str, user_id: str, *, session_id: str | None = None,
                       metadata: dict[str, Any] | None = None, now: float | None = None,
                       idempotency_key: str | None = None) -> Outcome[Session]:
        """:meth:`create`, saying whether it was a replay of an earlier request with the same key."""
        check_tenant(tenant)
        check_id(user_id, "user id")
        session_id = uuid.uuid4().hex if session_id is None else check_id(session_id, "session id")
        metadata_text = _metadata_json(metadata)
        pk = session_pk(tenant, session_id)
        idempotency = None if idempotency_key is None else Idempotency.of(
            idempotency_key, "sessions.create", {"session_id": session_id, "user_id": user_id, "metadata": metadata})
        if idempotency is not None:
            # Before any index write: a replay must not file a second user-index entry.
            replay = self._replay(pk, idempotency, _SESSION_CODEC)
            if replay is not None:
                return replay
        if find(self._table, pk, SESSION_ROW) is not None:
            raise AlreadyExists(f"session {session_id!r} already exists")
        at = _now(now)
        row = SessionRow(user_id=user_id, status=SessionStatus.ACTIVE, thread_id=session_id,
                         metadata_json=metadata_text, requests=0, errors=0, processing_us=0,
                         created=at, updated=at, last_activity=at, version=1,
                         user_row=user_row(at, session_id))
        # Indexes first: a crash before the session is written leaves only stale entries.
        self._table.upsert(Entity(user_pk(tenant, user_id), row.user_row, user_entry(at)))
        self._idle.file(tenant, session_id, deadline(at, self.idle_seconds))
        self._ensure_thread(tenant, user_id, session_id)

        def decide(current: Entity | None) -> Change[Session]:
            if current is not None:
                raise AlreadyExists(f"session {session_id!r} already exists")
            return Change([TableOp.insert(Entity(pk, SESSION_ROW, row.encode()))],
                          self._result(session_id, row), status=201)

        details: dict[str, Any] = {"user_id": user_id}
        if metadata:
            details["metadata_sha256"] = canonical_digest(metadata)
        return self._mutate(pk, session_id, lambda: find(self._table, pk, SESSION_ROW), decide,
                            idempotency, _SESSION_CODEC, lambda: self.get(tenant, session_id),
                            tenant=tenant, record=self._record("sessions.create", session_id, details))

    def _ensure_thread(self, tenant: str, user_id: str, session_id: str) -> None:
        try:
            self._memory.create_thread(tenant, user_id, thread_id=session_id, metadata={"session_id": session_id})
        except AlreadyExists:
            thread = self._memory.get_thread(tenant, session_id)
            if thread.resource != user_id:
                raise AlreadyExists(f"memory thread {session_id!r} already exists for another resource; "
                                    "choose another session id") from None

    # -- the one mutation path

    def _replay(self, pk: str, idempotency: Idempotency, codec: Codec[R]) -> Outcome[R] | None:
        found = lookup(self._table, pk, idempotency)
        if found is None:
            return None
        return Outcome(codec.decode(found.result), replayed=True, status=found.status)

    @staticmethod
    def _record(op: str, session_id: str, details: dict[str, Any]) -> ChangeRecord:
        return change_record("sessions", op, "session", session_id, details)

    def _mutate(self, pk: str, session_id: str, read: Callable[[], Any], decide: Callable[[Any], Change[R]],
                idempotency: Idempotency | None, codec: Codec[R], current: Callable[[], R], *,
                tenant: str, record: RecordOf[R]) -> Outcome[R]:
        """:func:`mutate` on the session's partition, with ``record``; a marker written before
        fingerprints existed (no ``fp``) is a replay answered with ``current()``."""
        try:
            return mutate(self._table, partition=pk, read=read, decide=decide, what=f"session {session_id!r}",
                          idempotency=idempotency, codec=codec, policy=_POLICY,
                          outbox=self._stores.outbox(tenant, names.TABLE_SESSIONS), record=record)
        except IdempotencyKeyReused:
            assert idempotency is not None
            marker = find(self._table, pk, idempotency.row_key)
            if marker is None or marker.get("fp") is not None:
                raise
            return Outcome(current(), replayed=True)

    def _change(self, tenant: str, session_id: str, step: Callable[[SessionRow], SessionRow | None], *,
                op: str, details: Callable[[SessionRow], dict[str, Any]],
                idempotency: Idempotency | None = None) -> _Applied:
        """Apply ``step`` (current row -> new row, or None for no change) to the session;
        a change is recorded as ``op`` with ``details(new row)``."""
        pk = session_pk(tenant, session_id)
        seen: list[tuple[SessionRow, bool]] = []

        def decide(entity: Entity) -> Change[Session]:
            seen.clear()
            row = SessionRow.decode(entity)
            new = step(row)
            if new is None:
                seen.append((row, False))
                return Change([], self._result(session_id, row))
            seen.append((new, True))
            # Same ETag and offloaded refs as read: the offload layer needs no second read.
            updated = Entity(pk, SESSION_ROW, new.encode(), entity.etag, entity.offloaded)
            return Change([TableOp.update(updated, if_match=entity.etag)], self._result(session_id, new))

        outcome = self._mutate(pk, session_id, lambda: self._read(tenant, session_id), decide, idempotency,
                               _SESSION_CODEC, lambda: self.get(tenant, session_id), tenant=tenant,
                               record=lambda _: self._record(op, session_id, details(seen[0][0])))
        if outcome.replayed or not seen:
            return _Applied(outcome, None, False)
        row, changed = seen[0]
        return _Applied(outcome, row, changed)

    # -- changing the session entity

    def record(self, tenant: str, session_id: str, *, requests: int = 1, processing_time: float = 0.0,
               errors: int = 0, idempotency_key: str | None = None, now: float | None = None) -> Session:
        """Add to the metrics atomically and refresh ``last_activity``.

        SessionNotActive (409) when the session has ended. ``idempotency_key``: a
        retry with the same key is counted once (and answers the first result); the
        key with other figures is refused (422). ``now``: time of the activity.
        """
        return self.record_outcome(tenant, session_id, requests=requests, processing_time=processing_time,
                                   errors=errors, idempotency_key=idempotency_key, now=now).result

    def record_outcome(self, tenant: str, session_id: str, *, requests: int = 1, processing_time: float = 0.0,
                       errors: int = 0, idempotency_key: str | None = None,
                       now: float | None = None) -> Outcome[Session]:
        """:meth:`record`, saying whether it was a replay of an earlier request with the same key."""
        self._check(tenant, session_id)
        for value, what, top in ((requests, "requests", MAX_REQUESTS_PER_RECORD),
                                 (errors, "errors", MAX_REQUESTS_PER_RECORD)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise InvalidInput(f"{what} must be an integer from 0 to {top}")
        if (not isinstance(processing_time, (int, float)) or isinstance(processing_time, bool)
                or not 0 <= processing_time <= MAX_PROCESSING_SECONDS_PER_RECORD):
            raise InvalidInput(f"processing_time must be seconds from 0 to {MAX_PROCESSING_SECONDS_PER_RECORD:.0f}")
        micros = round(processing_time * 1_000_000)
        idempotency = None if idempotency_key is None else Idempotency.of(
            idempotency_key, "sessions.record",
            {"session_id": session_id, "requests": requests, "processing_us": micros, "errors": errors})

        def add(row: SessionRow) -> SessionRow:
            self._require_active(session_id, row, "record activity")
            at = _now(now)
            return dataclasses.replace(row, requests=row.requests + requests, errors=row.errors + errors,
                                       processing_us=row.processing_us + micros,
                                       last_activity=max(row.last_activity, at), updated=at)

        return self._change(tenant, session_id, add, idempotency=idempotency, op="sessions.record",
                            details=lambda _: {"requests": requests, "errors": errors,
                                               "processing_us": micros}).outcome

    def update_metadata(self, tenant: str, session_id: str, metadata: dict[str, Any], *,
                        if_match: str | None = None, idempotency_key: str | None = None) -> Session:
        """Replace the metadata. ``if_match``: only if the session is at this ETag
        (its version; ``*`` matches any), else PreconditionFailed."""
        return self.update_metadata_outcome(tenant, session_id, metadata, if_match=if_match,
                                            idempotency_key=idempotency_key).result

    def update_metadata_outcome(self, tenant: str, session_id: str, metadata: dict[str, Any], *,
                                if_match: str | None = None,
                                idempotency_key: str | None = None) -> Outcome[Session]:
        """:meth:`update_metadata`, saying whether it was a replay of an earlier request with the same key."""
        self._check(tenant, session_id)
        text = _metadata_json(metadata)
        idempotency = None if idempotency_key is None else Idempotency.of(
            idempotency_key, "sessions.update_metadata",
            {"session_id": session_id, "metadata": json.loads(text), "if_match": if_match})

        def replace(row: SessionRow) -> SessionRow:
            self._match(session_id, row, if_match)
            return dataclasses.replace(row, metadata_json=text, version=row.version + 1, updated=_now())

        return self._change(tenant, session_id, replace, idempotency=idempotency, op="sessions.update_metadata",
                            details=lambda row: {"version": row.version,
                                                 "metadata_sha256": canonical_digest(json.loads(text))}).outcome

    @staticmethod
    def _match(session_id: str, row: SessionRow, if_match: str | None) -> None:
        if if_match is not None and if_match != "*" and str(row.version) != if_match:
            raise PreconditionFailed(f"session {session_id!r} is at version {row.version}, not {if_match}")

    @staticmethod
    def _require_active(session_id: str, row: SessionRow, wanted: str) -> None:
        if not row.active:
            raise SessionNotActive(session_id, row.status.value, wanted)

    def end(self, tenant: str, session_id: str, status: SessionStatus | str = SessionStatus.COMPLETED, *,
            reason: str | None = None, if_match: str | None = None,
            idempotency_key: str | None = None) -> Session:
        """End an active session as completed, failed, cancelled or expired.

        SessionNotActive (409, naming both states) when it has already ended.
        """
        return self.end_outcome(tenant, session_id, status, reason=reason, if_match=if_match,
                                idempotency_key=idempotency_key).result

    def end_outcome(self, tenant: str, session_id: str, status: SessionStatus | str = SessionStatus.COMPLETED, *,
                    reason: str | None = None, if_match: str | None = None,
                    idempotency_key: str | None = None) -> Outcome[Session]:
        """:meth:`end`, saying whether it was a replay of an earlier request with the same key."""
        self._check(tenant, session_id)
        try:
            target = SessionStatus(status)
        except ValueError:
            raise InvalidInput(f"status must be one of {', '.join(ENDED_STATUSES)}, got {status!r}") from None
        if target is SessionStatus.ACTIVE:
            raise InvalidInput(f"a session ends as one of {', '.join(ENDED_STATUSES)}, not active")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH):
            raise InvalidInput(f"reason must be text of at most {MAX_REASON_LENGTH} characters")
        check_json_value(reason, "reason")
        idempotency = None if idempotency_key is None else Idempotency.of(
            idempotency_key, "sessions.end",
            {"session_id": session_id, "status": target.value, "reason": reason, "if_match": if_match})

        def finish(row: SessionRow) -> SessionRow:
            self._match(session_id, row, if_match)
            self._require_active(session_id, row, f"end it as {target}")
            return self._ended(row, target, reason, _now())

        applied = self._change(tenant, session_id, finish, idempotency=idempotency, op="sessions.end",
                               details=lambda row: {"status": row.status.value, "version": row.version})
        if applied.changed and applied.row is not None:
            self._after_end(tenant, applied.row)
        return applied.outcome

    @staticmethod
    def _ended(row: SessionRow, status: SessionStatus, reason: str | None, at: float) -> SessionRow:
        return dataclasses.replace(row, status=status, ended=at, end_reason=reason, version=row.version + 1,
                                   updated=at)

    def _after_end(self, tenant: str, row: SessionRow) -> None:
        """Drop an ended session from its user's active list (listing repairs a crash before this)."""
        try:
            self._table.delete(user_pk(tenant, row.user_id), row.user_row, offloaded={})
        except NotFound:
            pass  # already gone: a retry, or another instance

    def _forget(self, entry: Entity) -> None:
        """Delete an index entry as read (never offloaded, so the offload layer reads nothing)."""
        try:
            self._table.delete(entry.partition_key, entry.row_key, if_match=entry.etag, offloaded={})
        except (NotFound, PreconditionFailed):
            pass  # already gone or rewritten: a retry, or another instance

    # -- task context

    def put_context(self, tenant: str, session_id: str, context: dict[str, Any], *,
                    if_match: str | None = None, idempotency_key: str | None = None) -> TaskContext:
        """Store the session's task context (a JSON object); its version grows by one.

        ``if_match``: only if the context is at this ETag (its version; ``*``: any
        existing context), else PreconditionFailed. Contexts of any size up to the
        object size limit are accepted; large ones are offloaded to a blob.
        """
        return self.put_context_outcome(tenant, session_id, context, if_match=if_match,
                                        idempotency_key=idempotency_key).result

    def put_context_outcome(self, tenant: str, session_id: str, context: dict[str, Any], *,
                            if_match: str | None = None,
                            idempotency_key: str | None = None) -> Outcome[TaskContext]:
        """:meth:`put_context`, saying whether it was a replay (status 201 for the first version)."""
        self._check(tenant, session_id)
        text = json_field(context, "context", max_bytes=self.max_context_bytes, require_object=True)
        size = len(text.encode("utf-8"))
        pk = session_pk(tenant, session_id)
        idempotency = None if idempotency_key is None else Idempotency.of(
            idempotency_key, "sessions.put_context", {"session_id": session_id, "context": context,
                                                      "if_match": if_match})
        # A marker keeps the version, not the context: a replay has the same request, so the same context.
        codec: Codec[TaskContext] = Codec(
            encode=lambda result: {"version": result.version, "size": result.size, "updated_at": result.updated_at},
            decode=lambda kept: TaskContext(session_id, int(kept["version"]), context, str(kept["updated_at"]),
                                            int(kept["size"])))

        def read() -> Entity | None:
            # The context row without its offloaded value: the version is enough to decide.
            rows = self._table.query_for_delete(pk, prefix=CONTEXT_ROW, limit=1).items
            current = rows[0] if rows and rows[0].row_key == CONTEXT_ROW else None
            if current is None:
                self._read(tenant, session_id)  # NotFound for an unknown session
            return current

        def decide(current: Entity | None) -> Change[TaskContext]:
            old = None if current is None else ContextRow.decode(current)
            if if_match is not None and (old is None or (if_match != "*" and str(old.version) != if_match)):
                at = "has no context" if old is None else f"has context version {old.version}"
                raise PreconditionFailed(f"session {session_id!r} {at}, not {if_match}")
            row = ContextRow(1 if old is None else old.version + 1, size, _now(), text)
            if current is None or old is None:
                write = TableOp.insert(Entity(pk, CONTEXT_ROW, row.encode()))
            else:
                write = TableOp.update(Entity(pk, CONTEXT_ROW, row.encode(), current.etag, current.offloaded),
                                       if_match=current.etag)
            return Change([write], row.result(session_id, context), status=201 if current is None else 200)

        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self._mutate(pk, session_id, read, decide, idempotency, codec,
                            lambda: self._context_row(tenant, session_id).result(session_id), tenant=tenant,
                            record=lambda result: self._record("sessions.put_context", session_id, {
                                "version": result.version, "size": size, "sha256": digest}))

    def get_context(self, tenant: str, session_id: str) -> TaskContext:
        """The session's task context; NotFound when the session or its context is absent.

        With ``audit_reads``, the read is recorded (``sessions.read_context``) before the
        context is returned; when the record cannot be written the read fails with that error.
        """
        self._check(tenant, session_id)
        row = self._context_row(tenant, session_id)
        if self.audit_reads:
            text = row.context_json or "{}"
            record = self._record("sessions.read_context", session_id, {
                "version": row.version, "size": row.size, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})
            self._stores.outbox(tenant, names.TABLE_SESSIONS).record_alone(
                self._table, session_pk(tenant, session_id), record)
        return row.result(session_id)

    def _context_row(self, tenant: str, session_id: str) -> ContextRow:
        """The stored context (read unrecorded); NotFound when the session or its context is absent."""
        entity = find(self._table, session_pk(tenant, session_id), CONTEXT_ROW)
        if entity is None:
            self._read(tenant, session_id)
            raise NotFound(f"session {session_id!r} has no context yet")
        return ContextRow.decode(entity)

    # -- cleanup

    def expire_idle(self, *, now: float | None = None, limit: int | None = None,
                    budget: Budget | None = None) -> int:
        """End as expired the active sessions idle longer than ``idle_seconds``; returns how many.

        For the cleanup timer, across tenants, round-robin so that every tenant with
        due sessions gets its turn in every run. Works while due entries remain,
        within ``budget`` (default: :data:`EXPIRY_BUDGET_SECONDS` of wall time, and at
        most ``limit`` entries when given); the next call takes the rest. Safe to run
        on several instances at once, and to interrupt at any point.
        """
        now = time.time() if now is None else now
        budget = budget or Budget(seconds=EXPIRY_BUDGET_SECONDS, items=limit)
        ended = 0
        for entry in self._idle.due(now, budget):
            ended += self._expire_entry(entry, now)
        if not budget.exhausted:
            ended += self._drain_legacy(now, budget)
        return ended

    def _expire_step(self, now: float) -> Callable[[SessionRow], SessionRow | None]:
        def expire(row: SessionRow) -> SessionRow | None:
            if not row.active or deadline(row.last_activity, self.idle_seconds) > now:
                return None
            return self._ended(row, SessionStatus.EXPIRED, f"idle for over {self.idle_seconds} s", _now())
        return expire

    def _expire(self, tenant: str, session_id: str, due: int, now: float) -> tuple[int, bool]:
        """Handle one due idle entry: (1 when this call ended its session, whether the entry is done)."""
        try:
            applied = self._change(tenant, session_id, self._expire_step(now), op="sessions.expire",
                                   details=lambda row: {"status": row.status.value, "version": row.version})
        except NotFound:
            return 0, True  # the creation never completed
        row = applied.row
        assert row is not None  # no idempotency key: never a replay
        if row.active:  # active since: file it under its new deadline
            refiled = deadline(row.last_activity, self.idle_seconds)
            self._idle.file(tenant, session_id, refiled)
            return 0, refiled != due
        self._after_end(tenant, row)
        return (1 if applied.changed else 0), True

    def _expire_entry(self, entry: DueEntry, now: float) -> int:
        ended, done = self._expire(entry.tenant, entry.item, entry.due, now)
        if done:
            self._idle.done(entry)
        return ended

    def _drain_legacy(self, now: float, budget: Budget) -> int:
        """Entries of the hash-sharded index of earlier releases: handled, then deleted, never written."""
        due_before = f"{int(now) + 1:012d}"
        ended = 0
        for shard in legacy_idle_shards():
            for entry in self._table.query(shard, end=due_before, limit=100).items:
                if budget.exhausted:
                    return ended
                budget.spend()
                due, tenant, session_id = legacy_idle_entry(entry.row_key)
                ended += self._expire(tenant, session_id, due, now)[0]
                self._forget(entry)  # handled, or filed in the due index under its new deadline
        return ended
