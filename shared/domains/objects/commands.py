"""Objects: queue ops, applied through the public service API.

Each op passes the envelope's idempotency key to the service, whose marker is
written in the same atomic batch as the change: a redelivered command answers
the first result and writes nothing.
"""

from __future__ import annotations

from shared.command_ops import CommandOp, Outcome
from shared.errors import NotFound

from shared.domains.objects.models import ObjectsDeletePayload, ObjectsPutPayload
from shared.domains.objects.service import ObjectService


def apply_put(service: ObjectService, tenant: str, payload: ObjectsPutPayload, idempotency_key: str) -> Outcome:
    """Write the object; a redelivery is a duplicate naming the version the first delivery wrote."""
    data, content_type = payload.content()
    outcome = service.put_outcome(tenant, payload.key, data, content_type, if_match=payload.if_match,
                                  ttl_seconds=payload.ttl_seconds, idempotency_key=idempotency_key)
    status = "duplicate" if outcome.replayed else "applied"
    return Outcome(status, f"{payload.key} at version {outcome.result.version_id}")


def apply_delete(service: ObjectService, tenant: str, payload: ObjectsDeletePayload,
                 idempotency_key: str) -> Outcome:
    """Delete the object; a redelivery, or an object already gone, is a duplicate."""
    try:
        outcome = service.delete_outcome(tenant, payload.key, if_match=payload.if_match,
                                         idempotency_key=idempotency_key)
    except NotFound:
        return Outcome("duplicate", f"{payload.key} already gone")
    if outcome.replayed:
        return Outcome("duplicate", f"{payload.key} already deleted by this command")
    return Outcome("applied", f"{payload.key} deleted")


COMMANDS = (
    CommandOp("objects.put", ObjectsPutPayload, apply_put, "Write an object (a new version)."),
    CommandOp("objects.delete", ObjectsDeletePayload, apply_delete, "Delete an object and all its versions."),
)
