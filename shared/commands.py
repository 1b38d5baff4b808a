"""Writes as queue commands: the envelope, its processor, poison handling, a producer.

A producer posts a JSON envelope to the ``stowage-commands`` queue (the Azure
queue with base64 message encoding, or SQS); docs/commands.md and
docs/commands.schema.json describe it for producers in any language. The
queue-triggered function hands each message to :meth:`CommandProcessor.process`.

Delivery is at least once, so every command is applied idempotently: writes
carry the envelope's idempotency key into the service, which records it in the
same atomic batch as the write. A message that can never succeed (bad JSON, an
envelope that does not validate, a reference to a blob it may not use, a
rejected write) goes to the poison queue at once, wrapped with its reason. One
that fails otherwise (the backend did not answer, or any unexpected exception)
is retried by the host; its last error is recorded as ``"<type>: <message>"``,
so when the host moves it to the poison queue after ``maxDequeueCount``
attempts its reason can still be listed.

Attribution: every command is applied under a
:class:`~shared.request_context.RequestContext` with source ``queue`` and the system
actor ``queue`` (:data:`QUEUE_ACTOR`), with the queue message id as a correlation id.
An envelope cannot name another actor: anyone who may send to the queue could then
attribute changes to anyone, and nothing authenticates a claim (docs/commands.md).

Storage: in the ``stowagecommands`` table, partition ``failure`` (row: SHA-256
of the message) holds the last error of a failing message, and partitions
``applied|<tenant>`` the applied ``payload_ref`` commands (see
:class:`CommandProcessor`). Payload blobs are ``commands/payloads/<tenant>/...``
in the data container.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Self, Union

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, create_model, model_validator

from shared import names
from shared.domains import DOMAINS
from shared.backends import Entity
from shared.backends.base import MAX_RECEIVE_MESSAGES, QueueMessage
from shared.backends.offload import check_ref, claim_check_ref, queue_offload_prefix
from shared.command_ops import CommandOp, Outcome
from shared.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    StowageError,
    TooLarge,
)
from shared.jsonvalues import MAX_JSON_DEPTH, parse_client_json
from shared.keys import check_tenant
from shared.models_base import StowageModel
from shared.request_context import Actor, RequestContext, acting_as
from shared.stores import Stores

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
#: Who queue commands are attributed to (envelopes carry no authenticated actor).
QUEUE_ACTOR = Actor("system", "queue")
_FAILURE_PARTITION = "failure"
_APPLIED_PARTITION = "applied"
# Errors no retry can fix: the message goes to the poison queue at once.
_PERMANENT = (InvalidInput, TooLarge, PreconditionFailed, AlreadyExists)


# --------------------------------------------------------------------------- envelope


class _EnvelopeBase(StowageModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["payload"]}, {"required": ["payload_ref"]}]})

    version: Literal[1] = Field(description="Envelope format version.")
    tenant: str = Field(description="Tenant the command acts for.")
    idempotency_key: str = Field(min_length=1, max_length=200, description="Same key, same effect: redeliveries and retries apply once.")
    payload_ref: str | None = Field(
        default=None,
        description="Instead of 'payload': 'blob:v1:commands/payloads/<tenant>/<name>', a blob in the stowage-data container "
                    "holding the payload JSON; <tenant> is this envelope's tenant, and a reference anywhere else is "
                    "poison. Stowage deletes the blob once the command is applied.",
    )

    @model_validator(mode="before")
    @classmethod
    def _payload_xor_ref(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("payload" in data) == ("payload_ref" in data):
            raise ValueError("give exactly one of 'payload' or 'payload_ref'")
        return data


OPS: dict[str, CommandOp] = {op.name: op for domain in DOMAINS for op in domain.commands}
#: The domain whose service applies each op.
DOMAIN_OF_OP: dict[str, str] = {op.name: domain.name for domain in DOMAINS for op in domain.commands}


def _envelope_model(op: CommandOp) -> type[_EnvelopeBase]:
    name = "".join(part.capitalize() for part in op.name.replace("_", ".").split("."))
    # Types built at run time from the registry: pydantic reads them, a static checker cannot.
    op_type: Any = Literal[op.name]
    payload_type: Any = op.payload | None
    return create_model(name, __base__=_EnvelopeBase, __doc__=op.description or None,
                        op=(op_type, ...), payload=(payload_type, None))


@functools.cache
def envelope_adapter() -> TypeAdapter[Any]:
    """The validator of every envelope, one model per registered op, built on first use.

    Built lazily because the function app imports this module on every cold start
    while only instances that receive a queue message (or a producer validating one)
    need it; building it costs tens of milliseconds.
    """
    models = tuple(_envelope_model(op) for op in OPS.values())
    envelope: Any = Annotated[Union[models], Field(discriminator="op")]  # noqa: UP007  (built at run time)
    return TypeAdapter(envelope)


def __getattr__(name: str) -> Any:
    # ENVELOPE_ADAPTER stays importable by its old name; it is built on first access.
    if name == "ENVELOPE_ADAPTER":
        return envelope_adapter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema producers validate against (docs/commands.schema.json)."""
    schema = envelope_adapter().json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Stowage queue command envelope, version 1"
    return schema


