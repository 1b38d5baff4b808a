"""API keys: each maps to one tenant, with scopes, optional domains and an optional actor; their audit.

A key looks like ``stw_<key id>_<secret>``: the id is 16 lowercase hex digits
and addresses the stored record (so revoking needs no secret); the secret is 32
random bytes, which is why a plain SHA-256 digest (not a slow password hash) is
the right tool here. Only the digest is stored.

Storage layout (table ``stowageapikeys``, partition ``apikey``, row key = key id):

* ``tenant``, ``digest``, ``label``, ``created_at``, ``revoked_at``: every record;
* ``v`` = 2 and ``scopes`` (comma-separated subset of read, write, admin),
  ``domains`` (comma-separated; absent: every domain), ``actor`` (the actor's
  name) and ``roles`` (comma-separated): records written since scopes exist;
* ``actor_type`` (``user`` or ``agent``) and ``actor_id``: when given at creation.
* Outbox rows (``~outbox|...``) of the change feed: the records of key creations
  and revocations, written in the same atomic batch as the key row (see below).

A record without ``v`` was written before scopes existed; it reads as scopes
read and write in every domain, with no actor, so existing keys keep working.

Actors. Every change made with a key is attributed to :meth:`Principal.actor`: type
``agent`` unless the key was created as a ``user``'s (a key is most often held by a
program; a person's key says so), id the key's ``actor_id`` or else its key id (so
rotating a person's keys keeps one actor id only when one is given), the optional
name, and the roles.

Audit of the keys themselves. Creating or revoking a key is a change of the
platform's key table: its change record (domain ``apikeys``, op ``apikeys.create`` /
``apikeys.revoke``, target ``api_key`` = the key id, details without the secret or
its digest) is an outbox row in partition ``apikey``, written in the same atomic
batch as the key row, so a failed create or revoke leaves no record and a done one
always has it. All tenants' keys share that partition, and the sequencer moves every
outbox row of a partition into the feed of the tenant that hinted it, so these
records belong to the reserved tenant :data:`PLATFORM_TENANT` (no key can be made
for it), never to the key's tenant: the key's tenant is in the details.

Authentication and authorization failures (:class:`FailureAudit`) are counted in
memory, never written one per request: one record per (tenant, kind, reason, key
id) and window (default 60 s), flushed when the window has closed, into the changes
table (partition ``~events|<tenant>``, one single-op batch per record), under the
key's tenant when the key was found and under :data:`PLATFORM_TENANT` otherwise.

A scope does not imply another: ``admin`` (backups, restore, retention, erasure)
does not grant ``read`` or ``write``, and a key gets each scope it needs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from shared import names
from shared.backends import Entity, TableOp
from shared.backends.base import PropertyValue
from shared.errors import Forbidden, InvalidInput, NotFound, StowageError, Unauthorized
from shared.keys import check_tenant
from shared.request_context import Actor
from shared.storage.changefeed import OUTBOX_PREFIX, ChangeFeed, ChangeRecord
from shared.storage.retry import conditional, retry_races
from shared.stores import Stores

log = logging.getLogger(__name__)

_PARTITION = "apikey"
_PREFIX = "stw"
_FORMAT = 2

#: What a key may do: read (GET, HEAD), write (every other method), admin (operations on a whole tenant).
SCOPES = ("read", "write", "admin")
#: The scopes of a key created without any named.
DEFAULT_SCOPES = ("read", "write")
#: The domains a key can be limited to.
DOMAINS = ("objects", "memory", "sessions", "workflows", "checkpoints", "audit")
#: Who a key can act for; a key created without one acts for an agent (a program).
ACTOR_TYPES = ("user", "agent")
DEFAULT_ACTOR_TYPE = "agent"
#: The reserved tenant of platform events (key changes, failures of unknown keys); no key can be made for it.
PLATFORM_TENANT = "platform"
#: Partition prefix, in the changes table, of the outbox rows of authentication and authorization failures.
EVENTS_PARTITION_PREFIX = "~events|"

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ROLE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ACTOR_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_ACTOR_LENGTH = 128
_MAX_ROLES = 32
#: Every bad key gets this one message, whatever is wrong with it.
INVALID_KEY = "the API key is not valid; send 'Authorization: Bearer stw_...' with a key from `stowage keys create`"

ActorKind = Literal["user", "agent"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and what its key allows."""

    #: The tenant every call of this key acts in.
    tenant: str
    #: The key's id (not secret): audit records name it.
    key_id: str
    #: A subset of :data:`SCOPES`.
    scopes: frozenset[str]
    #: The domains the key may use; None: every domain.
    domains: frozenset[str] | None = None
    #: Who the key acts for (a person's or an agent's name), recorded by the audit log; None if not named.
    actor_name: str | None = None
    #: Free role names of the actor, for the application's own rules.
    roles: tuple[str, ...] = ()
    #: ``user`` or ``agent`` (:data:`DEFAULT_ACTOR_TYPE` unless the key says otherwise).
    actor_type: ActorKind = "agent"
    #: The actor's own id, when the key names one; else the actor is identified by the key id.
    actor_id: str | None = None

    def actor(self) -> Actor:
        """The actor changes made with this key are attributed to (see the module docstring)."""
        return Actor(self.actor_type, self.actor_id or self.key_id, self.actor_name, self.roles)

    def allows(self, scope: str | None, domain: str | None = None) -> bool:
        """Whether the key has ``scope`` (None: any valid key) in ``domain`` (None: not domain-bound)."""
        return self.refusal(scope, domain) is None

    def refusal(self, scope: str | None, domain: str | None = None) -> str | None:
        """Why the key may not act with ``scope`` in ``domain``; None when it may."""
        if scope is not None and scope not in self.scopes:
            return (f"this API key lacks the '{scope}' scope (it has: {', '.join(sorted(self.scopes))}); "
                    f"create one with `stowage keys create --scope {scope}`")
        if domain is not None and self.domains is not None and domain not in self.domains:
            return (f"this API key is limited to the domains {', '.join(sorted(self.domains))}, "
                    f"not '{domain}'")
        return None

    def require(self, scope: str | None, domain: str | None = None) -> None:
        """Forbidden (403) unless the key may act with ``scope`` in ``domain``."""
        reason = self.refusal(scope, domain)
        if reason is not None:
            raise Forbidden(reason)


