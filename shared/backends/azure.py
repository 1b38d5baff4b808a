"""The Azure backend: Blob Storage, Table Storage and Queue Storage of one account.

Connects with a connection string (Azurite, or an account key) or with an
account name and ``DefaultAzureCredential`` (managed identity in the cloud). The
three service clients are created once per backend and shared by every store.

Where the SDK or the service differs from the contract in :mod:`.base`, this
module bridges the gap:

* ``TableClient.delete_entity`` ignores 404; the contract wants NotFound.
* Integers are always written as ``Edm.Int64`` so every value in the 64-bit range
  round-trips as a Python int, and one property keeps one type as it grows.
* Azure compares row keys by UTF-16 code unit, not by code point: row keys are
  stored with an order-preserving escape (see ``_encode_row_key``).
* Azure refuses a receive with a visibility timeout of 0; it receives with 1 s
  and then makes the messages visible again.
* A conditional write or delete of a blob that is gone fails with 412; the
  contract wants NotFound, so a failed condition is checked against existence.
* Blob listings give ETags unquoted, headers quoted; all are returned quoted.
* The SDK's base64 decode policy fails a whole receive or peek on one message
  that is not base64 (a producer posting raw text): messages are fetched raw and
  decoded here; one that does not decode comes back raw, with ``decode_error``.

SDK errors become :mod:`shared.errors` in one place, :func:`_translated`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineResponse
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableClient,
    TableEntity,
    TableServiceClient,
    TableTransactionError,
    UpdateMode,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64EncodePolicy,
)

from shared import names
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
)
from shared.config import Settings
from shared.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    InvalidInput,
    InvalidKey,
    NotFound,
    PreconditionFailed,
    StowageError,
    TooLarge,
)

T = TypeVar("T")

_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
_BASE64_WHITESPACE = re.compile(r"[ \t\r\n]")
_SYSTEM_PROPERTIES = frozenset({"PartitionKey", "RowKey", "Timestamp"})

# 400 responses that blame a key or name rather than the request as a whole.
_KEY_ERROR_CODES = frozenset(
    {"InvalidResourceName", "OutOfRangeInput", "KeyValueTooLarge", "InvalidUri", "RequestUrlFailedToParse"}
)
_TOO_LARGE_CODES = frozenset(
    {"EntityTooLarge", "PropertyValueTooLarge", "RequestBodyTooLarge", "MessageTooLarge", "MetadataTooLarge"}
)


# --------------------------------------------------------------------------- errors


def _error_code(exc: AzureError) -> str:
    code = getattr(exc, "error_code", None)
    # The SDKs hand back str-valued enums (StorageErrorCode, TableErrorCode) or plain strings.
    code = getattr(code, "value", code)
    return str(code) if code else ""


def _reason(exc: AzureError) -> str:
    first_line = (str(getattr(exc, "message", None) or exc).strip().splitlines() or [""])[0]
    code = _error_code(exc)
    return f"{first_line} ({code})" if code and code not in first_line else first_line


def _translate(exc: AzureError, what: str) -> StowageError:
    """The shared.errors exception for an azure-core error raised while working on ``what``."""
    code = _error_code(exc)
    detail = f"{what}: {_reason(exc)}"
    if isinstance(exc, ClientAuthenticationError):
        return BackendUnavailable(f"{what}: the storage account refused our credentials: {_reason(exc)}")
    if not isinstance(exc, HttpResponseError):
        # ServiceRequestError, ServiceResponseError, DecodeError, ...: nothing the caller can fix.
        return BackendUnavailable(f"{what}: Azure Storage did not answer properly: {exc}")
    status = exc.status_code or 0
    if "BeingDeleted" in code or code == "ServerBusy":
        return BackendUnavailable(f"{detail}; retry later")
    if isinstance(exc, ResourceModifiedError) or status == 412:
        return PreconditionFailed(detail)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return NotFound(detail)
    if code == "PopReceiptMismatch":
        # The message was received again since this receipt was issued: for us it is gone.
        return NotFound(f"{what}: the message was received again since this receipt was issued")
    if isinstance(exc, ResourceExistsError) or status == 409:
        if not code or code.endswith("AlreadyExists"):
            return AlreadyExists(detail)
        return Conflict(detail)
    if status == 413 or code in _TOO_LARGE_CODES:
        return TooLarge(detail)
    if status == 400:
        return InvalidKey(detail) if code in _KEY_ERROR_CODES else InvalidInput(detail)
    if status in (401, 403):
        return BackendUnavailable(f"{what}: the storage account refused access: {_reason(exc)}")
    return BackendUnavailable(detail)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Map azure-core errors to shared.errors; the one place this backend does so."""
    try:
        yield
    except AzureError as exc:
        raise _translate(exc, what) from exc


