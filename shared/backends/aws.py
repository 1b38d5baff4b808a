"""The AWS backend: S3 for blobs, DynamoDB for tables, SQS for queues.

Layout:

* Blobs: one S3 bucket; a container is the first key segment, so blob ``k`` of
  container ``c`` is the S3 object ``c/k``, byte for byte. The ETag is S3's,
  and conditional requests are S3's ``IfMatch`` / ``IfNoneMatch``.
* Tables: one DynamoDB table per logical table (``table_prefix + name``) with
  string keys ``pk`` (HASH) and ``rk`` (RANGE), on-demand capacity. Every write
  stores a fresh ``etag`` attribute (uuid4 hex); conditions compare it. A write
  DynamoDB turns away for colliding with a concurrent transaction is sent again a
  few times, then is Busy (503); it never reads as a 409 Conflict.
* Queues: one standard SQS queue per logical queue (``queue_prefix + name``).

Property encoding in DynamoDB (so every type reads back as written):

====== ======================================== ==================================
type   stored as                                why
====== ======================================== ==================================
str    ``S``
int    ``N`` (decimal digits)                   N holds 38 digits: all of int64
float  ``M`` ``{"f": S repr(value)}``           N cannot hold 1e308 or 5e-324, and
                                                would read 1.0 back as int 1; repr
                                                round-trips every finite float
bool   ``BOOL``
bytes  ``B``
====== ======================================== ==================================

No user property is ever a map, so an ``M`` value is unambiguously a float and
no side attribute is needed. ``pk``, ``rk`` and ``etag`` are reserved property
names in the contract, so they never clash with user properties.

Credentials come from boto3's default chain (environment, profile, instance or
function role), never from Stowage settings.

Write-once buckets (:class:`AwsObjectLockBackend`, the audit log's anchor): a bucket
created with S3 Object Lock and a default retention in COMPLIANCE mode, so every
object version is locked for that many days from its write, against everyone,
including the account's root. The retention is the bucket's (set where the bucket is
provisioned, e.g. infra/terraform/aws), not sent per write, so the app needs no
``s3:PutObjectRetention``. Its blob stores (:class:`ObjectLockBlobStore`) only
create (``IfNoneMatch``), never delete, and read a key only while it has exactly
one version: S3 lets anyone allowed to ``PutObject`` add a newer version over a
locked one (or a delete marker), which leaves the locked original in place but is
reported as a rewrite (Conflict) rather than read; listings include such keys.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
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
    Busy,
    Conflict,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StowageError,
    TooLarge,
)

# --------------------------------------------------------------------------- errors

_NOT_FOUND_CODES = frozenset({
    "404", "NoSuchKey", "NoSuchBucket", "NotFound", "ResourceNotFoundException", "TableNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
})
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed"})
_CONFLICT_CODES = frozenset({
    "409", "ConditionalCheckFailedException", "ConditionalCheckFailed", "ConditionalRequestConflict",
    "IdempotentParameterMismatchException", "ResourceInUseException", "BucketAlreadyExists", "OperationAborted",
    "QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently",
})
_TOO_LARGE_CODES = frozenset({
    "413", "EntityTooLarge", "MetadataTooLarge", "RequestEntityTooLarge",
    "ItemCollectionSizeLimitExceededException", "ItemCollectionSizeLimitExceeded",
})
_INVALID_CODES = frozenset({
    "400", "InvalidArgument", "InvalidRequest", "InvalidToken", "InvalidBucketName", "KeyTooLongError",
    "MalformedXML", "MissingParameter", "ValidationException", "ValidationError", "SerializationException",
    "InvalidParameterValue", "InvalidParameterCombination", "InvalidAttributeValue", "InvalidAttributeName",
    "InvalidMessageContents", "ReceiptHandleIsInvalid", "AWS.SimpleQueueService.UnsupportedOperation",
    "UnsupportedOperation", "TooManyEntriesInBatchRequest", "BatchEntryIdsNotDistinct",
})
# DynamoDB turned the request away before applying any of it, for a reason that
# passes: it collided with a concurrent transaction on an item ("TransactionConflict"
# as a cancellation reason, TransactionConflictException for a single-item write), or
# a transaction was throttled. botocore retries none of these, and sending the same
# request again is safe, so the table store does (see _reissue).
_REISSUE_CODES = frozenset({
    "TransactionConflict", "TransactionConflictException", "ThrottlingError", "ProvisionedThroughputExceeded",
})
# The same for a caller, but already retried by botocore (or, for TransactionInProgress,
# an earlier attempt with the same token may still commit): Busy, not sent again here.
_BUSY_CODES = _REISSUE_CODES | {
    "TransactionInProgressException", "ThrottlingException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
}
# Our own credentials failing is a server fault (503), not the API caller's 401.
_CREDENTIAL_CODES = frozenset({
    "403", "AccessDenied", "AccessDeniedException", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidSignatureException", "UnrecognizedClientException", "InvalidClientTokenId",
    "ExpiredToken", "ExpiredTokenException", "MissingAuthenticationToken", "AuthFailure",
    "InvalidSecurity", "AWS.SimpleQueueService.InvalidSecurity",
})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: ClientError) -> tuple[str, str]:
    """The error code and message; for a cancelled transaction, those of the first
    reason that is not "None" (batch callers interpret ConditionalCheckFailed per
    operation before falling back to this)."""
    code = _code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "")) or code
    if code == "TransactionCanceledException":
        for reason in exc.response.get("CancellationReasons", []) or []:
            reason_code = str(reason.get("Code") or "None")
            if reason_code != "None":
                return reason_code, str(reason.get("Message") or reason_code)
    return code, message


def _translate(exc: ClientError | BotoCoreError, what: str) -> StowageError:
    """The one mapping from botocore errors to :mod:`shared.errors`; callers ``raise ... from exc``."""
    if isinstance(exc, ParamValidationError):
        return InvalidInput(f"{what}: {exc}")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return BackendUnavailable(f"{what}: no usable AWS credentials ({exc})")
    if isinstance(exc, BotoCoreError):
        # EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
        # ConnectTimeoutError, ResponseStreamingError, WaiterError, ...
        return BackendUnavailable(f"{what}: {exc}")
    code, message = _reason(exc)
    text = f"{what}: {message}"
    if code in _BUSY_CODES:
        return Busy(f"{text} ({code}); retry shortly")
    if code in _NOT_FOUND_CODES:
        return NotFound(text)
    if code in _PRECONDITION_CODES:
        return PreconditionFailed(text)
    if code in _CONFLICT_CODES:
        return Conflict(text)
    if code in _TOO_LARGE_CODES:
        return TooLarge(text)
    # DynamoDB reports an oversized item as a validation error.
    if code in ("ValidationException", "ValidationError") and (
        "maximum allowed size" in message or "size has exceeded" in message
    ):
        return TooLarge(text)
    if code in _INVALID_CODES:
        return InvalidInput(text)
    if code in _CREDENTIAL_CODES:
        return BackendUnavailable(f"{what}: AWS refused this service's credentials ({code})")
    # Throttling, 5xx, InternalError, ServiceUnavailable, SlowDown, anything new.
    return BackendUnavailable(f"{what}: {code or 'error'}: {message}")


class _Verdict(Exception):
    """Internal control flow, not an error for callers (so not a StowageError): a special-case
    handler's verdict on a ClientError, raised by :func:`_aws` and caught next to the call."""