class KeyRefused(Unauthorized):
    """An authentication failure (401, always :data:`INVALID_KEY`), with what the audit needs to know.

    ``reason``: ``missing``, ``malformed``, ``unknown``, ``mismatch`` (a known key id with the wrong
    secret) or ``revoked``; ``key_id`` when the key had a well-formed id; ``tenant`` when it was found.
    """

    def __init__(self, reason: str, key_id: str | None = None, tenant: str | None = None,
                 message: str = INVALID_KEY) -> None:
        super().__init__(message)
        self.reason = reason
        self.key_id = key_id
        self.tenant = tenant


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key's record, without its secret."""

    key_id: str
    tenant: str
    label: str
    created_at: str
    revoked_at: str | None
    #: A subset of :data:`SCOPES`, in that order.
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    #: The domains the key may use; None: every domain.
    domains: tuple[str, ...] | None = None
    #: The actor's name (kept under this name for the stored field and `stowage keys list --json`).
    actor: str | None = None
    roles: tuple[str, ...] = ()
    actor_type: ActorKind = "agent"
    actor_id: str | None = None

    @property
    def actor_name(self) -> str | None:
        """The actor's name (the same as :attr:`actor`)."""
        return self.actor


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _items(values: Iterable[str] | str) -> list[str]:
    """Names given as an iterable or as one comma-separated string."""
    if isinstance(values, str):
        values = values.split(",")
    if not all(isinstance(value, str) for value in values):
        raise InvalidInput("scopes, domains and roles are strings")
    return [value.strip() for value in values if value.strip()]


