"""API keys: each maps to one tenant. Only a SHA-256 digest of a key is stored.

A key looks like ``stw_<key id>_<secret>``. The id addresses the stored record
(so revoking needs no secret); the secret is 32 random bytes, which is why a
plain digest (not a slow password hash) is the right tool here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from shared import names
from shared.backends import Entity
from shared.errors import NotFound, Unauthorized
from shared.keys import check_tenant
from shared.stores import Stores

_PARTITION = "apikey"
_PREFIX = "stw"


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key's record, without its secret."""

    key_id: str
    tenant: str
    label: str
    created_at: str
    revoked_at: str | None


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class ApiKeyService:
    """Create, check and revoke tenant API keys."""

    def __init__(self, stores: Stores) -> None:
        self._table = stores.table(names.TABLE_APIKEYS)

    def create(self, tenant: str, label: str = "") -> tuple[ApiKeyInfo, str]:
        """A new key for ``tenant``; returns its record and the key itself, shown only this once."""
        check_tenant(tenant)
        key_id = secrets.token_hex(8)
        key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        created = _now()
        self._table.insert(
            Entity(_PARTITION, key_id, {"tenant": tenant, "digest": _digest(key), "label": label, "created_at": created})
        )
        return ApiKeyInfo(key_id, tenant, label, created, None), key

    def authenticate(self, key: str) -> str:
        """The tenant of a valid, unrevoked key; Unauthorized otherwise (same message for every cause)."""
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != _PREFIX or len(key_id) != 16 or not secret:
            raise Unauthorized("the API key is malformed; expected 'Authorization: Bearer stw_...'")
        try:
            record = self._table.get(_PARTITION, key_id)
        except NotFound:
            raise Unauthorized("the API key is not valid") from None
        if not hmac.compare_digest(str(record.get("digest", "")), _digest(key)) or record.get("revoked_at"):
            raise Unauthorized("the API key is not valid")
        return str(record["tenant"])

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Mark a key revoked; it stops working at once. NotFound for an unknown id."""
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
        return ApiKeyInfo(
            record.row_key,
            str(record["tenant"]),
            str(record.get("label", "")),
            str(record.get("created_at", "")),
            record.get("revoked_at"),
        )
