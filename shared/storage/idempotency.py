"""Idempotency markers: one format for every domain.

A write that carries an idempotency key (an HTTP ``Idempotency-Key`` header or a
queue envelope's key) records a marker row in the same partition, and the same
atomic batch, as the change it makes:

* row key ``i|<first 40 hex digits of SHA-256 of the key>`` (fixed length, any key);
* ``fmt``: the marker format (1);
* ``fp``: a fingerprint of the request (SHA-256 of the op name and its canonical
  JSON arguments), so that a key reused for another request is told apart;
* ``status`` and ``result``: what the first application answered, as JSON, so a
  replay answers exactly that without reading the target (which may be gone);
* ``at``: when it was applied (epoch seconds).

Guarantees: the marker exists if and only if its change was applied (one batch);
a replay with the same request returns the stored status and result; the same key
with another request raises :class:`IdempotencyKeyReused` (422), never a silent
no-op. Markers live as long as their partition (retention removes them with it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shared.backends import Entity, TableOp
from shared.errors import InvalidInput, NotFound

MARKER_PREFIX = "i|"
MARKER_FMT = 1
MAX_KEY_LENGTH = 200


class IdempotencyKeyReused(InvalidInput):
    """The idempotency key was already used for a different request; nothing was written.

    Its problem names the key (``idempotency_key``) and the operation refused (``op``).
    """

    status = 422
    title = "Idempotency key reused"
    type_slug = "idempotency-key-reused"
    problem_fields = ("idempotency_key", "op")

    def __init__(self, idempotency_key: str, op: str) -> None:
        super().__init__(f"idempotency key {idempotency_key!r} was already used for a different request; "
                         "use a new key for a new request")
        #: The key the client sent.
        self.idempotency_key = idempotency_key
        #: The operation this request asked for (the first use may have been another).
        self.op = op


class _Readable(Protocol):
    def get(self, partition_key: str, row_key: str) -> Entity: ...


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


@dataclass(frozen=True)
class Idempotency:
    """A client's idempotency key and the fingerprint of the request it came with."""

    key: str
    fingerprint: str
    #: The operation the request is for (kept to name it in :class:`IdempotencyKeyReused`).
    op: str = ""

    @classmethod
    def of(cls, key: str, op: str, request: Any) -> Idempotency:
        """The key for ``op`` called with ``request`` (any JSON-able value; bytes are hashed by the caller)."""
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise InvalidInput(f"an idempotency key must be 1-{MAX_KEY_LENGTH} characters")
        digest = hashlib.sha256(_canonical({"op": op, "request": request}).encode("utf-8")).hexdigest()
        return cls(key, digest, op)

    @property
    def row_key(self) -> str:
        return marker_row(self.key)


@dataclass(frozen=True)
class Replay:
    """What the first application of a request answered."""

    status: int
    result: Any


def marker_row(key: str) -> str:
    """The marker's row key for an idempotency key."""
    return MARKER_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def lookup(table: _Readable, partition: str, idempotency: Idempotency) -> Replay | None:
    """The earlier answer to this request, or None when the key is new.

    Raises :class:`IdempotencyKeyReused` when the key was used for another request.
    """
    try:
        marker = table.get(partition, idempotency.row_key)
    except NotFound:
        return None
    if marker.get("fp") != idempotency.fingerprint:
        raise IdempotencyKeyReused(idempotency.key, idempotency.op)
    return Replay(int(marker.get("status", 200)), json.loads(str(marker.get("result", "null"))))


def marker_op(partition: str, idempotency: Idempotency, result: Any, *, status: int = 200,
              clock: Callable[[], float] = time.time) -> TableOp:
    """The create-only marker row, to add to the batch that applies the change.

    Create-only: two concurrent first applications cannot both commit; the loser's
    batch fails as a whole and, retried, finds the marker and replays it.
    """
    return TableOp.insert(Entity(partition, idempotency.row_key, {
        "fmt": MARKER_FMT, "fp": idempotency.fingerprint, "status": status,
        "result": _canonical(result), "at": clock(),
    }))
