"""HTTP transport for the change feed and the audit log: /api/v1/changes and /api/v1/audit.

Every route needs the ``admin`` scope besides the ``read`` (GET) or ``write`` (DELETE)
scope the edge checks: the feed and the log show every change of the tenant, whoever
made it. Proofs are RFC 6962 (SHA-256; leaf ``H(0x00 || entry)``, node
``H(0x01 || l || r)``), hashes in standard base64, checkpoints C2SP signed notes.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, BeforeValidator, Field

from functions.auth import require_scope, tenant_of
from functions.context import context_of
from functions.http import StorageRoute
from functions.problems import responses
from shared.domains.audit.models import MAX_PAGE, SCAN_BOUND, AuditCategory, AuditEntry
from shared.domains.audit.service import AuditService
from shared.errors import InvalidInput

router = APIRouter(prefix="/api/v1", tags=["audit"], route_class=StorageRoute,
                   dependencies=[Depends(require_scope("admin"))])
Tenant = Annotated[str, Depends(tenant_of)]
# A path id like every other (the OpenAPI test holds path ids to the id rule); the service wants a decimal.
#: A sequence number in a path: decimal, from 1, at most 19 digits (what ``_seq`` accepts).
SEQ_PATTERN = r"^[1-9][0-9]{0,18}$"
Seq = Annotated[str, Path(pattern=SEQ_PATTERN, min_length=1, max_length=19,
                          description="The change's sequence number in the tenant's feed (decimal, from 1).")]
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _date_time_text(value: object) -> object:
    """A query instant must be ISO-8601 text: pydantic would also read a bare number as epoch seconds."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("an ISO-8601 date-time is expected, not a number")
    return value


Instant = Annotated[datetime | None, BeforeValidator(_date_time_text)]


def _service(request: Request) -> AuditService:
    """The app context's audit service."""
    return context_of(request).audit


# --------------------------------------------------------------------------- models


class ChangeOut(BaseModel):
    """One sequenced change of the tenant's feed."""

    seq: int = Field(description="Gapless per-tenant sequence number, from 1.")
    id: str = Field(description="The change record's id.")
    domain: str = Field(description="The domain that changed (objects, memory, ...).")
    op: str = Field(description="What it did (put, delete, append, ...).")
    target_type: str
    target_id: str
    actor: dict[str, Any] = Field(description="Who: type (user, agent, system), id, name, roles.")
    context: dict[str, Any] = Field(description="Where from: transport, trace and span ids, correlation ids.")
    at: float = Field(description="When the change was made (epoch s).")
    sequenced_at: float = Field(description="When it was sequenced (epoch s).")
    audited: bool = Field(description="Whether it has an entry in the audit log.")
    details: Any = Field(default=None, description="Small JSON the domain recorded (data or its hash).")


class ChangePage(BaseModel):
    """A page of changes; pass ``continuation`` back for the next one (a page may be short)."""

    items: list[ChangeOut]
    continuation: str | None = None


class StatusOut(BaseModel):
    """How far the tenant's feed and audit log are."""

    newest_seq: int = Field(description="Newest sequenced change (0: none).")
    newest_sequenced_at: float | None = Field(description="When it was sequenced (epoch s).")
    pending: int = Field(description="Change records not yet sequenced (counted when asked, up to a bound).")
    pending_exact: bool = Field(description="False when counting stopped at its bound.")
    newest_audited_seq: int = Field(description="Feed seq of the newest audit entry (0: none).")
    newest_audited_at: str | None = Field(description="When that change was made (ISO-8601 UTC).")
    examined_seq: int = Field(description="Every change up to this seq has been examined for the log.")
    log_size: int = Field(description="Entries in the audit log (the signed checkpoint's size).")
    anchored_size: int | None = Field(
        default=None, description="Size of the newest checkpoint also written to the anchor store (0: none yet); "
                                  "null when anchoring (STOWAGE_AUDIT_ANCHOR) is not configured.")


class EntryOut(BaseModel):
    """An audit entry (seed 002 AuditLogEntry) and what is kept beside it."""

    seq: int = Field(description="The change's feed sequence number.")
    index: int = Field(description="The entry's index in the tenant's log (0-based).")
    id: str
    timestamp: str = Field(description="When the change was made (ISO-8601 UTC).")
    source: dict[str, Any] = Field(description="component, instance, version.")
    level: str
    category: AuditCategory
    event: str = Field(description="<domain>.<op>, e.g. objects.put.")
    actor: dict[str, Any]
    target: dict[str, Any] = Field(description="type and id.")
    context: dict[str, Any]
    metadata: dict[str, Any]
    details_sha256: str = Field(description="SHA-256 over the salt and the canonical details (hex).")
    leaf_hash: str = Field(description="RFC 6962 leaf hash of `entry` (hex).")
    entry: str = Field(description="The entry exactly as the log holds it (canonical JSON); the leaf.")
    details: Any = Field(default=None, description="The change's details; null once erased.")
    salt: str | None = Field(default=None, description="The salt (hex); null once erased.")
    erased_at: str | None = Field(default=None, description="When the details were erased.")


class EntryPage(BaseModel):
    """A page of audit entries, oldest first; pass ``continuation`` back (a page may be short, even empty)."""

    items: list[EntryOut]
    continuation: str | None = None