class _Done(_Verdict):
    """The error means success (e.g. created meanwhile by someone else)."""


class _Retry(_Verdict):
    """The call should be made again."""


#: Claims a ClientError: the error to raise instead of the default translation, a verdict, or None.
SpecialCase = Callable[[ClientError], StowageError | _Verdict | None]


@contextmanager
def _aws(what: str, special: SpecialCase | None = None) -> Iterator[None]:
    """Run AWS calls, translating their errors. ``special`` may claim a ClientError first
    (conditional failures mean different things to different operations)."""
    try:
        yield
    except ClientError as exc:
        error = special(exc) if special is not None else None
        raise (error if error is not None else _translate(exc, what)) from exc
    except BotoCoreError as exc:
        raise _translate(exc, what) from exc


_REISSUE_ATTEMPTS = 6  # with the backoff below, about 0.3 s at most before Busy


def _reissue(what: str, call: Callable[[], Any], special: SpecialCase | None = None) -> Any:
    """``call()`` under :func:`_aws`, sent again (with jittered backoff) while DynamoDB
    turns it away for a passing reason (``_REISSUE_CODES``: nothing was written). Every
    domain's writes get this, not only those in an optimistic-concurrency loop. If the
    collision was with a write that then committed, the next attempt fails its
    condition and the caller sees PreconditionFailed as usual; if it keeps colliding,
    Busy (503)."""
    attempt = 0
    while True:
        try:
            with _aws(what, special):
                return call()
        except Busy as exc:
            cause = exc.__cause__
            attempt += 1
            if attempt >= _REISSUE_ATTEMPTS or not (
                isinstance(cause, ClientError) and _reason(cause)[0] in _REISSUE_CODES
            ):
                raise
        time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))


# --------------------------------------------------------------------------- options

_REGION = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)*-\d+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TABLE_PREFIX = re.compile(r"^[A-Za-z0-9_.-]{0,192}$")  # DynamoDB names: 3-255 of these; logical names <= 63
_QUEUE_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,17}$")  # SQS names: 1-80 of these; logical names <= 63


