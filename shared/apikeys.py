"""API keys: each maps to one tenant, with scopes, optional domains and an optional actor.

A key looks like ``stw_<key id>_<secret>``: the id is 16 lowercase hex digits
and addresses the stored record (so revoking needs no secret); the secret is 32
random bytes, which is why a plain SHA-256 digest (not a slow password hash) is
the right tool here. Only the digest is stored.

Storage layout (table ``stowageapikeys``, partition ``apikey``, row key = key id):

* ``tenant``, ``digest``, ``label``, ``created_at``, ``revoked_at``: every record;
* ``v`` = 2 and ``scopes`` (comma-separated subset of read, write, admin),
  ``domains`` (comma-separated; absent: every domain), ``actor`` and ``roles``
  (comma-separated): records written since scopes exist.

A record without ``v`` was written before scopes existed; it reads as scopes
read and write in every domain, with no actor, so existing keys keep working.

A scope does not imply another: ``admin`` (backups, restore, retention, erasure)
does not grant ``read`` or ``write``, and a key gets each scope it needs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from shared import names
from shared.backends import Entity
from shared.backends.base import PropertyValue
from shared.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from shared.keys import check_tenant
from shared.stores import Stores

_PARTITION = "apikey"
_PREFIX = "stw"
_FORMAT = 2

#: What a key may do: read (GET, HEAD), write (every other method), admin (operations on a whole tenant).
SCOPES = ("read", "write", "admin")
#: The scopes of a key created without any named.
DEFAULT_SCOPES = ("read", "write")
#: The domains a key can be limited to.
DOMAINS = ("objects", "memory", "sessions", "workflows", "checkpoints")

_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_ROLE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_ACTOR_LENGTH = 128
_MAX_ROLES = 32
#: Every bad key gets this one message, whatever is wrong with it.
INVALID_KEY = "the API key is not valid; send 'Authorization: Bearer stw_...' with a key from `stowage keys create`"


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
    #: Who the key acts for (a person or an agent), recorded by the audit log; None if not named.
    actor: str | None = None
    #: Free role names of the actor, for the application's own rules.
    roles: tuple[str, ...] = ()

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
    actor: str | None = None
    roles: tuple[str, ...] = ()


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
        raise InvalidInput(f"actor must be 1-{_MAX_ACTOR_LENGTH} characters without control characters")
    return actor


def _check_roles(roles: Iterable[str] | str) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(_items(roles)))
    if len(unique) > _MAX_ROLES or not all(_ROLE.match(role) for role in unique):
        raise InvalidInput(f"roles: at most {_MAX_ROLES}, each 1-64 letters, digits, '.', '_', ':' or '-'")
    return unique


def _split(text: object) -> tuple[str, ...]:
    return tuple(part for part in str(text).split(",") if part)


class ApiKeyService:
    """Create, check, list and revoke tenant API keys."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_APIKEYS)

    def create(self, tenant: str, label: str = "", *, scopes: Iterable[str] | str = DEFAULT_SCOPES,
               domains: Iterable[str] | str | None = None, actor: str | None = None,
               roles: Iterable[str] | str = ()) -> tuple[ApiKeyInfo, str]:
        """A new key for ``tenant``; returns its record and the key itself, shown only this once.

        ``scopes``: a subset of :data:`SCOPES` (default read and write); ``domains``: a
        subset of :data:`DOMAINS` (default: every domain); ``actor`` and ``roles``: who
        the key acts for, recorded by the audit log. Lists may also be given as one
        comma-separated string. InvalidInput when one is not valid.
        """
        check_tenant(tenant)
        chosen_scopes = check_scopes(scopes)
        chosen_domains = check_domains(domains)
        actor = _check_actor(actor)
        chosen_roles = _check_roles(roles)
        key_id = secrets.token_hex(8)
        key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        created = _now()
        properties: dict[str, PropertyValue] = {
            "v": _FORMAT, "tenant": tenant, "digest": _digest(key), "label": label, "created_at": created,
            "scopes": ",".join(chosen_scopes), "roles": ",".join(chosen_roles),
        }
        if chosen_domains is not None:
            properties["domains"] = ",".join(chosen_domains)
        if actor is not None:
            properties["actor"] = actor
        self._table.insert(Entity(_PARTITION, key_id, properties))
        return ApiKeyInfo(key_id, tenant, label, created, None, chosen_scopes, chosen_domains, actor,
                          chosen_roles), key

    def authenticate(self, key: str) -> Principal:
        """The principal of a valid, unrevoked key; Unauthorized otherwise, with one message for every cause.

        The key's form is checked before any lookup, so nothing a caller sends reaches the table as a key.
        """
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != _PREFIX or not _KEY_ID.match(key_id) or not _SECRET.match(secret):
            raise Unauthorized(INVALID_KEY)
        try:
            record = self._table.get(_PARTITION, key_id)
        except NotFound:
            raise Unauthorized(INVALID_KEY) from None
        if not hmac.compare_digest(str(record.get("digest", "")), _digest(key)) or record.get("revoked_at"):
            raise Unauthorized(INVALID_KEY)
        info = self._info(record)
        return Principal(
            tenant=info.tenant, key_id=info.key_id, scopes=frozenset(info.scopes),
            domains=frozenset(info.domains) if info.domains is not None else None,
            actor=info.actor, roles=info.roles,
        )

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Mark a key revoked; it stops working at once. NotFound for an unknown id."""
        if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
            raise NotFound(f"no API key has the id {key_id!r}; key ids are 16 hex digits (see `stowage keys list`)")
        record = self._table.get(_PARTITION, key_id)
        record.properties["revoked_at"] = record.get("revoked_at") or _now()
        self._table.update(record, if_match=record.etag)
        return self._info(record)

    def list(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Every key (optionally of one tenant), revoked ones included."""
        infos = [self._info(e) for e in self._table.query_all(_PARTITION)]
        return [i for i in infos if tenant is None or i.tenant == tenant]

    @staticmethod
    def _info(record: Entity) -> ApiKeyInfo:
        scopes: tuple[str, ...] = DEFAULT_SCOPES
        domains: tuple[str, ...] | None = None
        actor: str | None = None
        roles: tuple[str, ...] = ()
        if record.get("v") is not None:  # version 2 and later: scopes, domains, actor, roles
            scopes = tuple(s for s in SCOPES if s in _split(record.get("scopes", "")))
            domains = _split(record["domains"]) if record.get("domains") else None
            actor = record.get("actor") or None
            roles = _split(record.get("roles", ""))
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
        )
