"""Objects: the results, limits and input models that HTTP and the queue share."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from shared.command_ops import CommandPayload
from shared.errors import InvalidInput

#: Content up to this size is stored in the table rows; larger content is one blob per version.
INLINE_MAX_BYTES = 8 * 1024
MAX_KEY_LENGTH = 256
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
#: ``If-Match: *``: any current version (RFC 9110).
ANY = "*"


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


class ObjectsPutPayload(CommandPayload):
    """Write an object. Give exactly one of ``json``, ``text`` or ``base64``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "oneOf": [{"required": ["json"]}, {"required": ["text"]}, {"required": ["base64"]}]})

    key: str = Field(description="Object key, e.g. 'agent_configs/ceo'.")
    json_value: Any = Field(default=None, alias="json", description="A JSON value, stored as application/json.")
    text: str | None = Field(default=None, description="Text, stored as text/plain; charset=utf-8.")
    base64: str | None = Field(default=None, description="Binary content, base64-encoded.")
    content_type: str | None = Field(default=None, description="Overrides the content type implied above.")
    if_match: str | None = Field(default=None, description="Apply only if the object is at this version.")
    ttl_seconds: int | None = Field(default=None, ge=1, description="Expire the object this many seconds after.")

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

    key: str
    if_match: str | None = None


__all__ = ["ANY", "INLINE_MAX_BYTES", "MAX_KEY_LENGTH", "MAX_TTL_SECONDS", "ObjectInfo", "ObjectsDeletePayload",
           "ObjectsPutPayload", "StoredObject"]