@dataclass(frozen=True)
class AwsOptions:
    """Where the AWS backend keeps things. Credentials are not here: boto3's chain finds them."""

    #: AWS region of the bucket, tables and queues, e.g. "us-east-1".
    region: str = "us-east-1"
    #: One endpoint for S3, DynamoDB and SQS (moto server, LocalStack); None for AWS itself.
    endpoint_url: str | None = None
    #: The one S3 bucket; a container is the first segment of each object key.
    bucket: str = "stowage-data"
    #: DynamoDB table name = this prefix + the logical table name.
    table_prefix: str = "stowage-"
    #: SQS queue name = this prefix + the logical queue name (at most 17 characters,
    #: so that prefix + a 63-character logical name fits SQS's 80).
    queue_prefix: str = ""
    #: Signs continuation tokens; None keeps a generated one in the S3 object
    #: ``names.TOKEN_SECRET_BLOB`` of the data container. Kept out of ``repr``.
    token_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.region, str) or not _REGION.match(self.region):
            raise InvalidInput(f"AWS region {self.region!r} is not a region name like 'us-east-1'")
        if self.endpoint_url is not None and (
            not isinstance(self.endpoint_url, str) or not re.match(r"^https?://[^\s/]+", self.endpoint_url)
        ):
            raise InvalidInput(f"AWS endpoint URL {self.endpoint_url!r} must be an http(s) URL")
        if not isinstance(self.bucket, str) or not _BUCKET.match(self.bucket) or ".." in self.bucket:
            raise InvalidInput(f"S3 bucket name {self.bucket!r} must be 3-63 lowercase letters, digits, '.' or '-'")
        try:
            ipaddress.ip_address(self.bucket)
        except ValueError:
            pass  # not an IP address: as S3 requires
        else:
            raise InvalidInput(f"S3 bucket name {self.bucket!r} must not look like an IP address")
        if not isinstance(self.table_prefix, str) or not _TABLE_PREFIX.match(self.table_prefix):
            raise InvalidInput(f"DynamoDB table prefix {self.table_prefix!r} must be up to 192 of A-Z a-z 0-9 _ . -")
        if not isinstance(self.queue_prefix, str) or not _QUEUE_PREFIX.match(self.queue_prefix):
            raise InvalidInput(f"SQS queue prefix {self.queue_prefix!r} must be up to 17 of A-Z a-z 0-9 _ -")

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsOptions:
        """The AWS options of the app settings."""
        return cls(
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            bucket=settings.aws_bucket,
            table_prefix=settings.aws_table_prefix,
            queue_prefix=settings.aws_queue_prefix,
            token_secret=settings.token_secret,
        )


# --------------------------------------------------------------------------- backend


class AwsBackend(Backend):
    """S3 + DynamoDB + SQS through one boto3 session and one client per service."""

    kind = "aws"

    def __init__(self, options: AwsOptions) -> None:
        super().__init__(token_secret=options.token_secret)
        self.options = options
        config = Config(
            retries={"mode": "standard"},
            max_pool_connections=32,
            # Fail fast on an unreachable endpoint so callers get a 503 quickly.
            connect_timeout=5,
            # Custom endpoints (moto, LocalStack, MinIO) rarely resolve bucket
            # subdomains, so address buckets in the path there.
            s3={"addressing_style": "path"} if options.endpoint_url else None,
        )
        session = boto3.session.Session(region_name=options.region)
        # botocore clients are thread-safe: one each, shared by every store.
        self._s3: Any = session.client("s3", endpoint_url=options.endpoint_url, config=config)
        self._dynamodb: Any = session.client("dynamodb", endpoint_url=options.endpoint_url, config=config)
        self._sqs: Any = session.client("sqs", endpoint_url=options.endpoint_url, config=config)
        self._queue_urls: dict[str, str] = {}
        self._bucket_ready = False

    def close(self) -> None:
        """Close the HTTP connection pools."""
        for client in (self._s3, self._dynamodb, self._sqs):
            client.close()

    def _load_token_secret(self) -> bytes:
        return self._token_secret_blob(names.CONTAINER_DATA, names.TOKEN_SECRET_BLOB)

    def ping(self) -> None:
        """One cheap call per service; BackendUnavailable when any does not answer."""
        checks: list[tuple[str, Callable[[], object]]] = [
            ("S3", lambda: self._s3.head_bucket(Bucket=self.options.bucket)),
            ("DynamoDB", lambda: self._dynamodb.list_tables(Limit=1)),
            ("SQS", lambda: self._sqs.list_queues(MaxResults=1)),
        ]
        for service, check in checks:
            try:
                with _aws(f"ping {service}"):
                    check()
            except NotFound:
                continue  # the service answered; a missing bucket is ensure()'s business
            except StowageError as exc:
                raise BackendUnavailable(f"AWS {service} did not answer: {exc}") from exc

    # -- stores

    def _make_blobs(self, container: str) -> BlobStore:
        return AwsBlobStore(self, container)

    def _make_table(self, name: str) -> TableStore:
        return AwsTableStore(self, name)

    def _make_queue(self, name: str) -> QueueStore:
        return AwsQueueStore(self, name)

    # -- ensure: look before creating, so that a least-privilege role without
    # create permissions works against infrastructure provisioned beforehand.

    def _ensure_container(self, name: str) -> None:
        """Containers are key prefixes; only the bucket has to exist."""
        if self._bucket_ready:
            return
        bucket = self.options.bucket
        try:
            with _aws(f"head bucket {bucket}"):
                self._s3.head_bucket(Bucket=bucket)
        except NotFound:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if self.options.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.options.region}

            def owned(exc: ClientError) -> StowageError | _Verdict | None:
                # Someone (maybe another instance of us) created it meanwhile.
                return _Done() if _code(exc) == "BucketAlreadyOwnedByYou" else None

            try:
                with _aws(f"create bucket {bucket}", owned):
                    self._s3.create_bucket(**kwargs)
            except _Done:
                pass
        self._bucket_ready = True

    def _ensure_table(self, name: str) -> None:
        """Create the DynamoDB table (pk/rk strings, on demand) if missing; wait until ACTIVE."""
        table = self.options.table_prefix + name
        try:
            with _aws(f"describe table {table}"):
                description = self._dynamodb.describe_table(TableName=table)["Table"]
        except NotFound:
            def in_use(exc: ClientError) -> StowageError | _Verdict | None:
                return _Done() if _code(exc) == "ResourceInUseException" else None  # created concurrently

            try:
                with _aws(f"create table {table}", in_use):
                    self._dynamodb.create_table(
                        TableName=table,
                        KeySchema=[
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "rk", "KeyType": "RANGE"},
                        ],
                        AttributeDefinitions=[
                            {"AttributeName": "pk", "AttributeType": "S"},
                            {"AttributeName": "rk", "AttributeType": "S"},
                        ],
                        BillingMode="PAY_PER_REQUEST",
                    )
            except _Done:
                pass
            description = {}  # just created (or being created): wait below
        if description.get("TableStatus") != "ACTIVE":
            with _aws(f"wait for table {table}"):
                self._dynamodb.get_waiter("table_exists").wait(
                    TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
                )
                description = self._dynamodb.describe_table(TableName=table)["Table"]
        schema = {(k["AttributeName"], k["KeyType"]) for k in description.get("KeySchema", [])}
        if schema != {("pk", "HASH"), ("rk", "RANGE")}:
            raise Conflict(f"DynamoDB table {table} exists with another key schema than pk (HASH), rk (RANGE)")

    def _ensure_queue(self, name: str) -> None:
        """Create the SQS queue if missing and remember its URL."""
        queue = self.options.queue_prefix + name
        try:
            self._queue_urls[name] = self._lookup_queue_url(name)
            return
        except NotFound:
            pass

        def exists(exc: ClientError) -> StowageError | _Verdict | None:
            # Created meanwhile with other attributes: it is there, which is all we need.
            return _Done() if _code(exc) in ("QueueAlreadyExists", "QueueNameExists") else None

        try:
            with _aws(f"create queue {queue}", exists):
                # Explicit, and one every SQS implementation accepts; our bodies stay far below it.
                # 14 days, the SQS maximum: the default 4 would silently drop poison messages.
                response = self._sqs.create_queue(QueueName=queue, Attributes={
                    "MaximumMessageSize": "262144", "MessageRetentionPeriod": "1209600"})
            self._queue_urls[name] = response["QueueUrl"]
        except _Done:
            self._queue_urls[name] = self._lookup_queue_url(name)

    def _lookup_queue_url(self, name: str) -> str:
        queue = self.options.queue_prefix + name
        with _aws(f"queue {queue}"):
            return str(self._sqs.get_queue_url(QueueName=queue)["QueueUrl"])

    def _queue_url(self, name: str) -> str:
        """The queue's URL, looked up once (it depends only on account, region and name)."""
        url = self._queue_urls.get(name)
        if url is None:
            url = self._queue_urls[name] = self._lookup_queue_url(name)
        return url


