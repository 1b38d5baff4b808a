"""Suspended workflows: suspend with a reason, resume exactly once, events and timers.

A workflow is suspended with its context (any JSON object, of any size), its
current step and a reason: waiting for an event (optionally with a timeout),
waiting for approval (optionally with a timeout), a scheduled resume, or manual.
Resuming returns the context and the step and marks the workflow running. The
step is a name or an integer step index (as seed 000's workflows keep it); it is
stored with its type and handed back as given.

Statuses and the only transitions allowed (anything else is a 409 naming both
states, :class:`~shared.domains.workflows.models.IllegalTransition`)::

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

Layout, all in table ``stowageworkflows`` (``!`` cannot start a tenant; keys and
row codecs in :mod:`._layout`; every row carries ``fmt``, timestamps are epoch
seconds):

* ``<tenant>|w|<workflow_id>``, the workflow's own partition: ``w`` (status, step,
  reason, flags, timestamps, ``seq`` which moves on every change and is the ETag,
  ``suspensions``), ``c`` (the context JSON; the offload layer moves a large one to
  a blob, and listing never reads it), ``i|<sha256>`` (idempotency markers of
  commands, :mod:`shared.storage.idempotency`: the request's fingerprint and the
  workflow as the first application returned it) and ``d|<sha256>`` (markers of
  event deliveries applied). ``w``, ``c`` and a marker change in ONE batch
  conditional on the ETag of ``w`` as read.
* Listing indexes, row key = workflow id, each entry holding the ``seq`` the
  workflow had when it was written: ``<tenant>|a`` (all), ``<tenant>|n|<name>`` and
  ``<tenant>|r|<resource>`` (written once, at creation), ``<tenant>|st|<status>``,
  ``<tenant>|rs|<resource>|<status>`` and ``<tenant>|ready`` (suspended and ready),
  which follow the status.
* ``<tenant>|e|<event_id>``: the event index, one entry per workflow waiting for
  the event and not ready yet. Delivery reads this partition only.
* ``<tenant>|dl``: one idempotency marker per delivery id, holding how many
  workflows the delivery made ready (``<tenant>|dl|<event_id>`` rows of earlier
  releases are still read).
* ``!wait|<tenant>`` and ``!wait|~dir|NN``: the due index of timeouts and
  scheduled resumes (:class:`shared.storage.due.DueIndex`), item
  ``<workflow_id>|<suspension>|<timeout|schedule>``. The timer serves tenants
  round-robin within a time budget, so one tenant's thousands of short waits delay
  no other tenant's timeout beyond one run. The ``!due|00`` .. ``!due|15`` shards of
  earlier releases are drained by the same timer.

Guarantees:

* Every change reads ``w``, decides, then writes ``w`` (with ``c`` and the marker)
  on the condition of the ETag read. Racing resumers: exactly one write succeeds;
  the others re-read, find the workflow running and get 409. Other lost races
  (an event against a cancel, two timers) re-read and decide again under
  :mod:`shared.storage.retry`; out of attempts, :class:`~shared.errors.Busy` (503).
  A client's stale If-Match is a 412 decided from the read, never retried.
* Idempotency keys: a replay answers the workflow as the first application
  returned it (and its status, 201 for a creation); the key with another request
  (other op, other arguments) is :class:`~shared.storage.idempotency.IdempotencyKeyReused`
  (422) and writes nothing. Markers of earlier releases (no fingerprint) replay the
  current state, as they did.
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
  that was resumed and suspended on the same event since; the delivery's own
  marker, written after, answers a repeat with the first count, and refuses the id
  reused for another event or payload (422). Without one, a repeat finds the
  workflows already ready and out of the event index.
* Due entries are filed before the suspension they time, and removed only after
  they are handled; each action is conditional on the workflow still being in that
  suspension, still waiting and its time passed. So two timers never apply one
  twice, an interrupted run resumes where it was, and entries of workflows resumed
  in time are simply dropped. An entry whose suspension is not written yet stays
  (for :data:`IN_FLIGHT_GRACE_SECONDS`, then it is a crashed one and goes).
* Costs: a suspend/resume cycle is about 11 table operations each way (the
  workflow read and batch, the status entries filed and removed), plus the offload
  layer's read before each unconditional index write; a listing page is one query
  plus one point read per entry; a delivery is one query plus a read-decide-write
  per waiting workflow.
* Every row goes through the one (offloading) table :class:`~shared.stores.Stores`
  hands out; index entries are small and never offloaded.
* Change records (:mod:`shared.storage.changefeed`): every change of a workflow
  writes one in its batch, in the workflow's partition (``workflows.suspend``,
  ``resume``, ``approve``, ``complete``, ``fail``, ``cancel``, ``deliver_event`` (one
  per workflow made ready), and from the timer, as the system, ``timeout`` and
  ``schedule``), holding the new status and ``seq`` and a SHA-256 of a new context,
  never the context. A decision to change nothing, and a replay, record nothing.
  Listings and delivery read index partitions, which hold no outbox rows, and the
  workflow's partition only by row key.
* Audited reads (setting ``audit_reads``, ``STOWAGE_AUDIT_READS``, off by default):
  each :meth:`WorkflowService.get` with ``include_context`` that finds the workflow
  writes one record (``workflows.read_context``: status, ``seq`` and the SHA-256 of
  the context text, the same SHA-256 the change that stored it recorded; never the
  context) as an outbox insert of its own in the workflow's partition, before the
  context is returned. A read that fails (404) records nothing; a record that
  cannot be written fails the read with that error, so an audited read is never
  served unrecorded (a crash in between leaves a record of a read nobody received).
  A get without the context, and listings, record nothing; ``resume``, which hands
  the context out, is a change and records ``workflows.resume``. Cost: one more
  table write per audited read.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared import names
from shared.backends import Entity, Page, TableOp
from shared.domains.domain import change_record
from shared.domains.workflows import _layout as layout
from shared.domains.workflows.models import (
    MAX_CONDITIONS_BYTES,
    MAX_DETAIL_LENGTH,
    MAX_EVENT_PAYLOAD_BYTES,
    MAX_SCHEDULE_SECONDS,
    MAX_STEP_INDEX,
    MAX_STEP_LENGTH,
    MAX_TEXT_LENGTH,
    SET_BY_TRANSITION,
    SET_ELSEWHERE,
    TRANSITIONS,
    CurrentStep,
    IllegalTransition,
    ManualResume,
    NotAwaitingApproval,
    ReasonKind,
    Resumed,
    ScheduledResume,
    SuspendReason,
    WaitingForApproval,
    WaitingForEvent,
    Workflow,
    WorkflowStatus,
    parse_reason,
)
from shared.errors import AlreadyExists, InvalidInput, NotFound, PreconditionFailed, TooLarge
from shared.jsonvalues import MAX_JSON_DEPTH, json_text
from shared.keys import check_id, check_tenant
from shared.storage.due import Budget, DueIndex
from shared.storage.idempotency import Idempotency, lookup, marker_op
from shared.storage.mutate import Outcome, find, write
from shared.storage.retry import conditional, retry_races
from shared.storage.rows import stamped
from shared.stores import Stores

# A due entry whose suspension is not written yet is in flight for this long, then stale.
IN_FLIGHT_GRACE_SECONDS = 900
#: Wall time one timer run may spend (the job runs every minute).
TIMER_BUDGET_SECONDS = 45.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

__all__ = [
    "IN_FLIGHT_GRACE_SECONDS", "CurrentStep", "IllegalTransition", "ManualResume", "NotAwaitingApproval", "Resumed", "ScheduledResume",
    "SuspendReason", "WaitingForApproval", "WaitingForEvent", "Workflow", "WorkflowService", "WorkflowStatus",
    "parse_reason",
]


@dataclass
class _Change:
    """A decided change: the new ``w`` properties, and the new context JSON if it changes;
    the change record's op when it is not the mutation's, and its details beyond the new state."""

    props: dict[str, Any]
    context: str | None = None
    op: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Result:
    props: dict[str, Any] | None  # after the change; the current state when nothing changed; a replay's result
    changed: bool
    replayed: bool
    context: str | None  # the context text read, when it was asked for
    status: int = 200


_Decide = Callable[[dict[str, Any] | None, Entity | None], _Change | None]


# --------------------------------------------------------------------------- input checks


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


def _dumps(value: Any, what: str, limit: int, *, max_depth: int = MAX_JSON_DEPTH) -> str:
    text = json_text(value, what, max_depth=max_depth)  # InvalidInput for anything not storable as JSON
    size = len(text.encode("utf-8"))
    if size > limit:
        raise TooLarge(f"{what} is {size} bytes as JSON; the limit is {limit}")
    return text


def _idempotency(key: str | None, op: str, request: dict[str, Any]) -> Idempotency | None:
    return None if key is None else Idempotency.of(key, op, request)


class WorkflowService:
    """Suspended workflows and events of every tenant; each call names its tenant."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_WORKFLOWS)
        self._stores = stores
        self._due = DueIndex(self._table, layout.DUE_PREFIX, grace=IN_FLIGHT_GRACE_SECONDS)
        self.max_context_bytes = stores.settings.max_object_bytes
        #: Whether :meth:`get` with the context records each read (``STOWAGE_AUDIT_READS``).
        self.audit_reads = stores.settings.audit_reads

    # -- reading

    def _find(self, partition_key: str, row_key: str) -> Entity | None:
        return find(self._table, partition_key, row_key)

    def get(self, tenant: str, workflow_id: str, *, include_context: bool = False) -> Workflow:
        """The workflow (NotFound when absent); its context too with ``include_context``.

        With ``audit_reads``, a read with the context is recorded (``workflows.read_context``)
        before it is returned; when the record cannot be written the read fails with that error.
        """
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        pk = layout.workflow_partition(tenant, workflow_id)
        entity = self._find(pk, layout.WORKFLOW_ROW)
        if entity is None:
            raise NotFound(f"workflow {workflow_id!r} does not exist")
        context = layout.context_of(self._find(pk, layout.CONTEXT_ROW)) if include_context else None
        if context is not None and self.audit_reads:
            record = change_record("workflows", "workflows.read_context", "workflow", workflow_id, {
                "status": str(entity["status"]), "seq": layout.seq_of(entity.properties),
                "context_sha256": hashlib.sha256(context.encode("utf-8")).hexdigest()})
            self._stores.outbox(tenant, names.TABLE_WORKFLOWS).record_alone(self._table, pk, record)
        return layout.workflow_of(entity.properties, context)

    # -- the one way a workflow changes

    def _replay(self, pk: str, idempotency: Idempotency | None, workflow_id: str) -> _Result | None:
        """The first application's answer to this request, or None when the key is new (422 for another request)."""
        if idempotency is None:
            return None
        marker = self._find(pk, idempotency.row_key)
        if marker is None:
            return None
        if marker.get("fp") is None:  # a marker of an earlier release: replays the current state, as it did
            current = self._find(pk, layout.WORKFLOW_ROW)
            if current is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            return _Result(dict(current.properties), False, True, None)
        replay = lookup(self._table, pk, idempotency)
        if replay is None:  # removed in between (it never is): apply
            return None
        return _Result(dict(replay.result), False, True, None, replay.status)

    def _mutate(self, tenant: str, workflow_id: str, decide: _Decide, *, op: str, read_context: bool = False,
                if_match: str | None = None, idempotency: Idempotency | None = None,
                marker_row: str | None = None, now: float) -> _Result:
        """Read, ``decide``, write conditionally on the ETag read; lost races retried, then Busy.

        A change is written with its change record (``op``, unless the change names another).

        ``decide(current properties or None, context entity or None)`` returns the
        change, None for none, or raises. ``idempotency``'s marker (with the new
        ``w`` as result) or ``marker_row`` is inserted with the change; finding it
        means the change was already applied (a replay).
        """
        pk = layout.workflow_partition(tenant, workflow_id)

        def attempt() -> _Result:
            replayed = self._replay(pk, idempotency, workflow_id)
            if replayed is not None:
                return replayed
            current = self._find(pk, layout.WORKFLOW_ROW)
            if marker_row is not None and self._find(pk, marker_row) is not None:
                return _Result(current.properties if current is not None else None, False, True, None)
            if if_match is not None and if_match != "*":
                if current is None:
                    raise NotFound(f"workflow {workflow_id!r} does not exist")
                seq = layout.seq_of(current.properties)
                if str(seq) != if_match:
                    raise PreconditionFailed(f"workflow {workflow_id!r} is at ETag {seq}, not {if_match}")
            context = self._find(pk, layout.CONTEXT_ROW) if read_context and current is not None else None
            change = decide(dict(current.properties) if current is not None else None, context)
            context_text = str(context["context"]) if context is not None else None
            if change is None:
                return _Result(current.properties if current is not None else None, False, False, context_text)
            old_seq = layout.seq_of(current.properties) if current is not None else 0
            new = {k: v for k, v in change.props.items() if v is not None}
            new.update(seq=old_seq + 1, updated_at=now)
            stamped(new, layout.FMT)
            old_entries = layout.state_entries(tenant, current.properties) if current is not None else set()
            new_entries = layout.state_entries(tenant, new)
            # Before the change: entries of the new state, so none is ever missing.
            for partition in sorted(new_entries - old_entries):
                self._table.upsert(layout.index_entry(partition, workflow_id, seq=old_seq + 1))
            if current is None:
                for partition in layout.static_entries(tenant, new):
                    self._table.upsert(layout.index_entry(partition, workflow_id, at=now))
            if new.get("wait_until") is not None and (
                    current is None or layout.suspensions_of(current.properties) != layout.suspensions_of(new)):
                self._file_due(tenant, new)
            ops: list[TableOp] = []
            if current is None:
                ops.append(TableOp.insert(Entity(pk, layout.WORKFLOW_ROW, new)))
            else:
                # Same ETag and offloaded refs as read: the offload layer needs no second read.
                ops.append(TableOp.update(Entity(pk, layout.WORKFLOW_ROW, new, current.etag, current.offloaded),
                                          if_match=current.etag))
            if change.context is not None:
                written = layout.context_row(pk, change.context)
                if context is not None:
                    ops.append(TableOp.update(Entity(pk, layout.CONTEXT_ROW, written.properties, context.etag,
                                                     context.offloaded), if_match=context.etag))
                elif current is None:
                    ops.append(TableOp.insert(written))
                else:
                    ops.append(TableOp.upsert(written))
            details: dict[str, Any] = {"status": new["status"], "seq": new["seq"], **(change.details or {})}
            if change.context is not None:
                details["context_sha256"] = hashlib.sha256(change.context.encode("utf-8")).hexdigest()
            ops += self._stores.outbox(tenant, names.TABLE_WORKFLOWS).ops(
                pk, change_record("workflows", change.op or op, "workflow", workflow_id, details))
            status = 201 if current is None else 200
            if idempotency is not None:
                ops.append(marker_op(pk, idempotency, new, status=status, clock=lambda: now))
            if marker_row is not None:
                ops.append(TableOp.insert(Entity(pk, marker_row, stamped({"at": now}, layout.FMT))))
            with conditional():  # lost a race: the next attempt decides again (or finds the marker)
                write(self._table, ops)
            # After the change: entries of the old state, unless a newer writer filed them again.
            for partition in sorted(old_entries - new_entries):
                self._drop_entry(partition, workflow_id, old_seq)
            return _Result(new, True, False, context_text, status)

        return retry_races(attempt, what=f"workflow {workflow_id!r}")

    def _drop_entry(self, partition: str, row_key: str, seq: int) -> None:
        """Remove an index entry written at ``seq`` or before; a newer one stays."""
        entry = self._find(partition, row_key)
        if entry is None or layout.seq_of(entry.properties) > seq:
            return
        self._delete_entry(entry)

    def _delete_entry(self, entry: Entity) -> None:
        try:
            # Conditional on the ETag read, with its (no) offloaded values: no second read.
            self._table.delete(entry.partition_key, entry.row_key, if_match=entry.etag, offloaded=entry.offloaded)
        except (NotFound, PreconditionFailed):
            pass  # removed by another reader, or filed again meanwhile

    def _repair(self, entry: Entity, tenant: str, props: dict[str, Any] | None) -> bool:
        """Whether a state entry fits the workflow's live state; removes it when stale."""
        if props is not None and entry.partition_key in layout.state_entries(tenant, props):
            return True
        if props is not None and layout.seq_of(entry.properties) <= layout.seq_of(props):
            self._delete_entry(entry)
        return False  # absent: a creation in flight or one that crashed; skipped

    def _file_due(self, tenant: str, props: dict[str, Any]) -> None:
        wait_until = layout.wait_until_of(props)
        if wait_until is None:
            return
        item = layout.due_item(str(props["workflow_id"]), layout.suspensions_of(props), layout.due_kind(props))
        self._due.file(tenant, item, math.ceil(wait_until), stamped({}, layout.FMT))

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
        return self.suspend_outcome(tenant, workflow_id, workflow_name=workflow_name, resource=resource,
                                    current_step=current_step, context_state=context_state, reason=reason,
                                    resume_conditions=resume_conditions, if_match=if_match,
                                    idempotency_key=idempotency_key).result

    def suspend_outcome(self, tenant: str, workflow_id: str, *, workflow_name: str, resource: str,
                        current_step: int | str, context_state: dict[str, Any], reason: Any,
                        resume_conditions: dict[str, Any] | None = None, if_match: str | None = None,
                        idempotency_key: str | None = None) -> Outcome[Workflow]:
        """:meth:`suspend`, saying whether it replayed an earlier application and its status (201 created)."""
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
        reason_json = parsed.model_dump(mode="json")
        idempotency = _idempotency(idempotency_key, "workflows.suspend", {
            "workflow_id": workflow_id, "workflow_name": workflow_name, "resource": resource,
            "current_step": current_step, "context_state": context_text, "suspend_reason": reason_json,
            "resume_conditions": conditions})
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
        reason_text = json_text(reason_json, "suspend_reason")

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
                "approval": None, "wait_until": wait_until, "suspensions": layout.suspensions_of(base) + 1,
                "suspended_at": now, "finished_at": None,
            }, context=context_text, details={"reason": str(reason_json["kind"])})

        result = self._mutate(tenant, workflow_id, decide, op="workflows.suspend", if_match=if_match,
                              idempotency=idempotency, now=now)
        return self._outcome(result, workflow_id)

    @staticmethod
    def _outcome(result: _Result, workflow_id: str) -> Outcome[Workflow]:
        if result.props is None:
            raise NotFound(f"workflow {workflow_id!r} does not exist")
        return Outcome(layout.workflow_of(result.props), replayed=result.replayed, status=result.status)

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

        result = self._mutate(tenant, workflow_id, decide, op="workflows.resume", read_context=True,
                              if_match=if_match, now=now)
        props = result.props or {}
        return Resumed(json.loads(result.context or "{}"), layout.step_of(props), layout.workflow_of(props))

    # -- ending

    def transition(self, tenant: str, workflow_id: str, status: WorkflowStatus | str, *, detail: str | None = None,
                   if_match: str | None = None, idempotency_key: str | None = None) -> Workflow:
        """Complete, fail or cancel the workflow (``status``), with an optional note.

        IllegalTransition (409) unless the status allows it: running → completed,
        failed or cancelled; suspended → cancelled.
        """
        return self.transition_outcome(tenant, workflow_id, status, detail=detail, if_match=if_match,
                                       idempotency_key=idempotency_key).result

    def transition_outcome(self, tenant: str, workflow_id: str, status: WorkflowStatus | str, *,
                           detail: str | None = None, if_match: str | None = None,
                           idempotency_key: str | None = None) -> Outcome[Workflow]:
        """:meth:`transition`, saying whether it replayed an earlier application."""
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        try:
            target = WorkflowStatus(status)
        except ValueError:
            raise InvalidInput(f"status must be one of {', '.join(WorkflowStatus)}, got {status!r}") from None
        if target not in SET_BY_TRANSITION:
            raise InvalidInput(f"status {target} is reached by {SET_ELSEWHERE[target]}, not by a transition; "
                               "give completed, failed or cancelled")
        _optional_text(detail, "detail", MAX_DETAIL_LENGTH)
        verb = {WorkflowStatus.COMPLETED: "complete", WorkflowStatus.FAILED: "fail",
                WorkflowStatus.CANCELLED: "cancel"}[target]
        idempotency = _idempotency(idempotency_key, f"workflows.{verb}",
                                   {"workflow_id": workflow_id, "detail": detail})
        now = time.time()

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change:
            if current is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if target not in TRANSITIONS.get(layout.status_of(current), ()):
                raise IllegalTransition(workflow_id, str(current["status"]), target)
            return _Change({**current, "status": target.value, "ready": False, "wait_until": None,
                            "detail": detail, "finished_at": now})

        result = self._mutate(tenant, workflow_id, decide, op=f"workflows.{verb}", if_match=if_match,
                              idempotency=idempotency, now=now)
        return self._outcome(result, workflow_id)

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
        """Make a workflow waiting for approval ready to resume; NotAwaitingApproval (409) otherwise."""
        return self.approve_outcome(tenant, workflow_id, approved_by=approved_by, comment=comment,
                                    if_match=if_match, idempotency_key=idempotency_key).result

    def approve_outcome(self, tenant: str, workflow_id: str, *, approved_by: str | None = None,
                        comment: str | None = None, if_match: str | None = None,
                        idempotency_key: str | None = None) -> Outcome[Workflow]:
        """:meth:`approve`, saying whether it replayed an earlier application."""
        check_tenant(tenant)
        check_id(workflow_id, "workflow_id")
        _optional_text(approved_by, "approved_by", MAX_TEXT_LENGTH)
        _optional_text(comment, "comment", MAX_DETAIL_LENGTH)
        idempotency = _idempotency(idempotency_key, "workflows.approve",
                                   {"workflow_id": workflow_id, "approved_by": approved_by, "comment": comment})
        now = time.time()
        approval = json.dumps({"approved_by": approved_by, "comment": comment, "approved_at": now},
                              ensure_ascii=False)

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change:
            if current is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            status = str(current["status"])
            kind = str(layout.reason_of(current)["kind"])
            if status != WorkflowStatus.SUSPENDED or kind != ReasonKind.APPROVAL or current.get("ready"):
                raise NotAwaitingApproval(workflow_id, status, waiting_for=kind,
                                          ready_reason=current.get("ready_reason"))
            return _Change({**current, "ready": True, "ready_reason": "approval", "approval": approval,
                            "wait_until": None})

        result = self._mutate(tenant, workflow_id, decide, op="workflows.approve", if_match=if_match,
                              idempotency=idempotency, now=now)
        return self._outcome(result, workflow_id)

    # -- events

    def deliver_event(self, tenant: str, event_id: str, payload: Any = None, *,
                      delivery_id: str | None = None) -> int:
        """Make every workflow of the tenant waiting for ``event_id`` ready to resume,
        with ``payload`` merged into its context under ``events[event_id]``.

        Returns how many it made ready. A repeated ``delivery_id`` changes nothing
        and returns the first delivery's count; reused for another event or payload
        it is IdempotencyKeyReused (422). Reads only the event's index.
        """
        return self.deliver_event_outcome(tenant, event_id, payload, delivery_id=delivery_id).result

    def deliver_event_outcome(self, tenant: str, event_id: str, payload: Any = None, *,
                              delivery_id: str | None = None) -> Outcome[int]:
        """:meth:`deliver_event`, saying whether it replayed an earlier delivery of ``delivery_id``."""
        check_tenant(tenant)
        check_id(event_id, "event_id")
        # Merged two levels down (events.<event_id>), the context stays within the depth suspend accepts.
        payload_text = _dumps(payload, "event payload", MAX_EVENT_PAYLOAD_BYTES, max_depth=MAX_JSON_DEPTH - 2)
        summary_pk = layout.deliveries_partition(tenant)
        idempotency: Idempotency | None = None
        marker = None
        if delivery_id is not None:
            idempotency = Idempotency.of(delivery_id, "workflows.deliver_event",
                                         {"event_id": event_id, "payload": payload_text})
            replay = lookup(self._table, summary_pk, idempotency)
            if replay is not None:
                return Outcome(int(replay.result), replayed=True, status=replay.status)
            legacy = self._find(*layout.legacy_delivery_summary(tenant, event_id, delivery_id))
            if legacy is not None:
                return Outcome(layout.delivered_of(legacy.properties), replayed=True)
            marker = layout.delivery_row(event_id, delivery_id)
        now = time.time()
        event_partition = layout.event_partition(tenant, event_id)

        def decide(current: dict[str, Any] | None, context: Entity | None) -> _Change | None:
            if current is None or event_partition not in layout.state_entries(tenant, current):
                return None  # not waiting for this event (any more)
            state = json.loads(layout.context_of(context))
            state.setdefault("events", {})[event_id] = payload
            merged = json.dumps(state, separators=(",", ":"), ensure_ascii=False)
            return _Change({**current, "ready": True, "ready_reason": f"event:{event_id}", "wait_until": None},
                           context=merged, details={"event_id": event_id})

        delivered = 0
        for entry in list(self._table.query_all(event_partition)):
            result = self._mutate(tenant, entry.row_key, decide, op="workflows.deliver_event", read_context=True,
                                  marker_row=marker, now=now)
            if result.changed:
                delivered += 1
            elif not result.replayed:
                self._repair(entry, tenant, result.props)
        if idempotency is not None:
            try:
                write(self._table, [marker_op(summary_pk, idempotency, delivered, clock=lambda: now)])
            except (AlreadyExists, PreconditionFailed):
                pass  # a concurrent delivery with the same id recorded its count first
        return Outcome(delivered)

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
        partition, by_state = layout.listing_partition(tenant, resource=resource, status=wanted,
                                                       workflow_name=workflow_name, ready=ready)
        page = self._table.query(partition, limit=limit, continuation=continuation)
        items = []
        for entry in page.items:
            found = self._find(layout.workflow_partition(tenant, entry.row_key), layout.WORKFLOW_ROW)
            props = found.properties if found is not None else None
            if props is None or (by_state and not self._repair(entry, tenant, props)):
                continue
            if ((resource is not None and props["resource"] != resource)
                    or (workflow_name is not None and props["workflow_name"] != workflow_name)
                    or (wanted is not None and props["status"] != wanted)
                    or (ready is not None and bool(props.get("ready", False)) != ready)):
                continue
            items.append(layout.workflow_of(props))
        return Page(items, page.continuation)

    # -- timer

    def process_due(self, *, now: float | None = None, limit: int | None = None,
                    seconds: float = TIMER_BUDGET_SECONDS) -> dict[str, int]:
        """Time out expired waits and make scheduled workflows ready, while work remains.

        For the timer, across tenants, round-robin (see :class:`~shared.storage.due.DueIndex`):
        works until nothing is due at ``now``, ``seconds`` of wall time are spent, or
        ``limit`` entries (when given) are handled. Returns counts of ``timed_out``,
        ``readied`` and ``skipped`` (no longer waiting). Idempotent, safe on two
        instances at once; the next run takes the rest.
        """
        now = time.time() if now is None else now
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or not 1 <= limit <= 100_000):
            raise InvalidInput("limit must be an integer from 1 to 100000")
        counts = {"timed_out": 0, "readied": 0, "skipped": 0}
        budget = Budget(seconds, items=limit)
        for entry in self._due.due(now, budget):
            workflow_id, suspension, kind = layout.parse_due_item(entry.item)
            outcome, done = self._fire(entry.tenant, workflow_id, suspension, kind, entry.due, now)
            counts[outcome] += 1
            if done:
                self._due.done(entry)
        self._drain_legacy(now, budget, counts)
        return counts

    def _drain_legacy(self, now: float, budget: Budget, counts: dict[str, int]) -> None:
        """Entries an earlier release filed in the ``!due|NN`` shards: handled like the others, until none is left."""
        for shard in range(layout.LEGACY_DUE_SHARDS):
            partition = f"{layout.LEGACY_DUE_PREFIX}{shard:02d}"
            token: str | None = None
            while not budget.exhausted:
                page = self._table.query(partition, end=f"{int(now):012d}|~", limit=100, continuation=token)
                for entry in page.items:
                    if budget.exhausted:
                        return
                    budget.spend()
                    due, tenant, workflow_id, suspension, kind = layout.parse_legacy_due(entry.row_key)
                    outcome, done = self._fire(tenant, workflow_id, suspension, kind, due, now)
                    counts[outcome] += 1
                    if done:
                        self._delete_entry(entry)
                token = page.continuation
                if not token:
                    break

    def _fire(self, tenant: str, workflow_id: str, suspension: int, kind: str, due: int,
              now: float) -> tuple[str, bool]:
        """Apply one due entry if its suspension still waits: which count it adds to, and
        whether the entry is done with (an entry of a suspension still being written is not)."""
        in_flight = False

        def decide(current: dict[str, Any] | None, _context: Entity | None) -> _Change | None:
            nonlocal in_flight
            in_flight = current is None or layout.suspensions_of(current) < suspension
            if in_flight or current is None:
                return None
            wait_until = layout.wait_until_of(current)
            if (current["status"] != WorkflowStatus.SUSPENDED or current.get("ready")
                    or layout.suspensions_of(current) != suspension or wait_until is None or wait_until > now):
                return None
            reason = layout.reason_of(current)
            if kind == layout.SCHEDULE and reason["kind"] == ReasonKind.SCHEDULE:
                return _Change({**current, "ready": True, "ready_reason": "schedule", "wait_until": None},
                               op="workflows.schedule")
            if kind == layout.TIMEOUT and reason["kind"] in (ReasonKind.EVENT, ReasonKind.APPROVAL):
                waited = f"event {reason['event_id']!r}" if reason["kind"] == ReasonKind.EVENT else "approval"
                return _Change({**current, "status": WorkflowStatus.TIMED_OUT.value, "wait_until": None,
                                "finished_at": now,
                                "timeout_reason": f"no {waited} within {reason['timeout_seconds']} s"},
                               op="workflows.timeout")
            return None

        result = self._mutate(tenant, workflow_id, decide, op="workflows.timeout", now=now)
        if result.changed:
            return ("readied" if kind == layout.SCHEDULE else "timed_out"), True
        # A suspension not written yet keeps its entry, until it is clearly a crashed one.
        return "skipped", not in_flight or now - due > IN_FLIGHT_GRACE_SECONDS
