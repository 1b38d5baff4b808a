"""Checkpoints' stored layout: keys and row codecs, in table ``stowagecheckpoints``.

One partition per thread, so that a checkpoint and its new channel values are
written in ONE atomic batch:

* partition ``<tenant>|t|<thread_id>`` (:func:`thread_pk`):

  - ``c|<ns>|<inverted checkpoint_id>`` (:func:`checkpoint_rk`): the checkpoint
    (serialised without its channel values), metadata, parent id and
    ``{channel: version}`` of the values it holds. Ids are inverted character by
    character (and end with ``~``), so ascending row keys list the NEWEST first: the
    latest checkpoint of a namespace is a one-row prefix query, and ``before`` is a
    range start. Format 2 rows also hold small channel values INLINE: ``inl`` is
    JSON ``[[channel, version, type, size], ...]`` and the values' bytes, one after
    the other in that order, are the bytes property ``iv`` (split like any bytes, see
    below; at most 96 KiB in all). A checkpoint row never refers to another row's inline values: a
    value is inline where it is new, carried inline again while it is unchanged and
    small, and otherwise in a value row; so any checkpoint row can be deleted
    without the others losing anything;
  - ``v|<ns>|<channel>|<version>`` (:func:`value_rk`): one value per channel
    version that is not inline (large, or unchanged and too large to carry),
    written once (create-only; an existing version is never rewritten; a carried
    value is written blind, the same bytes), so a step that changes one large
    channel writes one value. A value a checkpoint row holds inline is read from
    there, any other from its value row (rows of format 1 hold every value there);
  - ``w|<ns>|<checkpoint_id>|<task_id>|<idx>`` (:func:`write_rk`): pending writes.
    Format 2: ``w`` is JSON ``[task_id, task_path, idx, channel, type]`` and ``data``
    the bytes (format 1: properties ``task``, ``path``, ``idx``, ``ch``, ``type``).
    Regular writes (``idx >= 0``) are create-only, so writing the same (task_id, idx)
    twice never duplicates one; special channels (negative ``idx``) are replaced, as
    LangGraph's own savers do;
  - ``r|<run_id>|<ns>|<inverted checkpoint_id>`` (:func:`run_rk`): which checkpoints
    a run wrote, in the same batch as the checkpoint.

* partition ``<tenant>|threads``, row ``<thread_id>``: the tenant's threads;
* partition ``<tenant>|r|<run_id>``, row ``<thread_id>``: the threads a run wrote
  to, so ``delete_for_runs`` never scans the tenant;
* partition ``<tenant>|commands``: the idempotency markers of queue commands
  (:mod:`shared.storage.idempotency`: ``i|<sha256 of the key>``, with the request's
  fingerprint and the result). Markers of the format before (row key the escaped
  key, ``op``/``detail``, no ``fp``) are still honoured as replays.

Key parts (namespace, channel, version, task and run ids) are escaped with
:func:`shared.keys.escape`; one longer than 100 bytes is replaced by ``~`` and a
SHA-256 digest (the original is kept in the entity).

Bytes (checkpoints, values, writes) up to the offload threshold are one property;
up to 256 KiB they are split over properties ``<name>0..<name>{n-1}`` with
``<name>_n``; larger ones are one property that the claim-check rule
(:mod:`shared.backends.offload`) moves to a blob.

Every row written carries ``fmt`` (:data:`FMT`; checkpoint and pending write rows 2); rows
without it are format 1 too. Rows of format 1 (every value in a value row) are read as they are.
Timestamps (``at``) are epoch seconds (float), shown as ISO-8601 UTC.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.backends import Entity
from shared.backends.base import PropertyValue
from shared.domains.checkpoints.models import INLINE_VALUE_BYTES, PendingWrite, ThreadInfo, TypedValue
from shared.keys import escape
from shared.storage.rows import ROW_FMT, iso, stamped, stored_time

#: The version of the row format this code writes (checkpoint rows with inline values: 2).
FMT = 1
#: Checkpoint rows written by this code (``inl`` and ``i<k>`` may hold inline values).
CHECKPOINT_FMT = 2
#: Pending write rows written by this code (``w`` holds their fields as one JSON array).
WRITE_FMT = 2
INLINE_MANIFEST = "inl"
#: Every character a checkpoint id may hold, in code-point order; inverting maps the
#: i-th to the i-th from the end, and "~" (above all of them) ends the inverted id so
#: that a longer id sorts before its prefix.
ALPHABET = "-.0123456789:ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
END = "~"
CHECKPOINT_PREFIX = "c|"
VALUE_PREFIX = "v|"
WRITE_PREFIX = "w|"
RUN_PREFIX = "r|"
_INVERT = str.maketrans(ALPHABET, ALPHABET[::-1])
_MAX_KEY_PART = 100

__all__ = [
    "ALPHABET", "CHECKPOINT_FMT", "CHECKPOINT_PREFIX", "END", "FMT", "INLINE_MANIFEST", "WRITE_FMT", "RUN_PREFIX", "VALUE_PREFIX", "WRITE_PREFIX",
    "CheckpointRow", "RunRow", "checkpoint_rk", "checkpoint_row", "commands_pk", "get_bytes", "inverted",
    "part", "pending_write_of", "put_bytes", "run_index_row", "run_pk", "run_rk", "run_row", "run_row_of",
    "thread_index_row", "thread_info_of", "thread_pk", "threads_pk", "uninverted", "value_of", "value_rk",
    "value_row", "write_row", "writes_prefix",
]


# --------------------------------------------------------------------------- keys


def inverted(checkpoint_id: str) -> str:
    """A checkpoint id as its row key part: newer (larger) ids sort first."""
    return checkpoint_id.translate(_INVERT) + END


def uninverted(key_part: str) -> str:
    """The checkpoint id an inverted key part stands for."""
    return key_part[:-1].translate(_INVERT)


def part(text: str) -> str:
    """``text`` as one key part: escaped, or a digest when long (or when it could pass for one)."""
    escaped = escape(text)
    if len(escaped.encode("utf-8")) <= _MAX_KEY_PART and not text.startswith("~"):
        return escaped
    return "~" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def thread_pk(tenant: str, thread_id: str) -> str:
    """The partition of a thread: checkpoints, values, pending writes and run rows."""
    return f"{tenant}|t|{thread_id}"


def threads_pk(tenant: str) -> str:
    """The partition of a tenant's thread index."""
    return f"{tenant}|threads"


