"""The backend contract: three primitives every backend implements identically.

* :class:`BlobStore`: named binary values with content type, metadata and ETags.
* :class:`TableStore`: entities addressed by (partition key, row key), queried in
  row-key order within a partition, changed atomically in batches of one partition.
* :class:`QueueStore`: at-least-once messages with visibility timeouts.

Each public method validates its arguments here, once, then calls the backend's
``_method``. Limits are the strictest of the three clouds, so a value accepted on
one backend is accepted on all of them and behaves the same way. Backends raise
only :mod:`shared.errors` exceptions; each maps its SDK's errors in one place.

Values above the per-property or per-message limits are not the primitives'
business: :mod:`shared.backends.offload` moves them to blobs behind a reference.

Continuation tokens are signed here, once, for every backend: the public
``query``, ``scan`` and ``list`` wrap the backend's own token as
``<backend token>.<tag>``, the tag being HMAC-SHA256 (first 16 bytes, base64url)
under the backend's token secret over the listing's scope (table or container,
partition, range or prefix) and the backend token. A token comes back in only
through the same kind of listing with the same scope; anything else (tampered,
truncated, another tenant's partition, garbage) is InvalidInput before the
backend sees it. Services sign their own paging state the same way with
:meth:`TableStore.sign_continuation`. The secret is the ``token_secret`` the
backend was given (``STOWAGE_TOKEN_SECRET``) or one the backend keeps itself
(:meth:`Backend._load_token_secret`), so every instance on the same storage
accepts the others' tokens.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from shared.errors import AlreadyExists, BackendUnavailable, InvalidInput, InvalidKey, NotFound, TooLarge

T = TypeVar("T")

# Limits: the strictest of Azure Storage, AWS and the local store.
MAX_TABLE_KEY_BYTES = 1024  # PartitionKey/RowKey: 1 KiB in Azure, sort key 1 KiB in DynamoDB
MAX_PROPERTY_BYTES = 64 * 1024  # one Azure Table property
MAX_ENTITY_BYTES = 400_000  # one DynamoDB item (Azure allows 1 MiB)
MAX_PROPERTIES = 200  # Azure allows 252 user properties
MAX_BATCH_OPERATIONS = 100  # Azure entity group transaction and DynamoDB TransactWriteItems
MAX_BATCH_BYTES = 4 * 1024 * 1024 - 256 * 1024  # 4 MiB on the wire, less room for the envelope
MAX_BLOB_KEY_BYTES = 1024  # S3 key and Azure blob name
MAX_METADATA_BYTES = 2 * 1024  # S3 user metadata
MAX_QUEUE_BODY_BYTES = 48 * 1024  # Azure's 64 KiB after base64
MAX_RECEIVE_MESSAGES = 32  # Azure; the SQS backend receives in rounds of 10
MAX_VISIBILITY_TIMEOUT = 12 * 3600  # SQS
MAX_SEND_DELAY = 900  # SQS DelaySeconds
MAX_PAGE_SIZE = 1000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TABLE_KEY_FORBIDDEN = re.compile(r"[/\\#?]")
_PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_RESERVED_PROPERTIES = frozenset({"partitionkey", "rowkey", "timestamp", "etag", "pk", "rk", "odata"})
_METADATA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RESOURCE_NAME = re.compile(r"^[a-z][a-z0-9-]{2,62}$")

PropertyValue = str | int | float | bool | bytes | None


# --------------------------------------------------------------------------- pages


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of results and the opaque token for the next page (None when done)."""

    items: list[T]
    continuation: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


