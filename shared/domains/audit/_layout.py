"""The audit domain's stored layout: keys, the entry JSON (the log leaf) and row codecs.

Table ``stowageaudit``, partition ``<tenant>``:

* ``e|<feed seq, 20 digits>``: one row per audited change, written before the
  append that commits it: ``seq``, ``index`` (its position in the log, the same for
  every attempt: the k-th audited change after the log's last one goes at size + k),
  ``entry`` (the leaf exactly as appended), ``details`` (JSON) and ``salt`` (hex),
  both removed by an erasure (``erased_at`` then says when), and the filter fields
  ``category``, ``event``, ``actor_id``, ``target_type``, ``target_id``, ``at``.
  A row whose ``index`` is not below the checkpoint's size is not (yet) in the log
  and readers skip it.
* ``cursor``: ``seq``, the feed position through which every change was examined
  (changes that are not audited leave no entry, so the log alone cannot say).
* ``lease``: ``holder``, ``until``: the instance appending to this tenant's log.
* ``~outbox|...``: change records of the audit domain itself (erasures, events
  recorded with :meth:`AuditService.record`), sequenced like every domain's.

Partition ``!lag``: one row per tenant whose log a run left behind (contended, out of
budget, failed), so the next run visits it even when the feed has no hint for it.

Blobs of ``stowage-data``: the log of each tenant under ``audit/<tenant>/`` (C2SP
tlog-tiles, :mod:`shared.storage.tlog`), and ``system/audit-signing-key`` (the
generated key, when the setting is unset).

Blobs of the anchor store (``STOWAGE_AUDIT_ANCHOR``, when set): every checkpoint of
each tenant's log, ``audit/<tenant>/anchor/<10**20 - 1 - size, 20 digits>``,
create-only (:func:`shared.storage.tlog.anchor_path`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.backends import Entity
from shared.domains.audit.models import ENTRY_VERSION, AuditEntry, category_of, level_of
from shared.storage.changefeed import Change
from shared.storage.rows import iso, json_value, stamped, stored_time
from shared.storage.tlog import leaf_hash

FMT = 1
ENTRY_PREFIX = "e|"
CURSOR_ROW = "cursor"
LEASE_ROW = "lease"
LAG_PARTITION = "!lag"
_SEQ_DIGITS = 20
#: Prefix of the salted details hash, so it cannot be mistaken for a hash of anything else.
_DETAILS_DOMAIN = b"stowage-audit-details-v1\x00"


def entry_row(seq: int) -> str:
    return f"{ENTRY_PREFIX}{seq:0{_SEQ_DIGITS}d}"


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, compact separators, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def details_digest(salt: bytes, details: Any) -> str:
    """SHA-256 (hex) over a domain tag, the per-entry salt and the canonical details."""
    return hashlib.sha256(_DETAILS_DOMAIN + salt + canonical(details)).hexdigest()


def build_entry(change: Change, salt: bytes, *, version: str, instance: str) -> bytes:
    """The leaf of ``change``: seed 002's AuditLogEntry as canonical JSON, with the salted details hash."""
    context = dict(change.context)
    transport = context.pop("source", None)
    # Domains name ops in full ("objects.put"); a bare op ("put") is qualified with its domain.
    op = change.op.removeprefix(change.domain + ".")
    event = f"{change.domain}.{op}"
    document = {
        "v": ENTRY_VERSION,
        "id": change.id,
        "seq": change.seq,
        "tenant": change.tenant,
        "timestamp": iso(change.at),
        "source": {"component": f"stowage.{change.domain}", "instance": instance, "version": version},
        "level": level_of(change.domain, op).value,
        "category": category_of(change.domain, op).value,
        "event": event,
        "actor": change.actor,
        "target": {"type": change.target_type, "id": change.target_id},
        "context": context,
        "metadata": {"transport": transport, "sequenced_at": iso(change.sequenced_at)},
        "details_sha256": details_digest(salt, change.details),
    }
    return canonical(document)


def entry_entity(tenant: str, change: Change, index: int, entry: bytes, salt: bytes) -> Entity:
    document = json.loads(entry)
    actor = document.get("actor") or {}
    properties: dict[str, Any] = {
        "seq": change.seq, "index": index, "entry": entry.decode("utf-8"),
        "details": json.dumps(change.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        "salt": salt.hex(), "category": document["category"], "event": document["event"],
        "actor_id": str(actor.get("id", "")), "target_type": change.target_type, "target_id": change.target_id,
        "at": stored_time(change.at),
    }
    return Entity(tenant, entry_row(change.seq), stamped(properties, FMT))


def decode_entry(row: Entity) -> AuditEntry:
    """An entry row as the reader sees it."""
    text = str(row["entry"])
    document = json.loads(text)
    erased = row.get("erased_at")
    return AuditEntry(
        seq=int(row.get("seq")), index=int(row.get("index")), id=str(document["id"]), timestamp=str(document["timestamp"]),
        source=document["source"], level=str(document["level"]), category=str(document["category"]),
        event=str(document["event"]), actor=document["actor"], target=document["target"],
        context=document["context"], metadata=document["metadata"], details_sha256=str(document["details_sha256"]),
        leaf_hash=leaf_hash(text.encode("utf-8")).hex(), entry=text,
        details=None if erased is not None else json_value(row.get("details")),
        salt=None if erased is not None else (str(row["salt"]) if row.get("salt") else None),
        erased_at=iso(float(erased)) if erased is not None else None,
    )


def entry_seq(entry: bytes) -> int:
    """The feed sequence number a leaf records."""
    value = json.loads(entry).get("seq")
    if not isinstance(value, int):
        raise ValueError("an audit entry without a sequence number")
    return value