def _first_nonempty_page(fetch: Callable[[Any], tuple[list[T], Any]], token: Any) -> tuple[list[T], Any]:
    """One service page, skipping the empty pages Azure may return with a continuation."""
    items, token = fetch(token)
    while not items and token:
        items, token = fetch(token)
    return items, token


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class AzureOptions:
    """How to reach the storage account: exactly one of two ways.

    * ``connection_string``: a full connection string (an account key, a SAS, or
      Azurite's ``UseDevelopmentStorage=true``). Kept out of ``repr``.
    * ``account_name``: the account's name; endpoints are
      ``https://<account>.{blob,queue,table}.core.windows.net`` and requests are
      signed with ``DefaultAzureCredential`` (managed identity in Azure).
    * ``client_id``: the client id of a user-assigned managed identity, used with
      ``account_name``; ignored with a connection string, which carries its own key.
    * ``token_secret``: signs continuation tokens; None keeps a generated one in the blob
      ``names.TOKEN_SECRET_BLOB`` of the data container. Kept out of ``repr``.
    """

    connection_string: str | None = field(default=None, repr=False)
    account_name: str | None = None
    client_id: str | None = None
    token_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        how = f"set exactly one of {names.SETTING_AZURE_CONNECTION_STRING} or {names.SETTING_AZURE_ACCOUNT_NAME}"
        if bool(self.connection_string) == bool(self.account_name):
            given = "both are set" if self.connection_string else "neither is set"
            raise InvalidInput(f"the azure backend needs one way to connect: {how} ({given})")
        if self.account_name and not _ACCOUNT_NAME.match(self.account_name):
            raise InvalidInput(
                f"{names.SETTING_AZURE_ACCOUNT_NAME} must be a storage account name "
                f"(3-24 lowercase letters and digits), got {self.account_name!r}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureOptions:
        """The options the app settings give."""
        return cls(
            connection_string=settings.azure_connection_string,
            account_name=settings.azure_account_name,
            client_id=settings.azure_client_id,
            token_secret=settings.token_secret,
        )


# --------------------------------------------------------------------------- blobs


def _quoted(etag: str) -> str:
    """Listings give ETags bare (0x8D...), headers quoted ("0x8D..."): one form, so they compare equal."""
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


class AzureBlobStore(BlobStore):
    """Blobs of one Azure container."""

    def __init__(self, container: str, client: ContainerClient) -> None:
        super().__init__(container)
        self._client = client

    def _what(self, key: str) -> str:
        return f"blob {key!r} in container {self.container!r}"

    def _gone_or_changed(self, key: str, exc: PreconditionFailed) -> StowageError:
        """Azure answers 412 to a conditional write of a missing blob; the contract says NotFound."""
        try:
            self._head(key)
        except NotFound as missing:
            return missing
        return exc

    def _put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: dict[str, str],
        if_match: str | None,
        if_none_match: bool,
    ) -> BlobProperties:
        blob = self._client.get_blob_client(key)
        conditions: dict[str, Any] = {}
        if if_match is not None:
            conditions = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
        try:
            with _translated(self._what(key)):
                result = blob.upload_blob(
                    data,
                    overwrite=not if_none_match,  # overwrite=False is If-None-Match: *
                    content_settings=ContentSettings(content_type=content_type),
                    metadata=metadata,
                    **conditions,
                )
        except PreconditionFailed as exc:
            raise self._gone_or_changed(key, exc) from exc.__cause__
        etag, modified = _quoted(result["etag"]), result["last_modified"]
        return BlobProperties(key, etag, len(data), content_type, dict(metadata), modified)

    @staticmethod
    def _properties(key: str, props: Any) -> BlobProperties:
        return BlobProperties(
            key=key,
            etag=_quoted(props.etag),
            size=props.size,
            content_type=props.content_settings.content_type or "application/octet-stream",
            metadata=dict(props.metadata or {}),
            last_modified=props.last_modified,
        )

    def _get(self, key: str) -> Blob:
        with _translated(self._what(key)):
            downloader = self._client.get_blob_client(key).download_blob()
            data = downloader.readall()
        return Blob(self._properties(key, downloader.properties), data)

    def _head(self, key: str) -> BlobProperties:
        with _translated(self._what(key)):
            props = self._client.get_blob_client(key).get_blob_properties()
        return self._properties(key, props)

    def _delete(self, key: str, if_match: str | None) -> None:
        conditions: dict[str, Any] = {}
        if if_match is not None:
            conditions = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
        try:
            with _translated(self._what(key)):
                self._client.get_blob_client(key).delete_blob(delete_snapshots="include", **conditions)
        except PreconditionFailed as exc:
            raise self._gone_or_changed(key, exc) from exc.__cause__

    def _list(self, prefix: str, limit: int, continuation: str | None) -> Page[BlobProperties]:
        marker = None
        if continuation:
            marker = decode_continuation(continuation).get("marker")
            if not isinstance(marker, str):
                raise InvalidInput("continuation token is not one this service issued")

        def fetch(token: str | None) -> tuple[list[BlobProperties], str | None]:
            pages = self._client.list_blobs(name_starts_with=prefix or None, results_per_page=limit).by_page(
                continuation_token=token
            )
            items = [self._properties(b.name, b) for b in next(pages)]
            # by_page() returns an ItemPaged page iterator, which has the token; the SDK types it Iterator.
            return items, pages.continuation_token or None  # type: ignore[attr-defined]

        with _translated(f"listing container {self.container!r}"):
            items, marker = _first_nonempty_page(fetch, marker)
        return Page(items, encode_continuation({"marker": marker}) if marker else None)


