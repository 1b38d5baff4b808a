"""RFC 9457 problem+json for every error the API returns, and the OpenAPI document saying so.

What answers what:

* a :class:`~shared.errors.StowageError` -> its status (400, 401, 403, 404, 409, 412, 413, 503);
* a request that does not match the declared schema -> 422, except a string of the
  wrong form or length (an id or key outside its pattern, a text too long or empty),
  which is 400 wherever it is: the answer the service gives for the same value, so
  the status does not depend on which layer refuses it first;
* an unknown path -> 404; a known path with another method -> 405 with ``Allow``
  listing every method the path has;
* anything else -> 500, logged.

The body has RFC 9457's members: ``type`` is ``https://stowage.dev/problems/<slug>``,
the error class's :attr:`~shared.errors.StowageError.type_slug` (stable: clients
match on it, not on the title or detail); ``title``, ``status``, ``detail`` and
``instance`` (the path). An error that names ``problem_fields`` adds them as
extension members (§3.2), e.g. ``{"type": ".../thread-not-found", ..., "thread_id": "t1"}``.
The OpenAPI Problem schema lists every such member an error of the app can send
(:data:`MEMBER_SCHEMAS` describes them; a member without a schema there is a
test failure) and allows others, as the RFC asks clients to expect.

:func:`install` also makes the OpenAPI document say so (:func:`document_problems`):
every error response is ``application/problem+json`` with the :class:`Problem` schema,
and every operation lists the statuses the edge and the framework can return besides
those its router declares: 401, 403 and 503 when it needs a key; 400 and 422 when it
takes input; 408 and 413 when it takes a body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.errors import Busy, StowageError, Unauthorized, slug_of
from shared.keys import ID_PATTERN

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
#: Seconds a client is told to wait (Retry-After) after a 503: contention or an unavailable store.
RETRY_AFTER_SECONDS = 1
_PROBLEM_REF = "#/components/schemas/Problem"


#: Every problem type is this plus the error's slug.
PROBLEM_TYPE_BASE = "https://stowage.dev/problems/"

_TEXT: dict[str, Any] = {"type": "string"}
_TEXTS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}

#: The JSON Schema of each extension member an error may send (see the module docstring).
MEMBER_SCHEMAS: dict[str, dict[str, Any]] = {
    "key": _TEXT | {"description": "The object key concerned."},
    "version_id": _TEXT | {"description": "The object version asked for."},
    "if_match": _TEXT | {"description": "The ETag the request required."},
    "current_etag": _TEXT | {"description": "The item's current ETag, when there is an item (absent when "
                                            "it does not exist)."},
    "idempotency_key": _TEXT | {"description": "The idempotency key already used for another request."},
    "op": _TEXT | {"description": "The operation the refused request asked for, e.g. 'objects.put'."},
    "thread_id": _TEXT | {"description": "The thread concerned."},
    "thread_ids": _TEXTS | {"description": "The threads asked for."},
    "message_id": _TEXT | {"description": "The message concerned."},
    "checkpoint_ns": _TEXT | {"description": "The checkpoint namespace searched ('' is the root)."},
    "checkpoint_id": _TEXT | {"description": "The checkpoint asked for."},
    "run_ids": _TEXTS | {"description": "The runs asked for."},
    "session_id": _TEXT | {"description": "The session concerned."},
    "current": _TEXT | {"description": "The state the item is in."},
    "wanted": _TEXT | {"description": "What the request tried to do."},
    "target": _TEXT | {"description": "The state the request tried to move the item to."},
    "workflow_id": _TEXT | {"description": "The workflow concerned."},
    "workflow_status": _TEXT | {"description": "The workflow's status."},
    "waiting_for": _TEXT | {"description": "What a suspended workflow waits for: event, approval, schedule "
                                           "or manual."},
    "ready_reason": _TEXT | {"description": "Why the workflow is ready to resume already."},
}


class Problem(BaseModel):
    """An error (RFC 9457): ``type`` names the kind, ``detail`` says what to do about it.

    Errors about a particular item add members naming it (``thread_id``, ``key``,
    ``current_etag``...); every member listed besides the first five is optional,
    and a client should ignore members it does not know.
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(description=f"{PROBLEM_TYPE_BASE}<kind>: the same kind of error always has the same type.")
    title: str = Field(description="The kind of error, in words.")
    status: int = Field(description="The HTTP status.")
    detail: str = Field(description="What went wrong here, and what to do about it.")
    instance: str | None = Field(default=None, description="The request's path.")


def error_classes() -> list[type[StowageError]]:
    """Every StowageError class defined so far (those of the domains once they are imported), by name."""
    found: dict[str, type[StowageError]] = {}
    pending: list[type[StowageError]] = [StowageError]
    while pending:
        cls = pending.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        pending.extend(cls.__subclasses__())
    return [found[name] for name in sorted(found)]


def problem_schema() -> dict[str, Any]:
    """The Problem schema with the extension members of every error class, each optional and described."""
    schema = Problem.model_json_schema()
    schema["additionalProperties"] = True
    members = sorted({name for cls in error_classes() for name in cls.problem_fields})
    for name in members:
        schema["properties"][name] = MEMBER_SCHEMAS.get(name, {})
    return schema


