"""The FastAPI app the function app serves: health, docs, and every /api/v1 router."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from functions import http_checkpoints, http_memory, http_objects, http_sessions, http_workflows, problems
from functions.context import AppContext
from shared.errors import StowageError


class Health(BaseModel):
    """Whether the service and its backend answer."""

    status: str
    backend: str
    detail: str | None = None


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

    @app.get("/api/health", response_model=Health, tags=["operations"],
             responses={503: {"model": Health, "description": "Backend unavailable"}})
    async def health(request: Request) -> JSONResponse:
        """Anonymous: which backend is configured and whether it answers."""
        kind = context.settings.backend
        try:
            await run_in_threadpool(lambda: context.stores.backend.ping())
        except StowageError as exc:
            return JSONResponse(Health(status="unavailable", backend=kind, detail=str(exc)).model_dump(),
                                status_code=503)
        return JSONResponse(Health(status="ok", backend=kind).model_dump())

    for router in (http_objects.router, http_memory.router, http_sessions.router, http_workflows.router,
                   http_checkpoints.router):
        app.include_router(router)
    return app
