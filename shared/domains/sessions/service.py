"""Sessions: a user's working session with metadata, exact metrics and a task context.

Layout, all in table ``stowagesessions``:

* partition ``<tenant>|s|<session id>``, the session's own partition:

  - ``session``: user, status, metadata (JSON), metrics, timestamps and ``version``;
  - ``context``: the task context (JSON) and its ``version``; a large context is
    moved to a blob by the offload layer, transparently;
  - ``i|<sha256 of an idempotency key>``: markers of applied queue commands, written
    in the same atomic batch as the change they record;

* partition ``<tenant>|u|<user id>``: one entry per active session of the user
  (row key ``<reversed creation ms>|<session id>``, newest first);
* partitions ``!idle|00`` to ``!idle|15`` (``!`` cannot start a tenant): one entry per
  session, row key ``<idle deadline, epoch s>|<tenant>|<session id>``, in the shard
  a hash of tenant and session picks.

Guarantees:

* Metrics, metadata and status change by read, then write conditional on the ETag
  read, retried on a lost race (bounded, with jitter), so concurrent ``record`` calls
  add up exactly. Processing time is summed in whole microseconds, exact in any order.
* A session's ``version`` (its ETag) moves on metadata changes and on ending, not on
  metrics: recording activity never makes a client's If-Match fail. The context's ETag
  is its own ``version``, which grows by one on every write.
* The session entity is the truth. Its index entries are written before it at
  creation and removed after it ends, so a crash leaves at worst a stale entry:
  listing re-reads every session it lists (it has to, for the metrics), skips stale
  entries and deletes those of ended sessions.
* Expiry scans nothing: the timer reads each idle shard's row keys up to ``now``.
  ``record`` does not move the entry; the timer, finding a session whose activity is
  newer, files it again under its new deadline. Ending is conditional on the ETag the
  timer read, so two timers never end a session twice, and an activity racing the
  timer either lands first (the session lives) or gets 409 (it expired). Entries are
  deleted only after they are handled, so an interrupted run resumes where it was.
  Until the timer runs, activity keeps a session alive even past its idle limit. An
  ended session's entry stays until its deadline, when the timer drops it.
  Time buckets were not used for the idle index: every writer would hit the current
  bucket; hash shards spread writes, and row-key order gives the due entries anyway.
* The conversation is the memory thread ``thread_id`` (= session id, resource = user
  id), created with the session; a retried creation reuses it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from shared import names
from shared.backends import Entity, Page, TableOp
from shared.command_ops import CommandOp, CommandPayload, Outcome
from shared.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.jsonvalues import check_json_value, json_text
from shared.keys import check_id, check_tenant, escape
from shared.domains.memory.service import MemoryService
from shared.stores import Stores

SESSION_ROW = "session"
CONTEXT_ROW = "context"
IDLE_SHARDS = 16
MAX_METADATA_BYTES = 16_000  # stays inline under the default offload threshold, so metric writes stay small
MAX_REASON_LENGTH = 1000
MAX_REQUESTS_PER_RECORD = 1_000_000
MAX_PROCESSING_SECONDS_PER_RECORD = 10 * 365 * 24 * 3600.0
# A user-index entry without its session is a creation in progress for this long, then stale.
STALE_INDEX_GRACE_SECONDS = 900
_WRITE_ATTEMPTS = 40
_REVERSE_MS = 10**13


class SessionStatus(enum.StrEnum):
    """Where a session is in its life: active, or ended in one of the other states."""

    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


ENDED_STATUSES = tuple(s for s in SessionStatus if s is not SessionStatus.ACTIVE)


class SessionNotActive(Conflict):
    """The session has ended; only an active session can be ended or record activity."""


@dataclass(frozen=True)
class Session:
    """A session as stored: metadata, status, metrics and timestamps (ISO-8601 UTC)."""

    session_id: str
    user_id: str
    status: SessionStatus
    thread_id: str
    metadata: dict[str, Any]
    request_count: int
    error_count: int
    #: Seconds, summed exactly (kept in whole microseconds).
    total_processing_time: float
    created_at: str
    updated_at: str
    last_activity: str
    #: When the cleanup ends the session as expired unless there is activity first; None once ended.
    expires_at: str | None
    ended_at: str | None
    end_reason: str | None
    #: Moves on metadata changes and on ending, not on metrics; the session's ETag.
    version: int

    @property
    def etag(self) -> str:
        return str(self.version)


@dataclass(frozen=True)
class TaskContext:
    """A session's task context: any JSON object, versioned."""

    session_id: str
    version: int
    context: dict[str, Any]
    updated_at: str
    #: Bytes of the context as compact UTF-8 JSON.
    size: int

    @property
    def etag(self) -> str:
        """The context's ETag is its version: it grows by one on every write."""
        return str(self.version)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def _metadata_json(metadata: dict[str, Any] | None) -> str:
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be a JSON object")
    text = json_text(metadata, "metadata")
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise TooLarge(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return text


def _marker_row(idempotency_key: str) -> str:
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 200:
        raise InvalidInput("idempotency key must be 1-200 characters")
    return "i|" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:40]


