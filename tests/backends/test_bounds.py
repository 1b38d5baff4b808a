"""Prefix listings and key sizes at the edges of Unicode, on every backend.

Every backend compares keys by code point (SQLite and DynamoDB by UTF-8 bytes,
Azure through its order-preserving row key encoding), so a prefix listing must
find keys holding U+10FFFF, the largest code point, right after the prefix, and
the characters around the surrogate block and the Azure escape (U+D7FF, U+E000).
"""

from __future__ import annotations

import pytest

from shared.backends import BlobStore, Entity, TableOp, TableStore
from shared.backends.base import MAX_TABLE_KEY_BYTES, prefix_upper_bound, table_key_size
from shared.errors import InvalidKey

pytestmark = pytest.mark.timeout(180)

TOP = "\U0010ffff"


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a" + TOP) == "b"
    assert prefix_upper_bound("a" + TOP + TOP) == "b"
    assert prefix_upper_bound(TOP) is None and prefix_upper_bound("") is None
    assert prefix_upper_bound("\ud7ff") == "\ue000"  # over the surrogates
    assert prefix_upper_bound("a~") == "a\xa0"  # over DEL and the C1 controls: no key holds them
    assert prefix_upper_bound("a.") == "a0"  # "/" is no table key character
    assert prefix_upper_bound("a.", table_keys=False) == "a/"  # but a blob key character


def test_table_prefix_query_finds_keys_with_the_largest_code_point(table: TableStore) -> None:
    keys = ["o", "p", "pa", "p" + TOP, "p" + TOP + "z", "p" + TOP + TOP, "q",
            "x\ud7ff", "x\ud7ffa", "x\ue000", "x\uffff", "x" + TOP, "y~", "y~~", "y\xa0", "y\u00ff"]
    table.batch([TableOp.insert(Entity("part", key)) for key in keys])

    def listed(prefix: str, **kwargs: object) -> list[str]:
        return [e.row_key for e in table.query_all("part", prefix=prefix, **kwargs)]

    assert listed("p") == ["p", "pa", "p" + TOP, "p" + TOP + "z", "p" + TOP + TOP]
    assert listed("p" + TOP) == ["p" + TOP, "p" + TOP + "z", "p" + TOP + TOP]
    assert listed("p" + TOP + TOP) == ["p" + TOP + TOP]
    assert listed("x\ud7ff") == ["x\ud7ff", "x\ud7ffa"]
    assert listed("x\ue000") == ["x\ue000"]
    assert listed("x") == ["x\ud7ff", "x\ud7ffa", "x\ue000", "x\uffff", "x" + TOP]
    assert listed("y~") == ["y~", "y~~"]
    # Paged one by one, the same.
    assert [e.row_key for e in table.query_all("part", prefix="p", limit=1)] == listed("p")


def test_table_prefix_query_with_nothing_above_it(table: TableStore) -> None:
    table.batch([TableOp.insert(Entity("part", key)) for key in (TOP, TOP + "a", TOP + TOP, "z")])
    assert [e.row_key for e in table.query_all("part", prefix=TOP)] == [TOP, TOP + "a", TOP + TOP]


def test_blob_prefix_listing_finds_keys_with_the_largest_code_point(blobs: BlobStore) -> None:
    keys = ["p", "p" + TOP, "p" + TOP + "/z", "p/a", "q", "a.b", "a/b", TOP]
    for key in keys:
        blobs.put(key, b"")
    assert [b.key for b in blobs.list_all("p")] == ["p", "p/a", "p" + TOP, "p" + TOP + "/z"]
    assert [b.key for b in blobs.list_all("p" + TOP)] == ["p" + TOP, "p" + TOP + "/z"]
    assert [b.key for b in blobs.list_all("a.")] == ["a.b"]
    assert [b.key for b in blobs.list_all(TOP)] == [TOP]
    assert [b.key for b in blobs.list_all("")] == sorted(keys)


def test_table_key_size_counts_the_strictest_store() -> None:
    assert table_key_size("ab") == 4  # UTF-16
    assert table_key_size("\U0001f680") == 4
    assert table_key_size("\u4e2d") == 3  # UTF-8
    assert table_key_size("\ue000") == 6  # the Azure backend stores it as two characters


def test_keys_that_azure_stores_longer_are_measured_as_stored(table: TableStore) -> None:
    fits = "\ue000" * (MAX_TABLE_KEY_BYTES // 6)
    table.insert(Entity("part", fits))
    assert table.get("part", fits).row_key == fits
    with pytest.raises(InvalidKey):
        table.insert(Entity("part", fits + "\ue000"))