def run_pk(tenant: str, run_id: str) -> str:
    """The partition of a run's thread index."""
    return f"{tenant}|r|{part(run_id)}"


def run_pk_of_part(tenant: str, run_part: str) -> str:
    """The run index partition for a run key part read back from a run row."""
    return f"{tenant}|r|{run_part}"


def commands_pk(tenant: str) -> str:
    """The partition of a tenant's queue command markers."""
    return f"{tenant}|commands"


def checkpoint_prefix(ns_part: str) -> str:
    """Row-key prefix of a namespace's checkpoints."""
    return f"{CHECKPOINT_PREFIX}{ns_part}|"


def checkpoint_rk(ns_part: str, checkpoint_id: str) -> str:
    return f"{CHECKPOINT_PREFIX}{ns_part}|{inverted(checkpoint_id)}"


def value_rk(ns_part: str, channel: str, version: str) -> str:
    return f"{VALUE_PREFIX}{ns_part}|{part(channel)}|{part(version)}"


def writes_prefix(ns_part: str, checkpoint_id: str) -> str:
    """Row-key prefix of a checkpoint's pending writes."""
    return f"{WRITE_PREFIX}{ns_part}|{checkpoint_id}|"


def write_rk(ns_part: str, checkpoint_id: str, task_id: str, idx: int) -> str:
    return f"{writes_prefix(ns_part, checkpoint_id)}{part(task_id)}|{idx}"


def run_rk(run_id: str, ns_part: str, checkpoint_id: str) -> str:
    return f"{RUN_PREFIX}{part(run_id)}|{ns_part}|{inverted(checkpoint_id)}"


def ns_part_of(row_key: str) -> str:
    """The namespace key part of a checkpoint, value or write row key."""
    return row_key.split("|")[1]


def write_checkpoint_of(row_key: str) -> tuple[str, str]:
    """(namespace key part, checkpoint id) of a pending write's row key."""
    _, ns_part, checkpoint_id = row_key.split("|")[:3]
    return ns_part, checkpoint_id


# --------------------------------------------------------------------------- bytes in entities


def put_bytes(properties: dict[str, Any], name: str, data: bytes, threshold: int) -> None:
    """Small or large data in one property (large ones go to a blob); medium split in parts."""
    size = len(data)
    if size <= threshold or size > INLINE_VALUE_BYTES:
        properties[name] = bytes(data)
        return
    count = math.ceil(size / threshold)
    properties[f"{name}_n"] = count
    for index in range(count):
        properties[f"{name}{index}"] = bytes(data[index * threshold:(index + 1) * threshold])


def _as_bytes(value: PropertyValue) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"expected bytes in a checkpoint row, found {type(value).__name__}")


def _as_int(value: PropertyValue) -> int:
    if isinstance(value, (int, float, str)):
        return int(value)
    raise ValueError(f"expected an integer in a checkpoint row, found {type(value).__name__}")