def check_scopes(scopes: Iterable[str] | str) -> tuple[str, ...]:
    """At least one of :data:`SCOPES`, in that order; InvalidInput otherwise."""
    chosen = {scope.lower() for scope in _items(scopes)}
    unknown = chosen - set(SCOPES)
    if unknown or not chosen:
        raise InvalidInput(f"scopes must be one or more of {', '.join(SCOPES)}; got {sorted(unknown) or 'none'}")
    return tuple(scope for scope in SCOPES if scope in chosen)


def check_domains(domains: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """None (every domain) or at least one of :data:`DOMAINS`; InvalidInput otherwise."""
    if domains is None:
        return None
    chosen = {domain.lower() for domain in _items(domains)}
    unknown = chosen - set(DOMAINS)
    if unknown or not chosen:
        raise InvalidInput(f"domains must be one or more of {', '.join(DOMAINS)}; got {sorted(unknown) or 'none'}")
    return tuple(domain for domain in DOMAINS if domain in chosen)


def _check_actor(actor: str | None) -> str | None:
    if actor is None:
        return None
    if not isinstance(actor, str) or not actor.strip() or len(actor) > _MAX_ACTOR_LENGTH or _CONTROL.search(actor):
        raise InvalidInput(f"actor name must be 1-{_MAX_ACTOR_LENGTH} characters without control characters")
    return actor


def _check_actor_type(actor_type: str | None) -> ActorKind:
    if actor_type is None:
        return "agent"
    if actor_type == "user":
        return "user"
    if actor_type == "agent":
        return "agent"
    raise InvalidInput(f"actor type must be one of {', '.join(ACTOR_TYPES)}; got {actor_type!r}")


def _check_actor_id(actor_id: str | None) -> str | None:
    if actor_id is None:
        return None
    if not isinstance(actor_id, str) or not _ACTOR_ID.match(actor_id):
        raise InvalidInput("actor id must be 1-128 letters, digits, '.', '_', ':', '@', '+' or '-'")
    return actor_id


def _check_roles(roles: Iterable[str] | str) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(_items(roles)))
    if len(unique) > _MAX_ROLES or not all(_ROLE.match(role) for role in unique):
        raise InvalidInput(f"roles: at most {_MAX_ROLES}, each 1-64 letters, digits, '.', '_', ':' or '-'")
    return unique


def _split(text: object) -> tuple[str, ...]:
    return tuple(part for part in str(text).split(",") if part)


def _key_details(info: ApiKeyInfo) -> dict[str, object]:
    """What a key's change record says about it: never the secret nor its digest."""
    details: dict[str, object] = {"tenant": info.tenant, "scopes": list(info.scopes),
                                  "actor_type": info.actor_type}
    if info.label:
        details["label"] = info.label[:200]
    if info.domains is not None:
        details["domains"] = list(info.domains)
    if info.actor is not None:
        details["actor_name"] = info.actor
    if info.actor_id is not None:
        details["actor_id"] = info.actor_id
    if info.roles:
        details["roles"] = list(info.roles)
    return details