# --------------------------------------------------------------------------- tables


# Row keys are stored so that Azure's order is code point order. Azure compares UTF-16 code
# units, which puts U+E000..U+FFFF (private use, CJK compatibility, fullwidth forms, U+FFFD)
# above every supplementary character (surrogates are U+D800..U+DFFF). Those characters, and the
# escape U+D7FF itself, are stored as U+D7FF plus one CJK ideograph (U+4E00.. in order), which
# sorts below the surrogates and keeps their order; every other character is stored as it is.
_ESCAPE = "\ud7ff"
_ESCAPED_BASE = 0x4E00  # U+D7FF -> ESCAPE + U+4E00; U+E000 + n -> ESCAPE + U+4E01 + n


def _encode_row_key(key: str) -> str:
    if not any(ch == _ESCAPE or ch >= "\ue000" for ch in key):
        return key
    out = []
    for ch in key:
        code = ord(ch)
        if code == 0xD7FF:
            out.append(_ESCAPE + chr(_ESCAPED_BASE))
        elif 0xE000 <= code <= 0xFFFF:
            out.append(_ESCAPE + chr(_ESCAPED_BASE + 1 + code - 0xE000))
        else:
            out.append(ch)
    return "".join(out)


def _decode_row_key(stored: str) -> str:
    if _ESCAPE not in stored:
        return stored
    out = []
    i = 0
    while i < len(stored):
        offset = ord(stored[i + 1]) - _ESCAPED_BASE if stored[i] == _ESCAPE and i + 1 < len(stored) else -1
        if 0 <= offset <= 0x2000:
            out.append(_ESCAPE if offset == 0 else chr(0xE000 + offset - 1))
            i += 2
        else:  # not an escape we wrote (a key from another tool): keep it as it is
            out.append(stored[i])
            i += 1
    return "".join(out)


