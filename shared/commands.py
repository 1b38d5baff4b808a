"""Writes as queue commands: the envelope, its processor, poison handling, a producer.

A producer posts a JSON envelope to the ``stowage-commands`` queue (the Azure
queue with base64 message encoding, or SQS); docs/commands.md and
docs/commands.schema.json describe it for producers in any language. The
queue-triggered function hands each message to :meth:`CommandProcessor.process`.

Delivery is at least once, so every command is applied idempotently: writes
carry the envelope's idempotency key into the service, which records it in the
same atomic batch as the write. A message that can never succeed (bad JSON, an
envelope that does not validate, a rejected write) goes to the poison queue at
once, wrapped with its reason. One that fails for a passing reason is retried
by the host; its last error is recorded, so when the host moves it to the poison
queue after ``maxDequeueCount`` attempts its reason can still be listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model, model_validator

from shared import checkpoints, memory, objects, sessions, workflows
from shared.command_ops import CommandOp, Outcome

from shared import names
from shared.backends import Entity
from shared.backends.offload import claim_check_ref, parse_ref
from shared.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StowageError,
    TooLarge,
)
from shared.keys import escape
from shared.stores import Stores

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
_FAILURE_PARTITION = "failure"
# Errors no retry can fix: the message goes to the poison queue at once.
_PERMANENT = (InvalidInput, TooLarge, PreconditionFailed, AlreadyExists)


# --------------------------------------------------------------------------- envelope


class _EnvelopeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["payload"]}, {"required": ["payload_ref"]}]})

    version: Literal[1] = Field(description="Envelope format version.")
    tenant: str = Field(description="Tenant the command acts for.")
    idempotency_key: str = Field(min_length=1, max_length=200, description="Same key, same effect: redeliveries and retries apply once.")
    payload_ref: str | None = Field(
        default=None,
        description="Instead of 'payload': 'blob:v1:<key>' of a blob in the stowage-data container holding the payload JSON. Stowage deletes it once applied.",
    )

    @model_validator(mode="before")
    @classmethod
    def _payload_xor_ref(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("payload" in data) == ("payload_ref" in data):
            raise ValueError("give exactly one of 'payload' or 'payload_ref'")
        return data


OPS: dict[str, CommandOp] = {
    op.name: op for domain in (objects, memory, sessions, workflows, checkpoints) for op in domain.COMMANDS
}


def _envelope_model(op: CommandOp) -> type[_EnvelopeBase]:
    name = "".join(part.capitalize() for part in op.name.replace("_", ".").split("."))
    return create_model(name, __base__=_EnvelopeBase, __doc__=op.description or None,
                        op=(Literal[op.name], ...), payload=(op.payload | None, None))


_MODELS = tuple(_envelope_model(op) for op in OPS.values())
ENVELOPE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[Union[_MODELS], Field(discriminator="op")])  # noqa: UP007


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema producers validate against (docs/commands.schema.json)."""
    schema = ENVELOPE_ADAPTER.json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Stowage queue command envelope, version 1"
    return schema


# --------------------------------------------------------------------------- processing


