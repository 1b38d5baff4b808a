"""HTTP transport for objects: /api/v1/objects.

A write's content is the raw request body; its key, content type and TTL are declared
with the rules the queue payloads' fields use (:mod:`shared.domains.objects.models`).
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor

from functions.auth import tenant_of
from functions.context import context_of
from functions.http import StorageRoute
from functions.http_common import quoted, read_body, unquote
from functions.problems import responses
from shared.domains.objects.models import CONTENT_TYPE, KEY, KEY_RULE, MAX_KEY_LENGTH, TTL, ObjectInfo
from shared.errors import InvalidInput


class _KeyConvertor(Convertor[str]):
    """The rest of the path, line breaks included. Starlette's ``path`` convertor (``.*``) stops at one:
    a key with a line break inside matched no route (404), and one ending in a line break lost it (the
    key "a" and a line break was written as "a"). Now the key pattern refuses both (400)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("objectkey", _KeyConvertor())
router = APIRouter(prefix="/api/v1/objects", tags=["objects"], route_class=StorageRoute)
Tenant = Annotated[str, Depends(tenant_of)]

# The rules of the queue payloads' fields (shared.domains.objects.models), so both transports agree.
Key = Annotated[str, Path(**KEY, description=KEY_RULE)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                              description="A retry of the same request with the same key returns the first result and status; "
                                                          "the key with another request is a 422.")]


def _version_headers(required: bool) -> dict[str, Any]:
    """OpenAPI for the headers that describe the version answered."""
    text = {"type": "string"}
    return {"ETag": {"description": "The version id, quoted.", "required": required, "schema": text},
            "X-Stowage-Version-Id": {"description": "The version id.", "required": required, "schema": text},
            "Last-Modified": {"description": "When the version was written.", "required": required, "schema": text}}


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
    prefix: Annotated[str, Query(max_length=MAX_KEY_LENGTH, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
                                 description="Only keys starting with this (no control characters).")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
) -> ObjectPage:
    page = context_of(request).objects.list(tenant, prefix, limit=limit, continuation=continuation)
    return ObjectPage(items=[i for i in page.items], continuation=page.continuation)


@router.put(
    "/{key:objectkey}", response_model=ObjectInfo, status_code=200,
    responses={200: {"description": "A new version of an existing object", "headers": _version_headers(True)},
               201: {"model": ObjectInfo, "description": "Created (the first version)",
                     "headers": _version_headers(True)},
               **responses(400, 401, 409, 412, 413, 422)},
    summary="Write an object (a new version)",
    openapi_extra={"requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                                   "required": True}},
)
async def put_object(
    key: Key,
    request: Request,
    response: Response,
    tenant: Tenant,
    content_type: Annotated[str, Header(alias="Content-Type", **CONTENT_TYPE)] = "application/octet-stream",
    if_match: Annotated[str | None, Header(alias="If-Match", description="Write only if the object is at this ETag; '*': only if it exists (412 otherwise).")] = None,
    if_none_match: Annotated[Literal["*"] | None, Header(alias="If-None-Match",
                                                         description="'*': create only (412 if it exists).")] = None,
    idempotency_key: IdempotencyKey = None,
    ttl_seconds: Annotated[int | None, Query(**TTL, description="Expire the object this many seconds from now.")] = None,
) -> ObjectInfo:
    if if_none_match is not None and if_none_match.strip() != "*":
        raise InvalidInput("If-None-Match on PUT supports only '*' (create only)")
    objects = context_of(request).objects
    data = await read_body(request, objects.max_bytes)
    outcome = await run_in_threadpool(
        lambda: objects.put_outcome(tenant, key, data, content_type, if_match=unquote(if_match),
                                    if_none_match=if_none_match is not None, ttl_seconds=ttl_seconds,
                                    idempotency_key=idempotency_key)
    )
    info = outcome.result
    response.headers.update(_headers(info))
    response.status_code = outcome.status  # 201 for the first version of an object; a replay answers as the first
    return info


@router.get(
    "/{key:objectkey}",
    responses={200: {"description": "The content, with its content type; or, with versions=true, a JSON page of versions.",
                     "headers": _version_headers(False),  # absent on the version list
                     "content": {"*/*": {},
                                 "application/json": {"schema": {
                                     "description": "The object's JSON content, or with versions=true an ObjectPage.",
                                     "anyOf": [{"$ref": "#/components/schemas/ObjectPage"}, {}]}}}},
               304: {"description": "Not modified (If-None-Match matched)", "headers": _version_headers(True)},
               **responses(400, 401, 404, 422)},
    summary="Read an object, one of its versions, or its version list",
)
def get_object(
    key: Key,
    request: Request,
    tenant: Tenant,
    version_id: str | None = None,
    versions: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    continuation: str | None = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    objects = context_of(request).objects
    if versions:
        page = objects.versions(tenant, key, limit=limit, continuation=continuation)
        body = ObjectPage(items=[i for i in page.items], continuation=page.continuation)
        return Response(body.model_dump_json(), media_type="application/json")
    stored = objects.get(tenant, key, version_id)
    headers = _headers(stored.info)
    if if_none_match is not None and unquote(if_none_match) in (stored.info.version_id, "*"):
        return Response(status_code=304, headers=headers)
    return Response(stored.data, media_type=stored.info.content_type, headers=headers)


@router.head("/{key:objectkey}", response_class=Response, summary="An object's headers",
             responses={200: {"description": "The headers GET would send, with the object's content type",
                              "content": {"*/*": {}},
                              "headers": _version_headers(True)},
                        **responses(400, 401, 404, 422)})
def head_object(key: Key, request: Request, tenant: Tenant, version_id: str | None = None) -> Response:
    info = context_of(request).objects.head(tenant, key, version_id)
    headers = _headers(info) | {"Content-Type": info.content_type, "Content-Length": str(info.size)}
    return Response(status_code=200, headers=headers)


@router.delete("/{key:objectkey}", status_code=204, responses=responses(400, 401, 404, 412),
               summary="Delete an object and all its versions")
def delete_object(
    key: Key,
    request: Request,
    tenant: Tenant,
    if_match: Annotated[str | None, Header(alias="If-Match", description="Delete only if the object is at this ETag; "
                                                                           "'*': only if it exists (412 otherwise).")] = None,
) -> Response:
    context_of(request).objects.delete(tenant, key, if_match=unquote(if_match))
    return Response(status_code=204)
