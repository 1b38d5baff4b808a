"""Who calls: the API key's principal (tenant, scopes, domains, actor), for every /api/v1 route.

The edge (functions/edge.py) authenticates each request and checks its scope and
domain before the body is read, and leaves the principal in ``request.state``; these
dependencies hand it to routes. Without the edge in front (an app built otherwise)
they authenticate and check the same way themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from functions import edge
from functions.context import context_of
from shared.apikeys import SCOPES, Principal
from shared.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="An API key made with `stowage keys create`.")


async def principal_of(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Principal:
    """The caller's principal; 401 problem when the key is missing or not valid, 403 when it may not do this."""
    authenticated = getattr(request.state, edge.STATE_PRINCIPAL, None)
    if isinstance(authenticated, Principal):
        return authenticated
    if credentials is None:
        raise Unauthorized(edge.MISSING_KEY)
    context = context_of(request)
    principal = await context.run_storage(lambda: context.api_keys.authenticate(credentials.credentials), read=True)
    access = edge.access_for(request.method, edge.protected_rest(request.url.path) or "")
    principal.require(access.scope, access.domain)
    return principal


async def tenant_of(principal: Annotated[Principal, Depends(principal_of)]) -> str:
    """The caller's tenant (see :func:`principal_of`)."""
    return principal.tenant


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that also requires ``scope`` (e.g. ``admin`` for backups, restore, retention and
    erasure), besides the read or write scope the edge already checked; 403 problem without it.

    ``@router.post(..., dependencies=[Depends(require_scope("admin"))])``
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")

    async def requirement(principal: Annotated[Principal, Depends(principal_of)]) -> Principal:
        principal.require(scope)
        return principal

    requirement.__name__ = f"require_{scope}"
    return requirement
