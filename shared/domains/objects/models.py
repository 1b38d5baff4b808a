"""Objects: the results, limits, errors and input rules that HTTP and the queue share.

HTTP takes an object's content as the raw request body with the options in the
path, headers and query, so it has no body model; its parameters are declared with
the rules below (:data:`KEY`, :data:`TTL`, :data:`CONTENT_TYPE`), which the queue
payloads' fields use too, so a key or TTL the one refuses the other refuses as well.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from shared.command_ops import CommandPayload
from shared.errors import InvalidInput, NotFound, PreconditionFailed

#: Content up to this size is stored in the table rows; larger content is one blob per version.
INLINE_MAX_BYTES = 8 * 1024
MAX_KEY_LENGTH = 256
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
#: ``If-Match: *``: any current version (RFC 9110).
ANY = "*"
MAX_CONTENT_TYPE_LENGTH = 255

# shared.keys.check_path_key as a pattern: '/'-separated segments, none empty or ending in '.'
# (so no '.' or '..'), no control characters or backslashes.
_SEGMENT = r"[^/\\\x00-\x1f\x7f-\x9f]*[^/\\.\x00-\x1f\x7f-\x9f]"
KEY_PATTERN = rf"^(?:{_SEGMENT}/)*{_SEGMENT}$"
KEY_RULE = (f"A path such as 'agent_configs/ceo': up to {MAX_KEY_LENGTH} characters, no empty, '.' or '..' "
            "segments, no segment ending in '.', no control characters or backslashes.")
#: An object key's rule (the service's check_path_key), for HTTP's ``Path(**KEY)``; :data:`ObjectKey` in models.
KEY: dict[str, Any] = {"pattern": KEY_PATTERN, "min_length": 1, "max_length": MAX_KEY_LENGTH}
#: A TTL's bounds, in seconds (:data:`TtlSeconds`).
TTL: dict[str, Any] = {"ge": 1, "le": MAX_TTL_SECONDS}
#: A content type's length, as the service checks it (:data:`ContentType`).
CONTENT_TYPE: dict[str, Any] = {"min_length": 1, "max_length": MAX_CONTENT_TYPE_LENGTH}
ObjectKey = Annotated[str, Field(pattern=KEY_PATTERN, min_length=1, max_length=MAX_KEY_LENGTH)]
TtlSeconds = Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS)]
ContentType = Annotated[str, Field(min_length=1, max_length=MAX_CONTENT_TYPE_LENGTH)]


# --------------------------------------------------------------------------- errors


class ObjectNotFound(NotFound):
    """The object does not exist: never written, deleted, expired, or another tenant's (404)."""

    title = "Object not found"
    type_slug = "object-not-found"
    problem_fields = ("key",)

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} does not exist")
        #: The key asked for.
        self.key = key


class ObjectVersionNotFound(NotFound):
    """The object exists but not this version of it (never was, deleted or expired) (404)."""

    title = "Object version not found"
    type_slug = "object-version-not-found"
    problem_fields = ("key", "version_id")

    def __init__(self, key: str, version_id: str, detail: str | None = None) -> None:
        super().__init__(detail or f"object {key!r} has no version {version_id!r}")
        #: The object's key.
        self.key = key
        #: The version asked for.
        self.version_id = version_id


class ObjectVersionMismatch(PreconditionFailed):
    """``If-Match`` named a version the object is not at, or ``*`` and there is no object (412).

    ``current_etag`` is the version it is at (None when it does not exist): read it
    again, decide again, and send the write with that ETag.
    """

    title = "Object version mismatch"
    type_slug = "object-version-mismatch"
    problem_fields = ("key", "if_match", "current_etag")

    def __init__(self, key: str, if_match: str, current_etag: str | None) -> None:
        what = "does not exist" if current_etag is None else f"is not at version {if_match}"
        super().__init__(f"object {key!r} {what}" + (" (If-Match: *)" if if_match == ANY else ""))
        #: The object's key.
        self.key = key
        #: The version the request required.
        self.if_match = if_match
        #: The object's current version id (its ETag), None when there is no object.
        self.current_etag = current_etag


