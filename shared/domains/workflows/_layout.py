"""Keys and row codecs of the workflows table (``stowageworkflows``); see :mod:`.service` for the layout.

Everything that knows a partition key, a row key or a stored property name is
here, so the service reads and writes rows through these functions only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.backends import Entity
from shared.domains.workflows.models import ReasonKind, Workflow, WorkflowStatus
from shared.keys import escape
from shared.storage.rows import iso, stamped

#: Version of the row format this code writes (rows written without ``fmt`` are format 1 too).
FMT = 1
WORKFLOW_ROW = "w"
CONTEXT_ROW = "c"
#: Prefix of the due index (shared.storage.due) of timeouts and scheduled resumes.
DUE_PREFIX = "!wait|"
#: The due shards of releases before the shared due index, drained by the timer until empty.
LEGACY_DUE_PREFIX = "!due|"
LEGACY_DUE_SHARDS = 16
TIMEOUT = "timeout"
SCHEDULE = "schedule"


def digest(*parts: str) -> str:
    """40 hex digits of SHA-256 over the parts: a fixed-length row key for any text."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]


# --------------------------------------------------------------------------- partitions


def workflow_partition(tenant: str, workflow_id: str) -> str:
    """The workflow's own partition: ``w``, ``c`` and its markers."""
    return f"{tenant}|w|{workflow_id}"


def static_entries(tenant: str, props: dict[str, Any]) -> list[str]:
    """Index partitions written once, at creation (row key: the workflow id)."""
    return [f"{tenant}|a", f"{tenant}|n|{escape(str(props['workflow_name']))}",
            f"{tenant}|r|{escape(str(props['resource']))}"]


def state_entries(tenant: str, props: dict[str, Any]) -> set[str]:
    """The index partitions that must hold this workflow in this state (row key: its id)."""
    status = str(props["status"])
    parts = {f"{tenant}|st|{status}", f"{tenant}|rs|{escape(str(props['resource']))}|{status}"}
    if status == WorkflowStatus.SUSPENDED:
        if props.get("ready"):
            parts.add(f"{tenant}|ready")
        else:
            reason = reason_of(props)
            if reason["kind"] == ReasonKind.EVENT:
                parts.add(event_partition(tenant, str(reason["event_id"])))
    return parts


def listing_partition(tenant: str, *, resource: str | None, status: WorkflowStatus | None,
                      workflow_name: str | None, ready: bool | None) -> tuple[str, bool]:
    """The most selective index for these filters, and whether it follows the status."""
    if resource is not None and status is not None:
        return f"{tenant}|rs|{escape(resource)}|{status}", True
    if ready:
        return f"{tenant}|ready", True
    if status is not None:
        return f"{tenant}|st|{status}", True
    if workflow_name is not None:
        return f"{tenant}|n|{escape(workflow_name)}", False
    if resource is not None:
        return f"{tenant}|r|{escape(resource)}", False
    return f"{tenant}|a", False


def event_partition(tenant: str, event_id: str) -> str:
    """The event index: one entry per workflow waiting for the event and not ready yet."""
    return f"{tenant}|e|{escape(event_id)}"


def deliveries_partition(tenant: str) -> str:
    """Idempotency markers of deliveries (one per delivery id, holding how many it readied)."""
    return f"{tenant}|dl"


def legacy_delivery_summary(tenant: str, event_id: str, delivery_id: str) -> tuple[str, str]:
    """Where releases before the shared markers kept a delivery's count (read, never written)."""
    return f"{tenant}|dl|{escape(event_id)}", digest(delivery_id)


def delivered_of(props: dict[str, Any]) -> int:
    """How many workflows a delivery made ready, from its summary row of an earlier release."""
    return int(props.get("delivered", 0))


def delivery_row(event_id: str, delivery_id: str) -> str:
    """The marker, in a workflow's partition, of a delivery applied to it."""
    return "d|" + digest(event_id, delivery_id)


# --------------------------------------------------------------------------- rows


def index_entry(partition: str, workflow_id: str, **properties: Any) -> Entity:
    """An index entry (small, never offloaded), stamped with the row format."""
    return Entity(partition, workflow_id, stamped(dict(properties), FMT))


