"""HTTP helpers every router shares: bounded body reading and ETag quoting."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from shared.errors import InvalidInput, TooLarge


def quoted(etag: str | int) -> str:
    """An ETag header value: the opaque tag in double quotes."""
    return f'"{etag}"'


def unquote(value: str | None) -> str | None:
    """The tag of an If-Match / If-None-Match header value (quotes and a weak W/ prefix removed)."""
    if value is None:
        return None
    return value.strip().removeprefix("W/").strip('"')


async def read_body(request: Request, limit: int, what: str = "body") -> bytes:
    """The request body, refused with 413 before anything is stored when over ``limit`` bytes.

    The declared Content-Length is checked first; a body without one (chunked) is
    counted while it streams in.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput("Content-Length is not a number")
        if int(declared) > limit:
            raise TooLarge(f"{what} is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, what: str = "body") -> Any:
    """The JSON body (None when empty), refused with 413 over ``limit`` before it is parsed."""
    raw = await read_body(request, limit, what)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None


def json_object_param(text: str | None, name: str) -> dict[str, Any] | None:
    """A query parameter holding a JSON object, e.g. ``metadata={"project":"apollo"}``."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidInput(f'{name} must be a JSON object, e.g. {{"project":"apollo"}}')
    return value
