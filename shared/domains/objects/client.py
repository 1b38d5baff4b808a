"""The objects of one tenant as Python values: ``StorageManager.objects`` (seed 001's operations).

Unlike the other domains' clients, this one does not mirror its service method for
method: ``save`` and ``load`` turn Python values into bytes and back
(:func:`encode_value`, :func:`decode_value`), and ``versions`` and ``list_keys``
follow every page. Nothing is cached; every call is one or more service calls,
so a crash leaves what the service's own guarantees leave.
"""

from __future__ import annotations

import json
from typing import Any

from shared.domains.objects.models import ObjectInfo
from shared.domains.objects.service import ObjectService
from shared.errors import NotFound


def encode_value(data: Any, content_type: str | None = None) -> tuple[bytes, str]:
    """Bytes and a content type for a Python value: bytes as is, str as text, anything else as JSON."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), content_type or "application/octet-stream"
    if isinstance(data, str):
        return data.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    return json.dumps(data, ensure_ascii=False).encode("utf-8"), content_type or "application/json"


def decode_value(data: bytes, content_type: str) -> Any:
    """The Python value :func:`encode_value` made: JSON parsed, text decoded, anything else bytes."""
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return json.loads(data)
    if media.startswith("text/"):
        return data.decode("utf-8")
    return data


class ObjectsClient:
    """Objects of one tenant, saved and loaded as Python values."""

    def __init__(self, service: ObjectService, tenant: str) -> None:
        self._service = service
        self._tenant = tenant

    def save(self, key: str, data: Any, content_type: str | None = None, *,
             if_match: str | None = None, ttl_seconds: int | None = None) -> ObjectInfo:
        """Store JSON-able values, text or bytes; returns the new version's info."""
        body, media = encode_value(data, content_type)
        return self._service.put(self._tenant, key, body, media, if_match=if_match, ttl_seconds=ttl_seconds)

    def load(self, key: str, version_id: str | None = None) -> Any:
        """The value as saved (JSON parsed, text as str, binary as bytes); NotFound when absent."""
        stored = self._service.get(self._tenant, key, version_id)
        return decode_value(stored.data, stored.info.content_type)

    def info(self, key: str, version_id: str | None = None) -> ObjectInfo:
        """The current version's description (or ``version_id``'s); NotFound when absent."""
        return self._service.head(self._tenant, key, version_id)

    def exists(self, key: str) -> bool:
        """Whether the key has a current, unexpired version."""
        try:
            self._service.head(self._tenant, key)
        except NotFound:
            return False
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every current key starting with ``prefix``, in key order."""
        return list(self._service.iter_keys(self._tenant, prefix))

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete the object and every version; ``if_match``: only at this ETag."""
        self._service.delete(self._tenant, key, if_match=if_match)

    def versions(self, key: str) -> list[ObjectInfo]:
        """Every version, newest first."""
        found: list[ObjectInfo] = []
        token = None
        while True:
            page = self._service.versions(self._tenant, key, limit=1000, continuation=token)
            found.extend(page.items)
            token = page.continuation
            if not token:
                return found