# --------------------------------------------------------------------------- blobs



class AwsBlobStore(BlobStore):
    """Blobs of one container: S3 objects under ``<container>/`` in the backend's bucket.

    The ETag is S3's own, and conditional writes and deletes are S3's own
    ``IfMatch`` / ``IfNoneMatch``, so they are atomic. S3's ETag of a single-part
    upload is a digest of the content, which is what the contract asks: it
    changes whenever the content changes.
    """

    def __init__(self, backend: AwsBackend, container: str) -> None:
        super().__init__(container)
        self._s3 = backend._s3
        self._bucket = backend.options.bucket
        self._root = container + "/"

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
             if_match: str | None, if_none_match: bool) -> BlobProperties:
        kwargs: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": self._root + key,
            "Body": data,
            "ContentType": content_type,
            "Metadata": metadata,
        }
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        elif if_none_match:
            kwargs["IfNoneMatch"] = "*"
        # S3 answers 409 ConditionalRequestConflict while a concurrent conditional
        # write to the key is in flight and asks for a retry, which then gives the
        # definite answer; a few tries, then the conflict counts as a lost race.
        attempts = 3 if (if_match is not None or if_none_match) else 1
        response: dict[str, Any] = {}
        for attempt in range(attempts):
            special = functools.partial(self._put_failure, key, if_match, if_none_match, attempt < attempts - 1)
            try:
                with _aws(f"put blob {key!r}", special):
                    response = self._s3.put_object(**kwargs)
                break
            except _Retry:
                continue
        # PutObject returns no Last-Modified; head() has it. Not guessed from the Date header.
        return BlobProperties(key, str(response["ETag"]), len(data), content_type, dict(metadata), None)

    def _put_failure(self, key: str, if_match: str | None, if_none_match: bool, may_retry: bool,
                     exc: ClientError) -> StowageError | _Verdict | None:
        code = _code(exc)
        if code in ("ConditionalRequestConflict", "409") and may_retry:
            return _Retry()
        if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return None  # e.g. NoSuchKey for if_match on a blob deleted meanwhile: NotFound
        if if_none_match:
            return AlreadyExists(f"blob {key!r} already exists in {self.container}")
        if if_match is not None:
            return self._changed(key)
        return None

    def _changed(self, key: str) -> PreconditionFailed:
        return PreconditionFailed(f"blob {key!r} in {self.container} has changed (ETag mismatch)")

    def _get(self, key: str) -> Blob:
        with _aws(f"get blob {key!r}"):
            response = self._s3.get_object(Bucket=self._bucket, Key=self._root + key)
            with response["Body"] as body:  # reading can fail mid-stream too: same mapping
                data = body.read()
        return Blob(self._properties(key, response), data)

    def _head(self, key: str) -> BlobProperties:
        with _aws(f"head blob {key!r}"):
            return self._properties(key, self._s3.head_object(Bucket=self._bucket, Key=self._root + key))

    def _delete(self, key: str, if_match: str | None) -> None:
        # S3 DeleteObject succeeds on a missing key, so look first for the contract's
        # NotFound. If the blob vanishes between the head and the delete, the delete
        # still succeeds: it is gone either way.
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": self._root + key}
        current = self._head(key)
        if if_match is not None:
            if current.etag != if_match:
                raise self._changed(key)
            kwargs["IfMatch"] = if_match  # atomic against a write since the head

        def conditional(exc: ClientError) -> StowageError | None:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return self._changed(key)
            return None

        with _aws(f"delete blob {key!r}", conditional):
            self._s3.delete_object(**kwargs)

    def _list(self, prefix: str, limit: int, continuation: str | None) -> Page[BlobProperties]:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._root + prefix, "MaxKeys": limit}
        if continuation is not None:
            state = decode_continuation(continuation)
            token = state.get("t")
            if not isinstance(token, str) or state.get("c") != self.container or state.get("p") != prefix:
                raise InvalidInput("continuation token does not belong to this listing")
            kwargs["ContinuationToken"] = token
        with _aws(f"list blobs under {prefix!r}"):
            response = self._s3.list_objects_v2(**kwargs)
        items = [
            BlobProperties(obj["Key"][len(self._root):], str(obj["ETag"]), int(obj["Size"]), "", {},
                           obj.get("LastModified"))
            for obj in response.get("Contents", [])
            if obj["Key"] != self._root
        ]
        next_token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
        token_out = encode_continuation({"c": self.container, "p": prefix, "t": next_token}) if next_token else None
        return Page(items, token_out)

    @staticmethod
    def _properties(key: str, response: dict[str, Any]) -> BlobProperties:
        metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
        return BlobProperties(
            key=key,
            etag=str(response["ETag"]),
            size=int(response["ContentLength"]),
            content_type=response.get("ContentType") or "application/octet-stream",
            metadata=metadata,
            last_modified=response.get("LastModified"),
        )


