"""One exception hierarchy for every backend and service.

    StowageError
    ├── InvalidInput              bad input from the caller (HTTP 400/422)
    │   └── InvalidKey            a key, name or path the store cannot hold
    ├── NotFound                  the thing does not exist (404)
    ├── Conflict                  the write clashes with current state (409)
    │   └── AlreadyExists         create-only write found an existing item
    ├── PreconditionFailed        an If-Match ETag no longer matches (412)
    ├── TooLarge                  over a configured or platform size limit (413)
    ├── Unauthorized              missing or unknown credentials (401)
    ├── Forbidden                 valid credentials without the scope or domain (403)
    └── BackendUnavailable        the store did not answer or failed (503)
        └── Busy                  the store turned the request away for now; retry (503)

Backends translate SDK errors (sqlite3, azure-core, botocore) into these in one
place each, chained with ``raise ... from exc``, so callers can tell "not found"
from "precondition failed" from "backend unavailable" from "bad input".
"""

from __future__ import annotations


class StowageError(Exception):
    """Base of every error Stowage raises on purpose."""

    status = 500
    title = "Internal error"


class InvalidInput(StowageError):
    """The caller sent something malformed; nothing was written."""

    status = 400
    title = "Invalid input"


class InvalidKey(InvalidInput):
    """A key, name or path is empty, too long, or has characters the store rejects."""

    title = "Invalid key"


class NotFound(StowageError):
    """The addressed item does not exist (or belongs to another tenant)."""

    status = 404
    title = "Not found"


class Conflict(StowageError):
    """The write clashes with the item's current state."""

    status = 409
    title = "Conflict"


class AlreadyExists(Conflict):
    """A create-only write found the item already there."""

    title = "Already exists"


class PreconditionFailed(StowageError):
    """An If-Match ETag did not match the item's current ETag."""

    status = 412
    title = "Precondition failed"


class TooLarge(StowageError):
    """The value is over a configured or platform size limit; nothing was written."""

    status = 413
    title = "Payload too large"


class Unauthorized(StowageError):
    """Missing, malformed, unknown or revoked credentials."""

    status = 401
    title = "Unauthorized"


class Forbidden(StowageError):
    """Valid credentials that lack the scope or domain the operation needs."""

    status = 403
    title = "Forbidden"


class BackendUnavailable(StowageError):
    """The storage backend did not answer, or failed in a way the caller cannot fix."""

    status = 503
    title = "Backend unavailable"


class Busy(BackendUnavailable):
    """The store turned the request away for now: a write that conflicted with a
    concurrent transaction, or throttling. The backend has already retried what is
    safe to retry; the same request, sent again a little later, can succeed."""

    title = "Busy"