def _to_azure(entity: Entity) -> dict[str, Any]:
    """An SDK entity: ints are tagged Int64 so Python ints of any 64-bit size round-trip."""
    out: dict[str, Any] = {"PartitionKey": entity.partition_key, "RowKey": _encode_row_key(entity.row_key)}
    for name, value in entity.properties.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = EntityProperty(value, EdmType.INT64)
        else:
            out[name] = value  # str, float (Edm.Double), bool, bytes (Edm.Binary)
    return out


def _from_azure(raw: TableEntity) -> Entity:
    properties: dict[str, PropertyValue] = {}
    for name, value in raw.items():
        if name in _SYSTEM_PROPERTIES:
            continue
        if isinstance(value, EntityProperty):  # Edm.Int64 comes back wrapped
            value = value.value
        # Types this service never writes (entities made by other tools) become text.
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, UUID):
            value = str(value)
        properties[name] = value
    return Entity(raw["PartitionKey"], _decode_row_key(raw["RowKey"]), properties, raw.metadata.get("etag"))


def _condition(if_match: str | None) -> dict[str, Any]:
    # Without an ETag the SDK sends If-Match: *, so updates and deletes of missing entities fail with 404.
    return {"etag": if_match, "match_condition": MatchConditions.IfNotModified} if if_match else {}


def _decode_table_token(continuation: str | None) -> dict[str, str | None] | None:
    if not continuation:
        return None
    state = decode_continuation(continuation)
    pk, rk = state.get("pk"), state.get("rk")
    if not all(isinstance(k, str) or k is None for k in (pk, rk)) or (pk is None and rk is None):
        raise InvalidInput("continuation token is not one this service issued")
    return {"PartitionKey": pk, "RowKey": rk}


def _encode_table_token(token: dict[str, str | None] | None) -> str | None:
    if not token:
        return None
    return encode_continuation({"pk": token.get("PartitionKey"), "rk": token.get("RowKey")})


