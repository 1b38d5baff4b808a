"""Memory's stored layout: keys and row codecs, in table ``stowagememory``.

* partition ``<tenant>|t|<thread_id>`` (:func:`thread_pk`), one per thread, so that a
  thread and its messages change together in one atomic batch:

  - ``thread`` (:data:`THREAD_ROW`): resource, title, metadata, timestamps,
    ``message_count``, ``last_seq`` (the last sequence number handed out), the
    row key of the thread's index entry, ``created_marker`` (the row key of its create's
    idempotency marker, if any), and once a delete has begun ``deleting``,
    ``deleting_record`` (its due-index row key) and ``deleted_marker``;
  - ``m|<999999999999 - seq, 12 digits>`` (:func:`message_rk`): one entity per
    message. The sequence number is inverted so that ascending row-key order (the
    only order table stores read in) is newest first: "the last 50" is one query
    of 51 rows;
  - ``i|<sha256 of an idempotency key>``: the markers of :mod:`shared.storage.idempotency`
    (request fingerprint, status and result of the first application). An append's
    marker keeps the seqs it produced (``{"first": .., "last": ..}``), not the content.
    Markers written before that format (``first_seq``/``last_seq``, no ``fp``) are still read.

* partition ``<tenant>|r|<resource>`` (:func:`index_pk`): the resource's thread index,
  row keys ``<10^19 - created µs, 19 digits>|<thread_id>|<8 hex>``: newest *created* first.
* partition ``<tenant>|k`` (:func:`claims_pk`): ``i|<sha256 of a key>`` with the ``fp`` of the
  thread delete that used it, so the key cannot be reused to delete another thread
  (whose partition its marker is not in). Claims stay with the tenant.
* the due index of thread deletes in progress (:class:`shared.storage.due.DueIndex` under
  :data:`DELETING_PREFIX`): partition ``!deleting|<tenant>``, row key
  ``<unix s when the timer may finish it, 12 digits>|<thread_id>|<8 hex>`` (the thread row's
  ``deleting_record``), and its directory ``!deleting|~dir|NN``. The timer completes deletes a
  crash interrupted, round-robin over tenants. Records of the earlier layout, in partition
  ``!deleting`` (:data:`LEGACY_DELETING_PARTITION`), row key ``<unix s filed>|<tenant>|<thread_id>|<8 hex>``,
  are still finished.

Every row written carries ``fmt`` (:data:`FMT`); rows without it are format 1 too.
Timestamps are epoch seconds (float), shown as ISO-8601 UTC.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict
from typing import Any

from shared.backends import Entity
from shared.domains.memory.models import Message, Role, Thread
from shared.storage.rows import iso

#: The version of the row format this code writes.
FMT = 1
THREAD_ROW = "thread"
#: The due index of thread deletes in progress (``!`` cannot start a tenant).
DELETING_PREFIX = "!deleting|"
#: Where deletion records were kept before the due index (read, never written).
LEGACY_DELETING_PARTITION = "!deleting"
MAX_SEQ = 10**12 - 1
INDEX_SPAN = 10**19
MESSAGE_PREFIX = "m|"

_MESSAGE_ID = re.compile(r"^msg_(\d{12})_[0-9a-f]{8}$")


def thread_pk(tenant: str, thread_id: str) -> str:
    """The partition of a thread, its messages and its markers."""
    return f"{tenant}|t|{thread_id}"


def claims_pk(tenant: str) -> str:
    """The partition of a tenant's idempotency key claims of thread deletes."""
    return f"{tenant}|k"


def index_pk(tenant: str, resource: str) -> str:
    """The partition of a resource's thread index."""
    return f"{tenant}|r|{resource}"


def message_rk(seq: int) -> str:
    """A message's row key: the seq inverted, so that newest comes first."""
    return f"{MESSAGE_PREFIX}{MAX_SEQ - seq:012d}"


def new_message_id(seq: int) -> str:
    """A fresh id for the message at ``seq``: the seq, and a random suffix."""
    return f"msg_{seq:012d}_{secrets.token_hex(4)}"