class PoisonMessage(Exception):
    """The message can never be applied; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class CommandProcessor:
    """Applies command messages through the domain services."""

    def __init__(self, stores: Stores) -> None:
        self._stores = stores
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self._poison = stores.queue(names.QUEUE_COMMANDS_POISON)
        self._failures = stores.table(names.TABLE_COMMANDS)

    def process(self, body: str, *, dequeue_count: int = 1, message_id: str = "") -> Outcome:
        """Apply one message. Passing failures raise (the host retries); others go to poison."""
        try:
            outcome = self._apply(body)
        except PoisonMessage as exc:
            self.poison(body, exc.reason, dequeue_count=dequeue_count, message_id=message_id)
            return Outcome("poisoned", exc.reason)
        except StowageError as exc:
            self._record_failure(body, f"{type(exc).__name__}: {exc}", dequeue_count)
            raise
        return outcome

    def _apply(self, body: str) -> Outcome:
        claim = claim_check_ref(body)
        if claim is not None:
            try:
                body = self._blobs.get(parse_ref(claim)).data.decode("utf-8")
            except NotFound:
                # Claim-check blobs are deleted only after their command was applied.
                return Outcome("duplicate", "claim-check blob already consumed")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise PoisonMessage(f"message is not JSON: {exc}") from None
        try:
            envelope = ENVELOPE_ADAPTER.validate_python(document)
        except ValidationError as exc:
            raise PoisonMessage(f"envelope is invalid: {_summary(exc)}") from None
        payload_blob = None
        if envelope.payload_ref is not None:
            payload_blob = self._load_payload(envelope)
        try:
            outcome = self._dispatch(envelope)
        except _PERMANENT as exc:
            raise PoisonMessage(f"{envelope.op} rejected: {type(exc).__name__}: {exc}") from None
        for ref in filter(None, (payload_blob, claim)):
            try:
                self._blobs.delete(parse_ref(ref))
            except NotFound:
                pass
        return outcome

    def _load_payload(self, envelope: Any) -> str:
        ref = envelope.payload_ref or ""
        try:
            data = self._blobs.get(parse_ref(ref)).data
        except ValueError:
            raise PoisonMessage(f"payload_ref {ref!r} is not a 'blob:v1:<key>' reference") from None
        except NotFound:
            raise PoisonMessage(f"payload_ref {ref!r} names no blob") from None
        try:
            envelope.payload = OPS[envelope.op].payload.model_validate_json(data)
        except ValidationError as exc:
            raise PoisonMessage(f"payload blob is invalid: {_summary(exc)}") from None
        return ref

    def _dispatch(self, envelope: Any) -> Outcome:
        if envelope.payload is None:
            raise PoisonMessage("envelope has no payload")
        return OPS[envelope.op].apply(self._stores, envelope.tenant, envelope.payload, envelope.idempotency_key)

    # -- poison

    def poison(self, body: str, reason: str, *, dequeue_count: int, message_id: str = "") -> None:
        """Put a message on the poison queue, wrapped with why it is there."""
        log.warning("command message %s poisoned: %s", message_id or "?", reason)
        self._poison.send(json.dumps({
            "poison": {"reason": reason, "at": datetime.now(timezone.utc).isoformat(),
                       "dequeue_count": dequeue_count, "message_id": message_id},
            "message": body,
        }))

    def _record_failure(self, body: str, reason: str, dequeue_count: int) -> None:
        try:
            self._failures.upsert(Entity(_FAILURE_PARTITION, _digest(body), {
                "reason": reason[:2000], "dequeue_count": dequeue_count,
                "at": datetime.now(timezone.utc).isoformat(),
            }))
        except StowageError:
            log.exception("could not record why a command failed")

    def failure_reason(self, body: str) -> str | None:
        try:
            return str(self._failures.get(_FAILURE_PARTITION, _digest(body))["reason"])
        except NotFound:
            return None


def _summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(envelope)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- poison queue tools


@dataclass(frozen=True)
class PoisonEntry:
    """A message in the poison queue and why it is there."""

    message_id: str
    reason: str
    body: str
    dequeue_count: int
    poisoned_at: str


def unwrap_poison(body: str) -> tuple[str, dict[str, Any] | None]:
    """The original message and its poison record (None when the host moved it unwrapped)."""
    try:
        document = json.loads(body)
    except ValueError:
        return body, None
    if isinstance(document, dict) and set(document) == {"poison", "message"} and isinstance(document["message"], str):
        return document["message"], document["poison"]
    return body, None


class PoisonQueue:
    """List and replay the commands poison queue."""

    def __init__(self, stores: Stores) -> None:
        self._poison = stores.queue(names.QUEUE_COMMANDS_POISON)
        self._commands = stores.queue(names.QUEUE_COMMANDS)
        self._processor = CommandProcessor(stores)

    def list(self, limit: int = 32) -> list[PoisonEntry]:
        entries = []
        for message in self._poison.peek(max_messages=min(max(limit, 1), 32)):
            original, record = unwrap_poison(message.body)
            if record is None:
                reason = self._processor.failure_reason(original) or "failed on every delivery (no reason recorded)"
                entries.append(PoisonEntry(message.id, reason, original, message.dequeue_count, ""))
            else:
                entries.append(PoisonEntry(message.id, str(record.get("reason", "")), original,
                                           int(record.get("dequeue_count", 0)), str(record.get("at", ""))))
        return entries

    def replay(self, message_ids: set[str] | None = None, *, limit: int = 1000) -> int:
        """Move poison messages (all, or those with these ids) back to the commands queue."""
        moved = 0
        skipped: list[str] = []
        while moved < limit:
            batch = self._poison.receive(max_messages=32, visibility_timeout=60)
            if not batch:
                break
            for message in batch:
                if message_ids is not None and message.id not in message_ids:
                    skipped.append(message.receipt)
                    continue
                original, _ = unwrap_poison(message.body)
                self._commands.send(original)
                self._poison.delete(message.receipt)
                moved += 1
            if message_ids is not None and len(skipped) >= 32 * 4:
                break
        for receipt in skipped:  # make the ones we did not replay visible again
            try:
                self._poison.extend(receipt, 0)
            except NotFound:
                pass
        return moved


# --------------------------------------------------------------------------- producer


class CommandClient:
    """Posts command envelopes to the commands queue (payloads over the limit go by blob)."""

    def __init__(self, stores: Stores) -> None:
        self._queue = stores.queue(names.QUEUE_COMMANDS)
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self._threshold = stores.settings.offload_threshold_bytes

    def send(self, op: str, tenant: str, payload: dict[str, Any], *, idempotency_key: str | None = None) -> str:
        """Validate and enqueue a command; returns its idempotency key."""
        key = idempotency_key or uuid.uuid4().hex
        envelope: dict[str, Any] = {"version": ENVELOPE_VERSION, "op": op, "tenant": tenant,
                                    "idempotency_key": key, "payload": payload}
        try:
            ENVELOPE_ADAPTER.validate_python(envelope)
        except ValidationError as exc:
            raise InvalidInput(f"command is invalid: {_summary(exc)}") from None
        body = json.dumps(envelope, ensure_ascii=False)
        if len(body.encode("utf-8")) > self._threshold:
            blob_key = f"commands/payloads/{escape(tenant)}/{uuid.uuid4().hex}"
            self._blobs.put(blob_key, json.dumps(payload).encode("utf-8"), content_type="application/json")
            del envelope["payload"]
            envelope["payload_ref"] = f"blob:v1:{blob_key}"
            body = json.dumps(envelope)
            try:
                self._queue.send(body)
            except BaseException:
                self._blobs.delete(blob_key)
                raise
            return key
        self._queue.send(body)
        return key
