"""The local backend's row encoding: bytes are stored raw (a BLOB, no base64 in JSON), and rows
written by earlier releases (JSON text, bytes as ``{"b64": ...}``) still read and update.

Local only: the encoding is the local backend's own storage format (the other backends store
properties through their services; tests/backends/test_conformance.py runs the same
behaviour on all three).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from shared.backends import Entity, TableOp
from shared.backends.local import LocalBackend

PROPERTIES = {"text": "héllo", "n": 7, "big": 2**62, "f": 1.0, "yes": True, "raw": b"\x00\x01\xffbytes",
              "empty": b"", "more": bytes(range(256)) * 3}


@pytest.fixture
def backend(tmp_path: Path):
    with LocalBackend(tmp_path, token_secret="s" * 32) as backend:
        backend.ensure(tables=["enc"])
        yield backend


def _stored(backend: LocalBackend, row_key: str) -> str | bytes:
    return backend.table_db.read("SELECT props FROM entities WHERE tbl='enc' AND rk=?", (row_key,))[0][0]


def test_bytes_are_stored_raw_and_read_back_with_their_types(backend: LocalBackend) -> None:
    table = backend.table("enc")
    table.insert(Entity("p", "a", PROPERTIES))
    table.batch([TableOp.insert(Entity("p", "b", PROPERTIES)), TableOp.insert(Entity("p", "c", {"only": "text"}))])
    stored = _stored(backend, "a")
    assert isinstance(stored, bytes) and PROPERTIES["more"] in stored and b"b64" not in stored
    assert json.loads(_stored(backend, "c")) == {"only": "text"}  # no bytes: plain JSON text
    for row_key in ("a", "b"):
        got = table.get("p", row_key).properties
        assert got == PROPERTIES
        assert {name: type(value) for name, value in got.items()} == {
            name: type(value) for name, value in PROPERTIES.items()}
    assert [e.properties for e in table.query("p").items] == [PROPERTIES, PROPERTIES, {"only": "text"}]


def test_rows_in_the_earlier_encoding_still_read_update_and_delete(backend: LocalBackend) -> None:
    old = {name: {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value
           for name, value in PROPERTIES.items()}
    with backend.table_db.write() as conn:
        conn.execute("INSERT INTO entities VALUES (?,?,?,?,?)", ("enc", "p", "old", json.dumps(old), "etag-1"))
    table = backend.table("enc")
    read = table.get("p", "old")
    assert read.properties == PROPERTIES and read.etag == "etag-1"
    assert [e.properties for e in table.query("p").items] == [PROPERTIES]
    assert [e.properties for e in table.scan().items] == [PROPERTIES]
    etag = table.update(Entity("p", "old", {**PROPERTIES, "n": 8}), if_match="etag-1")
    assert isinstance(_stored(backend, "old"), bytes)  # written again in the new encoding
    assert table.get("p", "old").properties == {**PROPERTIES, "n": 8}
    table.delete("p", "old", if_match=etag)
    assert table.query("p").items == []
