"""Suspended workflows: suspend with a reason, resume exactly once, events and timers.

A workflow is suspended with its context (any JSON object, of any size), its
current step and a reason: waiting for an event (optionally with a timeout),
waiting for approval (optionally with a timeout), a scheduled resume, or manual.
Resuming returns the context and the step and marks the workflow running. The
step is a name or an integer step index (as seed 000's workflows keep it); it is
stored with its type and handed back as given.

Statuses and the only transitions allowed (anything else is a 409 naming both
states)::

    (new) ─suspend─> suspended ─resume─> running ─suspend─> suspended
    suspended ─> running | cancelled | timed_out (timer only)
    running   ─> suspended | completed | failed | cancelled

completed, failed, cancelled and timed_out are terminal.

Events and timers make a workflow READY TO RESUME; they never resume it. An event
merges its payload into the context under ``context_state["events"][event_id]``
(nothing the workflow stored is overwritten; ``events`` is reserved for this), and
sets ``ready`` with ``ready_reason`` ``"event:<event_id>"``; the status stays
``suspended``. A scheduled workflow gets ``ready_reason`` ``"schedule"`` at its time,
an approved one ``"approval"``. The agent (a worker polling ``list(ready=True)``)
then calls resume, which hands the context out exactly once. A wait that times out
before its event or approval becomes ``timed_out``, keeping its suspend reason and
gaining a ``timeout_reason``. Once ready, a workflow no longer times out. Events are
not retained: a workflow that starts waiting after a delivery waits for the next.
A suspended workflow may be resumed whether or not it is ready.

Layout, all in table ``stowageworkflows`` (``!`` cannot start a tenant):

* ``<tenant>|w|<workflow_id>``, the workflow's own partition: ``w`` (status, step,
  reason, flags, timestamps, ``seq`` which moves on every change and is the ETag,
  ``suspensions``), ``c`` (the context JSON; the offload layer moves a large one to
  a blob, and listing never reads it), ``i|<sha256>`` (idempotency markers of
  commands) and ``d|<sha256>`` (markers of event deliveries applied). ``w``, ``c``
  and a marker change in ONE batch conditional on the ETag of ``w`` as read.
* Listing indexes, row key = workflow id, each entry holding the ``seq`` the
  workflow had when it was written: ``<tenant>|a`` (all), ``<tenant>|n|<name>`` and
  ``<tenant>|r|<resource>`` (written once, at creation), ``<tenant>|st|<status>``,
  ``<tenant>|rs|<resource>|<status>`` and ``<tenant>|ready`` (suspended and ready),
  which follow the status.
* ``<tenant>|e|<event_id>``: the event index, one entry per workflow waiting for
  the event and not ready yet. Delivery reads this partition only.
* ``<tenant>|dl|<event_id>``: per delivery id, how many workflows it made ready.
* ``!due|00`` .. ``!due|15``: timeouts and scheduled resumes of every tenant, row
  key ``<due, epoch s>|<tenant>|<workflow_id>|<suspension>|<timeout|schedule>``, in
  the shard a hash of tenant and workflow picks. The timer reads each shard's row
  keys up to now (no cursor, no scan); hash shards spread the writes that time
  buckets would all send to the current bucket.

Guarantees:

* Every change reads ``w``, decides, then writes ``w`` (with ``c`` and the marker)
  on the condition of the ETag read. Racing resumers: exactly one write succeeds;
  the others re-read, find the workflow running and get 409. Other lost races
  (an event against a cancel, two timers) re-read and decide again (bounded).
* Index entries live in other partitions, so they are written around the change:
  entries of the new state BEFORE it (with the new ``seq``), entries of the old
  state removed AFTER it, and only if still at most the old ``seq`` (a newer writer
  may have filed it again). A crash leaves at worst a stale entry, never a missing
  one. Listing and delivery re-read each workflow: an entry that does not fit the
  live state is skipped, and removed when its ``seq`` is not newer than the
  workflow's (a newer one belongs to a change in flight).
* Delivery is idempotent: with a delivery id (the command's idempotency key or the
  HTTP Idempotency-Key), each workflow's ready write carries an insert-only marker
  for (event, delivery id), so a redelivery readies nothing twice, even a workflow
  that was resumed and suspended on the same event since. Without one, a repeat
  finds the workflows already ready and out of the event index.
* Due entries are written before the suspension they time, and deleted only after
  they are handled; each action is conditional on the workflow still being in that
  suspension, still waiting and its time passed. So two timers never apply one
  twice, an interrupted run resumes where it was, and entries of workflows resumed
  in time are simply dropped. An entry whose suspension is not written yet stays
  (for :data:`IN_FLIGHT_GRACE_SECONDS`, then it is a crashed one and goes).
* Costs: a suspend/resume cycle is about 11 table operations each way (the
  workflow read and batch, the status entries filed and removed); a listing page
  is one query plus one point read per entry; a delivery is one query plus a
  read-decide-write per waiting workflow.
* Index entries (small, never offloaded) go through the raw table store, which
  spares the offload layer's read before each unconditional write.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import random
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from shared import names
from shared.backends import Entity, Page, TableOp
from shared.command_ops import CommandOp, CommandPayload, Outcome
from shared.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.jsonvalues import MAX_JSON_DEPTH, json_text
from shared.keys import ID_PATTERN, check_id, check_tenant, escape
from shared.stores import Stores

WORKFLOW_ROW = "w"
CONTEXT_ROW = "c"
DUE_SHARDS = 16
DUE_PREFIX = "!due|"
MAX_TEXT_LENGTH = 200  # workflow_name, resource: they become parts of index keys
MAX_STEP_LENGTH = 1000
#: Largest integer step index: the largest integer every JSON client reads exactly.
MAX_STEP_INDEX = 2**53 - 1
MAX_DETAIL_LENGTH = 2000
MAX_CONDITIONS_BYTES = 16_000  # stays inline: the workflow entity is read on every listing
MAX_EVENT_PAYLOAD_BYTES = 1024 * 1024
MAX_WAIT_SECONDS = 366 * 24 * 3600
MAX_SCHEDULE_SECONDS = 10 * 365 * 24 * 3600
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WRITE_ATTEMPTS = 16
# A due entry whose suspension is not written yet is in flight for this long, then stale.
IN_FLIGHT_GRACE_SECONDS = 900
_FORMAT = 1


class WorkflowStatus(enum.StrEnum):
    """Where a workflow is: suspended, running, or one of the terminal states."""

    SUSPENDED = "suspended"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.SUSPENDED: frozenset({WorkflowStatus.RUNNING, WorkflowStatus.CANCELLED, WorkflowStatus.TIMED_OUT}),
    WorkflowStatus.RUNNING: frozenset({WorkflowStatus.SUSPENDED, WorkflowStatus.COMPLETED, WorkflowStatus.FAILED,
                                       WorkflowStatus.CANCELLED}),
}
_SET_BY_TRANSITION = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)
_SET_ELSEWHERE = {WorkflowStatus.RUNNING: "resume", WorkflowStatus.SUSPENDED: "suspend",
                  WorkflowStatus.TIMED_OUT: "the timer"}
TERMINAL_STATUSES = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED,
                               WorkflowStatus.TIMED_OUT})


class ReasonKind(enum.StrEnum):
    """Why a workflow is suspended."""

    EVENT = "event"
    APPROVAL = "approval"
    SCHEDULE = "schedule"
    MANUAL = "manual"


class IllegalTransition(Conflict):
    """The workflow's status does not allow this change; the message names both states."""

    def __init__(self, workflow_id: str, current: str, target: str) -> None:
        allowed = sorted(TRANSITIONS.get(WorkflowStatus(current), ()))
        super().__init__(
            f"workflow {workflow_id!r} is {current}: {current} → {target} is not an allowed transition "
            f"(from {current}: {', '.join(allowed) or 'none, it is terminal'})")
        self.current = current
        self.target = target


