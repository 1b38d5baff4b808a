"""HTTP transport for objects: /api/v1/objects."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from functions.auth import tenant_of
from functions.http_common import quoted, read_body, unquote
from functions.problems import responses
from shared.errors import InvalidInput
from shared.objects import ObjectInfo

router = APIRouter(prefix="/api/v1/objects", tags=["objects"])
Tenant = Annotated[str, Depends(tenant_of)]


class ObjectPage(BaseModel):
    """One page of objects; pass ``continuation`` back for the next page."""

    items: list[ObjectInfo]
    continuation: str | None = None


def _headers(info: ObjectInfo) -> dict[str, str]:
    modified = format_datetime(datetime.fromisoformat(info.updated_at), usegmt=True)
    headers = {"ETag": quoted(info.version_id), "X-Stowage-Version-Id": info.version_id, "Last-Modified": modified}
    if info.expires_at:
        headers["X-Stowage-Expires-At"] = info.expires_at
    return headers


@router.get("", response_model=ObjectPage, responses=responses(400, 401, 422),
            summary="List objects by key prefix")
def list_objects(
    request: Request,
    tenant: Tenant,
    prefix: Annotated[str, Query(max_length=256)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
) -> ObjectPage:
    page = request.app.state.context.objects.list(tenant, prefix, limit=limit, continuation=continuation)
    return ObjectPage(items=[i for i in page.items], continuation=page.continuation)


@router.put(
    "/{key:path}", response_model=ObjectInfo, status_code=200,
    responses={201: {"model": ObjectInfo, "description": "Created"}, **responses(400, 401, 409, 412, 413, 422)},
    summary="Write an object (a new version)",
    openapi_extra={"requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                                   "required": True}},
)
async def put_object(
    key: str,
    request: Request,
    response: Response,
    tenant: Tenant,
    content_type: Annotated[str, Header(alias="Content-Type")] = "application/octet-stream",
    if_match: Annotated[str | None, Header(alias="If-Match", description="Write only if the object is at this ETag.")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match", description="'*': create only (409 if it exists).")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
    ttl_seconds: Annotated[int | None, Query(ge=1, description="Expire the object this many seconds from now.")] = None,
) -> ObjectInfo:
    if if_none_match is not None and if_none_match.strip() != "*":
        raise InvalidInput("If-None-Match on PUT supports only '*' (create only)")
    objects = request.app.state.context.objects
    data = await read_body(request, objects.max_bytes)
    info = await run_in_threadpool(
        lambda: objects.put(tenant, key, data, content_type, if_match=unquote(if_match),
                            if_none_match=if_none_match is not None, ttl_seconds=ttl_seconds,
                            idempotency_key=idempotency_key)
    )
    response.headers.update(_headers(info))
    if info.created_at == info.updated_at:  # first version of this object
        response.status_code = 201
    return info


@router.get(
    "/{key:path}",
    responses={200: {"description": "The content, with its content type; or, with versions=true, a JSON page of versions.",
                     "content": {"*/*": {}, "application/json": {"schema": ObjectPage.model_json_schema()}}},
               304: {"description": "Not modified (If-None-Match matched)"},
               **responses(400, 401, 404, 422)},
    summary="Read an object, one of its versions, or its version list",
)
def get_object(
    key: str,
    request: Request,
    tenant: Tenant,
    version_id: str | None = None,
    versions: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    objects = request.app.state.context.objects
    if versions:
        page = objects.versions(tenant, key, limit=limit, continuation=continuation)
        body = ObjectPage(items=[i for i in page.items], continuation=page.continuation)
        return Response(body.model_dump_json(), media_type="application/json")
    stored = objects.get(tenant, key, version_id)
    headers = _headers(stored.info)
    if if_none_match is not None and unquote(if_none_match) in (stored.info.version_id, "*"):
        return Response(status_code=304, headers=headers)
    return Response(stored.data, media_type=stored.info.content_type, headers=headers)


@router.head("/{key:path}", responses=responses(400, 401, 404), summary="An object's headers")
def head_object(key: str, request: Request, tenant: Tenant, version_id: str | None = None) -> Response:
    info = request.app.state.context.objects.head(tenant, key, version_id)
    headers = _headers(info) | {"Content-Type": info.content_type, "Content-Length": str(info.size)}
    return Response(status_code=200, headers=headers)


@router.delete("/{key:path}", status_code=204, responses=responses(400, 401, 404, 412),
               summary="Delete an object and all its versions")
def delete_object(
    key: str,
    request: Request,
    tenant: Tenant,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> Response:
    request.app.state.context.objects.delete(tenant, key, if_match=unquote(if_match))
    return Response(status_code=204)