def _backoff(attempt: int) -> None:
    # Lost a race for the session entity: spread the retries so writers stop colliding.
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))


class SessionService:
    """Sessions of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_SESSIONS)
        # The table under the offload layer: for index entries (tiny, never offloaded, so
        # the layer's read-before-delete is waste) and for reading a context's version
        # without fetching its offloaded content.
        self._raw = self._table.table
        self._memory = MemoryService(stores)
        self.idle_seconds = stores.settings.session_idle_seconds
        self.max_context_bytes = stores.settings.max_object_bytes

    # -- keys

    @staticmethod
    def _pk(tenant: str, session_id: str) -> str:
        return f"{tenant}|s|{session_id}"

    @staticmethod
    def _user_pk(tenant: str, user_id: str) -> str:
        return f"{tenant}|u|{escape(user_id)}"

    @staticmethod
    def _idle_pk(tenant: str, session_id: str) -> str:
        shard = int.from_bytes(hashlib.sha256(f"{tenant}|{session_id}".encode()).digest()[:4], "big") % IDLE_SHARDS
        return f"!idle|{shard:02d}"

    @staticmethod
    def _idle_rk(deadline: int, tenant: str, session_id: str) -> str:
        return f"{deadline:012d}|{tenant}|{session_id}"

    def _deadline(self, last_activity: float) -> int:
        return math.ceil(last_activity + self.idle_seconds)

    @staticmethod
    def _check(tenant: str, session_id: str) -> None:
        check_tenant(tenant)
        check_id(session_id, "session id")

    # -- reading

    def _find(self, partition_key: str, row_key: str) -> Entity | None:
        try:
            return self._table.get(partition_key, row_key)
        except NotFound:
            return None

    def _find_raw(self, partition_key: str, row_key: str) -> Entity | None:
        """The entity as stored: offloaded values stay references, nothing else is fetched."""
        try:
            return self._raw.get(partition_key, row_key)
        except NotFound:
            return None

    def _read(self, tenant: str, session_id: str) -> Entity:
        entity = self._find(self._pk(tenant, session_id), SESSION_ROW)
        if entity is None:
            raise NotFound(f"session {session_id!r} does not exist")
        return entity

    def _session(self, session_id: str, entity: Entity) -> Session:
        status = SessionStatus(str(entity["status"]))
        ended = entity.get("ended")
        last_activity = float(entity["last_activity"])
        return Session(
            session_id=session_id,
            user_id=str(entity["user_id"]),
            status=status,
            thread_id=str(entity["thread_id"]),
            metadata=json.loads(str(entity["metadata"])),
            request_count=int(entity["requests"]),
            error_count=int(entity["errors"]),
            total_processing_time=int(entity["processing_us"]) / 1_000_000,
            created_at=_iso(float(entity["created"])),
            updated_at=_iso(float(entity["updated"])),
            last_activity=_iso(last_activity),
            expires_at=_iso(self._deadline(last_activity)) if status is SessionStatus.ACTIVE else None,
            ended_at=_iso(float(ended)) if ended is not None else None,
            end_reason=entity.get("end_reason"),
            version=int(entity["version"]),
        )

    def get(self, tenant: str, session_id: str) -> Session:
        """The session; NotFound when absent (or another tenant's)."""
        self._check(tenant, session_id)
        return self._session(session_id, self._read(tenant, session_id))

    def list_active(self, tenant: str, user_id: str, *, limit: int = 100,
                    continuation: str | None = None) -> Page[Session]:
        """Active sessions of a user, newest first. A page may hold fewer than ``limit``
        sessions (stale index entries are skipped); follow ``continuation`` until None."""
        check_tenant(tenant)
        check_id(user_id, "user id")
        user_pk = self._user_pk(tenant, user_id)
        page = self._raw.query(user_pk, limit=limit, continuation=continuation)
        items: list[Session] = []
        now = time.time()
        for entry in page.items:
            session_id = entry.row_key.split("|", 1)[1]
            entity = self._find(self._pk(tenant, session_id), SESSION_ROW)
            if entity is None:
                if float(entry.get("created", now)) < now - STALE_INDEX_GRACE_SECONDS:
                    self._forget(user_pk, entry.row_key)  # left by a creation that crashed
                continue
            if entity["status"] != SessionStatus.ACTIVE:
                self._forget(user_pk, entry.row_key)  # left by an end that crashed halfway
                continue
            items.append(self._session(session_id, entity))
        return Page(items, page.continuation)

    # -- creating

    def create(self, tenant: str, user_id: str, *, session_id: str | None = None,
               metadata: dict[str, Any] | None = None, now: float | None = None) -> Session:
        """Start an active session for ``user_id``, with its memory thread.

        ``session_id`` defaults to a new random id; AlreadyExists when it is taken.
        A retry after a failure reuses the thread a first attempt made. ``now`` is the
        time of creation (default: the clock).
        """
        check_tenant(tenant)
        check_id(user_id, "user id")
        session_id = uuid.uuid4().hex if session_id is None else check_id(session_id, "session id")
        metadata_text = _metadata_json(metadata)
        pk = self._pk(tenant, session_id)
        if self._find(pk, SESSION_ROW) is not None:
            raise AlreadyExists(f"session {session_id!r} already exists")
        now = time.time() if now is None else now
        user_row = f"{_REVERSE_MS - int(now * 1000):013d}|{session_id}"
        # Indexes first: a crash before the session is written leaves only stale entries.
        self._raw.upsert(Entity(self._user_pk(tenant, user_id), user_row, {"created": now}))
        self._raw.upsert(Entity(self._idle_pk(tenant, session_id),
                                  self._idle_rk(self._deadline(now), tenant, session_id)))
        self._ensure_thread(tenant, user_id, session_id)
        properties = {
            "user_id": user_id, "status": SessionStatus.ACTIVE.value, "thread_id": session_id,
            "metadata": metadata_text, "requests": 0, "errors": 0, "processing_us": 0,
            "created": now, "updated": now, "last_activity": now, "version": 1, "user_row": user_row,
        }
        try:
            etag = self._table.insert(Entity(pk, SESSION_ROW, properties))
        except AlreadyExists:
            raise AlreadyExists(f"session {session_id!r} already exists") from None
        return self._session(session_id, Entity(pk, SESSION_ROW, properties, etag))

    def _ensure_thread(self, tenant: str, user_id: str, session_id: str) -> None:
        try:
            self._memory.create_thread(tenant, user_id, thread_id=session_id, metadata={"session_id": session_id})
        except AlreadyExists:
            thread = self._memory.get_thread(tenant, session_id)
            if thread.resource != user_id:
                raise AlreadyExists(f"memory thread {session_id!r} already exists for another resource; "
                                    "choose another session id") from None

    # -- changing the session entity

    def _applied(self, tenant: str, session_id: str, idempotency_key: str) -> bool:
        """Whether a command with this idempotency key already changed this session."""
        return self._find(self._pk(tenant, session_id), _marker_row(idempotency_key)) is not None

    def _mutate(self, tenant: str, session_id: str,
                change: Callable[[Entity], dict[str, Any] | None], *,
                idempotency_key: str | None = None) -> tuple[Entity, bool]:
        """Apply ``change`` (current entity -> new properties, or None for no change)
        conditionally on the ETag read, retrying lost races. Returns the session entity
        and whether this call changed it."""
        pk = self._pk(tenant, session_id)
        marker = _marker_row(idempotency_key) if idempotency_key is not None else None
        if marker is not None and self._find(pk, marker) is not None:
            return self._read(tenant, session_id), False
        for attempt in range(_WRITE_ATTEMPTS):
            current = self._read(tenant, session_id)
            properties = change(current)
            if properties is None:
                return current, False
            # Same ETag and offloaded refs as read: the offload layer needs no second read.
            updated = Entity(pk, SESSION_ROW, properties, current.etag, current.offloaded)
            try:
                if marker is None:
                    etag = self._table.update(updated, if_match=current.etag)
                else:
                    etag = self._table.batch([
                        TableOp.update(updated, if_match=current.etag),
                        TableOp.insert(Entity(pk, marker, {"at": time.time()})),
                    ])[0]
            except (PreconditionFailed, AlreadyExists):
                if marker is not None and self._find(pk, marker) is not None:
                    return self._read(tenant, session_id), False
                _backoff(attempt)
                continue
            return Entity(pk, SESSION_ROW, properties, etag), True
        raise Conflict(f"session {session_id!r} is changing too often to win a write; retry")

    def record(self, tenant: str, session_id: str, *, requests: int = 1, processing_time: float = 0.0,
               errors: int = 0, idempotency_key: str | None = None, now: float | None = None) -> Session:
        """Add to the metrics atomically and refresh ``last_activity``.

        SessionNotActive (409) when the session has ended. ``idempotency_key``: a
        retry with the same key is counted once. ``now``: time of the activity.
        """
        self._check(tenant, session_id)
        for value, what, top in ((requests, "requests", MAX_REQUESTS_PER_RECORD),
                                 (errors, "errors", MAX_REQUESTS_PER_RECORD)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise InvalidInput(f"{what} must be an integer from 0 to {top}")
        if (not isinstance(processing_time, (int, float)) or isinstance(processing_time, bool)
                or not 0 <= processing_time <= MAX_PROCESSING_SECONDS_PER_RECORD):
            raise InvalidInput(f"processing_time must be seconds from 0 to {MAX_PROCESSING_SECONDS_PER_RECORD:.0f}")
        micros = round(processing_time * 1_000_000)

        def add(entity: Entity) -> dict[str, Any]:
            self._require_active(session_id, entity, "record activity")
            at = time.time() if now is None else now
            return {**entity.properties,
                    "requests": int(entity["requests"]) + requests,
                    "errors": int(entity["errors"]) + errors,
                    "processing_us": int(entity["processing_us"]) + micros,
                    "last_activity": max(float(entity["last_activity"]), at), "updated": at}

        return self._session(session_id, self._mutate(tenant, session_id, add, idempotency_key=idempotency_key)[0])

    def update_metadata(self, tenant: str, session_id: str, metadata: dict[str, Any], *,
                        if_match: str | None = None, idempotency_key: str | None = None) -> Session:
        """Replace the metadata. ``if_match``: only if the session is at this ETag
        (its version; ``*`` matches any), else PreconditionFailed."""
        self._check(tenant, session_id)
        text = _metadata_json(metadata)

        def replace(entity: Entity) -> dict[str, Any]:
            self._match(session_id, entity, if_match)
            return {**entity.properties, "metadata": text, "version": int(entity["version"]) + 1,
                    "updated": time.time()}

        return self._session(session_id, self._mutate(tenant, session_id, replace,
                                                      idempotency_key=idempotency_key)[0])

    @staticmethod
    def _match(session_id: str, entity: Entity, if_match: str | None) -> None:
        if if_match is not None and if_match != "*" and str(entity["version"]) != if_match:
            raise PreconditionFailed(f"session {session_id!r} is at version {entity['version']}, not {if_match}")

    @staticmethod
    def _require_active(session_id: str, entity: Entity, wanted: str) -> None:
        current = str(entity["status"])
        if current != SessionStatus.ACTIVE:
            raise SessionNotActive(f"session {session_id!r} is {current}, not active: cannot {wanted}")

    def end(self, tenant: str, session_id: str, status: SessionStatus | str = SessionStatus.COMPLETED, *,
            reason: str | None = None, if_match: str | None = None,
            idempotency_key: str | None = None) -> Session:
        """End an active session as completed, failed, cancelled or expired.

        SessionNotActive (409, naming both states) when it has already ended.
        """
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

        def finish(entity: Entity) -> dict[str, Any]:
            self._match(session_id, entity, if_match)
            self._require_active(session_id, entity, f"end it as {target}")
            return self._ended(entity, target, reason, time.time())

        entity, changed = self._mutate(tenant, session_id, finish, idempotency_key=idempotency_key)
        if changed:
            self._after_end(tenant, entity)
        return self._session(session_id, entity)

    @staticmethod
    def _ended(entity: Entity, status: SessionStatus, reason: str | None, at: float) -> dict[str, Any]:
        return {**entity.properties, "status": status.value, "ended": at, "end_reason": reason,
                "version": int(entity["version"]) + 1, "updated": at}

    def _after_end(self, tenant: str, entity: Entity) -> None:
        """Drop an ended session from its user's active list (listing repairs a crash before this)."""
        self._forget(self._user_pk(tenant, str(entity["user_id"])), str(entity["user_row"]))

    def _forget(self, partition_key: str, row_key: str) -> None:
        try:
            self._raw.delete(partition_key, row_key)
        except NotFound:
            pass  # already gone: a retry, or another instance

    # -- task context

    def put_context(self, tenant: str, session_id: str, context: dict[str, Any], *,
                    if_match: str | None = None, idempotency_key: str | None = None) -> TaskContext:
        """Store the session's task context (a JSON object); its version grows by one.

        ``if_match``: only if the context is at this ETag (its version; ``*``: any
        existing context), else PreconditionFailed. Contexts of any size up to the
        object size limit are accepted; large ones are offloaded to a blob.
        """
        self._check(tenant, session_id)
        if not isinstance(context, dict):
            raise InvalidInput("context must be a JSON object")
        text = json_text(context, "context")
        size = len(text.encode("utf-8"))
        if size > self.max_context_bytes:
            raise TooLarge(f"context is {size} bytes as JSON; the limit is {self.max_context_bytes}")
        pk = self._pk(tenant, session_id)
        marker = _marker_row(idempotency_key) if idempotency_key is not None else None
        if marker is not None and self._find(pk, marker) is not None:
            return self.get_context(tenant, session_id)
        for attempt in range(_WRITE_ATTEMPTS):
            # The raw entity has the version without fetching an offloaded context.
            current = self._find_raw(pk, CONTEXT_ROW)
            if current is None:
                self._read(tenant, session_id)  # NotFound for an unknown session
            if if_match is not None and (current is None or (if_match != "*" and str(current["version"]) != if_match)):
                at = "has no context" if current is None else f"has context version {current['version']}"
                raise PreconditionFailed(f"session {session_id!r} {at}, not {if_match}")
            version = 1 if current is None else int(current["version"]) + 1
            now = time.time()
            entity = Entity(pk, CONTEXT_ROW, {"version": version, "context": text, "size": size, "updated": now})
            write = TableOp.insert(entity) if current is None else TableOp.update(entity, if_match=current.etag)
            operations = [write]
            if marker is not None:
                operations.append(TableOp.insert(Entity(pk, marker, {"at": now})))
            try:
                self._table.batch(operations)
            except (PreconditionFailed, AlreadyExists):
                if marker is not None and self._find(pk, marker) is not None:
                    return self.get_context(tenant, session_id)
                _backoff(attempt)
                continue
            return TaskContext(session_id, version, context, _iso(now), size)
        raise Conflict(f"the context of session {session_id!r} is changing too often to win a write; retry")

    def get_context(self, tenant: str, session_id: str) -> TaskContext:
        """The session's task context; NotFound when the session or its context is absent."""
        self._check(tenant, session_id)
        entity = self._find(self._pk(tenant, session_id), CONTEXT_ROW)
        if entity is None:
            self._read(tenant, session_id)
            raise NotFound(f"session {session_id!r} has no context yet")
        return TaskContext(session_id, int(entity["version"]), json.loads(str(entity["context"])),
                           _iso(float(entity["updated"])), int(entity["size"]))

    # -- cleanup

    def expire_idle(self, *, now: float | None = None, limit: int = 500) -> int:
        """End as expired the active sessions idle longer than ``idle_seconds``; returns how many.

        For the cleanup timer, across tenants. Handles at most ``limit`` due index
        entries per call (the next call takes the rest); safe to run on several
        instances at once, and to interrupt at any point.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidInput("limit must be a positive integer")
        now = time.time() if now is None else now
        due_before = f"{math.floor(now) + 1:012d}"
        ended = handled = 0
        first = int(now // 60) % IDLE_SHARDS  # rotate, so a backlog in one shard starves none
        for step in range(IDLE_SHARDS):
            shard = f"!idle|{(first + step) % IDLE_SHARDS:02d}"
            token = None
            while handled < limit:
                page = self._raw.query(shard, end=due_before, limit=min(limit - handled, 1000), continuation=token)
                for entry in page.items:
                    ended += self._expire_entry(shard, entry.row_key, now)
                    handled += 1
                token = page.continuation
                if not token:
                    break
            if handled >= limit:
                break
        return ended

    def _expire_entry(self, shard: str, row_key: str, now: float) -> int:
        """Handle one due idle entry; 1 when this call ended its session."""
        _, tenant, session_id = row_key.split("|")

        def expire(entity: Entity) -> dict[str, Any] | None:
            if entity["status"] != SessionStatus.ACTIVE or self._deadline(float(entity["last_activity"])) > now:
                return None
            return self._ended(entity, SessionStatus.EXPIRED, f"idle for over {self.idle_seconds} s", time.time())

        try:
            entity, changed = self._mutate(tenant, session_id, expire)
        except NotFound:
            self._forget(shard, row_key)  # the creation never completed
            return 0
        if entity["status"] == SessionStatus.ACTIVE:  # active since: file it under its new deadline
            refiled = self._idle_rk(self._deadline(float(entity["last_activity"])), tenant, session_id)
            self._raw.upsert(Entity(shard, refiled))
            if refiled == row_key:
                return 0
        else:
            self._after_end(tenant, entity)
        self._forget(shard, row_key)
        return 1 if changed else 0


# --------------------------------------------------------------------------- queue commands


class SessionsCreatePayload(CommandPayload):
    """Start a session (with its memory thread). Applying it again is a no-op."""

    session_id: str = Field(description="Id of the new session; also its memory thread's id.")
    user_id: str = Field(description="The user the session belongs to.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 16,000 bytes.")


class SessionsRecordPayload(CommandPayload):
    """Add to a session's metrics and refresh its last activity."""

    session_id: str
    requests: int = Field(default=1, ge=0, description="Requests to add.")
    processing_time: float = Field(default=0.0, ge=0, description="Processing seconds to add.")
    errors: int = Field(default=0, ge=0, description="Errors to add.")


class SessionsUpdateMetadataPayload(CommandPayload):
    """Replace a session's metadata."""

    session_id: str
    metadata: dict[str, Any] = Field(description="The new metadata, a JSON object.")
    if_match: str | None = Field(default=None, description="Apply only if the session is at this version.")


class SessionsEndPayload(CommandPayload):
    """End an active session."""

    session_id: str
    status: SessionStatus = Field(default=SessionStatus.COMPLETED, description="completed, failed, cancelled or expired.")
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH, description="Why it ended.")


class SessionsPutContextPayload(CommandPayload):
    """Store a session's task context (a new version)."""

    session_id: str
    context: dict[str, Any] = Field(description="The task context, a JSON object.")
    if_match: str | None = Field(default=None, description="Apply only if the context is at this version.")


def _client_error(exc: SessionNotActive) -> PreconditionFailed:
    # An ended session never becomes active again: no retry can help, so poison the message.
    return PreconditionFailed(str(exc))


def _apply_create(service: SessionService, tenant: str, payload: SessionsCreatePayload, idempotency_key: str) -> Outcome:
    try:
        service.create(tenant, payload.user_id, session_id=payload.session_id, metadata=payload.metadata)
    except AlreadyExists:
        try:
            owner = service.get(tenant, payload.session_id).user_id
        except NotFound:
            owner = None  # the id clashes with a memory thread, not with a session
        if owner == payload.user_id:
            return Outcome("duplicate", f"session {payload.session_id} already exists")
        raise
    return Outcome("applied", f"session {payload.session_id} created")


def _mutation(verb: str, call: Callable[[SessionService, str, Any, str], object]):
    def apply(service: Any, tenant: str, payload: Any, idempotency_key: str) -> Outcome:
        service._check(tenant, payload.session_id)
        if service._applied(tenant, payload.session_id, idempotency_key):
            return Outcome("duplicate", f"{verb} of session {payload.session_id} already applied")
        try:
            call(service, tenant, payload, idempotency_key)
        except SessionNotActive as exc:
            raise _client_error(exc) from exc
        return Outcome("applied", f"{verb} of session {payload.session_id}")

    return apply


COMMANDS = (
    CommandOp("sessions.create", SessionsCreatePayload, _apply_create, "Start a session with its memory thread."),
    CommandOp("sessions.record", SessionsRecordPayload, _mutation("record", lambda s, t, p, k: s.record(
        t, p.session_id, requests=p.requests, processing_time=p.processing_time, errors=p.errors,
        idempotency_key=k)), "Add to a session's metrics (counted once per idempotency key)."),
    CommandOp("sessions.update_metadata", SessionsUpdateMetadataPayload, _mutation(
        "metadata update", lambda s, t, p, k: s.update_metadata(
            t, p.session_id, p.metadata, if_match=p.if_match, idempotency_key=k)), "Replace a session's metadata."),
    CommandOp("sessions.end", SessionsEndPayload, _mutation("end", lambda s, t, p, k: s.end(
        t, p.session_id, p.status, reason=p.reason, idempotency_key=k)), "End an active session."),
    CommandOp("sessions.put_context", SessionsPutContextPayload, _mutation("context write", lambda s, t, p, k: s.put_context(
        t, p.session_id, p.context, if_match=p.if_match, idempotency_key=k)), "Store a session's task context."),
)