class ApiKeyService:
    """Create, check, list and revoke tenant API keys; key changes are recorded (module docstring)."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._table = stores.table(names.TABLE_APIKEYS)

    def _record_ops(self, op: str, info: ApiKeyInfo) -> list[TableOp]:
        """The outbox insert of a key change, for the key row's batch (none when the stores record nothing)."""
        record = ChangeRecord(domain="apikeys", op=op, target_type="api_key", target_id=info.key_id,
                              details=_key_details(info))
        return self._stores.outbox(PLATFORM_TENANT, names.TABLE_APIKEYS).ops(_PARTITION, record)

    @staticmethod
    def _new_key_id() -> str:
        return secrets.token_hex(8)

    def create(self, tenant: str, label: str = "", *, scopes: Iterable[str] | str = DEFAULT_SCOPES,
               domains: Iterable[str] | str | None = None, actor: str | None = None,
               roles: Iterable[str] | str = (), actor_name: str | None = None, actor_type: str | None = None,
               actor_id: str | None = None) -> tuple[ApiKeyInfo, str]:
        """A new key for ``tenant``; returns its record and the key itself, shown only this once.

        ``scopes``: a subset of :data:`SCOPES` (default read and write); ``domains``: a
        subset of :data:`DOMAINS` (default: every domain); ``actor_name`` (or its older
        name ``actor``), ``actor_type`` (``user`` or ``agent``, default ``agent``),
        ``actor_id`` (default: the key id) and ``roles``: who the key acts for, recorded
        by the audit log. Lists may also be given as one comma-separated string.
        InvalidInput when one is not valid. The key row and its change record are one
        atomic batch.
        """
        check_tenant(tenant)
        if tenant == PLATFORM_TENANT:
            raise InvalidInput(f"the tenant name {PLATFORM_TENANT!r} is reserved for platform events; choose another")
        if actor is not None and actor_name is not None and actor != actor_name:
            raise InvalidInput("give the actor's name once (actor_name)")
        chosen_scopes = check_scopes(scopes)
        chosen_domains = check_domains(domains)
        name = _check_actor(actor_name if actor_name is not None else actor)
        kind = _check_actor_type(actor_type)
        chosen_actor_id = _check_actor_id(actor_id)
        chosen_roles = _check_roles(roles)
        key_id = self._new_key_id()
        key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        created = _now()
        properties: dict[str, PropertyValue] = {
            "v": _FORMAT, "tenant": tenant, "digest": _digest(key), "label": label, "created_at": created,
            "scopes": ",".join(chosen_scopes), "roles": ",".join(chosen_roles),
        }
        if chosen_domains is not None:
            properties["domains"] = ",".join(chosen_domains)
        if name is not None:
            properties["actor"] = name
        if actor_type is not None:
            properties["actor_type"] = kind
        if chosen_actor_id is not None:
            properties["actor_id"] = chosen_actor_id
        info = ApiKeyInfo(key_id, tenant, label, created, None, chosen_scopes, chosen_domains, name,
                          chosen_roles, kind, chosen_actor_id)
        self._table.batch([TableOp.insert(Entity(_PARTITION, key_id, properties)),
                           *self._record_ops("apikeys.create", info)])
        return info, key

    def authenticate(self, key: str) -> Principal:
        """The principal of a valid, unrevoked key; :class:`KeyRefused` (Unauthorized) otherwise, with one
        message for every cause.

        The key's form is checked before any lookup, so nothing a caller sends reaches the table as a key.
        """
        if not isinstance(key, str):
            raise KeyRefused("malformed")
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != _PREFIX or not _KEY_ID.match(key_id):
            raise KeyRefused("malformed")
        if not _SECRET.match(secret):
            raise KeyRefused("malformed", key_id)
        try:
            record = self._table.get(_PARTITION, key_id)
        except NotFound:
            raise KeyRefused("unknown", key_id) from None
        tenant = str(record.get("tenant", "")) or None
        if not hmac.compare_digest(str(record.get("digest", "")), _digest(key)):
            raise KeyRefused("mismatch", key_id, tenant)
        if record.get("revoked_at"):
            raise KeyRefused("revoked", key_id, tenant)
        info = self._info(record)
        return Principal(
            tenant=info.tenant, key_id=info.key_id, scopes=frozenset(info.scopes),
            domains=frozenset(info.domains) if info.domains is not None else None,
            actor_name=info.actor, roles=info.roles, actor_type=info.actor_type, actor_id=info.actor_id,
        )

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Mark a key revoked; it stops working at once. NotFound for an unknown id.

        Revoking a revoked key changes nothing and records nothing; otherwise the key row's
        update and its change record are one atomic batch, conditional on the row read.
        """
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise NotFound(f"no API key has the id {key_id!r}; key ids are 16 hex digits (see `stowage keys list`)")

        def attempt() -> ApiKeyInfo:
            record = self._table.get(_PARTITION, key_id)
            if record.get("revoked_at"):
                return self._info(record)
            record.properties["revoked_at"] = _now()
            info = self._info(record)
            with conditional():
                self._table.batch([TableOp.update(record, if_match=record.etag),
                                   *self._record_ops("apikeys.revoke", info)])
            return info

        return retry_races(attempt, what=f"API key {key_id!r}")

    def list(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Every key (optionally of one tenant), revoked ones included."""
        infos = [self._info(e) for e in self._table.query_all(_PARTITION) if not e.row_key.startswith(OUTBOX_PREFIX)]
        return [i for i in infos if tenant is None or i.tenant == tenant]

    @staticmethod
    def _info(record: Entity) -> ApiKeyInfo:
        scopes: tuple[str, ...] = DEFAULT_SCOPES
        domains: tuple[str, ...] | None = None
        actor: str | None = None
        roles: tuple[str, ...] = ()
        actor_type: ActorKind = "agent"
        actor_id: str | None = None
        if record.get("v") is not None:  # version 2 and later: scopes, domains, actor, roles
            scopes = tuple(s for s in SCOPES if s in _split(record.get("scopes", "")))
            domains = _split(record["domains"]) if record.get("domains") else None
            actor = record.get("actor") or None
            roles = _split(record.get("roles", ""))
            actor_type = "user" if record.get("actor_type") == "user" else "agent"
            actor_id = record.get("actor_id") or None
        return ApiKeyInfo(
            record.row_key,
            str(record["tenant"]),
            str(record.get("label", "")),
            str(record.get("created_at", "")),
            record.get("revoked_at"),
            scopes,
            domains,
            actor,
            roles,
            actor_type,
            actor_id,
        )


