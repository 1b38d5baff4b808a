"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import StowageError, Unauthorized

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """An error: ``type`` names the kind, ``detail`` says what to do about it."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


def problem(status: int, title: str, detail: str, request: Request | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(
        type=f"https://stowage.dev/problems/{title.lower().replace(' ', '-')}",
        title=title, status=status, detail=detail,
        instance=str(request.url.path) if request is not None else None,
    )
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON,
                        headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can return."""
    return {status: {"model": Problem, "description": _DESCRIPTIONS.get(status, "Error"),
                     "content": {PROBLEM_JSON: {}}} for status in statuses}


_DESCRIPTIONS = {
    400: "Invalid input or key", 401: "Missing or invalid API key", 404: "Not found",
    409: "Conflict with current state", 412: "If-Match precondition failed", 413: "Too large",
    422: "Request does not validate", 503: "Backend unavailable",
}


def install(app: FastAPI) -> None:
    """Route every error through :func:`problem`."""

    @app.exception_handler(StowageError)
    async def _stowage(request: Request, exc: StowageError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
        headers = {"WWW-Authenticate": 'Bearer realm="stowage"'} if isinstance(exc, Unauthorized) else None
        return problem(exc.status, exc.title, str(exc), request, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]
        )
        return problem(422, "Request does not validate", details, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, _DESCRIPTIONS.get(exc.status_code, "Error"), str(exc.detail), request,
                       dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged", request)
