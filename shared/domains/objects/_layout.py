"""Objects: where rows live and what they hold (keys and row codecs).

Layout, all in table ``stowageobjects``, partition = tenant, so that an object's
head, its new version and its idempotency marker change in one atomic batch:

* ``h|<key part>``: the head (current version, size, type, timestamps, and the
  current version's content or blob reference);
* ``v|<key part>|<version>``: one row per version, newest first (version ids count down);
* ``i|<sha256 of the idempotency key>``: the marker of :mod:`shared.storage.idempotency`,
  keeping the first answer. Markers of the earlier format (``i|<key part of the
  idempotency key>``, no ``fp``) are still replayed.

Every row written carries ``fmt`` (:data:`ROW_FMT`). Format 2 stores the timestamps
(``created_at``, ``updated_at``, ``expires_at``) as epoch seconds (a float, to the
microsecond); format 1 (rows without ``fmt``) stored them as ISO-8601 text, which is
still read. Clients see ISO-8601 UTC either way.

A key part is :func:`shared.keys.key_part` of the key: the escaped key, or for the
rare keys whose escaped form is too long for a table key (many ``%``, ``/`` or emoji
in 256 characters), its first characters, ``%~`` and a hash; such a head also holds
the full key (``key``), which listings report and filter by. So every key of up to
256 characters is stored, and prefix listings stay exact (see shared.keys for the
order of hashed keys).

Content up to 8 KiB lives in the rows; larger content is one immutable blob per
version (``tenants/<tenant>/objects/<sha256 of key, 40 hex>/<version>``), written
create-only before the rows that point at it.

Expiry index: a :class:`shared.storage.due.DueIndex` under ``!expires|`` (fair
across tenants): each expiring version gets the entry ``<expiry, epoch s rounded
up>|<key hash, 32 hex>|<version>`` in partition ``!expires|<tenant>``, with the key
and ``fmt`` as properties; the index's directory lists the tenants that have entries.

Entries of the earlier index (partitions ``!expiry|00`` to ``!expiry|15``, a hash of
tenant and key picking the shard, row key ``<expiry>|<tenant>|<key hash or escaped
key>|<version>``) are no longer written; the retention timer drains what is left of them.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.backends import Entity
from shared.keys import is_hashed, key_part, unescape
from shared.storage.rows import iso, stamped, stored_time

from shared.domains.objects.models import ObjectInfo

#: The format of the rows this release writes (rows without ``fmt`` are format 1 as well).
ROW_FMT = 2
HEAD = "h|"
VERSION = "v|"
LEGACY_MARKER = "i|"
#: The due index of expiring versions (:class:`shared.storage.due.DueIndex`).
EXPIRES_INDEX = "!expires|"
#: The earlier expiry index, drained but no longer written.
EXPIRY_PREFIX = "!expiry|"
EXPIRY_SHARDS = 16
_VERSION_SPAN = 10**20


# -- keys


def head_rk(key: str) -> str:
    return HEAD + key_part(key)


def versions_prefix(key: str) -> str:
    return VERSION + key_part(key) + "|"


def version_rk(key: str, version_id: str) -> str:
    return versions_prefix(key) + version_id


def legacy_marker_rk(idempotency_key: str) -> str:
    """Where markers of the earlier format were written."""
    return LEGACY_MARKER + key_part(idempotency_key)


def blob_key(tenant: str, key: str, version_id: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return f"tenants/{tenant}/objects/{digest}/{version_id}"


def new_version_id() -> str:
    """Counts down with time, so ascending row keys list the newest version first."""
    return f"{_VERSION_SPAN - 1 - time.time_ns():020d}{secrets.token_hex(2)}"


def expiry_due(expires: float) -> int:
    """An expiry as its index files it: rounded up, so an entry that is due is for a version that has expired."""
    return math.ceil(expires)


def expiry_item(key: str, version_id: str) -> str:
    """A version's item in the expiry index (the key itself is a property of the entry)."""
    return f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}|{version_id}"


def expiry_props(key: str) -> dict[str, Any]:
    return stamped({"key": key}, ROW_FMT)


def expiry_target(item: str, properties: dict[str, Any]) -> tuple[str, str]:
    """The key and version an expiry index entry is for."""
    return str(properties["key"]), item.rpartition("|")[2]


