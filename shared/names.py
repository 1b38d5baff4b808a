"""Every storage resource name and app-setting name, defined once.

Infrastructure templates (infra/) declare exactly these; tests/test_infra.py
fails when a template misses one or declares a setting the app does not read.
Names satisfy every backend at once: lowercase letters and digits for tables
(Azure tables are alphanumeric), lowercase with hyphens for queues and containers.
"""

from __future__ import annotations

# Blob containers (S3: key prefixes inside one bucket).
CONTAINER_DATA = "stowage-data"
CONTAINER_BACKUPS = "stowage-backups"
CONTAINERS = (CONTAINER_DATA, CONTAINER_BACKUPS)
# The continuation-token secret on azure and aws when STOWAGE_TOKEN_SECRET is not set:
# a blob of CONTAINER_DATA, made create-only by the first instance that needs it.
TOKEN_SECRET_BLOB = "system/token-secret"
# The audit log's Ed25519 signing key (base64 seed) when STOWAGE_AUDIT_SIGNING_KEY is not set:
# a blob of CONTAINER_DATA, made create-only by the first instance that needs it, on every backend.
AUDIT_SIGNING_KEY_BLOB = "system/audit-signing-key"
# Each tenant's audit log (C2SP tlog-tiles: checkpoint, tiles, entry bundles) in CONTAINER_DATA.
AUDIT_LOG_PREFIX = "audit/"

# Tables (DynamoDB: one table per name, with a prefix).
TABLE_APIKEYS = "stowageapikeys"
TABLE_OBJECTS = "stowageobjects"
TABLE_COMMANDS = "stowagecommands"
TABLE_MEMORY = "stowagememory"
TABLE_SESSIONS = "stowagesessions"
TABLE_WORKFLOWS = "stowageworkflows"
TABLE_CHECKPOINTS = "stowagecheckpoints"
#: The change feed: outbox hints, per-tenant counters, sequenced changes (shared/storage/changefeed.py).
TABLE_CHANGES = "stowagechanges"
#: The audit domain: entry rows (details, salt, filter fields), cursors and leases (shared/domains/audit).
TABLE_AUDIT = "stowageaudit"
#: Tables of the platform itself; each domain's tables are named above and listed by its Domain.
PLATFORM_TABLES = (TABLE_APIKEYS, TABLE_COMMANDS, TABLE_CHANGES)
TABLES = (TABLE_APIKEYS, TABLE_OBJECTS, TABLE_COMMANDS, TABLE_MEMORY, TABLE_SESSIONS, TABLE_WORKFLOWS,
          TABLE_CHECKPOINTS, TABLE_CHANGES, TABLE_AUDIT)

# Queues. The Functions host moves a message that failed maxDequeueCount times
# to "<queue>-poison"; the local host does the same.
QUEUE_COMMANDS = "stowage-commands"
POISON_SUFFIX = "-poison"
QUEUE_COMMANDS_POISON = QUEUE_COMMANDS + POISON_SUFFIX
QUEUES = (QUEUE_COMMANDS, QUEUE_COMMANDS_POISON)

# App settings (environment variables) the app reads.
SETTING_BACKEND = "STOWAGE_BACKEND"
SETTING_DATA_DIR = "STOWAGE_DATA_DIR"
SETTING_LOCAL_SYNC = "STOWAGE_LOCAL_SYNCHRONOUS"
SETTING_MAX_OBJECT_BYTES = "STOWAGE_MAX_OBJECT_BYTES"
SETTING_OFFLOAD_THRESHOLD = "STOWAGE_OFFLOAD_THRESHOLD_BYTES"
SETTING_SESSION_IDLE_SECONDS = "STOWAGE_SESSION_IDLE_SECONDS"
SETTING_MAX_JSON_BODY_BYTES = "STOWAGE_MAX_JSON_BODY_BYTES"
SETTING_BODY_TIMEOUT_SECONDS = "STOWAGE_BODY_TIMEOUT_SECONDS"
SETTING_AZURE_CONNECTION_STRING = "STOWAGE_AZURE_CONNECTION_STRING"
SETTING_AZURE_ACCOUNT_NAME = "STOWAGE_AZURE_ACCOUNT_NAME"
SETTING_AZURE_CLIENT_ID = "AZURE_CLIENT_ID"
SETTING_AWS_REGION = "STOWAGE_AWS_REGION"
SETTING_AWS_ENDPOINT_URL = "STOWAGE_AWS_ENDPOINT_URL"
SETTING_AWS_BUCKET = "STOWAGE_AWS_BUCKET"
SETTING_AWS_TABLE_PREFIX = "STOWAGE_AWS_TABLE_PREFIX"
SETTING_AWS_QUEUE_PREFIX = "STOWAGE_AWS_QUEUE_PREFIX"
SETTING_TOKEN_SECRET = "STOWAGE_TOKEN_SECRET"
#: Base64 Ed25519 seed (32 bytes) that signs audit checkpoints; production: a Key Vault reference.
SETTING_AUDIT_SIGNING_KEY = "STOWAGE_AUDIT_SIGNING_KEY"
#: "true" records reads that matter (object reads, session context reads) in the audit log.
SETTING_AUDIT_READS = "STOWAGE_AUDIT_READS"
#: Where each signed audit checkpoint is also written, so that rewriting the primary store shows:
#: "container:<name>" (another container of the same backend) or "s3://<bucket>" (an S3 bucket
#: with Object Lock; the AWS settings say how to reach it). Unset: no anchoring.
SETTING_AUDIT_ANCHOR = "STOWAGE_AUDIT_ANCHOR"
# The queue trigger's connection: "<prefix>__accountName" etc. in the cloud,
# or a connection string locally. Both the host and our local poller read it.
SETTING_QUEUE_CONNECTION = "STOWAGE_QUEUE_CONNECTION"
SETTING_HOST_STORAGE = "AzureWebJobsStorage"

APP_SETTINGS = (
    SETTING_BACKEND,
    SETTING_DATA_DIR,
    SETTING_LOCAL_SYNC,
    SETTING_MAX_OBJECT_BYTES,
    SETTING_OFFLOAD_THRESHOLD,
    SETTING_SESSION_IDLE_SECONDS,
    SETTING_MAX_JSON_BODY_BYTES,
    SETTING_BODY_TIMEOUT_SECONDS,
    SETTING_AZURE_CONNECTION_STRING,
    SETTING_AZURE_ACCOUNT_NAME,
    SETTING_AZURE_CLIENT_ID,
    SETTING_AWS_REGION,
    SETTING_AWS_ENDPOINT_URL,
    SETTING_AWS_BUCKET,
    SETTING_AWS_TABLE_PREFIX,
    SETTING_AWS_QUEUE_PREFIX,
    SETTING_QUEUE_CONNECTION,
    SETTING_TOKEN_SECRET,
    SETTING_AUDIT_SIGNING_KEY,
    SETTING_AUDIT_READS,
    SETTING_AUDIT_ANCHOR,
)

# Settings the platform reads, not the app, that the infrastructure templates may declare
# (tests/test_infra.py accepts these besides APP_SETTINGS, "<SETTING_QUEUE_CONNECTION>__*" and
# "<SETTING_HOST_STORAGE>__*"). Application Insights has local auth disabled, so the Functions
# host sends telemetry with the identity named in the authentication string.
PLATFORM_SETTINGS = (
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
)
