"""One exception hierarchy for every backend and service.

    StowageError
    ├── InvalidInput              bad input from the caller (HTTP 400/422)
    │   └── InvalidKey            a key, name or path the store cannot hold
    ├── NotFound                  the thing does not exist (404)
    ├── Conflict                  the write clashes with current state (409)
    │   └── AlreadyExists         create-only write found an existing item
    ├── PreconditionFailed        an If-Match ETag no longer matches (412)
    ├── TooLarge                  over a configured or platform size limit (413)
    ├── UnsupportedMediaType      a Content-Type or Content-Encoding not taken (415)
    ├── Unauthorized              missing or unknown credentials (401)
    ├── Forbidden                 valid credentials without the scope or domain (403)
    └── BackendUnavailable        the store did not answer or failed (503)
        └── Busy                  the store turned the request away for now; retry (503)

Backends translate SDK errors (sqlite3, azure-core, botocore) into these in one
place each, chained with ``raise ... from exc``, so callers can tell "not found"
from "precondition failed" from "backend unavailable" from "bad input".

Domains derive their own errors from these (``ThreadNotFound(NotFound)``,
``ObjectChanged(PreconditionFailed)``...). Each class has a problem type of its own
(:attr:`StowageError.type_slug`, the last segment of the RFC 9457 ``type`` URI) and
may name attributes that travel as problem members (:attr:`StowageError.problem_fields`),
so an HTTP client can act on the error without parsing its message. Only errors
meant for callers derive from :class:`StowageError`: internal control flow (a
handler's "done" or "try again" verdict) uses exceptions of its own.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

#: Members every problem has (RFC 9457 §3.1); an error's own members cannot take these names.
STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def slug_of(title: str) -> str:
    """The default problem type slug of a title: lower case, words joined by '-'."""
    return "-".join(re.findall(r"[a-z0-9]+", title.lower()))


class StowageError(Exception):
    """Base of every error Stowage raises on purpose.

    Subclasses set ``status`` and ``title``, and may set ``type_slug`` (otherwise the
    slug of their own title: "Thread not found" -> ``thread-not-found``) and
    ``problem_fields``.
    """

    status = 500
    title = "Internal error"
    #: The problem type's last segment: ``https://stowage.dev/problems/<type_slug>``. Stable: clients match on it.
    type_slug: ClassVar[str] = "internal-error"
    #: Attributes of the error sent as extension members of its problem (RFC 9457 §3.2), e.g. ``("thread_id",)``.
    problem_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_slug" not in cls.__dict__ and "title" in cls.__dict__:
            cls.type_slug = slug_of(cls.title)  # a class without a title of its own keeps its parent's type
        if not _SLUG.match(cls.type_slug):
            raise TypeError(f"{cls.__name__}.type_slug {cls.type_slug!r} is not lower-case words joined by '-'")
        clash = STANDARD_MEMBERS.intersection(cls.problem_fields)
        if clash:
            raise TypeError(f"{cls.__name__}.problem_fields may not use the standard members {sorted(clash)}")

    def problem_members(self) -> dict[str, Any]:
        """The extension members of this error's problem: each of ``problem_fields`` that is set (not None)."""
        members = {name: getattr(self, name, None) for name in self.problem_fields}
        return {name: value for name, value in members.items() if value is not None}


class InvalidInput(StowageError):
    """The caller sent something malformed; nothing was written."""

    status = 400
    title = "Invalid input"
    type_slug = "invalid-input"


class InvalidKey(InvalidInput):
    """A key, name or path is empty, too long, or has characters the store rejects."""

    title = "Invalid key"
    type_slug = "invalid-key"


class NotFound(StowageError):
    """The addressed item does not exist (or belongs to another tenant)."""

    status = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(StowageError):
    """The write clashes with the item's current state."""

    status = 409
    title = "Conflict"
    type_slug = "conflict"


class AlreadyExists(Conflict):
    """A create-only write found the item already there."""

    title = "Already exists"
    type_slug = "already-exists"


class PreconditionFailed(StowageError):
    """An If-Match ETag did not match the item's current ETag."""

    status = 412
    title = "Precondition failed"
    type_slug = "precondition-failed"


class TooLarge(StowageError):
    """The value is over a configured or platform size limit; nothing was written."""

    status = 413
    title = "Payload too large"
    type_slug = "payload-too-large"


class UnsupportedMediaType(StowageError):
    """A Content-Type or Content-Encoding the endpoint does not take (415); the message lists those it does."""

    status = 415
    title = "Unsupported media type"
    type_slug = "unsupported-media-type"


class Unauthorized(StowageError):
    """Missing, malformed, unknown or revoked credentials."""

    status = 401
    title = "Unauthorized"
    type_slug = "unauthorized"


class Forbidden(StowageError):
    """Valid credentials that lack the scope or domain the operation needs."""

    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class BackendUnavailable(StowageError):
    """The storage backend did not answer, or failed in a way the caller cannot fix."""

    status = 503
    title = "Backend unavailable"
    type_slug = "backend-unavailable"


class Busy(BackendUnavailable):
    """The store turned the request away for now: a write that conflicted with a
    concurrent transaction, or throttling. The backend has already retried what is
    safe to retry; the same request, sent again a little later, can succeed."""

    title = "Busy"
    type_slug = "busy"
