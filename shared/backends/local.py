"""The local backend: embedded SQLite, no setup.

Two database files under the data directory, both in WAL mode:
``tables.sqlite3`` holds tables and queues, ``blobs.sqlite3`` holds blobs (kept
apart so large blob writes do not hold the table writer lock).

Every write is one SQLite transaction, so a process killed at any instant leaves
each write either fully there or not at all; with ``synchronous=NORMAL`` an
acknowledged write survives a process kill, with ``FULL`` also a power cut.
Several processes (the server and the CLI) may share one data directory: SQLite's
file locks serialise writers, and ``busy_timeout`` makes them wait their turn.

Entities: ``entities.props`` holds a row's properties as JSON text, or, when it has
bytes properties, as a BLOB of a JSON header followed by the raw bytes (no base64;
see ``_encode_properties``). Rows of the format before (JSON text with base64
bytes) are read as they are; both kinds live side by side in one file.

Limits: one machine; writers are serialised per file (tens of thousands of small
writes a second, see docs/performance.md).

Files: the data directory is created 0700 and every file in it 0600 from the start
(the SQLite files are created empty with that mode before SQLite opens them, and
SQLite gives its ``-wal`` and ``-shm`` files the mode of their database), since they
hold every tenant's data and the API key digests. ``token-secret`` holds the
continuation-token secret when ``STOWAGE_TOKEN_SECRET`` is not set: 32 random bytes,
made by the first process and published with a hard link, so every process sharing
the directory reads the same complete secret.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import secrets
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.backends.base import (
    Backend,
    Blob,
    BlobProperties,
    BlobStore,
    Entity,
    OpKind,
    Page,
    PropertyValue,
    QueueMessage,
    QueueStore,
    TableOp,
    TableStore,
    decode_continuation,
    encode_continuation,
    prefix_upper_bound,
)
from shared.errors import AlreadyExists, BackendUnavailable, InvalidInput, NotFound, PreconditionFailed

_TABLES_SCHEMA = """
CREATE TABLE IF NOT EXISTS known_tables (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities (
    tbl TEXT NOT NULL, pk TEXT NOT NULL, rk TEXT NOT NULL,
    props TEXT NOT NULL, etag TEXT NOT NULL,
    PRIMARY KEY (tbl, pk, rk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS known_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL,
    visible_at REAL NOT NULL, dequeue_count INTEGER NOT NULL DEFAULT 0,
    pop TEXT, enqueued_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at, seq);
"""

_BLOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    container TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
    content_type TEXT NOT NULL, metadata TEXT NOT NULL, etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    PRIMARY KEY (container, key)
);
"""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Map sqlite3 errors to shared.errors; the one place this backend does so."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise AlreadyExists(str(exc)) from exc
    except sqlite3.OperationalError as exc:
        raise BackendUnavailable(f"local store: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise BackendUnavailable(f"local store is damaged or unreadable: {exc}") from exc


TOKEN_SECRET_FILE = "token-secret"


def _create_private(path: Path) -> None:
    """Create the database ``path`` empty with mode 0600 unless it exists. One that exists, and
    its -wal and -shm files, lose group and other access (older versions made them 0644)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return
    except FileExistsError:
        pass
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)


def _read_or_make_secret(path: Path) -> bytes:
    """The secret in ``path``, or a new one written there atomically if there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(draft, path)  # atomic and never replaces: the first process to link wins
        except FileExistsError:
            return path.read_bytes()
        except OSError:  # no hard links here: create-only, complete before anyone can read it is not promised
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                return path.read_bytes()
            with os.fdopen(fd, "wb") as out:
                out.write(secret)
        return secret
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft)


def _where(table: str, entity: Entity) -> str:
    """How an error names an entity (made only when raising: most operations succeed)."""
    return f"entity ({entity.partition_key!r}, {entity.row_key!r}) in table {table!r}"


def _new_etag() -> str:
    return os.urandom(12).hex()


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


class _Database:
    """One SQLite file, with a small pool of connections shared by the process's threads.

    Connections are pooled rather than kept per thread: callers such as LangGraph
    start new threads all the time, and per-thread connections would pile up
    unclosed. Writers of this process take turns on a lock before ``BEGIN
    IMMEDIATE``, so they queue in Python instead of in SQLite's busy handler (which
    polls with sleeps); other processes still wait on SQLite's own lock.
    """

    MAX_IDLE = 8

    def __init__(self, path: Path, schema: str, synchronous: str) -> None:
        self.path = path
        self._synchronous = synchronous
        try:
            _create_private(path)  # before SQLite creates it with the umask's mode
        except OSError as exc:
            raise BackendUnavailable(f"cannot create {path}: {exc}") from exc
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._write_lock = threading.Lock()
        self._closed = False
        conn = self._acquire()
        try:
            with _translated():
                conn.executescript(schema)
        finally:
            self._release(conn)

    def _open(self) -> sqlite3.Connection:
        with _translated():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _acquire(self) -> sqlite3.Connection:
        if self._closed:
            raise BackendUnavailable("the local store was closed")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._open()

    def _release(self, conn: sqlite3.Connection) -> None:
        if self._closed or self._idle.qsize() >= self.MAX_IDLE:
            conn.close()
        else:
            self._idle.put(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the writer lock from the start (no upgrade deadlocks)."""
        with self._write_lock:
            conn = self._acquire()
            try:
                with _translated():
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
            finally:
                self._release(conn)

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._acquire()
        try:
            with _translated():
                return conn.execute(sql, params).fetchall()
        finally:
            self._release(conn)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


# --------------------------------------------------------------------------- properties


# One encoder for every write (json.dumps with options builds a new one per call); same output.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_DECODE = json.JSONDecoder().decode
#: First byte of the binary row encoding (a JSON text never starts with it).
_BINARY_TAG = b"\x01"
_HEADER_LENGTH = struct.Struct("<I")


def _encode_properties(properties: dict[str, PropertyValue]) -> str | bytes:
    """A row's properties as stored in ``entities.props``.

    Without bytes properties: JSON text (JSON keeps str, int, float (1.0 stays 1.0) and
    bool apart). With bytes: a BLOB, ``0x01``, the length of a UTF-8 JSON header
    (4 bytes, little-endian), the header ``[{other properties}, [[name, size], ...]]``
    and the bytes values one after the other, raw (no base64).
    """
    binary = [(name, value) for name, value in properties.items() if isinstance(value, bytes)]
    if not binary:
        return _JSON.encode(properties)
    scalars = {name: value for name, value in properties.items() if not isinstance(value, bytes)}
    header = _JSON.encode([scalars, [(name, len(value)) for name, value in binary]]).encode("utf-8")
    return b"".join((_BINARY_TAG, _HEADER_LENGTH.pack(len(header)), header, *(value for _, value in binary)))


def _decode_properties(stored: str | bytes) -> dict[str, PropertyValue]:
    """Properties :func:`_encode_properties` stored, or the format before it: JSON text whose
    bytes values are ``{"b64": ...}`` objects (rows written by earlier releases)."""
    if isinstance(stored, bytes):
        (length,) = _HEADER_LENGTH.unpack_from(stored, 1)
        start = 1 + _HEADER_LENGTH.size
        scalars, sizes = _JSON_DECODE(stored[start:start + length].decode("utf-8"))
        properties: dict[str, PropertyValue] = scalars
        offset = start + length
        for name, size in sizes:
            properties[name] = stored[offset:offset + size]
            offset += size
        return properties
    return {
        name: base64.b64decode(value["b64"]) if isinstance(value, dict) else value
        for name, value in _JSON_DECODE(stored).items()
    }


# --------------------------------------------------------------------------- stores


class LocalBlobStore(BlobStore):
    def __init__(self, container: str, backend: LocalBackend) -> None:
        super().__init__(container)
        self._backend = backend
        self._db = backend.blob_db

    def _props(self, key: str, size: int, content_type: str, metadata: str, etag: str, modified: float) -> BlobProperties:
        return BlobProperties(key, etag, size, content_type, json.loads(metadata), _utc(modified))

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
             if_match: str | None, if_none_match: bool) -> BlobProperties:
        self._backend.require_container(self.container)
        etag, now, meta = _new_etag(), time.time(), json.dumps(metadata)
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT etag FROM blobs WHERE container=? AND key=?", (self.container, key)
            ).fetchone()
            if if_none_match and row is not None:
                raise AlreadyExists(f"blob {key!r} already exists")
            if if_match is not None:
                if row is None:
                    raise NotFound(f"blob {key!r} does not exist")
                if row[0] != if_match:
                    raise PreconditionFailed(f"blob {key!r} has changed (ETag mismatch)")
            conn.execute(
                "INSERT OR REPLACE INTO blobs VALUES (?,?,?,?,?,?,?)",
                (self.container, key, data, content_type, meta, etag, now),
            )
        return self._props(key, len(data), content_type, meta, etag, now)

    def _get(self, key: str) -> Blob:
        rows = self._db.read(
            "SELECT data, content_type, metadata, etag, last_modified FROM blobs WHERE container=? AND key=?",
            (self.container, key),
        )
        if not rows:
            raise NotFound(f"blob {key!r} does not exist")
        data, content_type, meta, etag, modified = rows[0]
        return Blob(self._props(key, len(data), content_type, meta, etag, modified), bytes(data))

    def _head(self, key: str) -> BlobProperties:
        rows = self._db.read(
            "SELECT length(data), content_type, metadata, etag, last_modified FROM blobs WHERE container=? AND key=?",
            (self.container, key),
        )
        if not rows:
            raise NotFound(f"blob {key!r} does not exist")
        return self._props(key, *rows[0])

    def _delete(self, key: str, if_match: str | None) -> None:
        with self._db.write() as conn:
            row = conn.execute(
                "SELECT etag FROM blobs WHERE container=? AND key=?", (self.container, key)
            ).fetchone()
            if row is None:
                raise NotFound(f"blob {key!r} does not exist")
            if if_match is not None and row[0] != if_match:
                raise PreconditionFailed(f"blob {key!r} has changed (ETag mismatch)")
            conn.execute("DELETE FROM blobs WHERE container=? AND key=?", (self.container, key))

    def _list(self, prefix: str, limit: int, continuation: str | None) -> Page[BlobProperties]:
        after = decode_continuation(continuation).get("after", "") if continuation else ""
        if not isinstance(after, str):
            raise InvalidInput("continuation token is not one this service issued")
        low = max(prefix, after)
        sql = ("SELECT key, length(data), content_type, metadata, etag, last_modified FROM blobs "
               "WHERE container=? AND key>=? AND key>?")
        params: list[Any] = [self.container, low, after]
        bound = prefix_upper_bound(prefix, table_keys=False)
        if bound is not None:
            sql += " AND key<?"
            params.append(bound)
        rows = self._db.read(sql + " ORDER BY key LIMIT ?", (*params, limit + 1))
        items = [self._props(*row) for row in rows[:limit]]
        token = encode_continuation({"after": items[-1].key}) if len(rows) > limit else None
        return Page(items, token)


class LocalTableStore(TableStore):
    def __init__(self, name: str, backend: LocalBackend) -> None:
        super().__init__(name)
        self._backend = backend
        self._db = backend.table_db

    def _get(self, partition_key: str, row_key: str) -> Entity:
        self._backend.require_table(self.name)
        rows = self._db.read(
            "SELECT props, etag FROM entities WHERE tbl=? AND pk=? AND rk=?", (self.name, partition_key, row_key)
        )
        if not rows:
            raise NotFound(f"entity ({partition_key!r}, {row_key!r}) does not exist in table {self.name!r}")
        return Entity(partition_key, row_key, _decode_properties(rows[0][0]), rows[0][1])

    def _apply(self, conn: sqlite3.Connection, kind: OpKind, entity: Entity, if_match: str | None) -> str | None:
        """One operation inside an open transaction; raises without writing when it cannot apply."""
        keys = (self.name, entity.partition_key, entity.row_key)
        etag: str | None
        if kind is OpKind.INSERT:
            etag = _new_etag()
            try:
                conn.execute(
                    "INSERT INTO entities VALUES (?,?,?,?,?)", (*keys, _encode_properties(entity.properties), etag)
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"{_where(self.name, entity)} already exists") from exc
            return etag
        if kind is OpKind.UPSERT:
            etag = _new_etag()
            conn.execute(
                "INSERT OR REPLACE INTO entities VALUES (?,?,?,?,?)",
                (*keys, _encode_properties(entity.properties), etag),
            )
            return etag
        if kind is OpKind.UPDATE:
            etag = _new_etag()
            changed = conn.execute(
                "UPDATE entities SET props=?, etag=? WHERE tbl=? AND pk=? AND rk=? AND (? IS NULL OR etag=?)",
                (_encode_properties(entity.properties), etag, *keys, if_match, if_match),
            ).rowcount
        else:
            etag = None
            changed = conn.execute(
                "DELETE FROM entities WHERE tbl=? AND pk=? AND rk=? AND (? IS NULL OR etag=?)",
                (*keys, if_match, if_match),
            ).rowcount
        if changed == 0:
            exists = conn.execute("SELECT 1 FROM entities WHERE tbl=? AND pk=? AND rk=?", keys).fetchone()
            if exists is None:
                raise NotFound(f"{_where(self.name, entity)} does not exist")
            raise PreconditionFailed(f"{_where(self.name, entity)} has changed (ETag mismatch)")
        return etag

    def _write(self, kind: OpKind, entity: Entity, if_match: str | None) -> str:
        self._backend.require_table(self.name)
        with self._db.write() as conn:
            return self._apply(conn, kind, entity, if_match) or ""

    def _batch(self, operations: list[TableOp]) -> list[str | None]:
        self._backend.require_table(self.name)
        with self._db.write() as conn:
            if all(op.kind is OpKind.INSERT for op in operations):
                return self._insert_many(conn, operations)
            return [self._apply(conn, op.kind, op.entity, op.if_match) for op in operations]

    def _insert_many(self, conn: sqlite3.Connection, operations: list[TableOp]) -> list[str | None]:
        """An all-insert batch as one executemany (the common bulk case)."""
        etags: list[str | None] = [_new_etag() for _ in operations]
        rows = [(self.name, op.entity.partition_key, op.entity.row_key, _encode_properties(op.entity.properties), etag)
                for op, etag in zip(operations, etags)]
        try:
            conn.executemany("INSERT INTO entities VALUES (?,?,?,?,?)", rows)
        except sqlite3.IntegrityError as exc:
            # The caller's transaction rolls everything back. To name the row that was
            # already there, skip the rows this batch inserted: they carry its new ETags.
            taken = next(op.entity for op, etag in zip(operations, etags) if (found := conn.execute(
                "SELECT etag FROM entities WHERE tbl=? AND pk=? AND rk=?",
                (self.name, op.entity.partition_key, op.entity.row_key)).fetchone()) and found[0] != etag)
            raise AlreadyExists(f"entity ({taken.partition_key!r}, {taken.row_key!r}) in table "
                                f"{self.name!r} already exists") from exc
        return etags

    def _query(self, partition_key: str, start: str | None, end: str | None, limit: int,
               continuation: str | None) -> Page[Entity]:
        self._backend.require_table(self.name)
        after = decode_continuation(continuation).get("after") if continuation else None
        sql = "SELECT rk, props, etag FROM entities WHERE tbl=? AND pk=?"
        params: list[Any] = [self.name, partition_key]
        for clause, value in (("rk>=?", start), ("rk<?", end), ("rk>?", after)):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        rows = self._db.read(sql + " ORDER BY rk LIMIT ?", (*params, limit + 1))
        items = [Entity(partition_key, rk, _decode_properties(props), etag) for rk, props, etag in rows[:limit]]
        token = encode_continuation({"after": items[-1].row_key}) if len(rows) > limit else None
        return Page(items, token)

    def _scan(self, limit: int, continuation: str | None) -> Page[Entity]:
        self._backend.require_table(self.name)
        state = decode_continuation(continuation) if continuation else {}
        pk, rk = state.get("pk", ""), state.get("rk", "")
        rows = self._db.read(
            "SELECT pk, rk, props, etag FROM entities WHERE tbl=? AND (pk>? OR (pk=? AND rk>?)) "
            "ORDER BY pk, rk LIMIT ?",
            (self.name, pk, pk, rk, limit + 1),
        )
        items = [Entity(p, r, _decode_properties(props), etag) for p, r, props, etag in rows[:limit]]
        # More rows follow: continue after the last one returned (limit >= 1, so there is one).
        last = items[-1] if len(rows) > limit and items else None
        token = encode_continuation({"pk": last.partition_key, "rk": last.row_key}) if last is not None else None
        return Page(items, token)


# Bodies are read as bytes and decoded here: sqlite3 fails the whole query on one TEXT
# value that is not UTF-8, and a BLOB would come back as bytes (another writer of the file).
_RAW_BODY = "CAST(body AS BLOB)"


def _message(message_id: str, raw: bytes, count: int, receipt: str, enqueued: float) -> QueueMessage:
    """A stored message; a body that is not UTF-8 is decoded with replacements, and ``decode_error`` says so."""
    try:
        body, error = raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        body, error = raw.decode("utf-8", errors="replace"), f"not UTF-8 text: {exc}"
    return QueueMessage(message_id, body, count, receipt, _utc(enqueued), decode_error=error)


class LocalQueueStore(QueueStore):
    def __init__(self, name: str, backend: LocalBackend) -> None:
        super().__init__(name)
        self._backend = backend
        self._db = backend.table_db

    def _send(self, body: str, delay_seconds: int) -> str:
        self._backend.require_queue(self.name)
        message_id, now = uuid.uuid4().hex, time.time()
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO messages (queue, id, body, visible_at, enqueued_at) VALUES (?,?,?,?,?)",
                (self.name, message_id, body, now + delay_seconds, now),
            )
        return message_id

    def _receive(self, max_messages: int, visibility_timeout: int) -> list[QueueMessage]:
        self._backend.require_queue(self.name)
        now = time.time()
        received = []
        with self._db.write() as conn:
            rows = conn.execute(
                f"SELECT seq, id, {_RAW_BODY}, dequeue_count, enqueued_at FROM messages "
                "WHERE queue=? AND visible_at<=? ORDER BY visible_at, seq LIMIT ?",
                (self.name, now, max_messages),
            ).fetchall()
            for seq, message_id, raw, count, enqueued in rows:
                pop = uuid.uuid4().hex
                conn.execute(
                    "UPDATE messages SET visible_at=?, dequeue_count=?, pop=? WHERE seq=?",
                    (now + visibility_timeout, count + 1, pop, seq),
                )
                received.append(_message(message_id, raw, count + 1, f"{message_id}:{pop}", enqueued))
        return received

    def _peek(self, max_messages: int) -> list[QueueMessage]:
        self._backend.require_queue(self.name)
        rows = self._db.read(
            f"SELECT id, {_RAW_BODY}, dequeue_count, enqueued_at FROM messages "
            "WHERE queue=? AND visible_at<=? ORDER BY visible_at, seq LIMIT ?",
            (self.name, time.time(), max_messages),
        )
        return [_message(i, raw, count, "", enqueued) for i, raw, count, enqueued in rows]

    @staticmethod
    def _split(receipt: str) -> tuple[str, str]:
        message_id, sep, pop = receipt.partition(":")
        if not sep or not message_id or not pop:
            raise InvalidInput("receipt is not one this queue issued")
        return message_id, pop

    def _delete(self, receipt: str) -> None:
        message_id, pop = self._split(receipt)
        with self._db.write() as conn:
            # A stale receipt (the message was redelivered since) deletes nothing.
            conn.execute("DELETE FROM messages WHERE queue=? AND id=? AND pop=?", (self.name, message_id, pop))

    def _extend(self, receipt: str, visibility_timeout: int) -> str:
        message_id, pop = self._split(receipt)
        new_pop = uuid.uuid4().hex
        with self._db.write() as conn:
            changed = conn.execute(
                "UPDATE messages SET visible_at=?, pop=? WHERE queue=? AND id=? AND pop=?",
                (time.time() + visibility_timeout, new_pop, self.name, message_id, pop),
            ).rowcount
        if changed == 0:
            raise NotFound("message is gone or was received again since this receipt was issued")
        return f"{message_id}:{new_pop}"

    def _approximate_length(self) -> int:
        self._backend.require_queue(self.name)
        count: int = self._db.read("SELECT count(*) FROM messages WHERE queue=?", (self.name,))[0][0]
        return count


class LocalBackend(Backend):
    """SQLite files under ``data_dir``; see the module docstring for guarantees."""

    kind = "local"

    def __init__(self, data_dir: Path | str, *, synchronous: str = "NORMAL",
                 token_secret: str | bytes | None = None) -> None:
        """``token_secret``: signs continuation tokens; None keeps one in ``data_dir/token-secret``."""
        super().__init__(token_secret=token_secret)
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise InvalidInput("synchronous must be NORMAL or FULL")
        self.data_dir = Path(data_dir)
        try:
            # 0700 for a new directory (an existing one is the user's choice and keeps its mode).
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create data directory {self.data_dir}: {exc}") from exc
        self.table_db = _Database(self.data_dir / "tables.sqlite3", _TABLES_SCHEMA, synchronous.upper())
        self.blob_db = _Database(self.data_dir / "blobs.sqlite3", _BLOBS_SCHEMA, synchronous.upper())
        # Only positive answers are remembered: another process may create resources.
        self._known: set[tuple[str, str]] = set()

    def _require(self, db: _Database, registry: str, what: str, name: str) -> None:
        if (registry, name) in self._known:
            return
        if not db.read(f"SELECT 1 FROM {registry} WHERE name=?", (name,)):  # registry is one of ours
            raise NotFound(f"{what} {name!r} does not exist; call ensure() first")
        self._known.add((registry, name))

    def require_table(self, name: str) -> None:
        self._require(self.table_db, "known_tables", "table", name)

    def require_queue(self, name: str) -> None:
        self._require(self.table_db, "known_queues", "queue", name)

    def require_container(self, name: str) -> None:
        self._require(self.blob_db, "containers", "container", name)

    def _make_blobs(self, container: str) -> BlobStore:
        return LocalBlobStore(container, self)

    def _make_table(self, name: str) -> TableStore:
        return LocalTableStore(name, self)

    def _make_queue(self, name: str) -> QueueStore:
        return LocalQueueStore(name, self)

    def _ensure_container(self, name: str) -> None:
        with self.blob_db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO containers VALUES (?)", (name,))

    def _ensure_table(self, name: str) -> None:
        with self.table_db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO known_tables VALUES (?)", (name,))

    def _ensure_queue(self, name: str) -> None:
        with self.table_db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO known_queues VALUES (?)", (name,))

    def _load_token_secret(self) -> bytes:
        path = self.data_dir / TOKEN_SECRET_FILE
        try:
            secret = _read_or_make_secret(path)
        except OSError as exc:
            raise BackendUnavailable(f"cannot read or create {path}: {exc}") from exc
        if len(secret) < 16:
            raise BackendUnavailable(f"{path} is damaged ({len(secret)} bytes); delete it to have a new one made")
        return secret

    def ping(self) -> None:
        self.table_db.read("SELECT 1")
        self.blob_db.read("SELECT 1")

    def close(self) -> None:
        self.table_db.close()
        self.blob_db.close()
