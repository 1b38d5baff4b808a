"""The FastAPI app the function app serves: health, docs, and every /api/v1 router, behind the edge."""

from __future__ import annotations

import importlib
import logging

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from functions import problems
from functions.auth import principal_of
from functions.context import AppContext
from functions.edge import Edge
from shared.domains import DOMAINS, Domain
from shared.errors import StowageError

log = logging.getLogger(__name__)


class Health(BaseModel):
    """Whether the service and its backend answer."""

    status: str = Field(description="'ok' or 'unavailable'.")
    backend: str = Field(description="The configured backend: local, azure or aws.")


class HealthDetail(Health):
    """Whether the service and its backend answer, with the backend's error when it does not."""

    detail: str | None = Field(default=None, description="What the backend answered when unavailable.")


def router_of(domain: Domain) -> APIRouter:
    """The FastAPI router a domain names (``"module:attribute"``)."""
    module, _, attribute = domain.router.partition(":")
    router: APIRouter = getattr(importlib.import_module(module), attribute)
    return router


def create_api(context: AppContext) -> FastAPI:
    app = FastAPI(
        title="Stowage",
        version="0.1.0",
        summary="Unified storage for AI agents: objects, memory, checkpoints, traces and more.",
        description="Every /api/v1 route needs `Authorization: Bearer <api key>`; the key decides the tenant. "
                    "Errors are application/problem+json.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = context
    problems.install(app)
    app.add_middleware(Edge, context=context)

    async def check_backend() -> HealthDetail:
        kind = context.settings.backend
        try:
            await context.run_storage(lambda: context.stores.backend.ping(), read=True)
        except StowageError as exc:
            log.warning("health: the %s backend is unavailable: %s", kind, exc)
            return HealthDetail(status="unavailable", backend=kind, detail=str(exc))
        return HealthDetail(status="ok", backend=kind)

    @app.get("/api/health", response_model=Health, tags=["operations"],
             responses={503: {"model": Health, "description": "Backend unavailable"}})
    async def health() -> JSONResponse:
        """Anonymous: which backend is configured and whether it answers (no details: see /api/v1/health)."""
        checked = await check_backend()
        return JSONResponse(Health(status=checked.status, backend=checked.backend).model_dump(),
                            status_code=200 if checked.status == "ok" else 503)

    @app.get("/api/v1/health", response_model=HealthDetail, tags=["operations"],
             dependencies=[Depends(principal_of)],
             responses={503: {"model": HealthDetail, "description": "Backend unavailable"}},
             summary="Health with the backend's error, for any valid API key")
    async def health_detail() -> JSONResponse:
        """Which backend is configured and whether it answers, with what it answered when it does not."""
        checked = await check_backend()
        return JSONResponse(checked.model_dump(), status_code=200 if checked.status == "ok" else 503)

    for domain in DOMAINS:
        app.include_router(router_of(domain))
    return app
