"""The HTTP edge: who calls, what they may do and how much they send, decided before a body is read.

A pure ASGI middleware that :func:`functions.http_api.create_api` installs in front of
the routers, so it guards `stowage serve` (uvicorn) and the Functions host's
``AsgiFunctionApp`` alike. For a request under ``/api/v1`` (or ``/v1``), before the
app reads any byte of its body:

1. the ``Authorization: Bearer`` key is authenticated (a table read: on the event loop
   on the local backend, in a worker thread otherwise, see
   :meth:`functions.context.AppContext.run_storage`); no key or a bad one is 401 with ``WWW-Authenticate``, one message for every
   bad key;
2. the key's scopes and domains are checked (:func:`access_for`): GET and HEAD need
   ``read``, other methods ``write``, in the domain named by the path's first segment
   (``threads`` is memory, ``events`` is workflows); otherwise 403;
3. the route's body ceiling (:func:`body_ceiling`) is applied: a Content-Length over
   it is 413 and one that is not a number 400, at once; a streamed (chunked) body is
   counted as it arrives and refused with 413 at the ceiling;
4. the body must keep arriving: a wait of more than ``body_timeout_seconds`` for its
   next bytes, or a whole body later than that plus one second per
   :data:`MIN_BODY_RATE` bytes expected, is 408.

The principal goes into ``scope["state"]`` (``request.state.principal``), where
:func:`functions.auth.principal_of` finds it, so routes do not authenticate again.
The app then runs under :func:`shared.request_context.acting_as` with the key's actor
(:meth:`~shared.apikeys.Principal.actor`), source ``http``, the trace and span id of
a valid ``traceparent`` header, and the correlation ids of the headers
:data:`ID_HEADERS` names (a value that is not 1-128 letters, digits, ``.``, ``_``,
``:`` or ``-`` is ignored, as is a malformed ``traceparent``: never an error). Every
change a route makes is attributed to that context, also from sync handlers and
storage calls on the thread pool (anyio copies the context into the worker thread).

Refusals are audited without a write per request: the edge's
:class:`~shared.apikeys.FailureAudit` counts each 401 (reason: missing, malformed,
unknown, mismatch, revoked) and 403 (missing scope or domain) in memory, and the
first protected request after a window closed writes its tallies (bounded in number);
the ASGI lifespan's shutdown writes the open window's.

A refusal made while the body is unread carries ``Connection: close``: the server
closes the connection after answering, so the rest of the body is never read and a
stalled client does not hold the connection. A refusal while the app reads the body
(413 streamed, 408) is raised from ``receive``; whatever the app then does with the
failed read (FastAPI answers 400 "error parsing the body"), the edge drops the app's
answer and sends its own. Every route reads its whole body before it answers, so the
refusal always comes before a response has started. A GET or HEAD that declares no
body (no Content-Length or 0, no Transfer-Encoding) reaches the app with the server's
own ``receive`` and ``send``: no such route reads a body, so there is nothing to count
or wait for. (Other methods are always guarded: the Functions host hands over a body
without declaring its length.)

``/api/health``, ``/docs`` and ``/openapi.json`` stay anonymous and unguarded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from functions import problems
from shared import names
from shared.apikeys import FailureAudit, KeyRefused, Principal
from shared.config import Settings
from shared.domains import DOMAINS
from shared.domains.checkpoints.models import MAX_PUT_BYTES
from shared.domains.memory.models import MAX_CONTENT_BYTES
from shared.domains.workflows.models import MAX_EVENT_PAYLOAD_BYTES
from shared.errors import Forbidden, InvalidInput, StowageError, TooLarge, Unauthorized
from shared.request_context import RequestContext, acting_as, parse_traceparent

if TYPE_CHECKING:
    from functions.context import AppContext

log = logging.getLogger(__name__)

#: Paths that need an API key.
PROTECTED_PREFIXES = ("/api/v1", "/v1")
#: Where the principal is kept in ``scope["state"]``.
STATE_PRINCIPAL = "principal"
#: The slowest average rate a body may arrive at, in bytes per second, beyond ``body_timeout_seconds``.
MIN_BODY_RATE = 64 * 1024
MISSING_KEY = "send 'Authorization: Bearer <api key>'; create a key with `stowage keys create`"

_MIB = 1024 * 1024
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods whose routes never read a body: without a declared one there is nothing to guard.
_BODILESS = frozenset({"GET", "HEAD"})
#: First path segment -> the domain a key can be limited to.
_DOMAINS = {path: domain.name for domain in DOMAINS for path in domain.paths}
#: First path segments any valid key may call, whatever its scopes and domains.
_ANY_KEY = frozenset({"health"})
#: Request headers whose value becomes a correlation id of the request context (seed 002).
ID_HEADERS = {
    "x-stowage-workflow-id": "workflow_id",
    "x-stowage-session-id": "session_id",
    "x-stowage-agent-id": "agent_id",
    "x-stowage-user-id": "user_id",
}
_ID_VALUE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_context_of(principal: Principal, headers: Headers) -> RequestContext:
    """The context a request's changes are attributed to: the key's actor, its trace and its ids.

    A malformed ``traceparent`` or id header is ignored (the change is still attributed to the key).
    """
    trace = parse_traceparent(headers.get("traceparent"))
    ids = {}
    for header, name in ID_HEADERS.items():
        value = headers.get(header)
        if value is not None and _ID_VALUE.match(value):
            ids[name] = value
    return RequestContext(actor=principal.actor(), source="http", trace_id=trace[0] if trace else None,
                          span_id=trace[1] if trace else None, ids=ids)


class RequestTimeout(StowageError):
    """The request body did not arrive in time (HTTP only: services never raise it)."""

    status = 408
    title = "Request timeout"


class BodyRefused(Exception):
    """Raised from ``receive`` when the edge refuses a body the app is reading; the edge answers."""

    def __init__(self, error: StowageError) -> None:
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Access:
    """What a request needs of its key."""

    #: "read", "write", or None (any valid key).
    scope: str | None
    #: The domain it acts in; None when not domain-bound.
    domain: str | None


def protected_rest(route_path: str) -> str | None:
    """The path after its protected prefix (``objects/a/b`` for ``/api/v1/objects/a/b``); None if unprotected."""
    for prefix in PROTECTED_PREFIXES:
        if route_path == prefix:
            return ""
        if route_path.startswith(prefix + "/"):
            return route_path[len(prefix) + 1:]
    return None


def access_for(method: str, rest: str) -> Access:
    """The scope and domain a request needs; ``rest`` is the path after ``/api/v1/``."""
    segment = rest.split("/", 1)[0]
    if segment in _ANY_KEY:
        return Access(None, None)
    scope = "read" if method.upper() in _READ_METHODS else "write"
    return Access(scope, _DOMAINS.get(segment, segment or None))


@dataclass(frozen=True)
class _Ceiling:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    limit: Callable[[Settings], int]


#: Routes that take more than ``max_json_body_bytes``: the limits their routers and services apply.
_CEILINGS = (
    _Ceiling(frozenset({"PUT"}), re.compile(r"objects/.+", re.DOTALL), lambda s: s.max_object_bytes),
    # Base64 makes bytes 4/3 larger; room for the JSON around them.
    _Ceiling(frozenset({"PUT"}), re.compile(r"checkpoints/threads/[^/]+/checkpoints/[^/]+(/writes/[^/]+)?"),
             lambda s: MAX_PUT_BYTES * 4 // 3 + _MIB),
    # A context of max_object_bytes as compact JSON, sent with any whitespace or escaping.
    _Ceiling(frozenset({"PUT"}), re.compile(r"sessions/[^/]+/context"), lambda s: 2 * s.max_object_bytes + 1024),
    _Ceiling(frozenset({"POST"}), re.compile(r"workflows/[^/]+/suspend"), lambda s: s.max_object_bytes + 64 * 1024),
    _Ceiling(frozenset({"POST"}), re.compile(r"events/[^/]+"), lambda s: MAX_EVENT_PAYLOAD_BYTES),
    # A message's content may be MAX_CONTENT_BYTES; JSON escaping can double it.
    _Ceiling(frozenset({"POST"}), re.compile(r"threads/[^/]+/messages"), lambda s: 2 * MAX_CONTENT_BYTES + _MIB),
    _Ceiling(frozenset({"PATCH"}), re.compile(r"threads/[^/]+/messages/[^/]+"),
             lambda s: 2 * MAX_CONTENT_BYTES + _MIB),
)


def body_ceiling(method: str, rest: str, settings: Settings) -> int:
    """The most bytes a request body may have on this route; ``rest`` is the path after ``/api/v1/``."""
    for ceiling in _CEILINGS:
        if method.upper() in ceiling.methods and ceiling.pattern.fullmatch(rest):
            return ceiling.limit(settings)
    return settings.max_json_body_bytes


# --------------------------------------------------------------------------- the middleware


def _route_path(scope: Scope) -> str:
    """The path the routers match (without the root path), as Starlette computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def _declared_length(headers: Headers, ceiling: int) -> int | None:
    """The Content-Length, if any; 400 when it is not a number, 413 when it is over ``ceiling``."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    declared = declared.strip()
    if not declared.isdigit():
        raise InvalidInput("Content-Length is not a number")
    if int(declared) > ceiling:
        raise TooLarge(f"body is {declared} bytes; the limit is {ceiling}")
    return int(declared)


def _has_body(headers: Headers) -> bool:
    declared = headers.get("content-length", "").strip()
    return "transfer-encoding" in headers or (declared not in ("", "0"))


async def _answer(scope: Scope, send: Send, error: StowageError, *, close: bool) -> None:
    """Send ``error`` as problem+json; ``close``: ask the server to close the connection afterwards."""
    if error.status >= 500:
        log.error("%s on %s: %s", type(error).__name__, scope.get("path"), error)
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="stowage"'
    if close:
        headers["Connection"] = "close"
    response = problems.problem_of(error, Request(scope), headers or None)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class _BodyGuard:
    """The app's ``receive``: counts body bytes against the ceiling and bounds every wait."""

    def __init__(self, receive: Receive, ceiling: int, declared: int | None, timeout: float) -> None:
        self._receive = receive
        self._ceiling = ceiling
        self._timeout = timeout
        expected = declared if declared is not None else ceiling
        self._deadline = time.monotonic() + timeout + expected / MIN_BODY_RATE
        self._received = 0
        self._done = False
        #: The refusal, once the edge has refused the body.
        self.refused: StowageError | None = None

    async def __call__(self) -> Message:
        if self.refused is not None:
            raise BodyRefused(self.refused)
        if self._done:  # after the body: disconnect notices, without a deadline
            return await self._receive()
        wait = min(self._timeout, self._deadline - time.monotonic())
        message: Message | None = None
        if wait > 0:
            with anyio.move_on_after(wait):
                message = await self._receive()
        if message is None:
            self._refuse(RequestTimeout(
                f"the request body did not arrive in time (received {self._received} bytes); "
                "send the whole body promptly, as its Content-Length says"))
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._ceiling:
                self._refuse(TooLarge(f"body is over the limit of {self._ceiling} bytes"))
            if not message.get("more_body", False):
                self._done = True
        else:
            self._done = True
        return message

    def _refuse(self, error: StowageError) -> NoReturn:
        self.refused = error
        raise BodyRefused(error)


