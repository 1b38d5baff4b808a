"""Memory's queue ops: each applies its payload through the public service API.

Every op passes the envelope's idempotency key to the service, which writes its
marker in the same atomic batch as the change: a redelivery answers "duplicate"
without writing, so a redelivered older edit never reverts a newer one. A thread
delete keeps its marker and the create's when it removes the thread's rows, so
their redeliveries are duplicates too.
"""

from __future__ import annotations

from shared.command_ops import CommandOp
from shared.command_ops import Outcome as Applied
from shared.domains.memory.models import (
    MemoryAddMessagesPayload,
    MemoryCreateThreadPayload,
    MemoryDeleteMessagePayload,
    MemoryDeleteThreadPayload,
    MemoryUpdateMessagePayload,
    MemoryUpdateThreadPayload,
    given,
)
from shared.domains.memory.service import MemoryService
from shared.errors import NotFound


def _status(replayed: bool) -> str:
    return "duplicate" if replayed else "applied"


def apply_create_thread(service: MemoryService, tenant: str, payload: MemoryCreateThreadPayload, key: str) -> Applied:
    """Create the thread (its id derived from ``key`` when the payload names none)."""
    outcome = service.create_thread_outcome(tenant, payload.resource, thread_id=payload.thread_id,
                                            title=payload.title, metadata=payload.metadata, idempotency_key=key)
    return Applied(_status(outcome.replayed), f"thread {outcome.result.thread_id}")


def apply_update_thread(service: MemoryService, tenant: str, payload: MemoryUpdateThreadPayload, key: str) -> Applied:
    """Set the fields the payload gives."""
    outcome = service.update_thread_outcome(tenant, payload.thread_id, title=given(payload, "title"),
                                            metadata=given(payload, "metadata"), idempotency_key=key)
    return Applied(_status(outcome.replayed), f"thread {payload.thread_id} updated")


def apply_delete_thread(service: MemoryService, tenant: str, payload: MemoryDeleteThreadPayload, key: str) -> Applied:
    """Delete the thread once per ``key``; already gone is a duplicate."""
    try:
        outcome = service.delete_thread_outcome(tenant, payload.thread_id, idempotency_key=key)
    except NotFound:
        return Applied("duplicate", f"thread {payload.thread_id} already gone")
    return Applied(_status(outcome.replayed), f"thread {payload.thread_id} deleted")


def apply_add_messages(service: MemoryService, tenant: str, payload: MemoryAddMessagesPayload, key: str) -> Applied:
    """Append the messages once per ``key``."""
    outcome = service.add_messages_outcome(tenant, payload.thread_id, [m.new_message() for m in payload.messages],
                                           idempotency_key=key)
    messages = outcome.result
    seqs = f"seq {messages[0].seq}-{messages[-1].seq}" if messages else "no messages left"
    return Applied(_status(outcome.replayed), f"thread {payload.thread_id}: {seqs}")


def apply_update_message(service: MemoryService, tenant: str, payload: MemoryUpdateMessagePayload,
                         key: str) -> Applied:
    """Edit the fields the payload gives, once per ``key``."""
    outcome = service.update_message_outcome(tenant, payload.thread_id, payload.message_id,
                                             content=given(payload, "content"), metadata=given(payload, "metadata"),
                                             idempotency_key=key)
    return Applied(_status(outcome.replayed), f"message {payload.message_id} updated")


def apply_delete_message(service: MemoryService, tenant: str, payload: MemoryDeleteMessagePayload,
                         key: str) -> Applied:
    """Delete the message once per ``key``; already gone is a duplicate."""
    try:
        outcome = service.delete_message_outcome(tenant, payload.thread_id, payload.message_id, idempotency_key=key)
    except NotFound:
        return Applied("duplicate", f"message {payload.message_id} already gone")
    return Applied(_status(outcome.replayed), f"message {payload.message_id} deleted")


COMMANDS: tuple[CommandOp, ...] = (
    CommandOp("memory.create_thread", MemoryCreateThreadPayload, apply_create_thread, "Create a thread."),
    CommandOp("memory.update_thread", MemoryUpdateThreadPayload, apply_update_thread,
              "Set a thread's title and/or metadata."),
    CommandOp("memory.delete_thread", MemoryDeleteThreadPayload, apply_delete_thread,
              "Delete a thread and all its messages."),
    CommandOp("memory.add_messages", MemoryAddMessagesPayload, apply_add_messages,
              "Append messages to a thread (once per idempotency key)."),
    CommandOp("memory.update_message", MemoryUpdateMessagePayload, apply_update_message,
              "Edit a message's content and/or metadata."),
    CommandOp("memory.delete_message", MemoryDeleteMessagePayload, apply_delete_message, "Delete a message."),
)