class EntryProofOut(BaseModel):
    """An entry and its inclusion proof against the current signed checkpoint."""

    entry: EntryOut
    tree_size: int
    root_hash: str = Field(description="Base64 root hash of the tree of tree_size.")
    inclusion: list[str] = Field(description="RFC 6962 audit path, base64 hashes from the leaf up.")
    checkpoint: str = Field(description="The signed checkpoint note (C2SP tlog-checkpoint).")


class ConsistencyOut(BaseModel):
    """An RFC 6962 consistency proof between two sizes of the log."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    proof: list[str] = Field(description="Base64 hashes.")
    checkpoint: str = Field(description="The current signed checkpoint note.")


def _seq(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < 1:
        raise InvalidInput(f"seq must be a positive decimal sequence number, got {text!r:.40}")
    return int(text)


def _entry(entry: AuditEntry) -> EntryOut:
    return EntryOut(**dataclasses.asdict(entry))


# --------------------------------------------------------------------------- routes


@router.get("/changes", response_model=ChangePage, responses=responses(400, 401, 403, 422),
            summary="Read the tenant's change feed after a sequence number")
def list_changes(
    request: Request,
    tenant: Tenant,
    after: Annotated[int, Query(ge=0, le=10**19, description="Changes with a larger seq (0: from the start).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: Annotated[str | None, Query(description="From the previous page; `after` is then ignored.")] = None,
) -> ChangePage:
    page = _service(request).changes(tenant, after=after, limit=limit, continuation=continuation)
    items = [ChangeOut(**{k: v for k, v in dataclasses.asdict(c).items() if k != "tenant"}) for c in page.items]
    return ChangePage(items=items, continuation=page.continuation)


@router.get("/audit/status", response_model=StatusOut, responses=responses(401, 403),
            summary="How far the feed and the audit log are")
def audit_status(request: Request, tenant: Tenant) -> StatusOut:
    status = _service(request).status(tenant)
    return StatusOut(**{k: v for k, v in dataclasses.asdict(status).items() if k != "tenant"})


@router.get("/audit/checkpoint", response_class=PlainTextResponse, responses={
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "The signed checkpoint note: origin, size, base64 root, blank line, signature lines."},
    **responses(401, 403, 404)}, summary="The audit log's current signed checkpoint")
def audit_checkpoint(request: Request, tenant: Tenant) -> PlainTextResponse:
    return PlainTextResponse(_service(request).checkpoint(tenant), media_type="text/plain; charset=utf-8")


@router.get("/audit/entries", response_model=EntryPage, responses=responses(400, 401, 403, 422),
            summary="List audit entries, filtered",
            description=f"Entries in the log, oldest first. Filters are applied while scanning the tenant's "
                        f"entries: one page scans at most {SCAN_BOUND} of them, so a filtered page may be short "
                        f"or empty and still carry a continuation; follow it until it is null.")
def list_entries(
    request: Request,
    tenant: Tenant,
    after: Annotated[int, Query(ge=0, le=10**19, description="Entries of changes with a larger seq.")] = 0,
    actor: Annotated[str | None, Query(max_length=1024, description="Only this actor id.")] = None,
    target: Annotated[str | None, Query(max_length=1024, description="Only this target id.")] = None,
    category: Annotated[AuditCategory | None, Query(description="Only this category.")] = None,
    from_: Annotated[Instant, Query(alias="from", description="Changes made at or after (ISO-8601).")] = None,
    to: Annotated[Instant, Query(description="Changes made before (ISO-8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    continuation: Annotated[str | None, Query(description="From the previous page; `after` is then ignored.")] = None,
) -> EntryPage:
    page = _service(request).entries(
        tenant, after=after, actor=actor, target=target, category=category.value if category else None,
        since=_epoch(from_), until=_epoch(to), limit=limit, continuation=continuation)
    return EntryPage(items=[_entry(e) for e in page.items], continuation=page.continuation)


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@router.get("/audit/entries/{seq}", response_model=EntryProofOut, responses=responses(400, 401, 403, 404, 422),
            summary="Read an audit entry with its inclusion proof")
def get_entry(seq: Seq, request: Request, tenant: Tenant) -> EntryProofOut:
    proof = _service(request).entry(tenant, _seq(seq))
    return EntryProofOut(entry=_entry(proof.entry), tree_size=proof.tree_size, root_hash=proof.root_hash,
                         inclusion=proof.inclusion, checkpoint=proof.checkpoint)


@router.delete("/audit/entries/{seq}/details", response_model=EntryOut, responses=responses(400, 401, 403, 404, 409, 422),
               summary="Erase an entry's details (GDPR); every proof stays valid")
def erase_details(seq: Seq, request: Request, tenant: Tenant) -> EntryOut:
    return _entry(_service(request).erase_details(tenant, _seq(seq)))


@router.get("/audit/proof/consistency", response_model=ConsistencyOut, responses=responses(400, 401, 403, 404, 422),
            summary="A consistency proof between two sizes of the audit log")
def consistency_proof(
    request: Request,
    tenant: Tenant,
    from_: Annotated[int, Query(alias="from", ge=1, le=10**19, description="The older tree size.")],
    to: Annotated[int | None, Query(ge=1, le=10**19, description="The newer size (default: the current).")] = None,
) -> ConsistencyOut:
    proof = _service(request).consistency(tenant, from_, to)
    return ConsistencyOut(**dataclasses.asdict(proof))