class AzureTableStore(TableStore):
    """Entities of one Azure table."""

    def __init__(self, name: str, client: TableClient) -> None:
        super().__init__(name)
        self._client = client

    def _what(self, partition_key: str, row_key: str) -> str:
        return f"entity ({partition_key!r}, {row_key!r}) in table {self.name!r}"

    def _get(self, partition_key: str, row_key: str) -> Entity:
        with _translated(self._what(partition_key, row_key)):
            return _from_azure(self._client.get_entity(partition_key, _encode_row_key(row_key)))

    def _condition_failure(self, entity: Entity, if_match: str, exc: StowageError) -> StowageError:
        """What a failed conditional change means: NotFound, PreconditionFailed, or ``exc`` itself.

        Azure answers 400 (not 412) to an ETag it could never have issued, and emulators
        have answered 412 for missing entities; the current entity tells which case it is.
        """
        what = self._what(entity.partition_key, entity.row_key)
        try:
            current = self._get(entity.partition_key, entity.row_key)
        except NotFound as missing:
            return missing
        if current.etag == if_match:
            return exc  # the ETag was not the problem
        return exc if isinstance(exc, PreconditionFailed) else PreconditionFailed(f"{what} has changed (ETag mismatch)")

    def _write(self, kind: OpKind, entity: Entity, if_match: str | None) -> str:
        what = self._what(entity.partition_key, entity.row_key)
        try:
            with _translated(what):
                if kind is OpKind.INSERT:
                    result = self._client.create_entity(_to_azure(entity))
                elif kind is OpKind.UPSERT:
                    result = self._client.upsert_entity(_to_azure(entity), mode=UpdateMode.REPLACE)
                elif kind is OpKind.UPDATE:
                    result = self._client.update_entity(
                        _to_azure(entity), mode=UpdateMode.REPLACE, **_condition(if_match)
                    )
                else:
                    self._delete_entity(entity.partition_key, entity.row_key, if_match, what)
                    return ""
        except (PreconditionFailed, InvalidInput) as exc:
            if if_match is None:
                raise
            failure = self._condition_failure(entity, if_match, exc)
            if failure is exc:
                raise
            raise failure from exc
        etag: str = result["etag"]
        return etag

    def _delete_entity(self, partition_key: str, row_key: str, if_match: str | None, what: str) -> None:
        statuses: list[int] = []

        def record(response: PipelineResponse[Any, Any]) -> None:
            statuses.append(response.http_response.status_code)

        # delete_entity swallows 404; the raw response hook still sees the final status.
        self._client.delete_entity(
            partition_key, _encode_row_key(row_key), raw_response_hook=record, **_condition(if_match)
        )
        if statuses and statuses[-1] == 404:
            raise NotFound(f"{what} does not exist")

    def _page(self, token: str | None, fetch: Callable[[Any], Any]) -> Page[Entity]:
        def one(sdk_token: Any) -> tuple[list[Entity], Any]:
            pages = fetch(sdk_token)
            items = [_from_azure(raw) for raw in next(pages)]
            return items, pages.continuation_token or None

        with _translated(f"querying table {self.name!r}"):
            items, next_token = _first_nonempty_page(one, _decode_table_token(token))
        return Page(items, _encode_table_token(next_token))

    def _query(
        self, partition_key: str, start: str | None, end: str | None, limit: int, continuation: str | None
    ) -> Page[Entity]:
        # Parameters are substituted (quoted and escaped) by the SDK; values never touch the filter text.
        query = "PartitionKey eq @pk"
        parameters: dict[str, Any] = {"pk": partition_key}
        if start is not None:
            query += " and RowKey ge @start"
            parameters["start"] = _encode_row_key(start)
        if end is not None:
            query += " and RowKey lt @end"
            parameters["end"] = _encode_row_key(end)
        return self._page(
            continuation,
            lambda token: self._client.query_entities(query, parameters=parameters, results_per_page=limit).by_page(
                continuation_token=token
            ),
        )

    def _scan(self, limit: int, continuation: str | None) -> Page[Entity]:
        return self._page(
            continuation,
            lambda token: self._client.list_entities(results_per_page=limit).by_page(continuation_token=token),
        )

    def _batch(self, operations: list[TableOp]) -> list[str | None]:
        actions: list[tuple[Any, ...]] = []
        for op in operations:
            entity = _to_azure(op.entity)
            if op.kind is OpKind.INSERT:
                actions.append(("create", entity))
            elif op.kind is OpKind.UPSERT:
                actions.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
            elif op.kind is OpKind.UPDATE:
                actions.append(("update", entity, {"mode": UpdateMode.REPLACE, **_condition(op.if_match)}))
            else:
                actions.append(("delete", entity, _condition(op.if_match)))
        try:
            results = self._client.submit_transaction(actions)
        except TableTransactionError as exc:
            index = exc.index if 0 <= exc.index < len(operations) else 0
            failed = operations[index]
            what = (
                f"batch operation {index} ({failed.kind.value} of "
                f"{self._what(failed.entity.partition_key, failed.entity.row_key)})"
            )
            error = _translate(exc, what)
            if failed.if_match is not None and isinstance(error, (PreconditionFailed, InvalidInput)):
                error = self._condition_failure(failed.entity, failed.if_match, error)
            raise error from exc
        except AzureError as exc:
            raise _translate(exc, f"batch on table {self.name!r}") from exc
        return [
            None if op.kind is OpKind.DELETE else result.get("etag")
            for op, result in zip(operations, results, strict=True)
        ]