def encode_continuation(state: dict[str, Any]) -> str:
    """Pack backend paging state into an opaque, URL-safe token."""
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continuation(token: str) -> dict[str, Any]:
    """Unpack a token made by :func:`encode_continuation`; a mangled token is bad input."""
    try:
        padded = token + "=" * (-len(token) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidInput("continuation token is not one this service issued") from exc
    if not isinstance(state, dict):
        raise InvalidInput("continuation token is not one this service issued")
    return state


BAD_TOKEN = "continuation token is not one this service issued for this listing; start the listing again without it"
MIN_TOKEN_SECRET_BYTES = 16


class TokenSigner:
    """Signs continuation tokens and checks them on the way back in (HMAC-SHA256).

    A signed token is ``<inner>.<tag>``: ``inner`` is the paging state (a backend's
    own token, or a service's encoded state) and ``tag`` the first 16 bytes of
    HMAC-SHA256(secret, scope NUL inner), base64url. ``scope`` names the listing
    (kind, table or container, partition, bounds), so a token opens only in the
    listing that issued it. Comparison is constant-time.
    """

    TAG_BYTES = 16
    #: Longer tokens are refused unread (the longest real ones are a few hundred characters).
    MAX_TOKEN_CHARS = 16 * 1024

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_TOKEN_SECRET_BYTES:
            raise InvalidInput(f"the continuation token secret must be at least {MIN_TOKEN_SECRET_BYTES} bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    @staticmethod
    def scope(*parts: str | None) -> str:
        """One unambiguous scope string from its parts (None and "" both mean "no bound")."""
        return json.dumps([part or "" for part in parts], ensure_ascii=False, separators=(",", ":"))

    def _tag(self, scope: str, inner: str) -> bytes:
        message = scope.encode("utf-8", "surrogatepass") + b"\0" + inner.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()[: self.TAG_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=")

    def seal(self, scope: str, inner: str) -> str:
        """``inner`` with a tag that binds it to ``scope``."""
        return f"{inner}.{self._tag(scope, inner).decode()}"

    def open(self, scope: str, token: object) -> str:
        """The inner token of a token :meth:`seal` made for this ``scope``; InvalidInput otherwise."""
        if isinstance(token, str) and 0 < len(token) <= self.MAX_TOKEN_CHARS:
            inner, dot, tag = token.rpartition(".")
            if dot and inner:
                expected = self._tag(scope, inner)
                if hmac.compare_digest(expected, tag.encode("utf-8", "surrogatepass")):
                    return inner
        raise InvalidInput(BAD_TOKEN)


class _SignsTokens:
    """What a store needs to sign its listings' tokens: the backend that made it."""

    #: Set by the :class:`Backend` that made the store; its secret signs the tokens.
    _token_backend: Backend | None = None
    #: A store made without a backend signs with a secret of its own, good for that object only.
    _own_signer: TokenSigner | None = None

    def _signer(self) -> TokenSigner:
        if self._token_backend is not None:
            return self._token_backend.tokens
        if self._own_signer is None:
            self._own_signer = TokenSigner(secrets.token_bytes(32))
        return self._own_signer

    def _signed(self, page: Page[T], signer: TokenSigner, scope: str) -> Page[T]:
        return Page(page.items, signer.seal(scope, page.continuation) if page.continuation else None)


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    return limit


# --------------------------------------------------------------------------- validation


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"{what} is not valid unicode (lone surrogate)") from exc


# Characters the Azure backend stores as two (see azure._encode_row_key): U+D7FF and U+E000..U+FFFF.
_STORED_TWICE = re.compile("[\ud7ff\ue000-\uffff]")


def table_key_size(value: str, what: str = "key") -> int:
    """Bytes a table key takes in the strictest store: UTF-8 (DynamoDB) or UTF-16 (Azure),
    whichever is larger, counting the characters the Azure backend stores as two twice.

    Every key :func:`validate_table_key` accepts is at most :data:`MAX_TABLE_KEY_BYTES` by this
    measure, so it fits every backend as stored. Raises InvalidKey for a lone surrogate.
    """
    if value.isascii():
        return 2 * len(value)
    utf8, utf16 = len(_utf8(value, what)), len(value.encode("utf-16-le"))
    doubled = _STORED_TWICE.findall(value)
    if doubled:  # each becomes U+D7FF (3 UTF-8 bytes, 2 UTF-16) + one CJK character (3, 2)
        utf8 += sum(6 - len(ch.encode("utf-8")) for ch in doubled)
        utf16 += 2 * len(doubled)
    return max(utf8, utf16)


def validate_table_key(value: str, what: str = "key") -> str:
    """A partition or row key: non-empty text without control characters or / \\ # ?,
    at most :data:`MAX_TABLE_KEY_BYTES` by :func:`table_key_size`."""
    if not isinstance(value, str) or not value:
        raise InvalidKey(f"{what} must be a non-empty string")
    if value.isascii():
        too_long = len(value) * 2 > MAX_TABLE_KEY_BYTES if len(value) > MAX_TABLE_KEY_BYTES // 2 else False
    else:
        too_long = table_key_size(value, what) > MAX_TABLE_KEY_BYTES
    if too_long:
        raise InvalidKey(f"{what} is longer than {MAX_TABLE_KEY_BYTES} bytes")
    if _CONTROL.search(value):
        raise InvalidKey(f"{what} contains a control character")
    if _TABLE_KEY_FORBIDDEN.search(value):
        raise InvalidKey(f"{what} contains one of / \\ # ? (escape it with shared.keys)")
    return value


def validate_blob_key(value: str) -> str:
    """A blob key: '/'-separated segments, none empty, '.' or '..', none ending in '.'."""
    if not isinstance(value, str) or not value:
        raise InvalidKey("blob key must be a non-empty string")
    if len(_utf8(value, "blob key")) > MAX_BLOB_KEY_BYTES:
        raise InvalidKey(f"blob key is longer than {MAX_BLOB_KEY_BYTES} bytes")
    if _CONTROL.search(value) or "\\" in value:
        raise InvalidKey("blob key contains a control character or a backslash")
    for segment in value.split("/"):
        if not segment or segment in (".", "..") or segment.endswith("."):
            raise InvalidKey(f"blob key {value!r} has an empty, '.', '..' or dot-ended segment")
    return value


def validate_blob_prefix(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidKey("prefix must be a string")
    if value and (_CONTROL.search(value) or len(_utf8(value, "prefix")) > MAX_BLOB_KEY_BYTES):
        raise InvalidKey("prefix contains a control character or is too long")
    return value


def validate_resource_name(value: str, what: str) -> str:
    """Container, table and queue names: see shared.names for why this shape."""
    if not isinstance(value, str) or not _RESOURCE_NAME.match(value):
        raise InvalidKey(f"{what} name {value!r} must be 3-63 lowercase letters, digits or hyphens")
    if what == "table" and "-" in value:
        raise InvalidKey(f"table name {value!r} must be letters and digits only (Azure rule)")
    return value


def validate_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """Blob metadata: lowercase identifier names, printable ASCII values, 2 KiB in all."""
    metadata = dict(metadata or {})
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME.match(name):
            raise InvalidInput(f"metadata name {name!r} must be a lowercase identifier")
        if not isinstance(value, str) or not value.isascii() or _CONTROL.search(value):
            raise InvalidInput(f"metadata value for {name!r} must be printable ASCII text")
        total += len(name) + len(value)
    if total > MAX_METADATA_BYTES:
        raise TooLarge(f"blob metadata is {total} bytes; the limit is {MAX_METADATA_BYTES}")
    return metadata


def property_size(value: PropertyValue) -> int:
    """Bytes a value takes in the strictest store: strings count as UTF-16 (Azure) or
    UTF-8 (DynamoDB), whichever is larger."""
    if isinstance(value, str):
        if value.isascii():
            return 2 * len(value)
        return max(len(value.encode("utf-16-le")), len(value.encode("utf-8")))
    if isinstance(value, bytes):
        return len(value)
    return 8


def wire_size(properties: dict[str, PropertyValue]) -> int:
    """Bytes an entity takes in a request body: binary travels as base64, text as UTF-8."""
    total = 0
    for name, value in properties.items():
        if isinstance(value, bytes):
            total += -(-len(value) // 3) * 4
        elif isinstance(value, str):
            total += len(value) if value.isascii() else len(value.encode("utf-8"))
        else:
            total += 24
        total += len(name) + 16
    return total


def entity_size(properties: dict[str, PropertyValue]) -> int:
    return sum(len(name) * 2 + property_size(value) for name, value in properties.items())


@functools.lru_cache(maxsize=4096)
def _valid_property_name(name: str) -> bool:
    return bool(_PROPERTY_NAME.match(name)) and name.lower() not in _RESERVED_PROPERTIES


def _checked_value_size(name: str, value: Any) -> int:
    """Check one property value; returns the bytes it takes (:func:`property_size`)."""
    if isinstance(value, bool) or value is None or isinstance(value, bytes):
        pass
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidInput(f"property {name!r} is outside the 64-bit integer range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"property {name!r} must be a finite number")
    elif isinstance(value, str):
        if not value.isascii():
            _utf8(value, f"property {name!r}")
    else:
        raise InvalidInput(
            f"property {name!r} has type {type(value).__name__}; use str, int, float, bool, bytes or None"
        )
    return property_size(value)


def validate_properties(properties: dict[str, Any]) -> dict[str, PropertyValue]:
    if not isinstance(properties, dict):
        raise InvalidInput("entity properties must be a dict")
    if len(properties) > MAX_PROPERTIES:
        raise InvalidInput(f"an entity may have at most {MAX_PROPERTIES} properties")
    total = 0
    for name, value in properties.items():
        if not isinstance(name, str) or not _valid_property_name(name):
            raise InvalidInput(f"property name {name!r} must be an identifier and not a reserved name")
        # The common exact types first: the same checks and sizes as _checked_value_size, inline.
        kind = type(value)
        if kind is bytes:
            size = len(value)
        elif kind is str and value.isascii():
            size = 2 * len(value)
        elif (kind is float and math.isfinite(value)) or (kind is int and INT64_MIN <= value <= INT64_MAX):
            size = 8
        else:
            size = _checked_value_size(name, value)
        if size > MAX_PROPERTY_BYTES:
            raise TooLarge(f"property {name!r} is over {MAX_PROPERTY_BYTES} bytes; offload it to a blob")
        total += len(name) * 2 + size
    if total > MAX_ENTITY_BYTES:
        raise TooLarge(f"entity is {total} bytes; the limit is {MAX_ENTITY_BYTES}")
    return properties


def _checked_entity(entity: Entity) -> tuple[Entity, int]:
    """The entity as a backend stores it (None properties dropped) and its :func:`wire_size`.

    The checks of :func:`validate_properties` (keys are checked by the caller) in the one
    loop that also measures the wire size: every limit holds exactly as for single writes.
    """
    properties: dict[str, Any] = entity.properties
    if not isinstance(properties, dict):
        raise InvalidInput("entity properties must be a dict")
    if len(properties) > MAX_PROPERTIES:
        raise InvalidInput(f"an entity may have at most {MAX_PROPERTIES} properties")
    total = wire = 0
    empty = False
    for name, value in properties.items():
        if type(name) is not str or not _valid_property_name(name):
            raise InvalidInput(f"property name {name!r} must be an identifier and not a reserved name")
        kind = type(value)
        if kind is bytes:
            size = len(value)
            wire += -(-size // 3) * 4
        elif kind is str and value.isascii():
            size = 2 * len(value)
            wire += len(value)
        elif (kind is float and math.isfinite(value)) or (kind is int and INT64_MIN <= value <= INT64_MAX):
            size = 8
            wire += 24
        else:
            size = _checked_value_size(name, value)
            if value is None:
                empty = True
                total += len(name) * 2 + size
                continue
            wire += len(value.encode("utf-8")) if isinstance(value, str) else (
                -(-len(value) // 3) * 4 if isinstance(value, bytes) else 24)
        if size > MAX_PROPERTY_BYTES:
            raise TooLarge(f"property {name!r} is over {MAX_PROPERTY_BYTES} bytes; offload it to a blob")
        total += len(name) * 2 + size
        wire += len(name) + 16
    if total > MAX_ENTITY_BYTES:
        raise TooLarge(f"entity is {total} bytes; the limit is {MAX_ENTITY_BYTES}")
    if empty:
        properties = {name: value for name, value in properties.items() if value is not None}
    return Entity(entity.partition_key, entity.row_key, properties, entity.etag), wire


# --------------------------------------------------------------------------- blobs


@dataclass(frozen=True)
class BlobProperties:
    """What a blob is, without its content."""

    key: str
    etag: str
    size: int
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None


@dataclass(frozen=True)
class Blob:
    """A blob's content with its properties."""

    properties: BlobProperties
    data: bytes


class BlobStore(_SignsTokens, ABC):
    """Binary values by key in one container.

    ETags are opaque strings; compare them for equality only. An ETag changes
    whenever the content changes (S3's is a digest of the content, so rewriting
    identical bytes may keep it). ``if_match`` makes a write or delete conditional
    on the current ETag (PreconditionFailed when it differs, NotFound when the blob
    is gone); ``if_none_match=True`` makes a put create-only (AlreadyExists when
    the blob is there).
    """

    def __init__(self, container: str) -> None:
        self.container = validate_resource_name(container, "container")

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> BlobProperties:
        """Write the whole blob; returns its new properties."""
        validate_blob_key(key)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput("blob data must be bytes")
        if if_match is not None and if_none_match:
            raise InvalidInput("if_match and if_none_match cannot both be set")
        if not isinstance(content_type, str) or not content_type or _CONTROL.search(content_type):
            raise InvalidInput("content type must be a non-empty string")
        return self._put(key, bytes(data), content_type, validate_metadata(metadata), if_match, if_none_match)

    def get(self, key: str) -> Blob:
        """The blob's content and properties; NotFound when absent."""
        return self._get(validate_blob_key(key))

    def head(self, key: str) -> BlobProperties:
        """The blob's properties; NotFound when absent."""
        return self._head(validate_blob_key(key))

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove the blob; NotFound when absent, PreconditionFailed on an ETag mismatch."""
        self._delete(validate_blob_key(key), if_match)

    def list(self, prefix: str = "", *, limit: int = MAX_PAGE_SIZE, continuation: str | None = None) -> Page[BlobProperties]:
        """Blobs whose key starts with ``prefix``, in key order, one page at a time.

        Listed items carry key, ETag, size and last-modified time; their content
        type is "" and metadata empty on every backend (S3 listings have neither):
        use :meth:`head` for those.
        """
        validate_blob_prefix(prefix)
        _check_limit(limit)
        signer = self._signer()
        scope = TokenSigner.scope("list", self.container, prefix)
        inner = signer.open(scope, continuation) if continuation else None
        page = self._list(prefix, limit, inner)
        items = [replace(item, content_type="", metadata={}) for item in page.items]
        return self._signed(Page(items, page.continuation), signer, scope)

    def list_all(self, prefix: str = "") -> Iterator[BlobProperties]:
        """Every blob under ``prefix``, following continuation tokens."""
        token: str | None = None
        while True:
            page = self.list(prefix, continuation=token)
            yield from page.items
            token = page.continuation
            if not token:
                return

    @abstractmethod
    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
             if_match: str | None, if_none_match: bool) -> BlobProperties: ...

    @abstractmethod
    def _get(self, key: str) -> Blob: ...

    @abstractmethod
    def _head(self, key: str) -> BlobProperties: ...

    @abstractmethod
    def _delete(self, key: str, if_match: str | None) -> None: ...

    @abstractmethod
    def _list(self, prefix: str, limit: int, continuation: str | None) -> Page[BlobProperties]: ...


# --------------------------------------------------------------------------- tables


@dataclass
class Entity:
    """A table row: keys, typed properties, and the ETag it was read or written with.

    Property values are str, int (64-bit), float, bool or bytes and read back with
    the same type. A None value means "no such property": it is not stored.
    """

    partition_key: str
    row_key: str
    properties: dict[str, PropertyValue] = field(default_factory=dict)
    etag: str | None = None
    #: Blob references of properties the offload layer moved out, as read with
    #: ``etag``. A write conditional on that ETag replaces exactly this state, so
    #: the layer can delete the old blobs without reading the entity again.
    offloaded: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, name: str) -> PropertyValue:
        return self.properties[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.properties.get(name, default)


class OpKind(enum.Enum):
    INSERT = "insert"
    UPSERT = "upsert"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class TableOp:
    """One operation of an atomic batch; build it with the class methods."""

    kind: OpKind
    entity: Entity
    if_match: str | None = None

    @classmethod
    def insert(cls, entity: Entity) -> TableOp:
        return cls(OpKind.INSERT, entity)

    @classmethod
    def upsert(cls, entity: Entity) -> TableOp:
        return cls(OpKind.UPSERT, entity)

    @classmethod
    def update(cls, entity: Entity, if_match: str | None = None) -> TableOp:
        return cls(OpKind.UPDATE, entity, if_match)

    @classmethod
    def delete(cls, partition_key: str, row_key: str, if_match: str | None = None) -> TableOp:
        return cls(OpKind.DELETE, Entity(partition_key, row_key), if_match)


class TableStore(_SignsTokens, ABC):
    """Entities by (partition key, row key) in one table.

    Writes replace the whole entity (no merge). Every write returns the new ETag;
    ``update`` and ``delete`` take an optional ``if_match``. Queries return one
    partition in ascending row-key order (ordinal, by code point).
    """

    def __init__(self, name: str) -> None:
        self.name = validate_resource_name(name, "table")

    def get(self, partition_key: str, row_key: str) -> Entity:
        """The entity; NotFound when absent."""
        return self._get(validate_table_key(partition_key, "partition key"), validate_table_key(row_key, "row key"))

    def insert(self, entity: Entity) -> str:
        """Create; AlreadyExists when an entity with these keys is there."""
        return self._write(OpKind.INSERT, self._checked(entity), None)

    def upsert(self, entity: Entity) -> str:
        """Create or replace, unconditionally."""
        return self._write(OpKind.UPSERT, self._checked(entity), None)

    def update(self, entity: Entity, *, if_match: str | None = None) -> str:
        """Replace an existing entity; NotFound when absent, PreconditionFailed on ETag mismatch."""
        return self._write(OpKind.UPDATE, self._checked(entity), if_match)

    def delete(self, partition_key: str, row_key: str, *, if_match: str | None = None) -> None:
        """Remove; NotFound when absent, PreconditionFailed on ETag mismatch."""
        entity = Entity(validate_table_key(partition_key, "partition key"), validate_table_key(row_key, "row key"))
        self._write(OpKind.DELETE, entity, if_match)

    def query(
        self,
        partition_key: str,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        continuation: str | None = None,
    ) -> Page[Entity]:
        """Entities of one partition in row-key order: ``prefix``, or ``start <= rk < end``."""
        validate_table_key(partition_key, "partition key")
        for bound, what in ((start, "start"), (end, "end")):
            if bound is not None and bound != "":
                validate_table_key(bound, what)
        if prefix is not None:
            if start is not None or end is not None:
                raise InvalidInput("give either prefix or start/end, not both")
            if prefix:
                validate_table_key(prefix, "prefix")
                start, end = prefix, prefix_upper_bound(prefix)
        start, end = start or None, end or None
        _check_limit(limit)
        signer = self._signer()
        scope = TokenSigner.scope("query", self.name, partition_key, start, end)
        inner = signer.open(scope, continuation) if continuation else None
        return self._signed(self._query(partition_key, start, end, limit, inner), signer, scope)

    def query_all(self, partition_key: str, **kwargs: Any) -> Iterator[Entity]:
        """Every entity :meth:`query` would return, following continuation tokens."""
        token: str | None = None
        while True:
            page = self.query(partition_key, continuation=token, **kwargs)
            yield from page.items
            token = page.continuation
            if not token:
                return

    def scan(self, *, limit: int = MAX_PAGE_SIZE, continuation: str | None = None) -> Page[Entity]:
        """Every entity of the table, all partitions, in no promised order. For maintenance."""
        _check_limit(limit)
        signer = self._signer()
        scope = TokenSigner.scope("scan", self.name)
        inner = signer.open(scope, continuation) if continuation else None
        return self._signed(self._scan(limit, inner), signer, scope)

    def sign_continuation(self, partition_key: str, state: dict[str, Any], *, purpose: str) -> str:
        """A continuation token for a service's own paging ``state`` over ``partition_key``.

        Signed like the tokens of :meth:`query`: :meth:`verify_continuation` gives the
        state back only for this table, this partition and this ``purpose`` (a name
        for the listing, e.g. "checkpoints"), and refuses anything else with InvalidInput.
        """
        scope = TokenSigner.scope("service", self.name, partition_key, purpose)
        return self._signer().seal(scope, encode_continuation(state))

    def verify_continuation(self, partition_key: str, token: str, *, purpose: str) -> dict[str, Any]:
        """The state :meth:`sign_continuation` put into ``token`` for this partition and purpose."""
        scope = TokenSigner.scope("service", self.name, partition_key, purpose)
        return decode_continuation(self._signer().open(scope, token))

    def batch(self, operations: Sequence[TableOp]) -> list[str | None]:
        """Apply up to 100 operations on one partition atomically: all or nothing.

        Returns the new ETag of each operation (None for deletes). When one
        operation fails, its error is raised and nothing of the batch is written.
        """
        operations = list(operations)
        if not operations:
            return []
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise InvalidInput(f"a batch holds at most {MAX_BATCH_OPERATIONS} operations, got {len(operations)}")
        # One pass per entity (keys, property names, types, sizes and the wire size together), the
        # partition key checked once: the same limits as single writes, at a fraction of the cost.
        if not isinstance(operations[0], TableOp) or not isinstance(operations[0].entity, Entity):
            raise InvalidInput("batch operations must be TableOp values")
        partition = validate_table_key(operations[0].entity.partition_key, "partition key")
        seen: set[str] = set()
        checked: list[TableOp] = []
        total = 0
        for op in operations:
            if not isinstance(op, TableOp) or not isinstance(op.entity, Entity):
                raise InvalidInput("batch operations must be TableOp values")
            entity = op.entity
            if entity.partition_key != partition:
                validate_table_key(entity.partition_key, "partition key")
                raise InvalidInput("every operation of a batch must address the same partition")
            row_key = validate_table_key(entity.row_key, "row key")
            if row_key in seen:
                raise InvalidInput(f"row key {row_key!r} appears twice in one batch")
            seen.add(row_key)
            if op.kind is not OpKind.DELETE:
                stored, wire = _checked_entity(entity)
                total += wire
                op = TableOp(op.kind, stored, op.if_match)
            checked.append(op)
        if total > MAX_BATCH_BYTES:
            raise TooLarge(f"batch is {total} bytes on the wire (binary as base64); the limit is {MAX_BATCH_BYTES}")
        return self._batch(checked)

    @staticmethod
    def _checked(entity: Entity) -> Entity:
        """A validated copy; None properties are dropped because Azure Tables cannot store nulls."""
        if not isinstance(entity, Entity):
            raise InvalidInput("expected an Entity")
        validate_table_key(entity.partition_key, "partition key")
        validate_table_key(entity.row_key, "row key")
        properties: dict[str, PropertyValue] = {
            k: v for k, v in validate_properties(entity.properties).items() if v is not None}
        return Entity(entity.partition_key, entity.row_key, properties, entity.etag)

    @abstractmethod
    def _get(self, partition_key: str, row_key: str) -> Entity: ...

    @abstractmethod
    def _write(self, kind: OpKind, entity: Entity, if_match: str | None) -> str: ...

    @abstractmethod
    def _query(self, partition_key: str, start: str | None, end: str | None, limit: int,
               continuation: str | None) -> Page[Entity]: ...

    @abstractmethod
    def _scan(self, limit: int, continuation: str | None) -> Page[Entity]: ...

    @abstractmethod
    def _batch(self, operations: list[TableOp]) -> list[str | None]: ...


_MAX_CHAR = 0x10FFFF


def _successor(code: int, usable: Callable[[int], bool]) -> int | None:
    """The next code point above ``code`` that ``usable`` accepts (surrogates never), or None."""
    code += 1
    while code <= _MAX_CHAR:
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        elif usable(code):
            return code
        else:
            code += 1
    return None


def _table_key_char(code: int) -> bool:
    ch = chr(code)
    return not (_CONTROL.match(ch) or _TABLE_KEY_FORBIDDEN.match(ch))


def prefix_upper_bound(prefix: str, *, table_keys: bool = True) -> str | None:
    """An exclusive upper bound above every string that starts with ``prefix``, or None when
    there is none (empty, or all U+10FFFF).

    ``prefix`` with its last character that can grow replaced by its successor (trailing
    U+10FFFF dropped), so strings holding U+10FFFF after the prefix are below it, on every
    backend: each compares in code point order (SQLite and DynamoDB by UTF-8 bytes, Azure
    through the order-preserving row key encoding). With ``table_keys`` the successor skips
    characters no table key may hold (control characters, / \\ # ?), so the bound is itself a
    valid table key and nothing a table can store lies between; blob keys may hold those,
    so blob listings pass ``table_keys=False``.
    """
    usable = _table_key_char if table_keys else (lambda code: True)
    for index in range(len(prefix) - 1, -1, -1):
        successor = _successor(ord(prefix[index]), usable)
        if successor is not None:
            return prefix[:index] + chr(successor)
    return None


# --------------------------------------------------------------------------- queues


@dataclass(frozen=True)
class QueueMessage:
    """A received message. ``receipt`` deletes or extends it while it is invisible.

    A message whose stored form cannot be decoded (written by some other producer:
    on Azure, text that is not base64 of UTF-8; on SQS, a body flagged base64 that
    is not; locally, a stored value that is not UTF-8) does not fail the receive
    or peek. It comes back with ``decode_error`` saying what failed, and ``body``
    is its raw stored text as it is (Azure, SQS: not base64-decoded), or locally
    its bytes decoded as UTF-8 with ``errors="replace"``. Otherwise ``decode_error``
    is None.
    """

    id: str
    body: str
    dequeue_count: int
    receipt: str
    enqueued_at: datetime | None = None
    decode_error: str | None = None

    @property
    def undecodable(self) -> bool:
        """True when ``body`` is the raw stored form, not a decoded message (see ``decode_error``)."""
        return self.decode_error is not None


class QueueStore(ABC):
    """At-least-once text messages.

    A received message is invisible for ``visibility_timeout`` seconds and comes
    back with a higher ``dequeue_count`` unless deleted by its receipt first.
    Receive and peek return every message, undecodable ones included
    (:attr:`QueueMessage.decode_error`).
    """

    def __init__(self, name: str) -> None:
        self.name = validate_resource_name(name, "queue")

    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        """Enqueue; the message becomes visible after ``delay_seconds``. Returns its id."""
        if not isinstance(body, str):
            raise InvalidInput("message body must be text")
        size = len(_utf8(body, "message body"))
        if size > MAX_QUEUE_BODY_BYTES:
            raise TooLarge(f"message is {size} bytes; the limit is {MAX_QUEUE_BODY_BYTES} (offload it)")
        _check_seconds(delay_seconds, MAX_SEND_DELAY, "delay_seconds")
        return self._send(body, delay_seconds)

    def receive(self, *, max_messages: int = 1, visibility_timeout: int = 30) -> list[QueueMessage]:
        """Up to ``max_messages`` visible messages, hidden for ``visibility_timeout`` seconds."""
        if not isinstance(max_messages, int) or not 1 <= max_messages <= MAX_RECEIVE_MESSAGES:
            raise InvalidInput(f"max_messages must be from 1 to {MAX_RECEIVE_MESSAGES}")
        _check_seconds(visibility_timeout, MAX_VISIBILITY_TIMEOUT, "visibility_timeout")
        return self._receive(max_messages, visibility_timeout)

    def peek(self, *, max_messages: int = MAX_RECEIVE_MESSAGES) -> list[QueueMessage]:
        """Visible messages without hiding them. Receipts are empty.

        On SQS a peek is a receive with a zero visibility timeout, which counts
        as a delivery in ``dequeue_count``.
        """
        if not isinstance(max_messages, int) or not 1 <= max_messages <= MAX_RECEIVE_MESSAGES:
            raise InvalidInput(f"max_messages must be from 1 to {MAX_RECEIVE_MESSAGES}")
        return self._peek(max_messages)

    def delete(self, receipt: str) -> None:
        """Remove a received message. Deleting one already gone is not an error."""
        if not isinstance(receipt, str) or not receipt:
            raise InvalidInput("receipt must be a non-empty string")
        self._delete(receipt)

    def extend(self, receipt: str, visibility_timeout: int) -> str:
        """Keep a received message hidden ``visibility_timeout`` seconds from now; returns the new receipt."""
        if not isinstance(receipt, str) or not receipt:
            raise InvalidInput("receipt must be a non-empty string")
        _check_seconds(visibility_timeout, MAX_VISIBILITY_TIMEOUT, "visibility_timeout")
        return self._extend(receipt, visibility_timeout)

    def approximate_length(self) -> int:
        """About how many messages are in the queue, visible or not."""
        return self._approximate_length()

    @abstractmethod
    def _send(self, body: str, delay_seconds: int) -> str: ...

    @abstractmethod
    def _receive(self, max_messages: int, visibility_timeout: int) -> list[QueueMessage]: ...

    @abstractmethod
    def _peek(self, max_messages: int) -> list[QueueMessage]: ...

    @abstractmethod
    def _delete(self, receipt: str) -> None: ...

    @abstractmethod
    def _extend(self, receipt: str, visibility_timeout: int) -> str: ...

    @abstractmethod
    def _approximate_length(self) -> int: ...


def _check_seconds(value: int, maximum: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise InvalidInput(f"{what} must be whole seconds from 0 to {maximum}, got {value!r}")


# --------------------------------------------------------------------------- backend


class Backend(ABC):
    """One storage account: hands out blob, table and queue stores, created once and reused."""

    #: "local", "azure" or "aws".
    kind: str = ""

    def __init__(self, *, token_secret: str | bytes | None = None) -> None:
        """``token_secret``: signs continuation tokens (at least 16 bytes); None: the backend's own."""
        self._blobs: dict[str, BlobStore] = {}
        self._tables: dict[str, TableStore] = {}
        self._queues: dict[str, QueueStore] = {}
        secret = token_secret.encode("utf-8") if isinstance(token_secret, str) else token_secret
        self._token_signer = TokenSigner(secret) if secret else None
        self._token_lock = threading.Lock()

    @property
    def tokens(self) -> TokenSigner:
        """Signs and checks continuation tokens. Without a ``token_secret`` the secret is
        the backend's own (:meth:`_load_token_secret`), read once, on first use."""
        signer = self._token_signer
        if signer is None:
            with self._token_lock:
                if self._token_signer is None:
                    self._token_signer = TokenSigner(self._load_token_secret())
                signer = self._token_signer
        return signer

    def _load_token_secret(self) -> bytes:
        """The secret every instance on this storage shares (local: a file; clouds: a blob)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no token secret of its own: give token_secret")

    def _token_secret_blob(self, container: str, key: str) -> bytes:
        """A secret kept in a blob: read it, or make one with a create-only write so that
        every instance that races here ends up with the same one."""
        store = self.blobs(container)
        for attempt in range(3):
            try:
                data = store.get(key).data
            except NotFound:
                candidate = secrets.token_bytes(32)
                try:
                    store.put(key, candidate, if_none_match=True)
                except AlreadyExists:
                    continue  # another instance made it first: read theirs
                except NotFound:
                    if attempt:
                        raise
                    self._ensure_container(container)  # a fresh account: the container comes first
                    continue
                return candidate
            if len(data) < MIN_TOKEN_SECRET_BYTES:
                raise BackendUnavailable(
                    f"the continuation token secret in blob {key!r} of {container!r} is damaged "
                    f"({len(data)} bytes); delete it to have a new one made, or set a token secret"
                )
            return data
        raise BackendUnavailable(f"could not read or create the continuation token secret {key!r} of {container!r}")

    def blobs(self, container: str) -> BlobStore:
        store = self._blobs.get(container)
        if store is None:
            store = self._make_blobs(validate_resource_name(container, "container"))
            store._token_backend = self
            self._blobs[container] = store
        return store

    def table(self, name: str) -> TableStore:
        store = self._tables.get(name)
        if store is None:
            store = self._make_table(validate_resource_name(name, "table"))
            store._token_backend = self
            self._tables[name] = store
        return store

    def queue(self, name: str) -> QueueStore:
        store = self._queues.get(name)
        if store is None:
            store = self._queues[name] = self._make_queue(validate_resource_name(name, "queue"))
        return store

    def ensure(self, *, containers: Iterable[str] = (), tables: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Create whatever of these is missing. Safe to call any number of times."""
        for name in containers:
            self._ensure_container(validate_resource_name(name, "container"))
        for name in tables:
            self._ensure_table(validate_resource_name(name, "table"))
        for name in queues:
            self._ensure_queue(validate_resource_name(name, "queue"))

    @abstractmethod
    def ping(self) -> None:
        """Return when the store answers; raise BackendUnavailable otherwise."""

    def close(self) -> None:
        """Release connections. The backend is not used afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def _make_blobs(self, container: str) -> BlobStore: ...

    @abstractmethod
    def _make_table(self, name: str) -> TableStore: ...

    @abstractmethod
    def _make_queue(self, name: str) -> QueueStore: ...

    @abstractmethod
    def _ensure_container(self, name: str) -> None: ...

    @abstractmethod
    def _ensure_table(self, name: str) -> None: ...

    @abstractmethod
    def _ensure_queue(self, name: str) -> None: ...
