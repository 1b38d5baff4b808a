"""Bearer API key -> tenant, for every /api/v1 route."""

from __future__ import annotations

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="An API key made with `stowage keys create`.")


async def tenant_of(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> str:
    """The caller's tenant; 401 problem when the key is missing, malformed, unknown or revoked."""
    if credentials is None:
        raise Unauthorized("send 'Authorization: Bearer <api key>'; create a key with `stowage keys create`")
    context = request.app.state.context
    return await run_in_threadpool(context.api_keys.authenticate, credentials.credentials)
