"""HTTP helpers every router shares: bounded body reading, JSON from clients, ETag quoting."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from shared.errors import InvalidInput, TooLarge
from shared.jsonvalues import parse_client_json


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
    """The JSON body (None when empty), refused with 413 over ``limit`` before it is parsed.

    Parsed by :func:`shared.jsonvalues.parse_client_json`: invalid UTF-8, lone
    surrogates and too deep nesting are InvalidInput (400).
    """
    raw = await read_body(request, limit, what)
    if not raw.strip():
        return None
    return parse_client_json(raw, what=what)


def json_object_param(text: str | None, name: str) -> dict[str, Any] | None:
    """A query parameter holding a JSON object, e.g. ``metadata={"project":"apollo"}``; InvalidInput otherwise."""
    if text is None:
        return None
    value = parse_client_json(text, what=f"query parameter {name}")
    if not isinstance(value, dict):
        raise InvalidInput(f'{name} must be a JSON object, e.g. {{"project":"apollo"}}')
    return value


# --------------------------------------------------------------------------- JSON bodies of model routes


def _declares_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class ClientJsonRequest(Request):
    """A request whose JSON body is parsed by :func:`shared.jsonvalues.parse_client_json`."""

    async def json(self) -> Any:
        if not hasattr(self, "_client_json"):
            self._client_json = parse_client_json(await self.body(), what="body")
        return self._client_json


class ClientJsonRoute(APIRoute):
    """A route whose body model is validated from JSON parsed by ``parse_client_json``.

    FastAPI parses a model route's body with ``json.loads``, which accepts lone
    surrogates and, short of about 1000 levels, any nesting. This route class
    parses a declared JSON body first, so invalid UTF-8, a lone surrogate in any
    string or key (even of a field the model ignores) and too deep nesting are
    InvalidInput (400) before validation, exactly as bodies read by
    :func:`read_json` are. Routes that read their body by hand are left alone.
    Use it with ``APIRouter(route_class=ClientJsonRoute)``.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def parse_then_handle(request: Request) -> Response:
            request = ClientJsonRequest(request.scope, request.receive)
            if _declares_json(request.headers.get("content-type")) and (await request.body()).strip():
                await request.json()  # InvalidInput here reaches the app's problem handler as itself
            return await handler(request)

        return parse_then_handle