# --------------------------------------------------------------------------- queues


class AzureQueueStore(QueueStore):
    """Messages of one Azure queue, base64 on the wire as the Functions host expects."""

    def __init__(self, name: str, client: QueueClient) -> None:
        super().__init__(name)
        self._client = client

    @property
    def _what(self) -> str:
        return f"queue {self.name!r}"

    @staticmethod
    def _receipt(message_id: str, pop_receipt: str | None) -> str:
        # Azure returns a pop receipt with every received or updated message; the SDK types it optional.
        return f"{message_id}:{pop_receipt}"

    @staticmethod
    def _split(receipt: str) -> tuple[str, str]:
        message_id, sep, pop_receipt = receipt.partition(":")  # message ids are GUIDs: no ':'
        if not sep or not message_id or not pop_receipt:
            raise InvalidInput("receipt is not one this queue issued")
        return message_id, pop_receipt

    def _send(self, body: str, delay_seconds: int) -> str:
        with _translated(self._what):
            # time_to_live=-1: Azure would drop messages after 7 days, poison ones included.
            return self._client.send_message(body, visibility_timeout=delay_seconds, time_to_live=-1).id

    def _receive(self, max_messages: int, visibility_timeout: int) -> list[QueueMessage]:
        with _translated(self._what):
            # Azure wants at least 1 s; a 0 s receive is a 1 s receive made visible again at once.
            pages = self._client.receive_messages(
                messages_per_page=max_messages, visibility_timeout=max(visibility_timeout, 1)
            ).by_page()
            received = list(next(pages, []))
            messages = []
            for message in received:
                pop_receipt = message.pop_receipt
                if visibility_timeout == 0:
                    updated = self._client.update_message(message.id, pop_receipt, visibility_timeout=0)
                    pop_receipt = updated.pop_receipt
                messages.append(self._message(message, self._receipt(message.id, pop_receipt)))
        return messages

    def _peek(self, max_messages: int) -> list[QueueMessage]:
        with _translated(self._what):
            peeked = self._client.peek_messages(max_messages=max_messages)
        return [self._message(m, "") for m in peeked]

    @staticmethod
    def _message(message: Any, receipt: str) -> QueueMessage:
        """Our message of an SDK one fetched raw (no decode policy): base64 of UTF-8, decoded here.

        Whitespace is skipped, as the Functions host's decoder does; anything else
        that is not base64, or bytes that are not UTF-8, leave the raw text as the
        body with ``decode_error`` set, so one bad message never fails a receive.
        """
        raw = message.content or ""
        body, decode_error = raw, None
        try:
            body = base64.b64decode(_BASE64_WHITESPACE.sub("", raw), validate=True).decode("utf-8")
        except UnicodeDecodeError as exc:  # before ValueError, its base class
            decode_error = f"base64 of bytes that are not UTF-8: {exc}"
        except (binascii.Error, ValueError) as exc:  # ValueError: text that is not ASCII
            decode_error = f"not valid base64: {exc}"
        return QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            receipt=receipt,
            enqueued_at=message.inserted_on,
            decode_error=decode_error,
        )

    def _delete(self, receipt: str) -> None:
        message_id, pop_receipt = self._split(receipt)
        try:
            with _translated(self._what):
                self._client.delete_message(message_id, pop_receipt)
        except NotFound:
            pass  # already deleted, or received again since: either way not ours to delete any more

    def _extend(self, receipt: str, visibility_timeout: int) -> str:
        message_id, pop_receipt = self._split(receipt)
        with _translated(f"message {message_id!r} in {self._what}"):
            updated = self._client.update_message(message_id, pop_receipt, visibility_timeout=visibility_timeout)
        return self._receipt(message_id, updated.pop_receipt)

    def _approximate_length(self) -> int:
        with _translated(self._what):
            # Always answered by Azure (x-ms-approximate-messages-count); the SDK types it optional.
            return self._client.get_queue_properties().approximate_message_count or 0