# --------------------------------------------------------------------------- failures, counted


class _EventTable(Protocol):
    """What :class:`FailureAudit` writes its records with (the changes table)."""

    def insert(self, entity: Entity) -> str: ...


#: Seconds one tally of failures covers.
FAILURE_WINDOW_SECONDS = 60.0
#: Distinct (tenant, kind, reason, key id) tallies one window keeps; more are counted as overflow.
MAX_FAILURE_TALLIES = 64
#: Closed windows kept for flushing when nothing flushes them; older ones are dropped (and logged).
_MAX_PENDING_WINDOWS = 8
_UNPARSEABLE = "-"


@dataclass
class _Tally:
    count: int
    first_at: float
    last_at: float
    actor: dict[str, object]


@dataclass
class _Window:
    start: float
    tallies: dict[tuple[str, str, str, str], _Tally] = field(default_factory=dict)
    overflow: int = 0


class FailureAudit:
    """Authentication and authorization failures, counted in memory and recorded once per window.

    A failed request costs a dictionary update, never a write: failures are tallied per
    (tenant, kind, reason, key id) in windows of ``window`` seconds (aligned to the
    clock), at most ``max_tallies`` tallies per window, and the failures beyond them
    are one overflow count (under :data:`PLATFORM_TENANT`). :meth:`flush` writes one
    change record per tally of every closed window: an outbox row in partition
    ``~events|<tenant>`` of the changes table (one insert, plus the feed's hint),
    sequenced and audited like any change. Kinds: ``auth`` (op ``auth.failed``,
    category authentication; the actor is the key the caller claimed, marked
    ``claimed``) and ``authorization`` (op ``authorization.denied``; the actor is the
    authenticated key's).

    Crash behaviour and limits: tallies not yet flushed are lost with the process, as
    are those of a failed write (logged); memory is bounded by ``max_tallies`` per
    window and :data:`_MAX_PENDING_WINDOWS` windows. One instance per app (the edge's),
    never module-level state. Thread-safe.
    """

    def __init__(self, feed: Callable[[], ChangeFeed], table: Callable[[], _EventTable], *,
                 window: float = FAILURE_WINDOW_SECONDS, max_tallies: int = MAX_FAILURE_TALLIES,
                 clock: Callable[[], float] = time.time) -> None:
        if window <= 0 or max_tallies < 1:
            raise ValueError("window must be positive and max_tallies at least 1")
        self._feed = feed
        self._table = table
        self.window = window
        self.max_tallies = max_tallies
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Window | None = None
        self._closed: list[_Window] = []
        #: Windows dropped unflushed (too many pending) and records whose write failed.
        self.dropped_windows = 0
        self.failed_writes = 0

    # -- counting

    def authentication_failed(self, refusal: KeyRefused) -> None:
        """Count a refused key (from :meth:`ApiKeyService.authenticate`, or ``missing``)."""
        actor: dict[str, object] = {"type": "agent", "id": refusal.key_id or "anonymous", "claimed": True}
        self._note(refusal.tenant or PLATFORM_TENANT, "auth", refusal.reason, refusal.key_id, actor)

    def authorization_failed(self, principal: Principal, scope: str | None, domain: str | None) -> None:
        """Count a valid key refused for lacking ``scope`` or ``domain``."""
        reason = f"scope:{scope}" if scope is not None and scope not in principal.scopes else f"domain:{domain}"
        self._note(principal.tenant, "authorization", reason, principal.key_id, principal.actor().as_json())

    def _note(self, tenant: str, kind: str, reason: str, key_id: str | None, actor: dict[str, object]) -> None:
        now = self._clock()
        start = (now // self.window) * self.window
        key = (tenant, kind, reason, key_id or _UNPARSEABLE)
        with self._lock:
            window = self._roll(start)
            tally = window.tallies.get(key)
            if tally is not None:
                tally.count += 1
                tally.last_at = now
            elif len(window.tallies) < self.max_tallies:
                window.tallies[key] = _Tally(1, now, now, actor)
            else:
                window.overflow += 1

    def _roll(self, start: float) -> _Window:
        """The window starting at ``start``, closing the current one if it is older (lock held)."""
        current = self._current
        if current is not None and current.start == start:
            return current
        if current is not None and (current.tallies or current.overflow):
            self._closed.append(current)
            if len(self._closed) > _MAX_PENDING_WINDOWS:
                lost = self._closed.pop(0)
                self.dropped_windows += 1
                log.error("dropped an unflushed window of %d authentication failure tallies",
                          len(lost.tallies))
        self._current = _Window(start)
        return self._current

    def tallies(self) -> int:
        """Tallies held in memory (open and closed windows), for tests and metrics."""
        with self._lock:
            open_ = len(self._current.tallies) if self._current else 0
            return open_ + sum(len(w.tallies) for w in self._closed)

    # -- recording

    def due(self) -> bool:
        """Whether a closed window waits to be flushed (cheap; no lock)."""
        current = self._current
        if self._closed:
            return True
        return current is not None and bool(current.tallies or current.overflow) and \
            self._clock() >= current.start + self.window

    def flush(self, *, everything: bool = False) -> int:
        """Write one record per tally of every closed window (``everything``: the open one too); how many.

        Called by the edge on the first request after a window closes, and at shutdown.
        """
        with self._lock:
            start = (self._clock() // self.window) * self.window
            if everything and self._current is not None:
                start = float("inf")
            self._roll(start)
            windows, self._closed = self._closed, []
            if everything:
                self._current = None
        written = 0
        for window in windows:
            for (tenant, kind, reason, key_id), tally in window.tallies.items():
                written += self._write(tenant, kind, reason, key_id, tally.actor, window, {
                    "count": tally.count, "first_at": round(tally.first_at, 3), "last_at": round(tally.last_at, 3)})
            if window.overflow:
                written += self._write(PLATFORM_TENANT, "auth", "overflow", _UNPARSEABLE,
                                       {"type": "system", "id": "edge"}, window,
                                       {"count": window.overflow, "max_tallies": self.max_tallies})
        return written

    def _write(self, tenant: str, kind: str, reason: str, key_id: str, actor: dict[str, object], window: _Window,
               details: dict[str, object]) -> int:
        record = ChangeRecord(
            domain=kind, op=f"{kind}.{'failed' if kind == 'auth' else 'denied'}", target_type="api_key",
            target_id=key_id, actor=actor, context={"source": "http"},
            details={"reason": reason, **details, "window_start": window.start, "window_seconds": self.window})
        try:
            op = self._feed().outbox_op(tenant, names.TABLE_CHANGES, EVENTS_PARTITION_PREFIX + tenant, record)
            self._table().insert(op.entity)
        except StowageError:
            self.failed_writes += 1
            log.exception("could not record %d %s failure(s) (%s) of tenant %r", details.get("count"), kind,
                          reason, tenant)
            return 0
        return 1