# --------------------------------------------------------------------------- processing


#: Where a ``payload_ref`` blob must be: ``commands/payloads/<tenant>/...`` in the
#: data container, ``<tenant>`` being the envelope's own tenant (what CommandClient writes).
PAYLOAD_PREFIX = "commands/payloads/"
# A command message is the envelope around client JSON values, which the payload
# models hold to MAX_JSON_DEPTH themselves; the envelope and payload structure add a few levels.
_MESSAGE_DEPTH = MAX_JSON_DEPTH + 16


def payload_prefix(tenant: str) -> str:
    """The only place a ``payload_ref`` of ``tenant``'s commands may point (InvalidInput for a bad tenant)."""
    return f"{PAYLOAD_PREFIX}{check_tenant(tenant)}/"


class PoisonMessage(Exception):
    """The message can never be applied; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()


def _parse_message(text: str | bytes, what: str) -> Any:
    """Parsed JSON of a message; InvalidInput when it is not JSON, too deep, or not standard JSON."""
    return parse_client_json(text, what=what, max_depth=_MESSAGE_DEPTH)


class CommandProcessor:
    """Applies command messages through the domain services.

    References in a message are checked before anything is read: a claim check
    must point under the commands queue's offload prefix
    (``offload/queues/stowage-commands/``), a ``payload_ref`` under
    :func:`payload_prefix` of the envelope's tenant; anything else is poison, and
    the blob it names is neither read nor deleted.

    A ``payload_ref`` command, once applied, leaves an "applied" row in the
    commands table (partition ``applied|<tenant>``, row: SHA-256 of op and
    idempotency key, with the ref it consumed), written before its payload blob
    is deleted. A redelivery finds the row and counts as a duplicate, without
    needing the blob (the ops' own markers sit in partitions named by the
    payload, which a redelivery no longer has). A crash after the op's write but
    before the row leaves the blob, so the redelivery applies again, which the
    op's own idempotency marker turns into a replay.
    """

    def __init__(self, stores: Stores, services: Callable[[str], Any] | None = None) -> None:
        """``services(domain name)`` hands out the app's service instances (so state such as
        checkpoints' group commit is shared); by default one per domain is built here, once."""
        self._stores = stores
        self._services = services or self._own_service
        self._built: dict[str, Any] = {}
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self._poison = stores.queue(names.QUEUE_COMMANDS_POISON)
        self._table = stores.table(names.TABLE_COMMANDS)
        self._claim_prefix = queue_offload_prefix(names.QUEUE_COMMANDS)

    def process(self, body: str, *, dequeue_count: int = 1, message_id: str = "",
                decode_error: str | None = None) -> Outcome:
        """Apply one message. Passing failures raise (the host retries); others go to poison.

        Any exception other than a poison verdict is recorded as ``"<type>: <message>"``
        before it is raised again, so the reason survives the host's move to the
        poison queue after its last attempt. A message the queue could not decode
        (``decode_error`` of :class:`QueueMessage`; ``body`` is then its raw text)
        goes to poison at once.
        """
        if decode_error is not None:
            reason = f"message body is not valid base64/UTF-8: {decode_error}"
            self.poison(body, reason, dequeue_count=dequeue_count, message_id=message_id)
            return Outcome("poisoned", reason)
        context = RequestContext(actor=QUEUE_ACTOR, source="queue").with_ids(message_id=message_id[:128] or None)
        try:
            with acting_as(context):
                return self._apply(body)
        except PoisonMessage as exc:
            self.poison(body, exc.reason, dequeue_count=dequeue_count, message_id=message_id)
            return Outcome("poisoned", exc.reason)
        except Exception as exc:
            self._record_failure(body, f"{type(exc).__name__}: {exc}", dequeue_count)
            raise

    def _own_service(self, domain_name: str) -> Any:
        service = self._built.get(domain_name)
        if service is None:
            service = self._built[domain_name] = next(
                d for d in DOMAINS if d.name == domain_name).service(self._stores)
        return service

    def _apply(self, body: str) -> Outcome:
        claim = claim_check_ref(body)
        claim_key = None
        if claim is not None:
            try:
                claim_key = check_ref(claim, self._claim_prefix)
            except ValueError as exc:
                raise PoisonMessage(f"claim check refused: {exc}") from None
            try:
                data = self._blobs.get(claim_key).data
            except NotFound:
                # Claim-check blobs are deleted only after their command was applied.
                return Outcome("duplicate", "claim-check blob already consumed")
            try:
                body = data.decode("utf-8")
            except UnicodeDecodeError:
                raise PoisonMessage("claim-check blob is not UTF-8 text") from None
        try:
            document = _parse_message(body, "message")
        except InvalidInput as exc:
            raise PoisonMessage(str(exc)) from None
        try:
            envelope = envelope_adapter().validate_python(document)
        except ValidationError as exc:
            raise PoisonMessage(f"envelope is invalid: {_summary(exc)}") from None
        payload_key = None
        if envelope.payload_ref is not None:
            payload_key = self._payload_key(envelope)
            applied = self._applied(envelope)
            if applied is not None:
                if applied.get("ref") == envelope.payload_ref:
                    self._discard(payload_key)  # left behind if the first delivery stopped after its row
                self._discard(claim_key)
                return Outcome("duplicate", "payload_ref command already applied")
            self._load_payload(envelope, payload_key)
        try:
            outcome = self._dispatch(envelope)
        except _PERMANENT as exc:
            raise PoisonMessage(f"{envelope.op} rejected: {type(exc).__name__}: {exc}") from None
        if payload_key is not None:
            self._mark_applied(envelope, outcome)
            self._discard(payload_key)
        self._discard(claim_key)
        return outcome

    def _payload_key(self, envelope: Any) -> str:
        """The blob key of the envelope's ``payload_ref``, if it points where that tenant's payloads live."""
        try:
            prefix = payload_prefix(envelope.tenant)
        except InvalidInput:
            raise PoisonMessage(f"payload_ref refused: tenant {envelope.tenant!r} is not a valid tenant name") from None
        try:
            return check_ref(envelope.payload_ref, prefix)
        except ValueError as exc:
            raise PoisonMessage(f"payload_ref refused: {exc}") from None

    def _load_payload(self, envelope: Any, key: str) -> None:
        try:
            data = self._blobs.get(key).data
        except NotFound:
            raise PoisonMessage(f"payload_ref {envelope.payload_ref!r} names no blob") from None
        try:
            envelope.payload = OPS[envelope.op].payload.model_validate(_parse_message(data, "payload blob"))
        except InvalidInput as exc:
            raise PoisonMessage(str(exc)) from None
        except ValidationError as exc:
            raise PoisonMessage(f"payload blob is invalid: {_summary(exc)}") from None

    def _dispatch(self, envelope: Any) -> Outcome:
        if envelope.payload is None:
            raise PoisonMessage("envelope has no payload")
        service = self._services(DOMAIN_OF_OP[envelope.op])
        return OPS[envelope.op].apply(service, envelope.tenant, envelope.payload, envelope.idempotency_key)

    def _discard(self, key: str | None) -> None:
        if key is None:
            return
        try:
            self._blobs.delete(key)
        except NotFound:
            pass

    # -- applied rows of payload_ref commands

    @staticmethod
    def _applied_keys(envelope: Any) -> tuple[str, str]:
        return f"{_APPLIED_PARTITION}|{envelope.tenant}", _digest(f"{envelope.op}\n{envelope.idempotency_key}")

    def _applied(self, envelope: Any) -> Entity | None:
        try:
            return self._table.get(*self._applied_keys(envelope))
        except NotFound:
            return None

    def _mark_applied(self, envelope: Any, outcome: Outcome) -> None:
        partition, row = self._applied_keys(envelope)
        self._table.upsert(Entity(partition, row, {
            "fmt": 1, "op": envelope.op, "ref": envelope.payload_ref, "status": outcome.status,
            "at": datetime.now(timezone.utc).isoformat(),
        }))

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
            self._table.upsert(Entity(_FAILURE_PARTITION, _digest(body), {
                "reason": reason[:2000], "dequeue_count": dequeue_count,
                "at": datetime.now(timezone.utc).isoformat(),
            }))
        except StowageError:
            log.exception("could not record why a command failed")

    def failure_record(self, body: str) -> Entity | None:
        """The last failure recorded for this exact message (reason, dequeue_count, at), if any."""
        try:
            return self._table.get(_FAILURE_PARTITION, _digest(body))
        except NotFound:
            return None

    def failure_reason(self, body: str) -> str | None:
        record = self.failure_record(body)
        return None if record is None else str(record.get("reason", ""))