# --------------------------------------------------------------------------- backend


class AzureBackend(Backend):
    """One Azure Storage account; its three service clients are created once and shared."""

    kind = "azure"

    def __init__(self, options: AzureOptions) -> None:
        super().__init__(token_secret=options.token_secret)
        self.options = options
        self._credential: Any = None
        if options.connection_string:
            try:
                self._blob_service = BlobServiceClient.from_connection_string(options.connection_string)
                self._table_service = TableServiceClient.from_connection_string(options.connection_string)
                self._queue_service = QueueServiceClient.from_connection_string(options.connection_string)
            except ValueError as exc:
                raise InvalidInput(
                    f"{names.SETTING_AZURE_CONNECTION_STRING} is not a usable connection string: {exc}"
                ) from exc
        else:
            from azure.identity import DefaultAzureCredential  # only the managed identity path needs it

            account = options.account_name
            self._credential = DefaultAzureCredential(managed_identity_client_id=options.client_id)
            credential = self._credential
            self._blob_service = BlobServiceClient(f"https://{account}.blob.core.windows.net", credential=credential)
            self._table_service = TableServiceClient(f"https://{account}.table.core.windows.net", credential=credential)
            self._queue_service = QueueServiceClient(f"https://{account}.queue.core.windows.net", credential=credential)

    def _make_blobs(self, container: str) -> BlobStore:
        return AzureBlobStore(container, self._blob_service.get_container_client(container))

    def _make_table(self, name: str) -> TableStore:
        return AzureTableStore(name, self._table_service.get_table_client(name))

    def _make_queue(self, name: str) -> QueueStore:
        # No decode policy (the SDK's default, NoDecodePolicy): AzureQueueStore decodes the raw
        # text itself, as TextBase64DecodePolicy fails a whole receive on one message that is not base64.
        client = self._queue_service.get_queue_client(name, message_encode_policy=TextBase64EncodePolicy())
        return AzureQueueStore(name, client)

    @staticmethod
    def _create(what: str, create: Callable[[], object]) -> None:
        with _translated(what):
            try:
                create()
            except ResourceExistsError as exc:
                # Already there is fine (ensure is idempotent); being deleted is not: the caller retries.
                if "BeingDeleted" in _error_code(exc):
                    raise

    def _ensure_container(self, name: str) -> None:
        self._create(f"container {name!r}", lambda: self._blob_service.create_container(name))

    def _load_token_secret(self) -> bytes:
        return self._token_secret_blob(names.CONTAINER_DATA, names.TOKEN_SECRET_BLOB)

    def _ensure_table(self, name: str) -> None:
        self._create(f"table {name!r}", lambda: self._table_service.create_table(name))

    def _ensure_queue(self, name: str) -> None:
        self._create(f"queue {name!r}", lambda: self._queue_service.create_queue(name))

    def ping(self) -> None:
        """One small listing per service; BackendUnavailable when any fails."""
        # A health check answers now: no retries with back-off (minutes when the account is unreachable).
        quick: dict[str, Any] = {"retry_total": 0, "connection_timeout": 5, "read_timeout": 10}
        try:
            with _translated("ping"):
                next(self._blob_service.list_containers(results_per_page=1, **quick).by_page(), None)
                next(self._table_service.list_tables(results_per_page=1, **quick).by_page(), None)
                next(self._queue_service.list_queues(results_per_page=1, **quick).by_page(), None)
        except BackendUnavailable:
            raise
        except StowageError as exc:
            raise BackendUnavailable(f"Azure Storage did not answer the ping: {exc}") from exc

    def close(self) -> None:
        """Close the service clients (and the credential, if any)."""
        for client in (self._blob_service, self._table_service, self._queue_service, self._credential):
            if client is not None:
                client.close()