class Edge:
    """The ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, context: AppContext) -> None:
        self.app = app
        self.context = context
        #: This app's tallies of refused requests (nothing connects until a window is flushed).
        self.failures = FailureAudit(lambda: context.stores.changes,
                                     lambda: context.stores.table(names.TABLE_CHANGES))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._flushing_at_shutdown(receive), send)
            return
        rest = protected_rest(_route_path(scope)) if scope["type"] == "http" else None
        if rest is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        settings = self.context.settings
        method = scope["method"]
        if self.failures.due():
            await self._flush_failures()
        try:
            principal = await self._authenticate(headers)
            access = access_for(method, rest)
            try:
                principal.require(access.scope, access.domain)
            except Forbidden:
                self.failures.authorization_failed(principal, access.scope, access.domain)
                raise
            ceiling = body_ceiling(method, rest, settings)
            declared = _declared_length(headers, ceiling)
        except StowageError as error:
            await _answer(scope, send, error, close=_has_body(headers))
            return

        scope = {**scope, "state": {**(scope.get("state") or {}), STATE_PRINCIPAL: principal}}
        with acting_as(request_context_of(principal, headers)):
            await self._serve(scope, receive, send, method, headers, ceiling, declared)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, method: str, headers: Headers,
                     ceiling: int, declared: int | None) -> None:
        """Run the app on an authenticated request, guarding its body."""
        settings = self.context.settings
        if method in _BODILESS and not _has_body(headers):
            await self.app(scope, receive, send)
            return
        guard = _BodyGuard(receive, ceiling, declared, settings.body_timeout_seconds)
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if guard.refused is not None and not started:
                return  # the app answering a body it could not read: the edge answers instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guard, guarded_send)
        except Exception:
            if guard.refused is None or started:
                raise
        if guard.refused is not None and not started:
            await _answer(scope, send, guard.refused, close=True)

    async def _authenticate(self, headers: Headers) -> Principal:
        """The caller's principal; Unauthorized when the header is missing, not Bearer, or the key is bad."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        try:
            if scheme.lower() != "bearer" or not token:
                raise KeyRefused("missing", message=MISSING_KEY)
            return await self.context.run_storage(lambda: self.context.api_keys.authenticate(token), read=True)
        except KeyRefused as refusal:
            self.failures.authentication_failed(refusal)
            raise

    def _flushing_at_shutdown(self, receive: Receive) -> Receive:
        """The lifespan's ``receive``: at shutdown, the open window's tallies are written first."""

        async def receive_then_flush() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._flush_failures(everything=True)
            return message

        return receive_then_flush

    async def _flush_failures(self, *, everything: bool = False) -> None:
        """Write the tallies of closed windows, or all (bounded; a failed write is logged by the audit)."""
        try:
            await self.context.run_storage(lambda: self.failures.flush(everything=everything), read=False)
        except Exception:  # the request must not fail because its predecessors' audit could not be written
            log.exception("could not flush the audit of refused requests")