class ObjectExists(PreconditionFailed):
    """A create-only write (``If-None-Match: *``) found the object there (412)."""

    title = "Object exists"
    type_slug = "object-exists"
    problem_fields = ("key", "current_etag")

    def __init__(self, key: str, current_etag: str | None) -> None:
        super().__init__(f"object {key!r} already exists (If-None-Match: *)")
        #: The object's key.
        self.key = key
        #: Its current version id (its ETag).
        self.current_etag = current_etag


@dataclass(frozen=True)
class ObjectInfo:
    """An object version's description, without content."""

    key: str
    #: Also the object's ETag (quoted in the ETag header); it changes on every write.
    version_id: str
    size: int
    content_type: str
    #: When the object was first written (ISO-8601 UTC).
    created_at: str
    #: When this version was written (ISO-8601 UTC).
    updated_at: str
    #: When this version expires (ISO-8601 UTC), if it was written with a TTL.
    expires_at: str | None = None
    #: Whether this is the object's current version.
    is_current: bool = True

    @property
    def etag(self) -> str:
        """The object's ETag is its version id: it changes on every write."""
        return self.version_id


@dataclass(frozen=True)
class StoredObject:
    """An object version with its content."""

    info: ObjectInfo
    data: bytes


# --------------------------------------------------------------------------- queue command payloads


class ObjectsPutPayload(CommandPayload):
    """Write an object. Give exactly one of ``json``, ``text`` or ``base64``."""

    # key, content_type, if_match and ttl_seconds have the rules of HTTP's path, headers and query.

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "oneOf": [{"required": ["json"]}, {"required": ["text"]}, {"required": ["base64"]}]})

    key: ObjectKey = Field(description=f"The object's key. {KEY_RULE}")
    json_value: Any = Field(default=None, alias="json", description="A JSON value, stored as application/json.")
    text: str | None = Field(default=None, description="Text, stored as text/plain; charset=utf-8.")
    base64: str | None = Field(default=None, description="Binary content, base64-encoded.")
    content_type: ContentType | None = Field(default=None,
                                             description="Overrides the content type implied above.")
    if_match: str | None = Field(default=None, description="Apply only if the object is at this version "
                                                           "('*': only if it exists).")
    ttl_seconds: TtlSeconds | None = Field(default=None, description="Expire the object this many seconds after.")

    @model_validator(mode="after")
    def _one_content(self) -> ObjectsPutPayload:
        given = [f for f in ("json_value", "text", "base64") if f in self.model_fields_set]
        if len(given) != 1:
            raise ValueError("give exactly one of 'json', 'text' or 'base64'")
        return self

    def content(self) -> tuple[bytes, str]:
        """The bytes to store and their content type."""
        if "json_value" in self.model_fields_set:
            data = json.dumps(self.json_value, ensure_ascii=False).encode("utf-8")
            return data, self.content_type or "application/json"
        if self.text is not None:
            return self.text.encode("utf-8"), self.content_type or "text/plain; charset=utf-8"
        try:
            data = base64.b64decode(self.base64 or "", validate=True)
        except binascii.Error as exc:
            raise InvalidInput("'base64' is not valid base64") from exc
        return data, self.content_type or "application/octet-stream"


class ObjectsDeletePayload(CommandPayload):
    """Delete an object and all its versions."""

    key: ObjectKey = Field(description=f"The object's key. {KEY_RULE}")
    if_match: str | None = Field(default=None, description="Delete only if the object is at this version "
                                                           "('*': only if it exists).")


__all__ = ["ANY", "CONTENT_TYPE", "INLINE_MAX_BYTES", "KEY", "KEY_PATTERN", "KEY_RULE", "MAX_KEY_LENGTH",
           "MAX_TTL_SECONDS", "TTL", "ObjectExists", "ObjectInfo", "ObjectNotFound", "ObjectVersionMismatch",
           "ObjectVersionNotFound", "ObjectsDeletePayload", "ObjectsPutPayload", "StoredObject"]