def problem(status: int, title: str, detail: str, request: Request | None = None,
            headers: dict[str, str] | None = None, *, type_slug: str | None = None,
            members: dict[str, Any] | None = None) -> JSONResponse:
    """A problem+json response; ``type_slug`` defaults to the title's slug, ``members`` are extension members."""
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + (type_slug or slug_of(title)), "title": title,
                            "status": status, "detail": detail}
    if request is not None:
        body["instance"] = str(request.url.path)
    body.update(members or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_of(error: StowageError, request: Request | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    """``error`` as problem+json: its status, title, type and members, its message as the detail."""
    return problem(error.status, error.title, str(error), request, headers, type_slug=error.type_slug,
                   members=error.problem_members())


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can return (problem+json, see :func:`install`)."""
    return {status: {"description": _DESCRIPTIONS.get(status, "Error"),
                     "content": {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}}} for status in statuses}


_DESCRIPTIONS = {
    400: "Invalid input or key", 401: "Missing or invalid API key", 403: "The key lacks the scope or domain",
    404: "Not found", 405: "Method not allowed", 408: "The body did not arrive in time",
    409: "Conflict with current state", 412: "If-Match precondition failed", 413: "Too large",
    422: "Request does not validate", 503: "Backend unavailable",
}

#: Validation errors about a string's form or length: the service refuses the same values with 400.
_STRING_FORM = frozenset({"string_pattern_mismatch", "string_too_short", "string_too_long"})
_ID_RULE = "must be 1-128 letters, digits, '.', '_', ':' or '-'"


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == ID_PATTERN:
        return f"{where}: {_ID_RULE}; got {error.get('input')!r:.140}"
    return f"{where}: {error['msg']}"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")


def _allowed_methods(request: Request) -> str:
    """Every method some route of the app serves at this request's path (Starlette's own ``Allow``
    names only the first route that matched the path, not the others at the same path)."""
    routes = request.app.router.routes
    return ", ".join(method for method in _METHODS
                     if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes))


def install(app: FastAPI) -> None:
    """Route every error through :func:`problem`, and document them so in the app's OpenAPI."""

    @app.exception_handler(StowageError)
    async def _stowage(request: Request, exc: StowageError) -> JSONResponse:
        headers: dict[str, str] | None = None
        if isinstance(exc, Busy):
            # Contention, not a fault: the client retries after the pause it is told.
            log.warning("%s on %s: %s", type(exc).__name__, request.url.path, exc)
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        elif exc.status >= 500:
            log.error("%s on %s: %s", type(exc).__name__, request.url.path, exc)
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        elif isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": 'Bearer realm="stowage"'}
        return problem_of(exc, request, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        details = "; ".join(_describe(e) for e in errors[:10])
        if errors and all(e["type"] in _STRING_FORM for e in errors):
            in_path = all(e["loc"][:1] == ("path",) for e in errors)
            return problem(400, "Invalid key" if in_path else "Invalid input", details, request)
        return problem(422, "Request does not validate", details, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return problem(exc.status_code, _DESCRIPTIONS.get(exc.status_code, "Error"), str(exc.detail), request,
                       headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged", request)

    app.openapi = _documenting_problems(app, app.openapi)  # type: ignore[method-assign]


# --------------------------------------------------------------------------- the OpenAPI document


def _documenting_problems(app: FastAPI, generate: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        return app.openapi_schema

    return openapi


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Make every error response of ``schema`` problem+json with the Problem schema, and add the
    statuses the edge and the framework return (see the module docstring).

    Also states optional parameters as what they are: absent or a value. FastAPI documents
    ``str | None`` as "a string or null", but a header or query parameter cannot be null, and
    clients that believe it send the text "null".
    """
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = problem_schema()
    content = {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            answers = operation.setdefault("responses", {})
            added: set[int] = set()
            if operation.get("security"):
                added |= {401, 403, 503}
            if operation.get("parameters") or operation.get("requestBody"):
                added |= {400, 422}
            if operation.get("requestBody"):
                added |= {408, 413}
            for status in added:
                answers.setdefault(str(status), {"description": _DESCRIPTIONS[status]})
            for status, answer in answers.items():
                if status[:1] in "45" and _is_problem(answer):
                    answer["content"] = content
                    if status == "422":
                        answer["description"] = _DESCRIPTIONS[422]
            operation["responses"] = dict(sorted(answers.items()))
            for parameter in operation.get("parameters", []):
                _absent_not_null(parameter)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 body, which this API never sends
        users = [schema["paths"], {other: value for other, value in schemas.items() if other != name}]
        if f'"#/components/schemas/{name}"' not in json.dumps(users):
            schemas.pop(name, None)
    return schema


def _absent_not_null(parameter: dict[str, Any]) -> None:
    """An optional parameter's ``anyOf: [X, {"type": "null"}]`` schema becomes X."""
    schema = parameter.get("schema") or {}
    branches = schema.get("anyOf") or []
    others = [branch for branch in branches if branch != {"type": "null"}]
    if not parameter.get("required") and len(others) == 1 < len(branches):
        parameter["schema"] = {key: value for key, value in schema.items() if key != "anyOf"} | others[0]


def _is_problem(answer: dict[str, Any]) -> bool:
    """An error response FastAPI or a router documented (not one with a model of its own, like health's 503)."""
    media = answer.get("content")
    if not media:
        return True
    return PROBLEM_JSON in media or "HTTPValidationError" in json.dumps(media)