def seq_of_message_id(message_id: str) -> int | None:
    """The seq a message id embeds, or None when it is not a message id."""
    match = _MESSAGE_ID.match(message_id)
    if match is None:
        return None
    seq = int(match.group(1))
    return seq if seq >= 1 else None


def index_rk(created_at: float, thread_id: str) -> str:
    """A thread's index entry row key: newest created first."""
    return f"{INDEX_SPAN - int(created_at * 1_000_000):019d}|{thread_id}|{secrets.token_hex(4)}"


def deletion_item(thread_id: str) -> str:
    """The due-index item of one delete of ``thread_id`` (a random suffix tells deletes of a reused id apart)."""
    return f"{thread_id}|{secrets.token_hex(4)}"


def legacy_deleting_end(before: float) -> str:
    """The upper row key bound of legacy deletion records filed before ``before``."""
    return f"{int(before):012d}|~"


def is_legacy_record(record_rk: str) -> bool:
    """Whether a thread's ``deleting_record`` names a legacy record (it holds the tenant too)."""
    return record_rk.count("|") == 3


def public_etag(etag: str | None) -> str:
    """The ETag callers see: the same shape on every backend, safe in an HTTP header
    (Azure's own are W/"datetime'...'"), and changing exactly when the stored one does."""
    return hashlib.sha256((etag or "").encode()).hexdigest()[:32]


def integer(entity: Entity, name: str) -> int:
    """An integer property (counts, seqs), whichever type the backend gave it back as."""
    value = entity[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"row {entity.row_key!r} has no integer {name!r}")
    return int(value)


def seconds(entity: Entity, name: str) -> float:
    """A timestamp property: epoch seconds."""
    value = entity[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"row {entity.row_key!r} has no timestamp {name!r}")
    return float(value)


def _metadata(text: Any) -> dict[str, Any]:
    value = json.loads(text) if isinstance(text, str) and text else {}
    return value if isinstance(value, dict) else {}


def thread_of(thread_id: str, entity: Entity, etag: str | None = None) -> Thread:
    """A thread row as the result callers see."""
    title = entity.get("title")
    return Thread(
        thread_id=thread_id,
        resource=str(entity["resource"]),
        title=title if isinstance(title, str) else None,
        metadata=_metadata(entity.get("metadata")),
        created_at=iso(seconds(entity, "created_at")),
        updated_at=iso(seconds(entity, "updated_at")),
        message_count=integer(entity, "message_count"),
        etag=public_etag(etag or entity.etag),
    )


def message_of(thread_id: str, entity: Entity, etag: str | None = None) -> Message:
    """A message row as the result callers see."""
    parts = entity.get("parts")
    parent = entity.get("parent_message_id")
    return Message(
        message_id=str(entity["message_id"]),
        thread_id=thread_id,
        seq=integer(entity, "seq"),
        role=Role(entity["role"]),
        content=json.loads(parts) if isinstance(parts, str) else str(entity.get("text", "")),
        metadata=_metadata(entity.get("metadata")),
        parent_message_id=parent if isinstance(parent, str) else None,
        created_at=iso(seconds(entity, "created_at")),
        updated_at=iso(seconds(entity, "updated_at")),
        etag=public_etag(etag or entity.etag),
    )


# -- results kept in idempotency markers


def thread_json(thread: Thread) -> dict[str, Any]:
    """A thread as an idempotency marker keeps it (without an ETag: the write makes it)."""
    stored = asdict(thread)
    stored.pop("etag", None)
    return stored


def thread_from_json(stored: Any) -> Thread:
    """A thread back from an idempotency marker."""
    return Thread(**stored)


def message_json(message: Message | None) -> dict[str, Any] | None:
    """A message as an idempotency marker keeps it (the role by value, without an ETag)."""
    if message is None:
        return None
    stored = {**asdict(message), "role": message.role.value}
    stored.pop("etag", None)
    return stored


def message_from_json(stored: Any) -> Message:
    """A message back from an idempotency marker."""
    return Message(**{**stored, "role": Role(stored["role"])})
