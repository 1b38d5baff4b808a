"""The audit log: every audited change of a tenant as an entry of a tamper-evident log, and its readers.

Pipeline. Domains write change records into outboxes (:mod:`shared.storage.changefeed`);
:meth:`AuditService.sequence_changes` (the ``sequence_changes`` timer, every minute)
first sequences them into each tenant's feed, then turns each sequenced change marked
``audited`` into an :class:`~shared.domains.audit.models.AuditEntry` and appends it to
the tenant's log (:class:`shared.storage.tlog.Log` under ``audit/<tenant>/`` of
``stowage-data``, origin ``stowage.dev/audit/<tenant>``, checkpoints signed with the
audit key). Layout: :mod:`shared.domains.audit._layout`.

Guarantees.

* Exactly once, in feed order, gapless: the progress is read from the log itself
  (the feed ``seq`` of its last entry, or the ``cursor`` row when later changes were
  not audited), and the append is conditional on the log still having the size that
  progress was read at (``_GuardedLog``: the append's own checkpoint read must see
  that size, and its checkpoint write is conditional on that read's ETag). A second
  instance, a redelivery or a rerun after a crash either finds the entries in the log
  or appends exactly the missing ones. A per-tenant lease row keeps two instances
  from appending to one log at once (the tlog's assumption); it only saves work and
  narrows the tlog's stall window, the size condition is what guarantees.
* Every leaf is fixed before its first append attempt: the entry row (salt, details,
  leaf) is written create-only before the append and reused by every retry, so a
  crash between the tile writes and the checkpoint write makes the next run append
  the very same bytes.
* Erasure (:meth:`AuditService.erase_details`) removes a row's details and salt; the
  leaf holds only their salted SHA-256, so no proof changes, and what was erased
  cannot be recovered from the hash (32 random bytes of salt). The erasure is itself
  a change record of the audit domain, audited.
* Tenancy: everything is under the tenant's partition and prefix; another tenant's
  entry, checkpoint or proof is a 404, its continuation token a 400.

Anchoring (``STOWAGE_AUDIT_ANCHOR``, :meth:`shared.stores.Stores.audit_anchor`). With
an anchor store, every checkpoint a tenant's log commits is also written there,
create-only, under ``audit/<tenant>/anchor/<10**20 - 1 - size>`` (the tlog's
Anchoring: one immutable key per size, newest first in key order, nothing mutable).
Before it appends anything, a run that holds the tenant's lease anchors the log's
current checkpoint (idempotent), so a crash between a commit and its anchor write
heals at the next run that visits the tenant (its next change or a lagging mark); an anchor at that size with another root means the
log was rewritten: the tenant is reported failed and nothing is appended on top.
:meth:`AuditService.verify` checks every anchored checkpoint: its signature, and
that the log extends it (not shorter, same root over its entries), so a log
rewritten, truncated or forked since is caught even if re-signed with the key.

Crash behaviour: a crash after the entry rows are written and before the checkpoint
leaves rows whose ``index`` is not below the log's size: readers skip them, the next
run reuses them. A crash after the append and before the cursor moves only costs a
re-read of the feed: the log's last entry says where to resume. A tenant left behind
(out of budget, contended, failed) is noted in ``!lag`` and visited by the next run.

Signing key: ``STOWAGE_AUDIT_SIGNING_KEY`` (base64 32-byte Ed25519 seed). Unset, the
first instance that needs one generates it and stores it create-only in
``system/audit-signing-key``; every instance then reads that blob. Production should
set the key (a Key Vault reference), so that write access to the storage is not
enough to sign a rewritten log.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from shared import names
from shared.backends import Entity, Page, TableOp
from shared.domains.audit import _layout as layout
from shared.domains.audit.models import (
    APPEND_BATCH,
    MAX_PAGE,
    SCAN_BOUND,
    AuditCategory,
    AuditEntry,
    AuditStatus,
    AuditVerifyReport,
    ConsistencyProof,
    EntryProof,
    SequenceResult,
    VerifyProblem,
)
from shared.errors import AlreadyExists, Conflict, InvalidInput, NotFound, PreconditionFailed
from shared.keys import check_tenant
from shared.request_context import current
from shared.storage.changefeed import Change, ChangeFeed, ChangeRecord
from shared.storage.due import Budget
from shared.storage.rows import stamped, stored_time
from shared.storage.tlog import (
    Checkpoint,
    Log,
    LogConflict,
    LogCorrupt,
    NoteSigner,
    NoteVerifier,
    verify_log,
)
from shared.stores import Stores

log = logging.getLogger(__name__)

#: Seconds one run of the ``sequence_changes`` timer works for.
SEQUENCE_BUDGET_SECONDS = 40.0
#: How long a tenant's append lease lasts; far above one append.
LEASE_SECONDS = 120.0
#: The note key name of audit checkpoints (signed-note: no spaces, no '+').
KEY_NAME = "stowage.dev/audit"
_ORIGIN = "stowage.dev/audit/"
_ROWS_PER_BATCH = 25  # entry rows of up to ~20 KB each: well inside one 4 MiB batch


def _version() -> str:
    try:
        return importlib.metadata.version("stowage")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


VERSION = _version()


def origin_of(tenant: str) -> str:
    return _ORIGIN + check_tenant(tenant)


def log_prefix(tenant: str) -> str:
    return f"{names.AUDIT_LOG_PREFIX}{check_tenant(tenant)}/"


class _GuardedLog(Log):
    """A :class:`Log` whose append commits only on top of the size its caller read progress at."""

    expected_size: int | None = None

    def _read_checkpoint(self) -> tuple[Checkpoint | None, str | None]:
        current_checkpoint, etag = super()._read_checkpoint()
        size = current_checkpoint.size if current_checkpoint is not None else 0
        if self.expected_size is not None and size != self.expected_size:
            raise LogConflict(f"log {self.origin!r} is at size {size}, not {self.expected_size}: another "
                              "instance appended; read the progress again")
        return current_checkpoint, etag


class AuditService:
    """Sequencing into the audit logs, and every reader of feeds and logs; every call names its tenant."""

    def __init__(self, stores: Stores, *, clock: Callable[[], float] = time.time,
                 feed: ChangeFeed | None = None) -> None:
        self.stores = stores
        self.table = stores.table(names.TABLE_AUDIT)
        self.blobs = stores.blobs(names.CONTAINER_DATA)
        self._clock = clock
        #: The stores' change feed (it reaches every table of names.TABLES, this domain's too).
        self.feed = feed if feed is not None else stores.changes
        self.instance = os.environ.get("WEBSITE_INSTANCE_ID") or socket.gethostname() or "unknown"
        self._signer: NoteSigner | None = None
        self._signer_lock = threading.Lock()
        #: Where each checkpoint is also written (None: not anchored); see the module doc.
        self.anchor = stores.audit_anchor()

    # ------------------------------------------------------------------ the key and the logs

    def signer(self) -> NoteSigner:
        """The audit signing key: the setting, else the generated one kept create-only in a blob."""
        with self._signer_lock:
            if self._signer is None:
                configured = self.stores.settings.audit_signing_key
                self._signer = NoteSigner.from_base64(KEY_NAME, configured or self._stored_key())
            return self._signer

    def _stored_key(self) -> str:
        try:
            return self.blobs.get(names.AUDIT_SIGNING_KEY_BLOB).data.decode("ascii")
        except NotFound:
            pass
        seed = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        try:
            self.blobs.put(names.AUDIT_SIGNING_KEY_BLOB, seed.encode("ascii"), content_type="text/plain",
                           if_none_match=True)
            return seed
        except AlreadyExists:  # another instance made it first: use that one
            return self.blobs.get(names.AUDIT_SIGNING_KEY_BLOB).data.decode("ascii")

    def verifier(self) -> NoteVerifier:
        return self.signer().verifier

    def _log(self, tenant: str, *, expected_size: int | None = None) -> _GuardedLog:
        log_ = _GuardedLog(self.blobs, log_prefix(tenant), origin_of(tenant), self.signer(), anchor=self.anchor)
        log_.expected_size = expected_size
        return log_

    # ------------------------------------------------------------------ recording

    def record(self, tenant: str, domain: str, op: str, target_type: str, target_id: str, *,
               details: Any = None, audited: bool = True) -> None:
        """Record an event that changes no stored state (an authentication failure, a key revoked elsewhere).

        The record is an outbox row of its own in the audit table, sequenced and
        audited like every change; actor and context come from the current request context.
        """
        check_tenant(tenant)
        context = current()
        record = ChangeRecord(domain=domain, op=op, target_type=target_type, target_id=target_id,
                              actor=context.actor.as_json(), context=context.as_json(), audited=audited,
                              details=details)
        self.table.batch([self.feed.outbox_op(tenant, names.TABLE_AUDIT, tenant, record)])

    # ------------------------------------------------------------------ sequencing

    def sequence_changes(self, tenant: str | None = None, budget: Budget | None = None) -> SequenceResult:
        """Sequence pending change records, then append the audited ones to the tenants' logs, exactly once.

        ``tenant`` None: every tenant with pending records, with new feed rows, or left behind by an
        earlier run. Half the budget's time goes to the feed, the rest to the logs; its ``items``
        count changes sequenced plus changes examined for the logs.
        """
        budget = budget or Budget(seconds=SEQUENCE_BUDGET_SECONDS)
        if tenant is not None:
            check_tenant(tenant)
        result = SequenceResult()
        left = None if budget.items is None else max(1, budget.items - budget.spent)
        report = self.feed.sequence(tenant, Budget(seconds=budget.seconds / 2, items=left, clock=budget.clock))
        for _ in range(report.total):
            budget.spend()
        result.sequenced = dict(report.sequenced)
        result.contended.extend(report.contended)
        lagging = self._lagging()
        candidates = [tenant] if tenant is not None else self._candidates(report.sequenced, lagging)
        for name in candidates:
            if budget.exhausted:
                if name in report.sequenced and name not in lagging:
                    self._mark_lag(name)
                continue
            self._audit_tenant(name, budget, result, lagging=name in lagging)
        return result

    def _lagging(self) -> set[str]:
        return {row.row_key for row in self.table.query_all(layout.LAG_PARTITION)}

    def _candidates(self, sequenced: Iterable[str], lagging: set[str]) -> list[str]:
        seen: dict[str, None] = {}
        for name in [*sequenced, *sorted(lagging), *(row.row_key for row in self.feed.hints.tenants())]:
            seen.setdefault(name, None)
        return list(seen)

    def _mark_lag(self, tenant: str) -> None:
        self.table.upsert(Entity(layout.LAG_PARTITION, tenant, stamped({"at": stored_time(self._clock())},
                                                                         layout.FMT)))

    def _audit_tenant(self, tenant: str, budget: Budget, result: SequenceResult, *, lagging: bool) -> None:
        if not lagging and self._caught_up(tenant):
            return
        lease = self._acquire(tenant)
        if lease is None:
            result.contended.append(tenant)
            return
        caught_up = False
        try:
            if self.anchor is not None:  # heal a crash between an earlier commit and its anchor write
                self._log(tenant).anchor_checkpoint()
            while not budget.exhausted:
                if not self._audit_batch(tenant, budget, result):
                    caught_up = True
                    break
        except (LogConflict, Conflict) as exc:
            log.info("audit log of tenant %r: another instance got there first (%s); next run", tenant, exc)
            result.contended.append(tenant)
        except Exception:  # one tenant's broken log must not stop the others: logged, retried next run
            log.exception("audit log of tenant %r: appending failed; left for the next run", tenant)
            result.failed.append(tenant)
            if not lagging:
                self._mark_lag(tenant)
            return
        finally:
            self._release(tenant, lease)
        if caught_up and lagging:
            try:
                self.table.delete(layout.LAG_PARTITION, tenant)
            except NotFound:
                pass
        elif not caught_up and not lagging:
            self._mark_lag(tenant)

    def _caught_up(self, tenant: str) -> bool:
        """Cheap check before taking the lease: the cursor exists and no change follows it."""
        cursor = self._find(tenant, layout.CURSOR_ROW)
        if cursor is None:
            return not self.feed.changes(tenant, after=0, limit=1).items
        return not self.feed.changes(tenant, after=int(cursor.get("seq")), limit=1).items

    def _acquire(self, tenant: str) -> str | None:
        now = self._clock()
        row = Entity(tenant, layout.LEASE_ROW, stamped({"holder": secrets.token_hex(8), "until": now + LEASE_SECONDS},
                                                       layout.FMT))
        try:
            return self.table.insert(row)
        except AlreadyExists:
            pass
        held = self._find(tenant, layout.LEASE_ROW)
        try:
            if held is None:
                return self.table.insert(row)
            if float(held.get("until", 0.0)) > now:
                return None
            return self.table.update(row, if_match=held.etag)
        except (AlreadyExists, PreconditionFailed, NotFound):
            return None

    def _release(self, tenant: str, etag: str) -> None:
        try:
            self.table.delete(tenant, layout.LEASE_ROW, if_match=etag)
        except (NotFound, PreconditionFailed):
            pass  # expired and taken over: the new holder's now

    def _find(self, partition: str, row_key: str) -> Entity | None:
        try:
            return self.table.get(partition, row_key)
        except NotFound:
            return None

    def _audit_batch(self, tenant: str, budget: Budget, result: SequenceResult) -> bool:
        """Append the audited changes of the next batch of the feed; whether there may be more."""
        room = APPEND_BATCH if budget.items is None else min(APPEND_BATCH, budget.items - budget.spent)
        if room <= 0:
            return True
        reader = self._log(tenant)
        size = reader.checkpoint().size
        last = layout.entry_seq(reader.entry(size - 1)) if size else 0
        cursor = self._find(tenant, layout.CURSOR_ROW)
        start = max(last, int(cursor.get("seq")) if cursor is not None else 0)
        changes = self.feed.changes(tenant, after=start, limit=room).items
        if not changes:
            return False
        audited = [change for change in changes if change.audited]
        if audited:
            entries = self._prepare(tenant, audited, size)
            self._log(tenant, expected_size=size).append(entries)
            result.appended[tenant] = result.appended.get(tenant, 0) + len(entries)
        self._advance_cursor(tenant, cursor, changes[-1].seq)
        for _ in changes:
            budget.spend()
        result.examined[tenant] = result.examined.get(tenant, 0) + len(changes)
        return len(changes) == room

    def _prepare(self, tenant: str, audited: list[Change], size: int) -> list[bytes]:
        """The leaves of ``audited`` at log positions size, size + 1, ...: from their rows, or new rows."""
        first, last = audited[0].seq, audited[-1].seq
        existing = {int(row.get("seq")): row for row in
                    self.table.query_all(tenant, start=layout.entry_row(first), end=layout.entry_row(last + 1))}
        entries: list[bytes] = []
        ops: list[TableOp] = []
        for offset, change in enumerate(audited):
            index = size + offset
            row = existing.get(change.seq)
            if row is not None:
                entry = str(row["entry"]).encode("utf-8")
                if layout.entry_seq(entry) != change.seq:
                    raise LogCorrupt(f"audit row {row.row_key} of tenant {tenant!r} holds another change's entry")
                if int(row.get("index")) != index:
                    properties = dict(row.properties)
                    properties["index"] = index
                    ops.append(TableOp.update(Entity(tenant, row.row_key, properties), if_match=row.etag))
            else:
                salt = secrets.token_bytes(32)
                entry = layout.build_entry(change, salt, version=VERSION, instance=self.instance)
                ops.append(TableOp.insert(layout.entry_entity(tenant, change, index, entry, salt)))
            entries.append(entry)
        for i in range(0, len(ops), _ROWS_PER_BATCH):
            try:
                self.table.batch(ops[i:i + _ROWS_PER_BATCH])
            except (AlreadyExists, PreconditionFailed) as exc:
                raise LogConflict(f"another instance is writing the audit rows of tenant {tenant!r}") from exc
        return entries

    def _advance_cursor(self, tenant: str, cursor: Entity | None, through: int) -> None:
        """Move the cursor forward to ``through`` (never back); a lost race leaves the other's value."""
        row = Entity(tenant, layout.CURSOR_ROW, stamped({"seq": through, "at": stored_time(self._clock())},
                                                        layout.FMT))
        try:
            if cursor is None:
                self.table.insert(row)
            elif int(cursor.get("seq")) < through:
                self.table.update(row, if_match=cursor.etag)
        except (AlreadyExists, PreconditionFailed, NotFound):
            pass

    # ------------------------------------------------------------------ erasure

    def erase_details(self, tenant: str, seq: int) -> AuditEntry:
        """Erase an entry's details and salt (GDPR); the entry, its hash and every proof stay valid.

        Idempotent: an erased entry is returned as it is. The erasure is recorded as an
        audited change of its own (``audit.erase_details``).
        """
        check_tenant(tenant)
        seq = _seq_number(seq)
        for _ in range(8):
            row = self._entry_row(tenant, seq)
            if row.get("erased_at") is not None:
                return layout.decode_entry(row)
            properties = {k: v for k, v in row.properties.items() if k not in ("details", "salt")}
            properties["erased_at"] = stored_time(self._clock())
            context = current()
            outbox = self.feed.outbox_op(tenant, names.TABLE_AUDIT, tenant, ChangeRecord(
                domain="audit", op="audit.erase_details", target_type="audit_entry", target_id=str(seq),
                actor=context.actor.as_json(), context=context.as_json(), details={"seq": seq}))
            try:
                self.table.batch([TableOp.update(Entity(tenant, row.row_key, properties), if_match=row.etag),
                                  outbox])
            except (PreconditionFailed, NotFound):
                continue
            return layout.decode_entry(self.table.get(tenant, row.row_key))
        raise Conflict(f"audit entry {seq} of tenant {tenant!r} kept changing; try again")

    # ------------------------------------------------------------------ reading

    def changes(self, tenant: str, *, after: int = 0, limit: int = 100,
                continuation: str | None = None) -> Page[Change]:
        """The tenant's sequenced changes after ``after``, in order (signed continuation)."""
        return self.feed.changes(tenant, after=after, limit=limit, continuation=continuation)

    def status(self, tenant: str) -> AuditStatus:
        """Newest sequenced change, pending outbox rows, newest audited entry and the log's size."""
        feed = self.feed.status(tenant)
        reader = self._log(tenant)
        size = reader.checkpoint().size
        newest_seq, newest_at = 0, None
        if size:
            document = json.loads(reader.entry(size - 1))
            newest_seq, newest_at = int(document["seq"]), str(document["timestamp"])
        cursor = self._find(tenant, layout.CURSOR_ROW)
        examined = max(newest_seq, int(cursor.get("seq")) if cursor is not None else 0)
        return AuditStatus(tenant=tenant, newest_seq=feed.newest_seq, newest_sequenced_at=feed.newest_at,
                           pending=feed.pending, pending_exact=feed.pending_exact, newest_audited_seq=newest_seq,
                           newest_audited_at=newest_at, examined_seq=examined, log_size=size,
                           anchored_size=reader.newest_anchored() if self.anchor is not None else None)

    def checkpoint(self, tenant: str) -> str:
        """The tenant's current signed checkpoint note; NotFound before its first entry."""
        current_checkpoint = self._log(tenant).checkpoint()
        if current_checkpoint.size == 0:
            raise NotFound(f"tenant {tenant!r} has no audit entries yet")
        return current_checkpoint.note

    def entries(self, tenant: str, *, after: int = 0, actor: str | None = None, target: str | None = None,
                category: str | None = None, since: float | None = None, until: float | None = None,
                limit: int = 100, continuation: str | None = None) -> Page[AuditEntry]:
        """Entries in the log with feed seq > ``after``, oldest first, filtered; a page may be short.

        Filters (``actor`` id, ``target`` id, ``category``, ``since`` <= time < ``until``,
        epoch s) scan at most :data:`SCAN_BOUND` stored entries per page; the continuation
        resumes after the last one scanned.
        """
        check_tenant(tenant)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}")
        if category is not None and category not in {c.value for c in AuditCategory}:
            raise InvalidInput(f"category must be one of {', '.join(c.value for c in AuditCategory)}")
        if continuation is not None:
            position = self.table.verify_continuation(tenant, continuation, purpose="audit-entries").get("after")
            after = position if isinstance(position, int) and not isinstance(position, bool) else -1
        after = _seq_number(after, allow_zero=True)
        size = self._log(tenant).checkpoint().size
        items: list[AuditEntry] = []
        scanned, last_scanned, more = 0, after, False
        for row in self.table.query_all(tenant, start=layout.entry_row(after + 1), end=layout.ENTRY_PREFIX + "~"):
            if int(row.get("index")) >= size:
                break  # appended rows end here: the rest are not in the log yet
            scanned += 1
            last_scanned = int(row.get("seq"))
            if _matches(row, actor, target, category, since, until):
                items.append(layout.decode_entry(row))
            if len(items) == limit or scanned >= SCAN_BOUND:
                more = True
                break
        token = None
        if more:
            token = self.table.sign_continuation(tenant, {"after": last_scanned}, purpose="audit-entries")
        return Page(items, token)

    def _entry_row(self, tenant: str, seq: int) -> Entity:
        try:
            return self.table.get(tenant, layout.entry_row(seq))
        except NotFound:
            raise NotFound(f"no audit entry for change {seq}") from None

    def entry(self, tenant: str, seq: int) -> EntryProof:
        """The entry of change ``seq`` with its inclusion proof against the current checkpoint."""
        check_tenant(tenant)
        seq = _seq_number(seq)
        row = self._entry_row(tenant, seq)
        reader = self._log(tenant)
        checkpoint_now = reader.checkpoint()
        index = int(row.get("index"))
        if index >= checkpoint_now.size:
            raise NotFound(f"no audit entry for change {seq} (not in the log yet)")
        stored = reader.entry(index)
        if stored != str(row["entry"]).encode("utf-8"):
            raise LogCorrupt(f"audit entry {seq} of tenant {tenant!r} differs from the log's entry {index}")
        proof = reader.inclusion_proof(index, checkpoint_now.size)
        return EntryProof(entry=layout.decode_entry(row), tree_size=checkpoint_now.size,
                          root_hash=_b64(checkpoint_now.root), inclusion=[_b64(h) for h in proof],
                          checkpoint=checkpoint_now.note)

    def consistency(self, tenant: str, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """RFC 6962 consistency proof between two sizes of the tenant's log (default: to the current size)."""
        check_tenant(tenant)
        reader = self._log(tenant)
        checkpoint_now = reader.checkpoint()
        new = checkpoint_now.size if new_size is None else new_size
        for value, what in ((old_size, "from"), (new, "to")):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidInput(f"{what} must be an integer tree size")
        if checkpoint_now.size == 0:
            raise NotFound(f"tenant {tenant!r} has no audit entries yet")
        if not 1 <= old_size <= new <= checkpoint_now.size:
            raise InvalidInput(f"sizes must satisfy 1 <= from <= to <= {checkpoint_now.size} (the log's size)")
        proof = reader.consistency_proof(old_size, new)
        return ConsistencyProof(old_size=old_size, new_size=new, old_root=_b64(reader.root(old_size)),
                                new_root=_b64(reader.root(new)), proof=[_b64(h) for h in proof],
                                checkpoint=checkpoint_now.note)

    # ------------------------------------------------------------------ verifying

    def verify(self, tenant: str, *, trusted: str | None = None,
               verifiers: Iterable[NoteVerifier] | None = None) -> AuditVerifyReport:
        """Recompute the tenant's whole log and check every entry; every problem found is reported.

        The tlog checks (:func:`shared.storage.tlog.verify_log`: bundles, tiles, root, the
        checkpoint's signature, consistency with ``trusted`` and, when anchoring is configured,
        with every anchored checkpoint), then per entry: it parses, names this tenant, its feed
        seq grows strictly, its row holds the same bytes, and, unless erased, the row's salt
        and details hash to the entry's ``details_sha256``.
        """
        check_tenant(tenant)
        keys = list(verifiers) if verifiers is not None else [self.verifier()]
        report = verify_log(self.blobs, log_prefix(tenant), origin_of(tenant), keys, trusted=trusted,
                            anchor=self.anchor)
        result = AuditVerifyReport(tenant=tenant, size=report.size, root=_b64(report.root) if report.root else "",
                                   problems=[VerifyProblem(p.kind, p.key, p.detail) for p in report.problems])
        if self.anchor is not None:
            result.anchored, result.anchored_size = report.anchored, report.anchored_size
        try:
            result.checkpoint = self.blobs.get(log_prefix(tenant) + "checkpoint").data.decode("utf-8", "replace")
        except NotFound:
            pass
        if not report.ok and report.kinds() & {"checkpoint-missing", "checkpoint-invalid"}:
            return result
        reader = Log(self.blobs, log_prefix(tenant), origin_of(tenant), verifiers=keys)
        try:
            self._verify_entries(tenant, reader, report.size, result)
        except LogCorrupt as exc:
            result.problems.append(VerifyProblem("entries-unreadable", "tile/entries", str(exc)))
        return result

    def _verify_entries(self, tenant: str, reader: Log, size: int, result: AuditVerifyReport) -> None:
        rows = {int(row.get("index")): row for row in self.table.query_all(tenant, prefix=layout.ENTRY_PREFIX)
                if int(row.get("index")) < size}
        previous = 0
        for index, entry in enumerate(reader.entries(0, size)):
            where = f"entry {index}"
            try:
                document = json.loads(entry)
                seq = int(document["seq"])
            except (ValueError, KeyError, TypeError) as exc:
                result.problems.append(VerifyProblem("entry-malformed", where, f"not an audit entry: {exc}"))
                continue
            if document.get("tenant") != tenant:
                result.problems.append(VerifyProblem("entry-tenant", where, f"names tenant {document.get('tenant')!r}"))
            if seq <= previous:
                result.problems.append(VerifyProblem("entry-order", where, f"change {seq} follows change {previous}"))
            previous = max(previous, seq)
            row = rows.get(index)
            if row is None:
                result.problems.append(VerifyProblem("row-missing", where, f"no audit row for change {seq}"))
                continue
            if str(row["entry"]).encode("utf-8") != entry:
                result.problems.append(VerifyProblem("row-mismatch", where, "the audit row holds other bytes"))
                continue
            if row.get("erased_at") is None and row.get("salt"):
                digest = layout.details_digest(bytes.fromhex(str(row["salt"])),
                                               json.loads(str(row["details"])) if row.get("details") else None)
                if digest != document.get("details_sha256"):
                    result.problems.append(VerifyProblem("details-hash", where,
                                                         f"the details of change {seq} do not match its hash"))


def _matches(row: Entity, actor: str | None, target: str | None, category: str | None,
             since: float | None, until: float | None) -> bool:
    at = float(row.get("at", 0.0))
    return ((actor is None or row.get("actor_id") == actor)
            and (target is None or row.get("target_id") == target)
            and (category is None or row.get("category") == category)
            and (since is None or at >= since) and (until is None or at < until))


def _seq_number(value: object, *, allow_zero: bool = False) -> int:
    if (not isinstance(value, int) or isinstance(value, bool)
            or not (0 if allow_zero else 1) <= value < 10 ** 20 - 1):
        raise InvalidInput("a change sequence number is a positive integer" if not allow_zero
                           else "after must be a non-negative integer sequence number")
    return value


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")
