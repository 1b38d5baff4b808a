"""One FastAPI router per domain, ``functions/http/<domain>.py``, named by the domain's ``router``.

Routers live in the transport package, not in the domain packages, so that no
domain imports FastAPI (tests/test_layers.py enforces it): a domain names its
router by dotted path and ``functions.http_api`` mounts what the registry names.

Every router uses :class:`StorageRoute` (or :class:`ClientJsonStorageRoute`): a route
whose handler is a plain ``def`` runs it where :meth:`AppContext.run_storage
<functions.context.AppContext.run_storage>` runs storage calls, on the event loop for a
GET or HEAD on the local backend and on the thread pool otherwise. FastAPI would run
every ``def`` handler on the thread pool, and then validate its answer on the pool
again: two hops per request, more CPU than a local read. The handler's signature,
name and docstring are the endpoint's, so the OpenAPI document does not change.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from functions.context import context_of
from functions.http_common import ClientJsonRoute

#: Methods whose handlers only read.
_READS = frozenset({"GET", "HEAD"})


def storage_endpoint(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` as a coroutine that runs a ``def`` handler on the loop or the pool (module docstring);
    a coroutine function is returned as it is."""
    if inspect.iscoroutinefunction(endpoint):
        return endpoint

    @functools.wraps(endpoint)
    async def on_loop_or_pool(*args: Any, **kwargs: Any) -> Any:
        request = kwargs.get("request")
        if isinstance(request, Request) and request.method in _READS and context_of(request).reads_on_loop:
            return endpoint(*args, **kwargs)
        return await run_in_threadpool(endpoint, *args, **kwargs)

    return on_loop_or_pool


class StorageRoute(APIRoute):
    """An API route whose ``def`` handler runs as :func:`storage_endpoint` says."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, storage_endpoint(endpoint), **kwargs)


class ClientJsonStorageRoute(ClientJsonRoute, StorageRoute):
    """:class:`StorageRoute` whose JSON body is parsed as :class:`functions.http_common.ClientJsonRoute` does."""
