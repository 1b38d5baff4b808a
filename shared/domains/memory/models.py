"""Memory's models: results, enums, limits and the input models HTTP and the queue share."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.backends.base import MAX_BATCH_OPERATIONS
from shared.command_ops import CommandPayload
from shared.errors import AlreadyExists, Conflict, NotFound
from shared.keys import ID_PATTERN

#: Largest content of one message (UTF-8 text, or JSON parts serialised), checked before writing.
MAX_CONTENT_BYTES = 8 * 1024 * 1024
#: Messages per add_messages call: with the thread entity and an idempotency marker, one batch.
MAX_MESSAGES_PER_CALL = MAX_BATCH_OPERATIONS - 2
#: Largest metadata of a thread or a message, as JSON.
MAX_METADATA_BYTES = 8 * 1024
#: Longest title of a thread, in characters.
MAX_TITLE_LENGTH = 512
#: A thread delete interrupted this long ago is finished by the timer (earlier, it may still be running).
DELETION_GRACE_SECONDS = 600

#: Content of a message: text, or structured JSON parts.
Content = str | list[Any] | dict[str, Any]


class Role(str, enum.Enum):
    """Who wrote a message."""

    user = "user"
    assistant = "assistant"
    system = "system"
    tool = "tool"


class Order(str, enum.Enum):
    """Order of messages within a history page: chronological or newest first."""

    asc = "asc"
    desc = "desc"


# --------------------------------------------------------------------------- errors


class ThreadNotFound(NotFound):
    """The thread does not exist, is another tenant's, or is being deleted (404)."""

    title = "Thread not found"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} does not exist")
        #: The thread asked for.
        self.thread_id = thread_id


class MessageNotFound(NotFound):
    """The message is not in the thread (never was, or was deleted) (404)."""

    title = "Message not found"

    def __init__(self, thread_id: str, message_id: str) -> None:
        super().__init__(f"message {message_id!r} does not exist in thread {thread_id!r}")
        #: The thread asked in.
        self.thread_id = thread_id
        #: The message asked for.
        self.message_id = message_id


class ThreadAlreadyExists(AlreadyExists):
    """A thread with this id exists already; choose another id, or leave it out to get one (409)."""

    title = "Thread already exists"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} already exists; choose another id, or give none to get a new one")
        #: The id asked for.
        self.thread_id = thread_id


class ThreadFull(Conflict):
    """The thread has handed out its last seq; start a new thread (409)."""

    title = "Thread full"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} has reached the maximum number of messages; start a new thread")
        #: The thread concerned.
        self.thread_id = thread_id


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Thread:
    """A conversation thread, owned by a resource (a user, a team, an agent) of a tenant."""

    #: The thread's id, unique in the tenant.
    thread_id: str
    #: Its owner inside the tenant.
    resource: str
    #: The title, if any.
    title: str | None
    #: Free JSON metadata.
    metadata: dict[str, Any]
    #: ISO-8601 UTC creation time.
    created_at: str
    #: ISO-8601 UTC time of the last change, messages included.
    updated_at: str
    #: How many messages the thread holds, exact.
    message_count: int
    #: Changes on every change to the thread, its messages included.
    etag: str = ""


@dataclass(frozen=True)
class Message:
    """One message of a thread; ``seq`` counts from 1 and only increases."""

    #: The message's id; it embeds the seq.
    message_id: str
    #: The thread it belongs to.
    thread_id: str
    #: Position in the thread: from 1, strictly increasing, never reused.
    seq: int
    #: Who wrote it.
    role: Role
    #: Text, or structured JSON parts.
    content: Content
    #: Free JSON metadata.
    metadata: dict[str, Any]
    #: The message this one answers, if any.
    parent_message_id: str | None
    #: ISO-8601 UTC time it was added.
    created_at: str
    #: ISO-8601 UTC time of its last edit.
    updated_at: str
    #: Changes when the message is edited.
    etag: str = ""


@dataclass(frozen=True)
class NewMessage:
    """A message to append: role, content (text or JSON parts), metadata, optional parent."""

    role: Role | str
    content: Content
    metadata: dict[str, Any] | None = None
    parent_message_id: str | None = None


# --------------------------------------------------------------------------- inputs (HTTP bodies and queue payloads)


class MessageInput(BaseModel):
    """A message to append."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="Who wrote it: user, assistant, system or tool.")
    content: str | list[Any] | dict[str, Any] = Field(
        description="Text, or structured JSON parts (a list or an object). Up to 8 MiB; long content is "
                    "stored whole in a blob.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 8 KiB.")
    parent_message_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=ID_PATTERN,
        description="A message of the same thread this one answers: its id, e.g. 'msg_000000000042_1a2b3c4d'.")

    def new_message(self) -> NewMessage:
        """The message as the service takes it."""
        return NewMessage(self.role, self.content, self.metadata, self.parent_message_id)


class MemoryCreateThreadPayload(CommandPayload):
    """Create a thread. Without ``thread_id``, its id is derived from the idempotency key."""

    resource: str = Field(description="Owner of the thread inside the tenant, e.g. 'user_123' or 'team_ml'.")
    thread_id: str | None = Field(default=None, description="The thread's id; generated when absent.")
    title: str | None = Field(default=None, description="A title.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 8 KiB.")


class MemoryUpdateThreadPayload(CommandPayload):
    """Set a thread's title and/or replace its metadata (fields given only)."""

    thread_id: str
    title: str | None = Field(default=None, description="New title; null clears it.")
    metadata: dict[str, Any] | None = Field(default=None, description="New metadata; null clears it.")


class MemoryDeleteThreadPayload(CommandPayload):
    """Delete a thread and all its messages."""

    thread_id: str


class MemoryAddMessagesPayload(CommandPayload):
    """Append messages to a thread, atomically and once per idempotency key."""

    thread_id: str
    messages: list[MessageInput] = Field(min_length=1, max_length=MAX_MESSAGES_PER_CALL)


class MemoryUpdateMessagePayload(CommandPayload):
    """Edit a message's content and/or replace its metadata (fields given only)."""

    thread_id: str
    message_id: str
    content: str | list[Any] | dict[str, Any] | None = Field(default=None, description="New content.")
    metadata: dict[str, Any] | None = Field(default=None, description="New metadata; null clears it.")


class MemoryDeleteMessagePayload(CommandPayload):
    """Delete one message."""

    thread_id: str
    message_id: str


def given(model: BaseModel, name: str) -> Any:
    """The field's value if the input set it (null included), else ``...`` (keep the stored value)."""
    return getattr(model, name) if name in model.model_fields_set else ...