def _summary(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(envelope)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- poison queue tools


#: Seconds ``PoisonQueue.list`` and ``replay`` hold each message hidden while they walk the queue.
HOLD_SECONDS = 300
#: Characters of an undecodable message an entry shows.
SHOWN_CHARS = 2000


@dataclass(frozen=True)
class PoisonEntry:
    """A message in the poison queue and why it is there.

    ``body`` is the original command message; for one that cannot be decoded it
    is the raw message, cut to :data:`SHOWN_CHARS`, and ``replayable`` is False.
    """

    message_id: str
    reason: str
    body: str
    dequeue_count: int
    poisoned_at: str
    replayable: bool = True


@dataclass(frozen=True)
class ReplayReport:
    """What ``PoisonQueue.replay`` did: ids moved, entries left in place (with why), ids not found."""

    moved: list[str]
    skipped: list[PoisonEntry]
    not_found: list[str]


class _Walk:
    """One pass over a queue by receiving: every message once, held hidden until the pass ends.

    Receives up to 32 messages at a time with a visibility timeout of ``hold``
    seconds, until a receive brings no message not seen yet. On exit, every held
    message (all but those the caller deleted and :meth:`release`\\ d) is made
    visible again at once (extend to 0). A message whose hold runs out comes back
    in a receive: the pass takes its new receipt and ends once nothing else is new.
    """

    def __init__(self, queue: Any, hold: int) -> None:
        self._queue = queue
        self._hold = hold
        self._seen: set[str] = set()
        self._held: dict[str, str] = {}

    def __iter__(self) -> Iterator[QueueMessage]:
        while True:
            batch = self._queue.receive(max_messages=MAX_RECEIVE_MESSAGES, visibility_timeout=self._hold)
            fresh = []
            for message in batch:
                if message.id in self._seen:
                    self._held[message.id] = message.receipt
                else:
                    self._seen.add(message.id)
                    self._held[message.id] = message.receipt
                    fresh.append(message)
            if not fresh:
                return
            yield from fresh

    def release(self, message: QueueMessage) -> None:
        """The caller deleted this message: do not make it visible again."""
        self._held.pop(message.id, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        held, self._held = self._held, {}
        for receipt in held.values():
            try:
                self._queue.extend(receipt, 0)
            except NotFound:
                pass  # deleted, or received by someone else since: not ours to show again


class PoisonQueue:
    """List and replay the commands poison queue, however many messages it holds.

    A queue can be peeked at 32 messages at most (SQS cannot peek at all), so
    both walk the queue by receiving: every message is received once, with a
    visibility timeout of :data:`HOLD_SECONDS`, and when the walk ends every
    message not moved is made visible again at once. What follows:

    * each walk counts as a delivery in the poison messages' dequeue counts
      (nothing consumes the poison queue, so nothing acts on them);
    * while a walk runs, another walk or receiver does not see the messages it
      holds; a walk that is killed leaves them hidden for up to HOLD_SECONDS;
    * a walk longer than HOLD_SECONDS ends when its first messages come back.

    A message that cannot be decoded (not JSON, nested too deeply, not standard
    JSON, empty) is listed raw, cut short, with the reason, and replay leaves it
    where it is and reports it.
    """

    def __init__(self, stores: Stores) -> None:
        self._poison = stores.queue(names.QUEUE_COMMANDS_POISON)
        self._commands = stores.queue(names.QUEUE_COMMANDS)
        self._processor = CommandProcessor(stores)

    def list(self, limit: int | None = None) -> list[PoisonEntry]:
        """Every poison message (at most ``limit``), oldest first as the queue hands them out."""
        entries: list[PoisonEntry] = []
        with _Walk(self._poison, HOLD_SECONDS) as walk:
            for message in walk:
                if limit is not None and len(entries) >= limit:
                    break
                entries.append(self._entry(message)[0])
        return entries

    def replay(self, message_ids: set[str] | None = None) -> ReplayReport:
        """Move poison messages (all, or those with these ids) back to the commands queue.

        Wrapped messages go back as the original message; ones the host moved
        unchanged go back as they are. Undecodable ones stay and are reported in
        ``skipped``; so is a message whose original this replay already moved
        (it failed again while the replay ran). Ids not in the queue are in ``not_found``.
        """
        wanted = None if message_ids is None else set(message_ids)
        moved: list[str] = []
        skipped: list[PoisonEntry] = []
        sent: set[str] = set()
        with _Walk(self._poison, HOLD_SECONDS) as walk:
            for message in walk:
                if wanted is not None:
                    if message.id not in wanted:
                        continue
                    wanted.discard(message.id)
                entry, original = self._entry(message)
                if original is None:
                    skipped.append(entry)
                elif _digest(original) in sent:
                    skipped.append(replace(entry, reason=f"already replayed by this run, and failed again: {entry.reason}"))
                else:
                    self._commands.send(original)
                    self._poison.delete(message.receipt)
                    walk.release(message)
                    sent.add(_digest(original))
                    moved.append(message.id)
                if wanted is not None and not wanted:
                    break
        return ReplayReport(moved, skipped, sorted(wanted or ()))

    def _entry(self, message: QueueMessage) -> tuple[PoisonEntry, str | None]:
        """The entry for a poison message, and the original message to replay (None: cannot be decoded)."""
        body = message.body
        problem = None
        document: Any = None
        if not body:
            problem = "the message is empty (or its claim-check blob is gone)"
        else:
            try:
                document = _parse_message(body, "poison message")
            except InvalidInput as exc:
                problem = str(exc)
        if (isinstance(document, dict) and set(document) == {"poison", "message"}
                and isinstance(document["message"], str) and isinstance(document["poison"], dict)):
            record = document["poison"]
            count = record.get("dequeue_count")
            return PoisonEntry(message.id, str(record.get("reason", "")), document["message"],
                               count if type(count) is int else 0, str(record.get("at", ""))), document["message"]
        # Moved unchanged by the host after its last attempt: the processor recorded why.
        failure = self._processor.failure_record(body) if body else None
        count = failure.get("dequeue_count") if failure is not None else 0
        at = str(failure.get("at", "")) if failure is not None else ""
        last = str(failure.get("reason", "")) if failure is not None else ""
        count = count if type(count) is int else 0
        if problem is not None:
            reason = f"cannot be decoded: {problem}" + (f" (last error: {last})" if last else "")
            shown = body if len(body) <= SHOWN_CHARS else body[:SHOWN_CHARS] + "…"
            return PoisonEntry(message.id, reason, shown, count, at, replayable=False), None
        return PoisonEntry(message.id, last or "failed on every delivery (no reason recorded)", body, count, at), body


# --------------------------------------------------------------------------- producer


class CommandClient:
    """Posts command envelopes to the commands queue (payloads over the limit go by blob)."""

    def __init__(self, stores: Stores) -> None:
        self._queue = stores.queue(names.QUEUE_COMMANDS)
        self._blobs = stores.blobs(names.CONTAINER_DATA)
        self._threshold = stores.settings.offload_threshold_bytes

    def send(self, op: str, tenant: str, payload: dict[str, Any], *, idempotency_key: str | None = None) -> str:
        """Validate and enqueue a command; returns its idempotency key."""
        check_tenant(tenant)
        key = idempotency_key or uuid.uuid4().hex
        envelope: dict[str, Any] = {"version": ENVELOPE_VERSION, "op": op, "tenant": tenant,
                                    "idempotency_key": key, "payload": payload}
        try:
            envelope_adapter().validate_python(envelope)
        except ValidationError as exc:
            raise InvalidInput(f"command is invalid: {_summary(exc)}") from None
        body = json.dumps(envelope, ensure_ascii=False)
        if len(body.encode("utf-8")) > self._threshold:
            blob_key = f"{payload_prefix(tenant)}{uuid.uuid4().hex}"
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