# --------------------------------------------------------------------------- suspend reasons


def _kind_required(schema: dict[str, Any]) -> None:
    """The document says ``kind`` is required: the discriminated union needs it, whatever the default says."""
    schema["properties"]["kind"].pop("default", None)
    schema["required"] = ["kind", *[name for name in schema.get("required", []) if name != "kind"]]


class _Reason(BaseModel):
    # kind keeps its default for Python callers building a model; as data (HTTP, queue) it must be sent.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_kind_required)


class WaitingForEvent(_Reason):
    """Waiting for an event; delivering it makes the workflow ready to resume."""

    kind: Literal["event"] = Field(default="event", description="Always 'event'.")
    event_id: str = Field(pattern=ID_PATTERN, description="The event to wait for, e.g. 'data_ready'.")
    timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_WAIT_SECONDS,
                                        description="Time out (status timed_out) if the event has not come by then.")


class WaitingForApproval(_Reason):
    """Waiting for someone to approve; approving makes the workflow ready to resume."""

    kind: Literal["approval"] = Field(default="approval", description="Always 'approval'.")
    approver: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH, description="Who is asked to approve.")
    timeout_seconds: int | None = Field(default=None, ge=1, le=MAX_WAIT_SECONDS,
                                        description="Time out (status timed_out) without an approval by then.")


def _date_time_text(value: Any) -> Any:
    """resume_at as the document states it, a date-time string (or a datetime from Python): no epoch numbers."""
    if not isinstance(value, (str, datetime)):
        raise PydanticCustomError("datetime_type", "resume_at must be an ISO-8601 date-time string with a time zone")
    return value


class ScheduledResume(_Reason):
    """Resume at a time: the timer makes the workflow ready then."""

    kind: Literal["schedule"] = Field(default="schedule", description="Always 'schedule'.")
    resume_at: Annotated[AwareDatetime, BeforeValidator(_date_time_text)] = Field(
        description="When the workflow becomes ready: an ISO-8601 date-time with a time zone; "
                    "a time already past makes it ready at once.")


class ManualResume(_Reason):
    """Waits for an explicit resume; nothing makes it ready."""

    kind: Literal["manual"] = Field(default="manual", description="Always 'manual'.")
    note: str | None = Field(default=None, max_length=MAX_DETAIL_LENGTH, description="Why, for the humans.")


SuspendReason = Annotated[WaitingForEvent | WaitingForApproval | ScheduledResume | ManualResume,
                          Field(discriminator="kind")]