def expiry_partition(tenant: str, key: str) -> str:
    """The earlier index's shard of a key (entries there are drained, not written)."""
    shard = int.from_bytes(hashlib.sha256(f"{tenant}|{key}".encode()).digest()[:4], "big") % EXPIRY_SHARDS
    return f"{EXPIRY_PREFIX}{shard:02d}"


def expiry_rk(expires: float, tenant: str, key: str, version_id: str) -> str:
    """The earlier index's row key: rounded up, so an entry that is due is for a version that has expired."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"{math.ceil(expires):012d}|{tenant}|{digest}|{version_id}"


@dataclass(frozen=True)
class ExpiryEntry:
    """An entry of the earlier expiry index read back."""

    tenant: str
    key: str
    version_id: str


def expiry_entry(entity: Entity) -> ExpiryEntry:
    _, tenant, key_field, version_id = entity.row_key.split("|")
    key = str(entity["key"]) if "key" in entity.properties else unescape(key_field)  # earlier entries: escaped key
    return ExpiryEntry(tenant, key, version_id)


# -- row codecs


def time_of(value: object) -> float:
    """A stored timestamp as epoch seconds: a number (format 2) or ISO-8601 text (format 1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def shown(value: object) -> str:
    """A stored timestamp as clients see it: ISO-8601 UTC (format 1 text is shown as stored)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso(float(value))
    return str(value)


def version_props(size: int, content_type: str, created_at: float, content: dict[str, bytes | str],
                  expires_at: float | None) -> dict[str, Any]:
    """A version row's properties (the head holds them too)."""
    props: dict[str, Any] = {"size": size, "content_type": content_type, "created_at": stored_time(created_at),
                             **content}
    if expires_at is not None:
        props["expires_at"] = stored_time(expires_at)
    return stamped(props, ROW_FMT)


def head_props(key: str, version: dict[str, Any], version_id: str, created_at: float, updated_at: float,
               row_key: str) -> dict[str, Any]:
    """A head row's properties: the current version's, its id, and the object's timestamps."""
    props = {**version, "version": version_id, "updated_at": stored_time(updated_at),
             "created_at": stored_time(created_at)}
    if is_hashed(row_key):
        props["key"] = key
    return stamped(props, ROW_FMT)


def head_key(entity: Entity) -> str:
    """The object key a head row is for."""
    return str(entity["key"]) if "key" in entity.properties else unescape(entity.row_key[len(HEAD):])


def head_version(entity: Entity) -> str:
    return str(entity["version"])


def blob_of(entity: Entity) -> str | None:
    """The blob a version (or head) row points at, when its content is not inline."""
    value = entity.get("blob")
    return str(value) if value else None


def inline_data(entity: Entity) -> bytes | None:
    value = entity.get("data")
    return None if value is None else bytes(value)


def expires_at(entity: Entity) -> float | None:
    value = entity.get("expires_at")
    if value is None or value == "":
        return None
    return time_of(value)


def expired(entity: Entity, now: float) -> bool:
    expires = expires_at(entity)
    return expires is not None and expires <= now


def _int(value: object) -> int:
    if isinstance(value, (int, float, str)):
        return int(value)
    raise ValueError(f"not a number in an object row: {value!r}")


def info_of(key: str, entity: Entity, *, current: bool, version_id: str | None = None) -> ObjectInfo:
    """The description of the version a head or version row holds."""
    expires = entity.get("expires_at")
    return ObjectInfo(
        key=key,
        version_id=version_id or str(entity["version"]),
        size=_int(entity["size"]),
        content_type=str(entity["content_type"]),
        created_at=shown(entity["created_at"]),
        updated_at=shown(entity.get("updated_at") or entity["created_at"]),
        expires_at=shown(expires) if expires is not None and expires != "" else None,
        is_current=current,
    )


def encode_info(info: ObjectInfo) -> dict[str, Any]:
    """An answer as an idempotency marker keeps it."""
    return {"key": info.key, "version": info.version_id, "size": info.size, "content_type": info.content_type,
            "created_at": info.created_at, "updated_at": info.updated_at, "expires_at": info.expires_at}


def decode_info(stored: Any) -> ObjectInfo:
    """A kept answer read back: as the first answer said (current when it was given)."""
    return ObjectInfo(str(stored["key"]), str(stored["version"]), int(stored["size"]), str(stored["content_type"]),
                      str(stored["created_at"]), str(stored["updated_at"]),
                      str(stored["expires_at"]) if stored.get("expires_at") else None, is_current=True)