def _as_float(value: PropertyValue) -> float:
    if isinstance(value, (int, float, str)):
        return float(value)
    raise ValueError(f"expected a number in a checkpoint row, found {type(value).__name__}")


def get_bytes(entity: Entity, name: str) -> bytes:
    """Bytes :func:`put_bytes` stored under ``name``."""
    data = entity.get(name)
    if data is not None:
        return _as_bytes(data)
    count = _as_int(entity.get(f"{name}_n", 0))
    return b"".join(_as_bytes(entity[f"{name}{index}"]) for index in range(count))


def _stamped(properties: dict[str, Any]) -> dict[str, Any]:
    return stamped(properties, FMT)


def fmt_of(entity: Entity) -> int:
    """The format a row was written in (rows without ``fmt`` are format 1)."""
    return int(entity.get(ROW_FMT, 1))


# --------------------------------------------------------------------------- values and writes


def value_row(partition: str, ns_part: str, channel: str, version: str, value: TypedValue, at: float,
              threshold: int) -> Entity:
    properties: dict[str, Any] = _stamped({"ch": channel, "ver": version, "type": value.type,
                                           "at": stored_time(at)})
    put_bytes(properties, "data", value.data, threshold)
    return Entity(partition, value_rk(ns_part, channel, version), properties)


def value_of(entity: Entity) -> TypedValue:
    return TypedValue(str(entity["type"]), get_bytes(entity, "data"))


def value_at(entity: Entity) -> float:
    """When a value row was written (0 when unknown)."""
    return float(entity.get("at", 0.0))


def write_row(partition: str, ns_part: str, checkpoint_id: str, task_id: str, task_path: str, idx: int,
              channel: str, value: TypedValue, at: float, threshold: int) -> Entity:
    """A pending write (format 2): ``w`` is JSON ``[task_id, task_path, idx, channel, type]``."""
    properties: dict[str, Any] = {"w": _JSON.encode((task_id, task_path, idx, channel, value.type)),
                                  "at": stored_time(at), ROW_FMT: WRITE_FMT}
    put_bytes(properties, "data", value.data, threshold)
    return Entity(partition, write_rk(ns_part, checkpoint_id, task_id, idx), properties)


def pending_write_of(entity: Entity) -> PendingWrite:
    packed = entity.get("w")
    if packed is not None:
        task_id, task_path, idx, channel, kind = json.loads(str(packed))
        return PendingWrite(str(task_id), str(channel), TypedValue(str(kind), get_bytes(entity, "data")),
                            _as_int(idx), str(task_path))
    # Format 1: one property each.
    return PendingWrite(str(entity["task"]), str(entity["ch"]), value_of(entity), _as_int(entity["idx"]),
                        str(entity.get("path", "")))


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointRow:
    """A checkpoint row as read: everything but its channel values and pending writes."""

    entity: Entity
    id: str
    ns: str
    parent: str | None
    run: str | None
    versions: dict[str, str]
    metadata: dict[str, Any]
    at: float
    #: Values held inline, by channel: ``(version, value)`` (empty for format 1 rows).
    inline: dict[str, tuple[str, TypedValue]]

    @property
    def row_key(self) -> str:
        return self.entity.row_key

    @property
    def partition_key(self) -> str:
        return self.entity.partition_key

    @property
    def ns_part(self) -> str:
        return ns_part_of(self.entity.row_key)

    @property
    def created_at(self) -> str:
        return iso(self.at)

    def checkpoint(self) -> TypedValue:
        """The checkpoint as the client serialised it."""
        return TypedValue(str(self.entity["ctype"]), get_bytes(self.entity, "cdata"))


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: The properties :func:`put_bytes` may use for the inline values' bytes ``iv``.
_INLINE_BYTES = re.compile(r"iv(?:_n|[0-9]*)")


def checkpoint_row(partition: str, checkpoint_ns: str, checkpoint_id: str, checkpoint: TypedValue, *,
                   metadata_text: str, versions: dict[str, str], parent: str | None, run: str | None,
                   at: float, threshold: int,
                   inline: Mapping[str, tuple[str, TypedValue]] | None = None) -> Entity:
    """A checkpoint row; ``inline``: values it holds itself, by channel (each at most ``threshold`` bytes)."""
    properties: dict[str, Any] = stamped({
        "id": checkpoint_id, "ns": checkpoint_ns, "ctype": checkpoint.type, "meta": metadata_text,
        "vals": _JSON.encode(versions), "at": stored_time(at)}, CHECKPOINT_FMT)
    if parent is not None:
        properties["parent"] = parent
    if run is not None:
        properties["run"] = run
    put_bytes(properties, "cdata", checkpoint.data, threshold)
    if inline:
        properties[INLINE_MANIFEST] = _JSON.encode(
            [(channel, version, value.type, len(value.data)) for channel, (version, value) in inline.items()])
        put_bytes(properties, "iv", b"".join(value.data for _, value in inline.values()), threshold)
    return Entity(partition, checkpoint_rk(part(checkpoint_ns), checkpoint_id), properties)