#: A text with no control characters (the rule _check_text enforces), for the document.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _whole_number(value: Any) -> Any:
    """A whole-number float (JSON ``3.0``, an integer to JSON Schema) as that int; anything else unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: The step to continue from: an integer step index (as seed 000 keeps it) or a step name, returned as given.
#: The index is strict (no bools, no numeric strings, no fractions) but takes a whole-number float.
CurrentStep = Annotated[
    Annotated[int, Field(strict=True, ge=0, le=MAX_STEP_INDEX), BeforeValidator(_whole_number)]
    | Annotated[str, Field(min_length=1, max_length=MAX_STEP_LENGTH, pattern=TEXT_PATTERN)],
    Field(description=f"The step to continue from: a step index (an integer from 0 to {MAX_STEP_INDEX}) or a "
                      f"step name (1-{MAX_STEP_LENGTH} characters); resume returns it as given, with its type."),
]
_REASON_ADAPTER: TypeAdapter[Any] = TypeAdapter(SuspendReason)


def parse_reason(reason: Any) -> WaitingForEvent | WaitingForApproval | ScheduledResume | ManualResume:
    """A suspend reason from one of the models or a dict with ``kind``; InvalidInput otherwise."""
    try:
        return _REASON_ADAPTER.validate_python(reason)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'reason'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise InvalidInput(f"suspend_reason is invalid: {problems}") from None


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Workflow:
    """A workflow as stored; timestamps are ISO-8601 UTC."""

    workflow_id: str
    workflow_name: str
    resource: str
    status: WorkflowStatus
    #: A step index (int) or a step name (str), as given at suspend.
    current_step: int | str
    #: The latest suspend reason, with ``kind``; kept after resume and timeout.
    suspend_reason: dict[str, Any]
    resume_conditions: dict[str, Any] | None
    #: Suspended and ready to resume (an event came, the schedule fell due, or it was approved).
    ready: bool
    #: Why it became ready: "event:<event_id>", "schedule" or "approval"; kept after resume.
    ready_reason: str | None
    #: Why it timed out (status timed_out).
    timeout_reason: str | None
    #: Note given on complete, fail or cancel.
    detail: str | None
    #: Who approved and their comment, once approved.
    approval: dict[str, Any] | None
    #: When the pending timeout or scheduled resume falls due.
    wait_until: str | None
    #: How many times it has been suspended.
    suspensions: int
    #: Moves on every change; pass it as If-Match.
    etag: str
    created_at: str
    updated_at: str
    suspended_at: str | None
    resumed_at: str | None
    finished_at: str | None
    #: The context, when asked for (``get(..., include_context=True)``); None otherwise.
    context_state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Resumed:
    """What a resume hands out, once: the context and step to continue from."""

    context_state: dict[str, Any]
    current_step: int | str
    workflow: Workflow


@dataclass
class _Change:
    """A decided change: the new ``w`` properties, and the new context JSON if it changes."""

    props: dict[str, Any]
    context: str | None = None


@dataclass(frozen=True)
class _Result:
    props: dict[str, Any] | None  # after the change; the current state when nothing changed
    changed: bool
    replayed: bool
    context: str | None  # the context text read, when it was asked for


# --------------------------------------------------------------------------- helpers


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(float(timestamp), tz=UTC).isoformat()


def _check_text(value: str, what: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidInput(f"{what} must be a non-empty string of at most {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{what} is not valid unicode") from exc
    return value


def _optional_text(value: str | None, what: str, max_length: int) -> str | None:
    return None if value is None else _check_text(value, what, max_length)


def _check_step(step: Any) -> int | str:
    """A step index (int, kept as an int) or a step name (str); InvalidInput otherwise."""
    if isinstance(step, int) and not isinstance(step, bool):
        if not 0 <= step <= MAX_STEP_INDEX:
            raise InvalidInput(f"current_step as a step index must be an integer from 0 to {MAX_STEP_INDEX}")
        return int(step)
    if isinstance(step, str):
        return _check_text(step, "current_step", MAX_STEP_LENGTH)
    raise InvalidInput("current_step must be a step index (an integer from 0) or a step name (text)")


def _step_of(props: dict[str, Any]) -> int | str:
    """The stored step with the type it was given (int properties read back as int on every backend)."""
    step = props["current_step"]
    return step if isinstance(step, int) and not isinstance(step, bool) else str(step)


def _dumps(value: Any, what: str, limit: int, *, max_depth: int = MAX_JSON_DEPTH) -> str:
    text = json_text(value, what, max_depth=max_depth)  # InvalidInput for anything not storable as JSON
    size = len(text.encode("utf-8"))
    if size > limit:
        raise TooLarge(f"{what} is {size} bytes as JSON; the limit is {limit}")
    return text


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]


def _marker_row(idempotency_key: str) -> str:
    if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 200:
        raise InvalidInput("idempotency key must be 1-200 characters")
    return "i|" + _digest(idempotency_key)


def _delivery_row(event_id: str, delivery_id: str) -> str:
    return "d|" + _digest(event_id, delivery_id)


def _backoff(attempt: int) -> None:
    # Lost a race for the workflow entity: spread the retries so writers stop colliding.
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))


def _reason_of(props: dict[str, Any]) -> dict[str, Any]:
    return json.loads(str(props["reason"]))


class WorkflowService:
    """Suspended workflows and events of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_WORKFLOWS)
        self._index = stores.backend.table(names.TABLE_WORKFLOWS)
        self.max_context_bytes = stores.settings.max_object_bytes

    # -- keys

    @staticmethod
    def _pk(tenant: str, workflow_id: str) -> str:
        return f"{tenant}|w|{workflow_id}"

    @staticmethod
    def _due_partition(tenant: str, workflow_id: str) -> str:
        return f"{DUE_PREFIX}{zlib.crc32(f'{tenant}|{workflow_id}'.encode()) % DUE_SHARDS:02d}"

    @staticmethod
    def _static_entries(tenant: str, props: dict[str, Any]) -> list[str]:
        return [f"{tenant}|a", f"{tenant}|n|{escape(str(props['workflow_name']))}",
                f"{tenant}|r|{escape(str(props['resource']))}"]

    @staticmethod
    def _state_entries(tenant: str, props: dict[str, Any]) -> set[str]:
        """The index partitions that must hold this workflow in this state (row key: its id)."""
        status = str(props["status"])
        parts = {f"{tenant}|st|{status}", f"{tenant}|rs|{escape(str(props['resource']))}|{status}"}
        if status == WorkflowStatus.SUSPENDED:
            if props.get("ready"):
                parts.add(f"{tenant}|ready")
            else:
                reason = _reason_of(props)
                if reason["kind"] == ReasonKind.EVENT:
                    parts.add(f"{tenant}|e|{escape(reason['event_id'])}")
        return parts

    # -- reading

    def _find(self, partition_key: str, row_key: str) -> Entity | None:
        try:
            return self._table.get(partition_key, row_key)
        except NotFound:
            return None

    def _find_index(self, partition_key: str, row_key: str) -> Entity | None:
        try:
            return self._index.get(partition_key, row_key)
        except NotFound:
            return None

    @staticmethod
    def _workflow(props: dict[str, Any], context: str | None = None) -> Workflow:
        conditions = props.get("conditions")
        approval = props.get("approval")
        return Workflow(
            workflow_id=str(props["workflow_id"]),
            workflow_name=str(props["workflow_name"]),
            resource=str(props["resource"]),
            status=WorkflowStatus(str(props["status"])),
            current_step=_step_of(props),
            suspend_reason=_reason_of(props),
            resume_conditions=json.loads(str(conditions)) if conditions is not None else None,
            ready=bool(props.get("ready", False)),
            ready_reason=props.get("ready_reason"),
            timeout_reason=props.get("timeout_reason"),
            detail=props.get("detail"),
            approval=json.loads(str(approval)) if approval is not None else None,
            wait_until=_iso(props.get("wait_until")),
            suspensions=int(props["suspensions"]),
            etag=str(props["seq"]),
            created_at=_iso(props["created_at"]) or "",
            updated_at=_iso(props["updated_at"]) or "",
            suspended_at=_iso(props.get("suspended_at")),
            resumed_at=_iso(props.get("resumed_at")),
            finished_at=_iso(props.get("finished_at")),
            context_state=json.loads(context) if context is not None else None,
        )

    def get(self, tenant: str, workflow_id: str, *, include_context: bool = False) -> Workflow:
        """The workflow (NotFound when absent); its context too with ``include_context``."""
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        pk = self._pk(tenant, workflow_id)
        entity = self._find(pk, WORKFLOW_ROW)
        if entity is None:
            raise NotFound(f"workflow {workflow_id!r} does not exist")
        context = None
        if include_context:
            stored = self._find(pk, CONTEXT_ROW)
            context = str(stored["context"]) if stored is not None else "{}"
        return self._workflow(entity.properties, context)

    # -- the one way a workflow changes

    def _mutate(self, tenant: str, workflow_id: str,
                decide: Callable[[dict[str, Any] | None, Entity | None], _Change | None], *,
                read_context: bool = False, if_match: str | None = None, marker_row: str | None = None,
                now: float) -> _Result:
        """Read, ``decide``, write conditionally on the ETag read; retry lost races.

        ``decide(current properties or None, context entity or None)`` returns the
        change, None for none, or raises. ``marker_row`` is inserted with the change;
        finding it means the change was already applied (a replay).
        """
        pk = self._pk(tenant, workflow_id)
        for attempt in range(_WRITE_ATTEMPTS):
            current = self._find(pk, WORKFLOW_ROW)
            if marker_row is not None and self._find(pk, marker_row) is not None:
                return _Result(current.properties if current is not None else None, False, True, None)
            if if_match is not None and if_match != "*":
                if current is None:
                    raise NotFound(f"workflow {workflow_id!r} does not exist")
                if str(current["seq"]) != if_match:
                    raise PreconditionFailed(f"workflow {workflow_id!r} is at ETag {current['seq']}, not {if_match}")
            context = self._find(pk, CONTEXT_ROW) if read_context and current is not None else None
            change = decide(dict(current.properties) if current is not None else None, context)
            context_text = str(context["context"]) if context is not None else None
            if change is None:
                return _Result(current.properties if current is not None else None, False, False, context_text)
            old_seq = int(current["seq"]) if current is not None else 0
            new = {k: v for k, v in change.props.items() if v is not None}
            new.update(seq=old_seq + 1, updated_at=now, fmt=_FORMAT)
            old_entries = self._state_entries(tenant, current.properties) if current is not None else set()
            new_entries = self._state_entries(tenant, new)
            # Before the change: entries of the new state, so none is ever missing.
            for partition in sorted(new_entries - old_entries):
                self._index.upsert(Entity(partition, workflow_id, {"seq": old_seq + 1}))
            if current is None:
                for partition in self._static_entries(tenant, new):
                    self._index.upsert(Entity(partition, workflow_id, {"at": now}))
            if new.get("wait_until") is not None and (
                    current is None or int(current["suspensions"]) != int(new["suspensions"])):
                self._file_due(tenant, new)
            ops = []
            if current is None:
                ops.append(TableOp.insert(Entity(pk, WORKFLOW_ROW, new)))
            else:
                # Same ETag and offloaded refs as read: the offload layer needs no second read.
                ops.append(TableOp.update(Entity(pk, WORKFLOW_ROW, new, current.etag, current.offloaded),
                                          if_match=current.etag))
            if change.context is not None:
                written = {"context": change.context, "fmt": _FORMAT}
                if context is not None:
                    ops.append(TableOp.update(Entity(pk, CONTEXT_ROW, written, context.etag, context.offloaded),
                                              if_match=context.etag))
                elif current is None:
                    ops.append(TableOp.insert(Entity(pk, CONTEXT_ROW, written)))
                else:
                    ops.append(TableOp.upsert(Entity(pk, CONTEXT_ROW, written)))
            if marker_row is not None:
                ops.append(TableOp.insert(Entity(pk, marker_row, {"at": now})))
            try:
                self._table.batch(ops)
            except (PreconditionFailed, AlreadyExists, NotFound):
                _backoff(attempt)
                continue  # lost a race: the next read decides again (or finds the marker, or the new ETag)
            # After the change: entries of the old state, unless a newer writer filed them again.
            for partition in sorted(old_entries - new_entries):
                self._drop_entry(partition, workflow_id, old_seq)
            return _Result(new, True, False, context_text)
        raise Conflict(f"workflow {workflow_id!r} is changing too often to win a write; retry")

    def _drop_entry(self, partition: str, row_key: str, seq: int) -> None:
        """Remove an index entry written at ``seq`` or before; a newer one stays."""
        entry = self._find_index(partition, row_key)
        if entry is None or int(entry.get("seq", 0)) > seq:
            return
        try:
            self._index.delete(partition, row_key, if_match=entry.etag)
        except (NotFound, PreconditionFailed):
            pass  # removed by another reader, or filed again meanwhile

    def _repair(self, entry: Entity, tenant: str, props: dict[str, Any] | None) -> bool:
        """Whether a state entry fits the workflow's live state; removes it when stale."""
        if props is not None and entry.partition_key in self._state_entries(tenant, props):
            return True
        if props is not None and int(entry.get("seq", 0)) <= int(props["seq"]):
            try:
                self._index.delete(entry.partition_key, entry.row_key, if_match=entry.etag)
            except (NotFound, PreconditionFailed):
                pass
        return False  # absent: a creation in flight or one that crashed; skipped

    def _file_due(self, tenant: str, props: dict[str, Any]) -> None:
        kind = "schedule" if _reason_of(props)["kind"] == ReasonKind.SCHEDULE else "timeout"
        due = math.ceil(float(props["wait_until"]))
        row = f"{due:012d}|{tenant}|{props['workflow_id']}|{props['suspensions']}|{kind}"
        self._index.upsert(Entity(self._due_partition(tenant, str(props["workflow_id"])), row))

    # -- suspend and resume

    def suspend(self, tenant: str, workflow_id: str, *, workflow_name: str, resource: str, current_step: int | str,
                context_state: dict[str, Any], reason: Any, resume_conditions: dict[str, Any] | None = None,
                if_match: str | None = None, idempotency_key: str | None = None) -> Workflow:
        """Suspend a new workflow (created) or a running one, with its context and reason.

        Anything else is IllegalTransition (409). ``workflow_name`` and ``resource``
        are fixed at creation. ``current_step``: a step index (int from 0) or a step
        name; resume returns it with its type. ``reason``: a :data:`SuspendReason` model or a dict
        with ``kind``. ``context_state`` is a JSON object of up to
        ``max_context_bytes``; its key ``events`` is reserved for delivered events.
        """
        return self._suspend(tenant, workflow_id, workflow_name=workflow_name, resource=resource,
                             current_step=current_step, context_state=context_state, reason=reason,
                             resume_conditions=resume_conditions, if_match=if_match,
                             idempotency_key=idempotency_key)[0]

    def _suspend(self, tenant: str, workflow_id: str, *, workflow_name: str, resource: str, current_step: int | str,
                 context_state: dict[str, Any], reason: Any, resume_conditions: dict[str, Any] | None,
                 if_match: str | None, idempotency_key: str | None) -> tuple[Workflow, bool]:
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        _check_text(workflow_name, "workflow_name", MAX_TEXT_LENGTH)
        _check_text(resource, "resource", MAX_TEXT_LENGTH)
        current_step = _check_step(current_step)
        parsed = parse_reason(reason)
        if not isinstance(context_state, dict):
            raise InvalidInput("context_state must be a JSON object")
        if "events" in context_state and not isinstance(context_state["events"], dict):
            raise InvalidInput("context_state['events'] is reserved for delivered events and must be an object")
        if resume_conditions is not None and not isinstance(resume_conditions, dict):
            raise InvalidInput("resume_conditions must be a JSON object")
        context_text = _dumps(context_state, "context_state", self.max_context_bytes)
        conditions = (_dumps(resume_conditions, "resume_conditions", MAX_CONDITIONS_BYTES)
                      if resume_conditions is not None else None)
        marker = _marker_row(idempotency_key) if idempotency_key is not None else None
        now = time.time()
        wait_until: float | None = None
        ready = False
        if isinstance(parsed, (WaitingForEvent, WaitingForApproval)) and parsed.timeout_seconds:
            wait_until = now + parsed.timeout_seconds
        elif isinstance(parsed, ScheduledResume):
            at = parsed.resume_at.timestamp()
            if at > now + MAX_SCHEDULE_SECONDS:
                raise InvalidInput("resume_at is more than 10 years ahead")
            if at <= now:
                ready = True
            else:
                wait_until = at
        reason_text = json_text(parsed.model_dump(mode="json"), "suspend_reason")

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change:
            if current is None:
                base: dict[str, Any] = {"workflow_id": workflow_id, "workflow_name": workflow_name,
                                        "resource": resource, "created_at": now, "suspensions": 0}
            else:
                if current["status"] != WorkflowStatus.RUNNING:
                    raise IllegalTransition(workflow_id, str(current["status"]), WorkflowStatus.SUSPENDED)
                if current["workflow_name"] != workflow_name or current["resource"] != resource:
                    raise InvalidInput(
                        f"workflow {workflow_id!r} has workflow_name {current['workflow_name']!r} and resource "
                        f"{current['resource']!r}; they cannot change")
                base = current
            return _Change({
                **base, "status": WorkflowStatus.SUSPENDED.value, "current_step": current_step,
                "reason": reason_text, "conditions": conditions, "ready": ready,
                "ready_reason": "schedule" if ready else None, "timeout_reason": None, "detail": None,
                "approval": None, "wait_until": wait_until, "suspensions": int(base["suspensions"]) + 1,
                "suspended_at": now, "finished_at": None,
            }, context=context_text)

        result = self._mutate(tenant, workflow_id, decide, if_match=if_match, marker_row=marker, now=now)
        return self._workflow(result.props or {}), result.replayed

    def resume(self, tenant: str, workflow_id: str, *, if_match: str | None = None) -> Resumed:
        """Hand out the context and step, and mark the workflow running: exactly once.

        NotFound when absent; IllegalTransition (409) unless suspended, so of N
        racing callers one gets the context and the others 409.
        """
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        now = time.time()

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change:
            if current is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if current["status"] != WorkflowStatus.SUSPENDED:
                raise IllegalTransition(workflow_id, str(current["status"]), WorkflowStatus.RUNNING)
            return _Change({**current, "status": WorkflowStatus.RUNNING.value, "ready": False,
                            "wait_until": None, "resumed_at": now})

        result = self._mutate(tenant, workflow_id, decide, read_context=True, if_match=if_match, now=now)
        props = result.props or {}
        return Resumed(json.loads(result.context or "{}"), _step_of(props), self._workflow(props))

    # -- ending

    def transition(self, tenant: str, workflow_id: str, status: WorkflowStatus | str, *, detail: str | None = None,
                   if_match: str | None = None, idempotency_key: str | None = None) -> Workflow:
        """Complete, fail or cancel the workflow (``status``), with an optional note.

        IllegalTransition (409) unless the status allows it: running → completed,
        failed or cancelled; suspended → cancelled.
        """
        return self._transition(tenant, workflow_id, status, detail=detail, if_match=if_match,
                                idempotency_key=idempotency_key)[0]

    def _transition(self, tenant: str, workflow_id: str, status: WorkflowStatus | str, *, detail: str | None,
                    if_match: str | None, idempotency_key: str | None) -> tuple[Workflow, bool]:
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        try:
            target = WorkflowStatus(status)
        except ValueError:
            raise InvalidInput(f"status must be one of {', '.join(WorkflowStatus)}, got {status!r}") from None
        if target not in _SET_BY_TRANSITION:
            raise InvalidInput(f"status {target} is reached by {_SET_ELSEWHERE[target]}, not by a transition; "
                               "give completed, failed or cancelled")
        _optional_text(detail, "detail", MAX_DETAIL_LENGTH)
        marker = _marker_row(idempotency_key) if idempotency_key is not None else None
        now = time.time()

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change:
            if current is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if target not in TRANSITIONS.get(WorkflowStatus(str(current["status"])), ()):
                raise IllegalTransition(workflow_id, str(current["status"]), target)
            return _Change({**current, "status": target.value, "ready": False, "wait_until": None,
                            "detail": detail, "finished_at": now})

        result = self._mutate(tenant, workflow_id, decide, if_match=if_match, marker_row=marker, now=now)
        if result.props is None:
            raise NotFound(f"workflow {workflow_id!r} does not exist")
        return self._workflow(result.props), result.replayed

    def complete(self, tenant: str, workflow_id: str, *, detail: str | None = None, if_match: str | None = None,
                 idempotency_key: str | None = None) -> Workflow:
        """running → completed."""
        return self.transition(tenant, workflow_id, WorkflowStatus.COMPLETED, detail=detail, if_match=if_match,
                               idempotency_key=idempotency_key)

    def fail(self, tenant: str, workflow_id: str, *, detail: str | None = None, if_match: str | None = None,
             idempotency_key: str | None = None) -> Workflow:
        """running → failed."""
        return self.transition(tenant, workflow_id, WorkflowStatus.FAILED, detail=detail, if_match=if_match,
                               idempotency_key=idempotency_key)

    def cancel(self, tenant: str, workflow_id: str, *, detail: str | None = None, if_match: str | None = None,
               idempotency_key: str | None = None) -> Workflow:
        """suspended or running → cancelled."""
        return self.transition(tenant, workflow_id, WorkflowStatus.CANCELLED, detail=detail, if_match=if_match,
                               idempotency_key=idempotency_key)

    def approve(self, tenant: str, workflow_id: str, *, approved_by: str | None = None, comment: str | None = None,
                if_match: str | None = None, idempotency_key: str | None = None) -> Workflow:
        """Make a workflow waiting for approval ready to resume; Conflict (409) otherwise."""
        return self._approve(tenant, workflow_id, approved_by=approved_by, comment=comment, if_match=if_match,
                             idempotency_key=idempotency_key)[0]

    def _approve(self, tenant: str, workflow_id: str, *, approved_by: str | None, comment: str | None,
                 if_match: str | None, idempotency_key: str | None) -> tuple[Workflow, bool]:
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        _optional_text(approved_by, "approved_by", MAX_TEXT_LENGTH)
        _optional_text(comment, "comment", MAX_DETAIL_LENGTH)
        marker = _marker_row(idempotency_key) if idempotency_key is not None else None
        now = time.time()
        approval = json.dumps({"approved_by": approved_by, "comment": comment, "approved_at": _iso(now)},
                              ensure_ascii=False)

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change:
            if current is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            status = str(current["status"])
            if status != WorkflowStatus.SUSPENDED:
                raise Conflict(f"workflow {workflow_id!r} is {status}; only a suspended workflow waiting for "
                               "approval can be approved")
            kind = _reason_of(current)["kind"]
            if kind != ReasonKind.APPROVAL:
                raise Conflict(f"workflow {workflow_id!r} is waiting for {kind}, not approval")
            if current.get("ready"):
                raise Conflict(f"workflow {workflow_id!r} is already ready to resume ({current.get('ready_reason')})")
            return _Change({**current, "ready": True, "ready_reason": "approval", "approval": approval,
                            "wait_until": None})

        result = self._mutate(tenant, workflow_id, decide, if_match=if_match, marker_row=marker, now=now)
        if result.props is None:
            raise NotFound(f"workflow {workflow_id!r} does not exist")
        return self._workflow(result.props), result.replayed

    # -- events

    def deliver_event(self, tenant: str, event_id: str, payload: Any = None, *,
                      delivery_id: str | None = None) -> int:
        """Make every workflow of the tenant waiting for ``event_id`` ready to resume,
        with ``payload`` merged into its context under ``events[event_id]``.

        Returns how many it made ready. A repeated ``delivery_id`` changes nothing
        and returns the first delivery's count. Reads only the event's index.
        """
        check_tenant(tenant)
        check_id(event_id, "event_id")
        # Merged two levels down (events.<event_id>), the context stays within the depth suspend accepts.
        _dumps(payload, "event payload", MAX_EVENT_PAYLOAD_BYTES, max_depth=MAX_JSON_DEPTH - 2)
        summary_pk, summary_row = f"{tenant}|dl|{escape(event_id)}", None
        marker = None
        if delivery_id is not None:
            if not isinstance(delivery_id, str) or not 1 <= len(delivery_id) <= 200:
                raise InvalidInput("delivery id (idempotency key) must be 1-200 characters")
            summary_row = _digest(delivery_id)
            summary = self._find_index(summary_pk, summary_row)
            if summary is not None:
                return int(summary["delivered"])
            marker = _delivery_row(event_id, delivery_id)
        now = time.time()
        event_partition = f"{tenant}|e|{escape(event_id)}"

        def decide(current: dict[str, Any] | None, context: Entity | None) -> _Change | None:
            if current is None or event_partition not in self._state_entries(tenant, current):
                return None  # not waiting for this event (any more)
            state = json.loads(str(context["context"])) if context is not None else {}
            state.setdefault("events", {})[event_id] = payload
            merged = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
            return _Change({**current, "ready": True, "ready_reason": f"event:{event_id}", "wait_until": None},
                           context=merged)

        delivered = 0
        for entry in list(self._index.query_all(event_partition)):
            result = self._mutate(tenant, entry.row_key, decide, read_context=True, marker_row=marker, now=now)
            if result.changed:
                delivered += 1
            elif not result.replayed:
                self._repair(entry, tenant, result.props)
        if summary_row is not None:
            self._index.upsert(Entity(summary_pk, summary_row, {"delivered": delivered, "at": now}))
        return delivered

    # -- listing

    def list(self, tenant: str, *, resource: str | None = None, status: WorkflowStatus | str | None = None,
             workflow_name: str | None = None, ready: bool | None = None, limit: int = 100,
             continuation: str | None = None) -> Page[Workflow]:
        """Workflows matching every filter given, in workflow_id order, paged.

        Follows the most selective index (resource and status, ready, status,
        workflow_name, resource, else all) and checks each entry against the live
        workflow, so a page may hold fewer than ``limit`` items; go on while
        ``continuation`` is not None.
        """
        check_tenant(tenant)
        if resource is not None:
            _check_text(resource, "resource", MAX_TEXT_LENGTH)
        if workflow_name is not None:
            _check_text(workflow_name, "workflow_name", MAX_TEXT_LENGTH)
        wanted: WorkflowStatus | None = None
        if status is not None:
            try:
                wanted = WorkflowStatus(status)
            except ValueError:
                raise InvalidInput(f"status must be one of {', '.join(WorkflowStatus)}, got {status!r}") from None
        if ready is not None and not isinstance(ready, bool):
            raise InvalidInput("ready must be true or false")
        if ready and wanted not in (None, WorkflowStatus.SUSPENDED):
            return Page([], None)  # only suspended workflows are ever ready
        if resource is not None and wanted is not None:
            partition, by_state = f"{tenant}|rs|{escape(resource)}|{wanted}", True
        elif ready:
            partition, by_state = f"{tenant}|ready", True
        elif wanted is not None:
            partition, by_state = f"{tenant}|st|{wanted}", True
        elif workflow_name is not None:
            partition, by_state = f"{tenant}|n|{escape(workflow_name)}", False
        elif resource is not None:
            partition, by_state = f"{tenant}|r|{escape(resource)}", False
        else:
            partition, by_state = f"{tenant}|a", False
        page = self._index.query(partition, limit=limit, continuation=continuation)
        items = []
        for entry in page.items:
            found = self._find(self._pk(tenant, entry.row_key), WORKFLOW_ROW)
            props = found.properties if found is not None else None
            if props is None or (by_state and not self._repair(entry, tenant, props)):
                continue
            if ((resource is not None and props["resource"] != resource)
                    or (workflow_name is not None and props["workflow_name"] != workflow_name)
                    or (wanted is not None and props["status"] != wanted)
                    or (ready is not None and bool(props.get("ready", False)) != ready)):
                continue
            items.append(self._workflow(props))
        return Page(items, page.continuation)

    # -- timer

    def process_due(self, *, now: float | None = None, limit: int = 500) -> dict[str, int]:
        """Time out expired waits and make scheduled workflows ready, up to ``limit`` entries.

        For the timer, across tenants: reads each due shard up to ``now``. Returns
        counts of ``timed_out``, ``readied`` and ``skipped`` (no longer waiting).
        Idempotent, safe on two instances at once; the next run takes the rest.
        """
        now = time.time() if now is None else now
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be an integer from 1 to 10000")
        counts = {"timed_out": 0, "readied": 0, "skipped": 0}
        handled = 0
        first = int(now // 60) % DUE_SHARDS  # start elsewhere each minute, so no shard waits on the others
        for offset in range(DUE_SHARDS):
            shard = f"{DUE_PREFIX}{(first + offset) % DUE_SHARDS:02d}"
            token: str | None = None
            while handled < limit:
                page = self._index.query(shard, end=f"{int(now):012d}|~", limit=min(limit - handled, 1000),
                                         continuation=token)
                for entry in page.items:
                    outcome, done = self._fire(entry.row_key, now)
                    counts[outcome] += 1
                    handled += 1
                    if not done:
                        continue
                    try:
                        self._index.delete(shard, entry.row_key, if_match=entry.etag)
                    except (NotFound, PreconditionFailed):
                        pass  # another timer got here first, or its suspension filed it again
                token = page.continuation
                if not token:
                    break
        return counts

    def _fire(self, row_key: str, now: float) -> tuple[str, bool]:
        """Apply one due entry if its suspension still waits: which count it adds to, and
        whether the entry is done with (an entry of a suspension still being written is not)."""
        due, tenant, workflow_id, suspension, kind = row_key.split("|")
        in_flight = False

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change | None:
            nonlocal in_flight
            in_flight = current is None or int(current["suspensions"]) < int(suspension)
            if (in_flight or current is None or current["status"] != WorkflowStatus.SUSPENDED
                    or current.get("ready") or int(current["suspensions"]) != int(suspension)
                    or current.get("wait_until") is None or float(current["wait_until"]) > now):
                return None
            reason = _reason_of(current)
            if kind == "schedule" and reason["kind"] == ReasonKind.SCHEDULE:
                return _Change({**current, "ready": True, "ready_reason": "schedule", "wait_until": None})
            if kind == "timeout" and reason["kind"] in (ReasonKind.EVENT, ReasonKind.APPROVAL):
                waited = f"event {reason['event_id']!r}" if reason["kind"] == ReasonKind.EVENT else "approval"
                return _Change({**current, "status": WorkflowStatus.TIMED_OUT.value, "wait_until": None,
                                "finished_at": now,
                                "timeout_reason": f"no {waited} within {reason['timeout_seconds']} s"})
            return None

        result = self._mutate(tenant, workflow_id, decide, now=now)
        if result.changed:
            return ("readied" if kind == "schedule" else "timed_out"), True
        # A suspension not written yet keeps its entry, until it is clearly a crashed one.
        return "skipped", not in_flight or now - int(due) > IN_FLIGHT_GRACE_SECONDS


# --------------------------------------------------------------------------- queue commands


class WorkflowsSuspendPayload(CommandPayload):
    """Suspend a new or running workflow. Applied once per idempotency key."""

    workflow_id: str = Field(description="The workflow's id: 1-128 of letters, digits, '.', '_', ':', '-'.")
    workflow_name: str = Field(description="What kind of workflow it is; fixed at creation.")
    resource: str = Field(description="What it works on (e.g. a user or document id); fixed at creation.")
    current_step: CurrentStep
    context_state: dict[str, Any] = Field(description="Any JSON object; 'events' is reserved for delivered events.")
    suspend_reason: SuspendReason = Field(description="Why it waits.")
    resume_conditions: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 16,000 bytes.")


class WorkflowsDeliverEventPayload(CommandPayload):
    """Deliver an event; the idempotency key is the delivery id, so a redelivery readies nothing twice."""

    event_id: str = Field(description="The event, e.g. 'data_ready'.")
    payload: Any = Field(default=None, description="Any JSON; merged into each waiting context under events[event_id].")


class WorkflowsTransitionPayload(CommandPayload):
    """Complete, fail or cancel a workflow."""

    workflow_id: str
    detail: str | None = Field(default=None, max_length=MAX_DETAIL_LENGTH, description="A note on why.")


class WorkflowsApprovePayload(CommandPayload):
    """Approve a workflow waiting for approval: it becomes ready to resume."""

    workflow_id: str
    approved_by: str | None = Field(default=None, max_length=MAX_TEXT_LENGTH)
    comment: str | None = Field(default=None, max_length=MAX_DETAIL_LENGTH)


def _permanent(exc: Conflict) -> PreconditionFailed:
    # The workflow's state refuses the command; no retry can change that, so poison the message.
    return PreconditionFailed(str(exc))


def _apply_suspend(service: WorkflowService, tenant: str, payload: WorkflowsSuspendPayload, idempotency_key: str) -> Outcome:
    try:
        workflow, replayed = service._suspend(
            tenant, payload.workflow_id, workflow_name=payload.workflow_name, resource=payload.resource,
            current_step=payload.current_step, context_state=payload.context_state, reason=payload.suspend_reason,
            resume_conditions=payload.resume_conditions, if_match=None, idempotency_key=idempotency_key)
    except Conflict as exc:
        raise _permanent(exc) from exc
    if replayed:
        return Outcome("duplicate", f"suspend of workflow {payload.workflow_id} already applied")
    return Outcome("applied", f"workflow {workflow.workflow_id} suspended ({workflow.suspensions})")


def _apply_deliver(service: WorkflowService, tenant: str, payload: WorkflowsDeliverEventPayload,
                   idempotency_key: str) -> Outcome:
    delivered = service.deliver_event(tenant, payload.event_id, payload.payload,
                                                      delivery_id=idempotency_key)
    return Outcome("applied", f"event {payload.event_id} made {delivered} workflow(s) ready")


def _transition_op(status: WorkflowStatus):
    def apply(service: Any, tenant: str, payload: WorkflowsTransitionPayload, idempotency_key: str) -> Outcome:
        try:
            _, replayed = service._transition(tenant, payload.workflow_id, status,
                                                              detail=payload.detail, if_match=None,
                                                              idempotency_key=idempotency_key)
        except Conflict as exc:
            raise _permanent(exc) from exc
        if replayed:
            return Outcome("duplicate", f"workflow {payload.workflow_id} already {status}")
        return Outcome("applied", f"workflow {payload.workflow_id} {status}")

    return apply


def _apply_approve(service: WorkflowService, tenant: str, payload: WorkflowsApprovePayload, idempotency_key: str) -> Outcome:
    try:
        _, replayed = service._approve(tenant, payload.workflow_id, approved_by=payload.approved_by,
                                                       comment=payload.comment, if_match=None,
                                                       idempotency_key=idempotency_key)
    except Conflict as exc:
        raise _permanent(exc) from exc
    if replayed:
        return Outcome("duplicate", f"approval of workflow {payload.workflow_id} already applied")
    return Outcome("applied", f"workflow {payload.workflow_id} approved")


COMMANDS = (
    CommandOp("workflows.suspend", WorkflowsSuspendPayload, _apply_suspend,
              "Suspend a new or running workflow with its context and reason."),
    CommandOp("workflows.deliver_event", WorkflowsDeliverEventPayload, _apply_deliver,
              "Deliver an event: every workflow of the tenant waiting for it becomes ready to resume."),
    CommandOp("workflows.approve", WorkflowsApprovePayload, _apply_approve,
              "Approve a workflow waiting for approval (it becomes ready to resume)."),
    CommandOp("workflows.complete", WorkflowsTransitionPayload, _transition_op(WorkflowStatus.COMPLETED),
              "Mark a running workflow completed."),
    CommandOp("workflows.fail", WorkflowsTransitionPayload, _transition_op(WorkflowStatus.FAILED),
              "Mark a running workflow failed."),
    CommandOp("workflows.cancel", WorkflowsTransitionPayload, _transition_op(WorkflowStatus.CANCELLED),
              "Cancel a suspended or running workflow."),
)
