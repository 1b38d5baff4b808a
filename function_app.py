"""The Azure Functions entry point: the HTTP API, queue workers and timers of Stowage.

The host imports this module on every cold start and indexes its functions
(``app.get_functions()``): the HTTP function, the queue trigger and one timer per
job. None of them needs the FastAPI app to be indexed, so the app (every router,
route and response model: the largest part of the import) is built on the first
HTTP request or ASGI lifespan event instead, and an instance started for a queue
message or a timer never builds it. docs/performance.md ("Cold start") has the figures.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import azure.functions as func

from functions import queue_commands, timers
from functions.context import AppContext

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ApiOnFirstUse:
    """The ASGI app of :func:`functions.http_api.create_api`, built on its first call or attribute access.

    It answers exactly as the built app does (same routes, edge, lifespan), and any
    other attribute (``openapi()``, ``routes``, ``state``) is the built app's. A
    failure to build raises on that first request, and the next request tries again.
    """

    def __init__(self, context: AppContext) -> None:
        self._context = context
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def built(self) -> Any:
        """The FastAPI app, built now if it was not yet (once, also under concurrent first requests)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from functions.http_api import create_api

                    self._app = create_api(self._context)
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.built(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks: they are the FastAPI app's.
        if name.startswith("__") or name in ("_app", "_context", "_lock"):
            raise AttributeError(name)
        return getattr(self.built, name)


context = AppContext.from_env()

app = func.AsgiFunctionApp(app=ApiOnFirstUse(context), http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(queue_commands.blueprint(context))
app.register_functions(timers.blueprint(context))