def _inline_of(entity: Entity) -> dict[str, tuple[str, TypedValue]]:
    manifest = entity.get(INLINE_MANIFEST)
    if not manifest:
        return {}
    data = get_bytes(entity, "iv")
    held: dict[str, tuple[str, TypedValue]] = {}
    offset = 0
    for channel, version, kind, size in json.loads(str(manifest)):
        held[str(channel)] = (str(version), TypedValue(str(kind), data[offset:offset + size]))
        offset += size
    return held


def keeping_inline(new: Entity, old: Entity, threshold: int) -> Entity:
    """``new``, a checkpoint row replacing ``old``, holding also the values ``old`` held inline that
    ``new`` names at the same version but does not hold (a repeated put passes no value for them:
    they were new the first time)."""
    versions = json.loads(str(new["vals"]))
    held = _inline_of(new)
    kept = {channel: pair for channel, pair in _inline_of(old).items()
            if channel not in held and versions.get(channel) == pair[0]}
    if not kept:
        return new
    properties = {name: value for name, value in new.properties.items()
                  if name != INLINE_MANIFEST and not _INLINE_BYTES.fullmatch(name)}
    inline = {**held, **kept}
    properties[INLINE_MANIFEST] = _JSON.encode(
        [(channel, version, value.type, len(value.data)) for channel, (version, value) in inline.items()])
    put_bytes(properties, "iv", b"".join(value.data for _, value in inline.values()), threshold)
    return Entity(new.partition_key, new.row_key, properties)


def checkpoint_of(entity: Entity) -> CheckpointRow:
    parent, run = entity.get("parent"), entity.get("run")
    versions = json.loads(str(entity["vals"]))
    metadata = json.loads(str(entity["meta"]))
    return CheckpointRow(entity, str(entity["id"]), str(entity.get("ns", "")), str(parent) if parent else None,
                         str(run) if run else None, {str(k): str(v) for k, v in versions.items()},
                         metadata if isinstance(metadata, dict) else {}, _as_float(entity["at"]),
                         _inline_of(entity))


def run_of(entity: Entity) -> str | None:
    """The run that wrote a checkpoint row (without decoding the rest)."""
    run = entity.get("run")
    return str(run) if run else None


def referenced_values(row: CheckpointRow) -> set[str]:
    """Row keys of the values a checkpoint refers to."""
    ns_part = part(row.ns)
    return {value_rk(ns_part, channel, version) for channel, version in row.versions.items()}


# --------------------------------------------------------------------------- runs and indexes


@dataclass(frozen=True)
class RunRow:
    """A run row of a thread: the run's key part, the namespace's and the checkpoint id."""

    row_key: str
    run_part: str
    ns_part: str
    checkpoint_id: str

    @property
    def checkpoint_rk(self) -> str:
        return checkpoint_rk(self.ns_part, self.checkpoint_id)


def run_row(partition: str, run_id: str, checkpoint_ns: str, checkpoint_id: str) -> Entity:
    return Entity(partition, run_rk(run_id, part(checkpoint_ns), checkpoint_id),
                  _stamped({"run": run_id, "ns": checkpoint_ns, "id": checkpoint_id}))


def run_row_of(entity: Entity) -> RunRow:
    _, run_part, ns_part, inverted_id = entity.row_key.split("|")
    return RunRow(entity.row_key, run_part, ns_part, uninverted(inverted_id))


def run_id_of(entity: Entity) -> str:
    """The run id a run row names."""
    return str(entity["run"])


def thread_index_row(tenant: str, thread_id: str, at: float) -> Entity:
    return Entity(threads_pk(tenant), thread_id, _stamped({"thread_id": thread_id, "at": stored_time(at)}))


def thread_info_of(entity: Entity) -> ThreadInfo:
    return ThreadInfo(entity.row_key, iso(float(entity.get("at", 0.0))))


def run_index_row(tenant: str, run_id: str, thread_id: str) -> Entity:
    return Entity(run_pk(tenant, run_id), thread_id, _stamped({"run": run_id, "thread_id": thread_id}))


def legacy_marker_rk(idempotency_key: str) -> str:
    """Row key of a queue command marker in the format before :mod:`shared.storage.idempotency`."""
    return part(idempotency_key)
