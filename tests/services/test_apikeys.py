"""API keys on every backend: scopes, domains, actor and roles; one answer for every bad key; old records."""

from __future__ import annotations

import hashlib
import secrets
import uuid

import pytest

from shared import names
from shared.apikeys import DEFAULT_SCOPES, INVALID_KEY, ApiKeyService, Principal
from shared.backends import Entity
from shared.errors import Forbidden, InvalidInput, NotFound, Unauthorized


def _tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def keys(stores) -> ApiKeyService:
    return ApiKeyService(stores)


def test_a_new_key_reads_and_writes_everywhere_by_default(keys):
    tenant = _tenant()
    info, key = keys.create(tenant, label="ci")
    assert info.scopes == DEFAULT_SCOPES == ("read", "write") and info.domains is None
    principal = keys.authenticate(key)
    assert principal == Principal(tenant=tenant, key_id=info.key_id, scopes=frozenset({"read", "write"}))
    assert principal.allows("read", "objects") and principal.allows("write", "memory")
    assert not principal.allows("admin")
    assert [i.key_id for i in keys.list(tenant)] == [info.key_id]


def test_scopes_domains_actor_and_roles_are_kept(keys):
    tenant = _tenant()
    info, key = keys.create(tenant, scopes=["admin", "read"], domains=["memory", "objects"], actor="Ada Lovelace",
                            roles=["reviewer", "ops:oncall"])
    assert info.scopes == ("read", "admin") and info.domains == ("objects", "memory")
    principal = keys.authenticate(key)
    assert principal.scopes == {"read", "admin"} and principal.domains == {"objects", "memory"}
    assert principal.actor_name == "Ada Lovelace" and principal.roles == ("reviewer", "ops:oncall")
    (listed,) = keys.list(tenant)
    assert (listed.scopes, listed.domains, listed.actor, listed.roles) == (
        ("read", "admin"), ("objects", "memory"), "Ada Lovelace", ("reviewer", "ops:oncall"))

    assert principal.allows("read", "objects") and principal.allows("admin")
    assert "'write' scope" in principal.refusal("write", "objects")
    assert "not 'workflows'" in principal.refusal("read", "workflows")
    with pytest.raises(Forbidden):
        principal.require("read", "checkpoints")

    as_text, _ = keys.create(tenant, scopes="read, admin", domains="objects", roles="a,b")  # comma-separated
    assert (as_text.scopes, as_text.domains, as_text.roles) == (("read", "admin"), ("objects",), ("a", "b"))


@pytest.mark.parametrize("options", [
    {"scopes": []}, {"scopes": ["read", "delete"]}, {"domains": []}, {"domains": ["objects", "traces"]},
    {"actor": ""}, {"actor": "x" * 129}, {"actor": "a\nb"}, {"roles": ["has space"]}, {"roles": ["a,b"]},
])
def test_invalid_options_are_refused_and_nothing_is_stored(keys, options):
    tenant = _tenant()
    with pytest.raises(InvalidInput):
        keys.create(tenant, **options)
    assert keys.list(tenant) == []


def test_every_bad_key_gets_the_same_unauthorized(keys):
    _, key = keys.create(_tenant())
    key_id = key.split("_")[1]
    bad = [
        "", "nonsense", "stw_", "Bearer x", key[:-4] + "AAAA", key.replace("stw_", "sk_", 1),
        f"stw_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}",  # well formed, unknown
        # Id parts a table key cannot hold: refused before any lookup, with the same answer.
        f"stw_{key_id[:7]}/{key_id[8:]}_{key.split('_', 2)[2]}",
        f"stw_{key_id[:7]}#{key_id[8:]}_{key.split('_', 2)[2]}",
        f"stw_{key_id[:7]}?{key_id[8:]}_{key.split('_', 2)[2]}",
        f"stw_{key_id[:7]}\\{key_id[8:]}_secret-secret-secret",
        f"stw_{key_id.upper()}_{key.split('_', 2)[2]}",
        f"stw_../../x_{'s' * 43}",
        key + "\x00",
    ]
    for candidate in bad:
        with pytest.raises(Unauthorized) as caught:
            keys.authenticate(candidate)
        assert str(caught.value) == INVALID_KEY, candidate


def test_a_revoked_key_stops_working(keys):
    info, key = keys.create(_tenant())
    assert keys.revoke(info.key_id).revoked_at
    with pytest.raises(Unauthorized):
        keys.authenticate(key)
    with pytest.raises(NotFound):
        keys.revoke("a/b#c")
    with pytest.raises(NotFound):
        keys.revoke(secrets.token_hex(8))


def test_a_key_stored_before_scopes_existed_still_reads_and_writes(keys, stores):
    """Records written by the first format (no ``v``, no scopes) authenticate as read and write everywhere."""
    tenant = _tenant()
    key_id = secrets.token_hex(8)
    key = f"stw_{key_id}_{secrets.token_urlsafe(32)}"
    stores.table(names.TABLE_APIKEYS).insert(Entity("apikey", key_id, {
        "tenant": tenant, "digest": hashlib.sha256(key.encode()).hexdigest(), "label": "old",
        "created_at": "2024-01-01T00:00:00+00:00"}))
    principal = keys.authenticate(key)
    assert principal.tenant == tenant and principal.scopes == {"read", "write"} and principal.domains is None
    assert principal.actor_name is None and principal.roles == ()
    (info,) = keys.list(tenant)
    assert (info.scopes, info.domains, info.label) == (("read", "write"), None, "old")
    keys.revoke(key_id)
    with pytest.raises(Unauthorized):
        keys.authenticate(key)


def test_the_principal_names_its_actor_for_the_audit_log(keys):
    from shared.request_context import Actor

    tenant = _tenant()
    _, key = keys.create(tenant, actor_name="Ada", actor_type="user", actor_id="ada@example.com", roles="ops")
    assert keys.authenticate(key).actor() == Actor("user", "ada@example.com", "Ada", ("ops",))
    (listed,) = keys.list(tenant)
    assert (listed.actor_type, listed.actor_id, listed.actor_name) == ("user", "ada@example.com", "Ada")
    plain, plain_key = keys.create(tenant)
    assert keys.authenticate(plain_key).actor() == Actor("agent", plain.key_id)  # a program, by default


@pytest.mark.parametrize("options", [
    {"actor_type": "system"}, {"actor_type": "User"}, {"actor_id": ""}, {"actor_id": "a b"}, {"actor_id": "x" * 129},
    {"actor": "A", "actor_name": "B"},
])
def test_invalid_actors_are_refused_and_nothing_is_stored(keys, options):
    tenant = _tenant()
    with pytest.raises(InvalidInput):
        keys.create(tenant, **options)
    assert keys.list(tenant) == []