# --------------------------------------------------------------------------- tables

_KEY_NAMES = {"#pk": "pk"}
_FLOAT_TAG = "f"


def _encode_value(value: PropertyValue) -> dict[str, Any]:
    if isinstance(value, bool):  # before int: bool is an int
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, float):
        return {"M": {_FLOAT_TAG: {"S": repr(value)}}}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    raise InvalidInput(f"cannot store a {type(value).__name__}")  # base validation keeps this unreachable


def _decode_value(name: str, attribute: dict[str, Any]) -> PropertyValue:
    if "S" in attribute:
        return str(attribute["S"])
    if "BOOL" in attribute:
        return bool(attribute["BOOL"])
    if "B" in attribute:
        return bytes(attribute["B"])
    try:
        if "N" in attribute:
            return int(attribute["N"])
        if "M" in attribute and set(attribute["M"]) == {_FLOAT_TAG}:
            return float(attribute["M"][_FLOAT_TAG]["S"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendUnavailable(f"property {name!r} holds a value this service did not write") from exc
    raise BackendUnavailable(f"property {name!r} has a DynamoDB type this service never writes: {sorted(attribute)}")


def _key(partition_key: str, row_key: str) -> dict[str, Any]:
    return {"pk": {"S": partition_key}, "rk": {"S": row_key}}


def _item(entity: Entity, etag: str) -> dict[str, Any]:
    item = {name: _encode_value(value) for name, value in entity.properties.items()}
    item.update(_key(entity.partition_key, entity.row_key))
    item["etag"] = {"S": etag}
    return item


def _entity(item: dict[str, Any]) -> Entity:
    properties = {
        name: _decode_value(name, value)
        for name, value in item.items()
        if name not in ("pk", "rk", "etag") and "NULL" not in value  # NULL: no such property
    }
    etag = item.get("etag", {}).get("S")
    return Entity(item["pk"]["S"], item["rk"]["S"], properties, etag)


def _condition(kind: OpKind, if_match: str | None) -> dict[str, Any]:
    """The ConditionExpression arguments of a write (none for an upsert)."""
    if kind is OpKind.UPSERT:
        return {}
    if kind is OpKind.INSERT:
        return {"ConditionExpression": "attribute_not_exists(#pk)", "ExpressionAttributeNames": dict(_KEY_NAMES)}
    condition: dict[str, Any] = {
        "ConditionExpression": "attribute_exists(#pk)",
        "ExpressionAttributeNames": dict(_KEY_NAMES),
        # Lets a failure tell "absent" (no item) from "changed" (item with another etag).
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    if if_match is not None:
        condition["ConditionExpression"] += " AND #etag = :etag"
        condition["ExpressionAttributeNames"]["#etag"] = "etag"
        condition["ExpressionAttributeValues"] = {":etag": {"S": if_match}}
    return condition


def _condition_error(kind: OpKind, entity: Entity, old: dict[str, Any] | None) -> StowageError:
    where = f"entity ({entity.partition_key!r}, {entity.row_key!r})"
    if kind is OpKind.INSERT:
        return AlreadyExists(f"{where} already exists")
    if not old:
        return NotFound(f"{where} does not exist")
    return PreconditionFailed(f"{where} has changed (ETag mismatch)")


class AwsTableStore(TableStore):
    """Entities of one DynamoDB table; reads are strongly consistent."""

    def __init__(self, backend: AwsBackend, name: str) -> None:
        super().__init__(name)
        self._ddb = backend._dynamodb
        self._table = backend.options.table_prefix + name

    def _get(self, partition_key: str, row_key: str) -> Entity:
        with _aws(f"get entity from {self.name}"):
            response = self._ddb.get_item(TableName=self._table, Key=_key(partition_key, row_key), ConsistentRead=True)
        if "Item" not in response:
            raise NotFound(f"entity ({partition_key!r}, {row_key!r}) does not exist in {self.name}")
        return _entity(response["Item"])

    def _write(self, kind: OpKind, entity: Entity, if_match: str | None) -> str:
        condition = _condition(kind, if_match)
        if kind is OpKind.INSERT:
            condition["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        etag = uuid.uuid4().hex

        def failed(exc: ClientError) -> StowageError | _Verdict | None:
            if _code(exc) != "ConditionalCheckFailedException":
                return None
            old = exc.response.get("Item")
            if kind is not OpKind.DELETE and old and old.get("etag", {}).get("S") == etag:
                # A retry (standard mode) of a write that had landed: our own etag is there.
                return _Done()
            return _condition_error(kind, entity, old)

        def send() -> None:
            if kind is OpKind.DELETE:
                self._ddb.delete_item(TableName=self._table, Key=_key(entity.partition_key, entity.row_key), **condition)
            else:
                self._ddb.put_item(TableName=self._table, Item=_item(entity, etag), **condition)

        try:
            _reissue(f"{kind.value} entity in {self.name}", send, failed)
        except _Done:
            pass
        return "" if kind is OpKind.DELETE else etag

    def _query(self, partition_key: str, start: str | None, end: str | None, limit: int,
               continuation: str | None) -> Page[Entity]:
        names = {"#pk": "pk"}
        values: dict[str, Any] = {":pk": {"S": partition_key}}
        expression = "#pk = :pk"
        keep: Callable[[dict[str, Any]], bool] | None = None
        if start is not None or end is not None:
            names["#rk"] = "rk"  # DynamoDB rejects names an expression does not use
        if start is not None and end is not None:
            if start >= end:  # Python compares by code point, as DynamoDB does (UTF-8 bytes)
                return Page([])
            # One sort-key condition only: BETWEEN is inclusive, so drop rk == end here.
            expression += " AND #rk BETWEEN :start AND :end"
            values[":start"], values[":end"] = {"S": start}, {"S": end}

            def before_end(item: dict[str, Any]) -> bool:
                return bool(item["rk"]["S"] != end)

            keep = before_end
        elif start is not None:
            expression += " AND #rk >= :start"
            values[":start"] = {"S": start}
        elif end is not None:
            expression += " AND #rk < :end"
            values[":end"] = {"S": end}
        start_key = self._start_key(continuation)
        if start_key is not None and start_key["pk"]["S"] != partition_key:
            raise InvalidInput("continuation token belongs to another partition")
        kwargs = {
            "TableName": self._table,
            "KeyConditionExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        return self._page(f"query {self.name}", self._ddb.query, kwargs, limit, start_key, keep)

    def _scan(self, limit: int, continuation: str | None) -> Page[Entity]:
        kwargs = {"TableName": self._table, "ConsistentRead": True}
        return self._page(f"scan {self.name}", self._ddb.scan, kwargs, limit, self._start_key(continuation), None)

    @staticmethod
    def _start_key(continuation: str | None) -> dict[str, Any] | None:
        if continuation is None:
            return None
        state = decode_continuation(continuation)
        pk, rk = state.get("pk"), state.get("rk")
        if not isinstance(pk, str) or not isinstance(rk, str) or not pk or not rk:
            raise InvalidInput("continuation token is not one this service issued")
        return _key(pk, rk)

    @staticmethod
    def _page(what: str, request: Callable[..., dict[str, Any]], kwargs: dict[str, Any], limit: int,
              start_key: dict[str, Any] | None, keep: Callable[[dict[str, Any]], bool] | None) -> Page[Entity]:
        """Fill a page of ``limit`` items, reading one more to know whether more exist.

        DynamoDB stops at ``Limit`` or at 1 MB, whichever comes first, so keep
        asking until the page is full or the results end. The token is the key of
        the last item returned, so the next page starts right after it.
        """
        items: list[dict[str, Any]] = []
        while True:
            params = dict(kwargs, Limit=limit + 1 - len(items))
            if start_key is not None:
                params["ExclusiveStartKey"] = start_key
            with _aws(what):
                response = request(**params)
            items.extend(item for item in response.get("Items", []) if keep is None or keep(item))
            start_key = response.get("LastEvaluatedKey")
            if len(items) > limit or not start_key:
                break
        more = len(items) > limit
        items = items[:limit]
        token = encode_continuation({"pk": items[-1]["pk"]["S"], "rk": items[-1]["rk"]["S"]}) if more else None
        return Page([_entity(item) for item in items], token)

    def _batch(self, operations: list[TableOp]) -> list[str | None]:
        actions: list[dict[str, Any]] = []
        etags: list[str | None] = []
        for op in operations:
            condition = _condition(op.kind, op.if_match)
            if op.kind is OpKind.INSERT:
                condition["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
            if op.kind is OpKind.DELETE:
                key = _key(op.entity.partition_key, op.entity.row_key)
                actions.append({"Delete": {"TableName": self._table, "Key": key, **condition}})
                etags.append(None)
            else:
                etag = uuid.uuid4().hex
                actions.append({"Put": {"TableName": self._table, "Item": _item(op.entity, etag), **condition}})
                etags.append(etag)

        def cancelled(exc: ClientError) -> StowageError | None:
            if _code(exc) != "TransactionCanceledException":
                return None
            reasons = exc.response.get("CancellationReasons") or []
            for op, reason in zip(operations, reasons):
                if reason.get("Code") == "ConditionalCheckFailed":
                    return _condition_error(op.kind, op.entity, reason.get("Item"))
            return None  # another reason (conflict, throttling, validation): the general mapping

        # botocore fills ClientRequestToken, so its retries of this call are idempotent;
        # a reissue after a cancellation is a new call with a new token.
        _reissue(f"batch in {self.name}", lambda: self._ddb.transact_write_items(TransactItems=actions), cancelled)
        return etags


# --------------------------------------------------------------------------- queues

# SQS accepts only these characters (XML's); other text travels base64-encoded,
# flagged by a message attribute, so every str the contract accepts round-trips.
_SQS_INVALID = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ENCODING_ATTRIBUTE = "stowage-encoding"
_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]
_SQS_RECEIVE_MAX = 10
_NOT_IN_FLIGHT = frozenset({
    "ReceiptHandleIsInvalid", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight",
})


class AwsQueueStore(QueueStore):
    """One standard SQS queue."""

    def __init__(self, backend: AwsBackend, name: str) -> None:
        super().__init__(name)
        self._sqs = backend._sqs
        self._backend = backend

    @property
    def _url(self) -> str:
        return self._backend._queue_url(self.name)

    def _send(self, body: str, delay_seconds: int) -> str:
        kwargs: dict[str, Any] = {"QueueUrl": self._url, "MessageBody": body, "DelaySeconds": delay_seconds}
        if _SQS_INVALID.search(body):
            kwargs["MessageBody"] = base64.b64encode(body.encode("utf-8")).decode("ascii")
            kwargs["MessageAttributes"] = {_ENCODING_ATTRIBUTE: {"DataType": "String", "StringValue": "base64"}}
        with _aws(f"send to {self.name}"):
            return str(self._sqs.send_message(**kwargs)["MessageId"])

    def _receive(self, max_messages: int, visibility_timeout: int) -> list[QueueMessage]:
        return self._collect(max_messages, visibility_timeout, keep_receipts=True)

    def _peek(self, max_messages: int) -> list[QueueMessage]:
        # SQS has no peek: a receive that leaves messages visible (see base).
        return self._collect(max_messages, 0, keep_receipts=False)

    def _collect(self, max_messages: int, visibility_timeout: int, *, keep_receipts: bool) -> list[QueueMessage]:
        """Receive in rounds of at most 10 until ``max_messages`` or a round brings nothing new.

        WaitTimeSeconds=0 so an empty queue answers at once. With a zero visibility
        timeout the same message can come back in the next round: ids de-duplicate.
        """
        messages: dict[str, QueueMessage] = {}
        while len(messages) < max_messages:
            with _aws(f"receive from {self.name}"):
                response = self._sqs.receive_message(
                    QueueUrl=self._url,
                    MaxNumberOfMessages=min(_SQS_RECEIVE_MAX, max_messages - len(messages)),
                    VisibilityTimeout=visibility_timeout,
                    WaitTimeSeconds=0,
                    MessageSystemAttributeNames=_SYSTEM_ATTRIBUTES,
                    MessageAttributeNames=[_ENCODING_ATTRIBUTE],
                )
            fresh = [m for m in response.get("Messages", []) if m["MessageId"] not in messages]
            if not fresh:
                break
            for raw in fresh:
                messages[raw["MessageId"]] = self._message(raw, keep_receipts)
        return list(messages.values())[:max_messages]

    @staticmethod
    def _message(raw: dict[str, Any], keep_receipt: bool) -> QueueMessage:
        """Our message of an SQS one. A body flagged base64 that does not decode (base64 of
        UTF-8) comes back raw with ``decode_error`` set: one bad message never fails a receive."""
        body = raw.get("Body", "")
        decode_error = None
        encoding = raw.get("MessageAttributes", {}).get(_ENCODING_ATTRIBUTE, {}).get("StringValue")
        if encoding == "base64":
            try:
                body = base64.b64decode(body, validate=True).decode("utf-8")
            except UnicodeDecodeError as exc:  # before ValueError, its base class
                decode_error = f"flagged base64, but of bytes that are not UTF-8: {exc}"
            except ValueError as exc:  # binascii.Error, or text that is not ASCII
                decode_error = f"flagged base64, but not valid base64: {exc}"
        attributes = raw.get("Attributes", {})
        sent = attributes.get("SentTimestamp")
        return QueueMessage(
            id=raw["MessageId"],
            body=body,
            dequeue_count=int(attributes.get("ApproximateReceiveCount", "1")),
            receipt=raw["ReceiptHandle"] if keep_receipt else "",
            enqueued_at=datetime.fromtimestamp(int(sent) / 1000, tz=timezone.utc) if sent else None,
            decode_error=decode_error,
        )

    def _delete(self, receipt: str) -> None:
        # SQS deletes an already-deleted message's receipt without complaint.
        with _aws(f"delete from {self.name}"):
            self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=receipt)

    def _extend(self, receipt: str, visibility_timeout: int) -> str:
        def lost(exc: ClientError) -> StowageError | None:
            if _code(exc) in _NOT_IN_FLIGHT:
                return NotFound(f"message of {self.name} is no longer held by this receipt")
            return None

        with _aws(f"extend in {self.name}", lost):
            self._sqs.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt, VisibilityTimeout=visibility_timeout
            )
        return receipt  # SQS keeps the receipt handle valid

    def _approximate_length(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        with _aws(f"length of {self.name}"):
            attributes = self._sqs.get_queue_attributes(QueueUrl=self._url, AttributeNames=names)["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)


# --------------------------------------------------------------------------- write-once buckets (S3 Object Lock)


class AwsObjectLockBackend(AwsBackend):
    """An S3 bucket with Object Lock (COMPLIANCE default retention): blob stores only, all write-once.

    :meth:`ensure` never creates the bucket (Object Lock is a provisioning decision);
    it checks that the bucket has Object Lock enabled with a COMPLIANCE default
    retention, and says what to fix otherwise.
    """

    def _make_blobs(self, container: str) -> BlobStore:
        return ObjectLockBlobStore(self, container)

    def _ensure_container(self, name: str) -> None:
        bucket = self.options.bucket

        def unlocked(exc: ClientError) -> StowageError | None:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":
                return InvalidInput(f"S3 bucket {bucket} has no Object Lock: create it with Object Lock enabled "
                                    "and a default retention in COMPLIANCE mode")
            return None

        with _aws(f"object lock configuration of bucket {bucket}", unlocked):
            configuration = self._s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
        retention = configuration.get("Rule", {}).get("DefaultRetention", {})
        if configuration.get("ObjectLockEnabled") != "Enabled" or retention.get("Mode") != "COMPLIANCE":
            raise InvalidInput(f"S3 bucket {bucket} must have Object Lock enabled with a default retention in "
                               f"COMPLIANCE mode (it has {configuration!r})")

    def _ensure_table(self, name: str) -> None:
        raise InvalidInput("a write-once bucket holds blobs only")

    def _ensure_queue(self, name: str) -> None:
        raise InvalidInput("a write-once bucket holds blobs only")


class ObjectLockBlobStore(AwsBlobStore):
    """Blobs of a write-once (Object Lock) bucket: create-only puts, no deletes, reads of unrewritten keys.

    A key with more than one version or with a delete marker was written over after
    its locked first version: :meth:`get` and :meth:`head` raise Conflict naming it
    (the first version is still in the bucket, for an investigation); :meth:`list`
    lists every key that has a version or a delete marker, so a hidden one still shows.
    """

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str],
             if_match: str | None, if_none_match: bool) -> BlobProperties:
        if not if_none_match:
            raise InvalidInput(f"blobs of the write-once bucket {self._bucket} are created once (if_none_match)")
        return super()._put(key, data, content_type, metadata, None, True)

    def _delete(self, key: str, if_match: str | None) -> None:
        raise InvalidInput(f"blobs of the write-once bucket {self._bucket} are never deleted")

    def _get(self, key: str) -> Blob:
        self._check_single_version(key)
        return super()._get(key)

    def _head(self, key: str) -> BlobProperties:
        self._check_single_version(key)
        return super()._head(key)

    def _check_single_version(self, key: str) -> None:
        full = self._root + key
        with _aws(f"versions of blob {key!r}"):
            response = self._s3.list_object_versions(Bucket=self._bucket, Prefix=full, MaxKeys=16)
        versions = [v for v in response.get("Versions", []) if v["Key"] == full]
        markers = [m for m in response.get("DeleteMarkers", []) if m["Key"] == full]
        if not versions and not markers:
            raise NotFound(f"blob {key!r} not found in {self.container}")
        if len(versions) != 1 or markers:
            raise Conflict(f"blob {key!r} of the write-once bucket {self._bucket} was written over after it was "
                           f"written ({len(versions)} versions, {len(markers)} delete markers); its first, locked "
                           "version is the original")

    def _list(self, prefix: str, limit: int, continuation: str | None) -> Page[BlobProperties]:
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": self._root + prefix, "MaxKeys": limit}
        if continuation is not None:
            state = decode_continuation(continuation)
            key_marker, version_marker = state.get("k"), state.get("v")
            if (not isinstance(key_marker, str) or not isinstance(version_marker, str)
                    or state.get("c") != self.container or state.get("p") != prefix):
                raise InvalidInput("continuation token does not belong to this listing")
            kwargs["KeyMarker"], kwargs["VersionIdMarker"] = key_marker, version_marker
        with _aws(f"list blob versions under {prefix!r}"):
            response = self._s3.list_object_versions(**kwargs)
        seen: dict[str, BlobProperties] = {}
        for entry in [*response.get("Versions", []), *response.get("DeleteMarkers", [])]:
            key = entry["Key"]
            if key != self._root and key not in seen:
                seen[key] = BlobProperties(key[len(self._root):], str(entry.get("ETag", "")),
                                           int(entry.get("Size", 0)), "", {}, entry.get("LastModified"))
        items = [seen[key] for key in sorted(seen)]
        token_out = None
        if response.get("IsTruncated"):
            token_out = encode_continuation({"c": self.container, "p": prefix, "k": response.get("NextKeyMarker", ""),
                                             "v": response.get("NextVersionIdMarker", "")})
        return Page(items, token_out)