def seq_of(props: dict[str, Any]) -> int:
    """The workflow's change counter (its ETag); an index entry's ``seq`` (0 when absent)."""
    return int(props.get("seq", 0))


def suspensions_of(props: dict[str, Any]) -> int:
    return int(props["suspensions"])


def status_of(props: dict[str, Any]) -> WorkflowStatus:
    return WorkflowStatus(str(props["status"]))


def reason_of(props: dict[str, Any]) -> dict[str, Any]:
    """The stored suspend reason, with ``kind``."""
    reason: dict[str, Any] = json.loads(str(props["reason"]))
    return reason


def wait_until_of(props: dict[str, Any]) -> float | None:
    value = props.get("wait_until")
    return None if value is None else float(value)


def step_of(props: dict[str, Any]) -> int | str:
    """The stored step with the type it was given (int properties read back as int on every backend)."""
    step = props["current_step"]
    return step if isinstance(step, int) and not isinstance(step, bool) else str(step)


def context_of(row: Entity | None) -> str:
    """The context JSON text of a ``c`` row (an empty object when there is none)."""
    return str(row["context"]) if row is not None else "{}"


def context_row(partition: str, context: str) -> Entity:
    return Entity(partition, CONTEXT_ROW, stamped({"context": context}, FMT))


def _iso(timestamp: Any) -> str | None:
    return None if timestamp is None else iso(float(timestamp))


def approval_of(props: dict[str, Any]) -> dict[str, Any] | None:
    """Who approved, their comment and when (stored as epoch seconds; ISO text in rows of earlier releases)."""
    text = props.get("approval")
    if text is None:
        return None
    approval: dict[str, Any] = json.loads(str(text))
    at = approval.get("approved_at")
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        approval["approved_at"] = iso(float(at))
    return approval


def workflow_of(props: dict[str, Any], context: str | None = None) -> Workflow:
    """A ``w`` row (and the context text, when read) as the :class:`Workflow` clients see."""
    conditions = props.get("conditions")
    return Workflow(
        workflow_id=str(props["workflow_id"]),
        workflow_name=str(props["workflow_name"]),
        resource=str(props["resource"]),
        status=status_of(props),
        current_step=step_of(props),
        suspend_reason=reason_of(props),
        resume_conditions=json.loads(str(conditions)) if conditions is not None else None,
        ready=bool(props.get("ready", False)),
        ready_reason=props.get("ready_reason"),
        timeout_reason=props.get("timeout_reason"),
        detail=props.get("detail"),
        approval=approval_of(props),
        wait_until=_iso(props.get("wait_until")),
        suspensions=suspensions_of(props),
        etag=str(props["seq"]),
        created_at=_iso(props["created_at"]) or "",
        updated_at=_iso(props["updated_at"]) or "",
        suspended_at=_iso(props.get("suspended_at")),
        resumed_at=_iso(props.get("resumed_at")),
        finished_at=_iso(props.get("finished_at")),
        context_state=json.loads(context) if context is not None else None,
    )


# --------------------------------------------------------------------------- due entries


def due_kind(props: dict[str, Any]) -> str:
    """Whether the workflow's pending wait is a timeout or a scheduled resume."""
    return SCHEDULE if reason_of(props)["kind"] == ReasonKind.SCHEDULE else TIMEOUT


def due_item(workflow_id: str, suspension: int, kind: str) -> str:
    """The due index item of one suspension's wait: ``<workflow_id>|<suspension>|<kind>``."""
    return f"{workflow_id}|{suspension}|{kind}"


def parse_due_item(item: str) -> tuple[str, int, str]:
    """(workflow_id, suspension, kind) of a due item."""
    workflow_id, suspension, kind = item.split("|")
    return workflow_id, int(suspension), kind


def parse_legacy_due(row_key: str) -> tuple[int, str, str, int, str]:
    """(due, tenant, workflow_id, suspension, kind) of an entry in the legacy ``!due|NN`` shards."""
    due, tenant, workflow_id, suspension, kind = row_key.split("|")
    return int(due), tenant, workflow_id, int(suspension), kind
