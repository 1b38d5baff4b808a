"""The audit domain's results, enums and limits (seed 002 ``AuditLogEntry``).

An entry is what the log holds: its canonical JSON is the log leaf. It names the
change (event, actor, target, context) but not the changed data: the leaf holds
``details_sha256``, SHA-256 over a per-entry random salt and the change's canonical
details, which live beside it in the audit table and can be erased.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: Most changes examined per log append (one entry bundle's worth).
APPEND_BATCH = 256
#: Most entries one listing page returns.
MAX_PAGE = 1000
#: Most stored entries one filtered listing page scans before it answers (with a continuation).
SCAN_BOUND = 5000
#: The format of the entry JSON (``v``).
ENTRY_VERSION = 1


class AuditCategory(StrEnum):
    """Seed 002's log categories an entry can have."""

    DATA_ACCESS = "data_access"
    SYSTEM_CHANGE = "system_change"
    AUTHENTICATION = "authentication"
    AUTHORIZATION = "authorization"
    WORKFLOW = "workflow"
    AGENT_ACTIVITY = "agent_activity"
    SECURITY = "security"


class AuditLevel(StrEnum):
    INFO = "info"
    WARN = "warn"


#: Domains whose changes are security events (keys, authentication) and the audit domain itself.
_SECURITY_DOMAINS = {"apikeys": AuditCategory.SECURITY, "keys": AuditCategory.SECURITY,
                     "audit": AuditCategory.SECURITY, "auth": AuditCategory.AUTHENTICATION,
                     "authentication": AuditCategory.AUTHENTICATION, "authorization": AuditCategory.AUTHORIZATION}
_AGENT_DOMAINS = {"memory", "sessions", "checkpoints", "traces", "evals", "scores"}
_SYSTEM_OPS = {"backup", "restore", "retention", "configure", "erase", "purge", "prune_feed"}
_WARN_OPS = {"denied", "failed", "forbidden", "unauthorized", "revoke", "erase", "erase_details"}


def category_of(domain: str, op: str) -> AuditCategory:
    """The category of ``<domain>.<op>``: security domains by name, workflows, agent state, else data access.

    Objects' reads and writes, and every domain's recorded reads (``read``, ``read_<what>``: the
    setting ``audit_reads``), are data access (as cloud providers' "data access" logs); maintenance of
    the system itself (backup, restore, retention) is a system change.
    """
    if domain in _SECURITY_DOMAINS:
        return _SECURITY_DOMAINS[domain]
    if op in ("denied", "forbidden"):
        return AuditCategory.AUTHORIZATION
    if op == "read" or op.startswith("read_"):
        return AuditCategory.DATA_ACCESS  # a recorded read (setting audit_reads) in any domain
    if op in _SYSTEM_OPS or domain in ("system", "platform"):
        return AuditCategory.SYSTEM_CHANGE
    if domain == "workflows":
        return AuditCategory.WORKFLOW
    if domain in _AGENT_DOMAINS:
        return AuditCategory.AGENT_ACTIVITY
    return AuditCategory.DATA_ACCESS


def level_of(domain: str, op: str) -> AuditLevel:
    """``warn`` for refusals, failures, revocations and erasures; ``info`` otherwise."""
    return AuditLevel.WARN if op in _WARN_OPS or domain in ("auth", "authentication") else AuditLevel.INFO


@dataclass(frozen=True)
class AuditEntry:
    """One entry of a tenant's audit log, as stored (the leaf) plus where it is and what sits beside it."""

    #: The change's sequence number in the tenant's feed.
    seq: int
    #: The entry's index in the tenant's log (0-based).
    index: int
    id: str
    #: When the change was recorded (ISO-8601 UTC).
    timestamp: str
    source: dict[str, Any]
    level: str
    category: str
    #: ``<domain>.<op>``, e.g. ``objects.put``.
    event: str
    actor: dict[str, Any]
    target: dict[str, Any]
    context: dict[str, Any]
    metadata: dict[str, Any]
    #: SHA-256 (hex) over the salt and the canonical details; the leaf holds only this.
    details_sha256: str
    #: RFC 6962 leaf hash of the entry (hex): SHA-256(0x00 || entry JSON).
    leaf_hash: str
    #: The entry exactly as the log holds it (canonical JSON).
    entry: str
    #: The change's details, None once erased (or when it had none).
    details: Any = None
    #: The salt (hex) that with ``details`` gives ``details_sha256``; None once erased.
    salt: str | None = None
    #: When the details were erased (ISO-8601 UTC), else None.
    erased_at: str | None = None


@dataclass(frozen=True)
class EntryProof:
    """An entry with its RFC 6962 inclusion proof against the current signed checkpoint."""

    entry: AuditEntry
    tree_size: int
    #: Base64 root hash of the tree of ``tree_size``.
    root_hash: str
    #: The audit path, base64 hashes, leaf to root.
    inclusion: list[str]
    #: The signed checkpoint note the proof is against.
    checkpoint: str


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 6962 consistency proof from the tree of ``old_size`` to that of ``new_size``."""

    old_size: int
    new_size: int
    old_root: str
    new_root: str
    #: Base64 hashes.
    proof: list[str]
    checkpoint: str


@dataclass(frozen=True)
class AuditStatus:
    """How far the feed and the audit log of one tenant are."""

    tenant: str
    #: Newest sequenced change and when it was sequenced (epoch s, None before the first).
    newest_seq: int
    newest_sequenced_at: float | None
    #: Outbox rows waiting to be sequenced (counted up to a bound; ``pending_exact`` says).
    pending: int
    pending_exact: bool
    #: Feed sequence number of the newest audited entry (0: none), and when it was recorded.
    newest_audited_seq: int
    newest_audited_at: str | None
    #: Feed sequence number up to which every change has been examined for the log.
    examined_seq: int
    #: Entries in the log (the signed checkpoint's size).
    log_size: int
    #: Size of the newest checkpoint written to the anchor (0: none yet); None when anchoring is not configured.
    anchored_size: int | None = None


@dataclass
class SequenceResult:
    """What one :meth:`AuditService.sequence_changes` run did."""

    #: Changes moved from outboxes into the feeds, per tenant.
    sequenced: dict[str, int] = field(default_factory=dict)
    #: Feed changes examined for the audit log, per tenant (audited or not).
    examined: dict[str, int] = field(default_factory=dict)
    #: Entries appended to the audit logs, per tenant.
    appended: dict[str, int] = field(default_factory=dict)
    #: Tenants left for the next run: another instance held their lease or committed first.
    contended: list[str] = field(default_factory=list)
    #: Tenants whose append failed (logged; visited again by the next run).
    failed: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Changes sequenced plus changes examined: 0 when the run found nothing to do."""
        return sum(self.sequenced.values()) + sum(self.examined.values())

    def __int__(self) -> int:
        return self.total


@dataclass(frozen=True)
class VerifyProblem:
    kind: str
    key: str
    detail: str


@dataclass
class AuditVerifyReport:
    """What :meth:`AuditService.verify` found: the log's size and root and every problem."""

    tenant: str
    size: int = 0
    root: str = ""
    checkpoint: str | None = None
    problems: list[VerifyProblem] = field(default_factory=list)
    #: Anchored checkpoints checked, and the newest one's size; None when anchoring is not configured.
    anchored: int | None = None
    anchored_size: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems
