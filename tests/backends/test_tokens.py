"""Continuation tokens are signed by the backend contract (shared.backends.base), on every backend.

A token opens only in the listing that issued it: same kind of listing, same table
or container, same partition, same range or prefix. Anything else (tampered,
truncated, another partition's, garbage, a well-formed backend token without the
signature) is InvalidInput before the backend sees it. Every instance on the same
storage shares the secret, so one instance's token works on another.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.backends import Backend, BlobStore, Entity, TableOp, TableStore, create_backend
from shared.backends.base import TokenSigner, encode_continuation
from shared.config import Settings
from shared.errors import InvalidInput

pytestmark = pytest.mark.timeout(180)


def _fill(table: TableStore, partition: str, count: int = 5) -> None:
    table.batch([TableOp.insert(Entity(partition, f"r{i}", {"n": i})) for i in range(count)])


def _forgeries(token: str) -> list[str]:
    inner, _, tag = token.rpartition(".")
    flipped = inner[:-1] + ("A" if inner[-1] != "A" else "B")
    return [
        f"{flipped}.{tag}",  # tampered state, old tag
        token[:-3],  # truncated tag
        token[: len(inner) // 2],  # truncated state, no tag
        inner,  # the backend's own token without the signature
        f"{inner}.",  # an empty tag
        f"{inner}.{tag[::-1]}",  # another tag
        "garbage!",
        "a" * 20_000,
        encode_continuation({"after": {"x": 1}}) + "." + tag,  # what used to reach SQLite and give 503
    ]


def test_table_query_tokens_are_refused_when_forged_or_foreign(table: TableStore) -> None:
    _fill(table, "tenant-a")
    _fill(table, "tenant-b")
    first = table.query("tenant-a", limit=2)
    token = first.continuation
    assert token is not None
    assert [e.row_key for e in table.query("tenant-a", limit=2, continuation=token).items] == ["r2", "r3"]
    for forged in _forgeries(token):
        with pytest.raises(InvalidInput, match="not one this service issued"):
            table.query("tenant-a", limit=2, continuation=forged)
    # Another tenant's partition, another range, a prefix instead of the whole partition: all refused.
    with pytest.raises(InvalidInput):
        table.query("tenant-b", limit=2, continuation=token)
    with pytest.raises(InvalidInput):
        table.query("tenant-a", start="r1", limit=2, continuation=token)
    with pytest.raises(InvalidInput):
        table.query("tenant-a", prefix="r", limit=2, continuation=token)


def test_prefix_query_tokens_are_bound_to_their_prefix(table: TableStore) -> None:
    table.batch([TableOp.insert(Entity("p", f"{group}{i}")) for group in "ab" for i in range(4)])
    token = table.query("p", prefix="a", limit=2).continuation
    assert token is not None
    assert [e.row_key for e in table.query("p", prefix="a", limit=2, continuation=token).items] == ["a2", "a3"]
    with pytest.raises(InvalidInput):
        table.query("p", prefix="b", limit=2, continuation=token)


def test_scan_tokens_are_bound_to_their_table(backend: Backend, table: TableStore, names) -> None:
    other_name = names.table + "x"
    backend.ensure(tables=[other_name])
    other = backend.table(other_name)
    _fill(table, "p")
    _fill(other, "p")
    token = table.scan(limit=2).continuation
    assert token is not None
    assert len(table.scan(limit=2, continuation=token).items) == 2
    for forged in _forgeries(token):
        with pytest.raises(InvalidInput):
            table.scan(limit=2, continuation=forged)
    with pytest.raises(InvalidInput):
        other.scan(limit=2, continuation=token)
    with pytest.raises(InvalidInput):  # a query token is not a scan token, and the other way round
        table.query("p", limit=2, continuation=token)


def test_blob_list_tokens_are_bound_to_container_and_prefix(backend: Backend, blobs: BlobStore, names) -> None:
    other_name = names.container + "-x"
    backend.ensure(containers=[other_name])
    other = backend.blobs(other_name)
    for i in range(4):
        blobs.put(f"a/{i}", b"")
        blobs.put(f"b/{i}", b"")
        other.put(f"a/{i}", b"")
    token = blobs.list("a/", limit=2).continuation
    assert token is not None
    assert [b.key for b in blobs.list("a/", limit=2, continuation=token).items] == ["a/2", "a/3"]
    for forged in _forgeries(token):
        with pytest.raises(InvalidInput):
            blobs.list("a/", limit=2, continuation=forged)
    with pytest.raises(InvalidInput):
        blobs.list("b/", limit=2, continuation=token)
    with pytest.raises(InvalidInput):
        other.list("a/", limit=2, continuation=token)


def test_service_tokens_are_bound_to_table_partition_and_purpose(table: TableStore) -> None:
    token = table.sign_continuation("tenant-a", {"after": "x", "n": 3}, purpose="listing")
    assert table.verify_continuation("tenant-a", token, purpose="listing") == {"after": "x", "n": 3}
    for partition, purpose in (("tenant-b", "listing"), ("tenant-a", "other")):
        with pytest.raises(InvalidInput):
            table.verify_continuation(partition, token, purpose=purpose)
    for forged in _forgeries(token):
        with pytest.raises(InvalidInput):
            table.verify_continuation("tenant-a", forged, purpose="listing")


def test_every_instance_on_the_same_storage_accepts_the_others_tokens(settings: Settings, table: TableStore,
                                                                      names) -> None:
    _fill(table, "p")
    token = table.query("p", limit=2).continuation
    with create_backend(settings) as second:
        assert [e.row_key for e in second.table(names.table).query("p", limit=2, continuation=token).items] == \
            ["r2", "r3"]


def test_a_configured_secret_is_used_and_another_secret_refuses_the_tokens(settings: Settings, names) -> None:
    one = replace(settings, token_secret="s" * 32)
    two = replace(settings, token_secret="t" * 32)
    with create_backend(one) as first, create_backend(two) as second:
        first.ensure(tables=[names.table])
        _fill(first.table(names.table), "p")
        token = first.table(names.table).query("p", limit=2).continuation
        assert token == TokenSigner(b"s" * 32).seal(TokenSigner.scope("query", names.table, "p", None, None),
                                                    token.rpartition(".")[0])
        with pytest.raises(InvalidInput):
            second.table(names.table).query("p", limit=2, continuation=token)


def test_a_token_secret_shorter_than_16_bytes_is_refused() -> None:
    with pytest.raises(InvalidInput):
        Settings(token_secret="short")
    with pytest.raises(InvalidInput):
        TokenSigner(b"x" * 15)
