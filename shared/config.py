"""Settings from environment variables, as Function app settings arrive.

Locally, ``local.settings.json`` ``Values`` fill in whatever the environment does
not set (the Functions Core Tools do the same). Every name is in shared.names.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared import names
from shared.errors import InvalidInput

BACKENDS = ("local", "azure", "aws")


@dataclass(frozen=True)
class Settings:
    """Typed, validated configuration. Secrets are kept out of ``repr``."""

    #: Which backend stores everything: "local" (SQLite under data_dir), "azure" or "aws".
    backend: str = "local"
    #: Where the local backend keeps its SQLite files.
    data_dir: Path = Path(".data")
    #: SQLite ``synchronous`` for the local backend: NORMAL survives process kills
    #: (WAL); FULL also survives power loss, at some write speed.
    local_synchronous: str = "NORMAL"
    #: Largest object body accepted by the objects API, checked before anything is written.
    max_object_bytes: int = 64 * 1024 * 1024
    #: Table properties and queue messages above this many bytes move to a blob.
    offload_threshold_bytes: int = 32 * 1024
    #: A session idle longer than this is ended as "expired" by the cleanup timer.
    session_idle_seconds: int = 24 * 3600
    #: Largest body of an HTTP request whose route has no larger limit of its own (objects,
    #: checkpoints, contexts, messages and events have theirs); 413 above it, before it is read.
    max_json_body_bytes: int = 1024 * 1024
    #: An HTTP request body must keep arriving: a wait of more than this many seconds for its
    #: next bytes, or a whole body later than this plus one second per 64 KiB, is answered 408.
    body_timeout_seconds: int = 30
    #: Azure: a connection string (Azurite: "UseDevelopmentStorage=true") ...
    azure_connection_string: str | None = field(default=None, repr=False)
    #: ... or an account name, with DefaultAzureCredential (managed identity in the cloud).
    azure_account_name: str | None = None
    #: Client id of a user-assigned managed identity, if one is used.
    azure_client_id: str | None = None
    aws_region: str = "us-east-1"
    #: Endpoint override for moto server or another S3/DynamoDB/SQS-compatible endpoint.
    aws_endpoint_url: str | None = None
    #: The one S3 bucket; containers are the first segment of each key.
    aws_bucket: str = "stowage-data"
    #: DynamoDB table names are this prefix + the logical table name.
    aws_table_prefix: str = "stowage-"
    #: SQS queue names are this prefix + the logical queue name.
    aws_queue_prefix: str = ""
    #: Signs continuation tokens (at least 16 characters). Unset: the backend keeps a
    #: generated one (local: ``<data_dir>/token-secret``; azure, aws: a blob).
    token_secret: str | None = field(default=None, repr=False)
    #: Signs audit-log checkpoints: a base64 Ed25519 seed (32 bytes). Unset: one generated once and
    #: kept create-only in blob ``system/audit-signing-key`` of ``stowage-data``; production should set
    #: it (a Key Vault reference) so that whoever can write the storage cannot also sign. Kept out of ``repr``.
    audit_signing_key: str | None = field(default=None, repr=False)
    #: Record reads that matter (object reads, session context reads) in the audit log too.
    audit_reads: bool = False
    #: Where each signed audit checkpoint is also written: "container:<name>" (another container
    #: of this backend) or "s3://<bucket>" (an S3 bucket with Object Lock). None: not anchored.
    audit_anchor: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInput(f"{names.SETTING_BACKEND} must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.local_synchronous.upper() not in ("NORMAL", "FULL"):
            raise InvalidInput(f"{names.SETTING_LOCAL_SYNC} must be NORMAL or FULL")
        if self.max_object_bytes <= 0 or self.offload_threshold_bytes <= 0 or self.session_idle_seconds <= 0:
            raise InvalidInput("size settings must be positive")
        if self.max_json_body_bytes <= 0 or self.body_timeout_seconds <= 0:
            raise InvalidInput(f"{names.SETTING_MAX_JSON_BODY_BYTES} and {names.SETTING_BODY_TIMEOUT_SECONDS} "
                               "must be positive")
        if self.token_secret is not None and len(self.token_secret.encode("utf-8")) < 16:
            raise InvalidInput(f"{names.SETTING_TOKEN_SECRET} must be at least 16 characters (or unset)")
        if self.audit_signing_key is not None:
            try:
                seed = base64.b64decode(self.audit_signing_key.encode("ascii"), validate=True)
            except (ValueError, binascii.Error) as exc:
                raise InvalidInput(f"{names.SETTING_AUDIT_SIGNING_KEY} must be base64") from exc
            if len(seed) != 32:
                raise InvalidInput(f"{names.SETTING_AUDIT_SIGNING_KEY} must be a base64 32-byte Ed25519 seed")
        if self.audit_anchor is not None and not (
                (self.audit_anchor.startswith("container:") and len(self.audit_anchor) > len("container:"))
                or (self.audit_anchor.startswith("s3://") and len(self.audit_anchor) > len("s3://"))):
            raise InvalidInput(f"{names.SETTING_AUDIT_ANCHOR} must be 'container:<name>' or 's3://<bucket>', "
                               f"got {self.audit_anchor!r}")
        if self.offload_threshold_bytes > 48 * 1024:
            raise InvalidInput(f"{names.SETTING_OFFLOAD_THRESHOLD} must be at most 49152 (queue message limit)")
        if self.backend == "azure" and not (self.azure_connection_string or self.azure_account_name):
            raise InvalidInput(
                f"the azure backend needs {names.SETTING_AZURE_CONNECTION_STRING} "
                f"or {names.SETTING_AZURE_ACCOUNT_NAME}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, settings_file: Path | None = None) -> Settings:
        """Read settings from ``environ`` (default: os.environ) over local.settings.json."""
        values: dict[str, str] = {}
        path = settings_file if settings_file is not None else Path("local.settings.json")
        if path.is_file():
            values.update(load_local_settings(path))
        values.update(os.environ if environ is None else environ)

        def text(name: str) -> str | None:
            value = values.get(name)
            return value if value else None

        def integer(name: str, default: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError as exc:
                raise InvalidInput(f"{name} must be an integer, got {raw!r}") from exc

        def boolean(name: str, default: bool) -> bool:
            raw = text(name)
            if raw is None:
                return default
            if raw.lower() in ("true", "1", "yes", "on"):
                return True
            if raw.lower() in ("false", "0", "no", "off"):
                return False
            raise InvalidInput(f"{name} must be true or false, got {raw!r}")

        defaults = cls()
        return cls(
            backend=(text(names.SETTING_BACKEND) or defaults.backend).lower(),
            data_dir=Path(text(names.SETTING_DATA_DIR) or defaults.data_dir),
            local_synchronous=(text(names.SETTING_LOCAL_SYNC) or defaults.local_synchronous).upper(),
            max_object_bytes=integer(names.SETTING_MAX_OBJECT_BYTES, defaults.max_object_bytes),
            offload_threshold_bytes=integer(names.SETTING_OFFLOAD_THRESHOLD, defaults.offload_threshold_bytes),
            session_idle_seconds=integer(names.SETTING_SESSION_IDLE_SECONDS, defaults.session_idle_seconds),
            max_json_body_bytes=integer(names.SETTING_MAX_JSON_BODY_BYTES, defaults.max_json_body_bytes),
            body_timeout_seconds=integer(names.SETTING_BODY_TIMEOUT_SECONDS, defaults.body_timeout_seconds),
            azure_connection_string=text(names.SETTING_AZURE_CONNECTION_STRING),
            azure_account_name=text(names.SETTING_AZURE_ACCOUNT_NAME),
            azure_client_id=text(names.SETTING_AZURE_CLIENT_ID),
            aws_region=text(names.SETTING_AWS_REGION) or defaults.aws_region,
            aws_endpoint_url=text(names.SETTING_AWS_ENDPOINT_URL),
            aws_bucket=text(names.SETTING_AWS_BUCKET) or defaults.aws_bucket,
            aws_table_prefix=text(names.SETTING_AWS_TABLE_PREFIX) or defaults.aws_table_prefix,
            aws_queue_prefix=text(names.SETTING_AWS_QUEUE_PREFIX) or defaults.aws_queue_prefix,
            token_secret=text(names.SETTING_TOKEN_SECRET),
            audit_signing_key=text(names.SETTING_AUDIT_SIGNING_KEY),
            audit_reads=boolean(names.SETTING_AUDIT_READS, defaults.audit_reads),
            audit_anchor=text(names.SETTING_AUDIT_ANCHOR),
        )


def load_local_settings(path: Path) -> dict[str, str]:
    """The ``Values`` of a local.settings.json file, as strings."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is not readable JSON: {exc}") from exc
    values = document.get("Values", {}) if isinstance(document, dict) else {}
    return {str(k): str(v) for k, v in values.items() if v is not None}


def apply_local_settings(path: Path = Path("local.settings.json")) -> None:
    """Copy local.settings.json Values into os.environ where unset, as Core Tools would."""
    if path.is_file():
        for name, value in load_local_settings(path).items():
            os.environ.setdefault(name, value)
