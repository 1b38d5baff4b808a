"""Memory's models: results, enums, limits, errors and the input models HTTP and the queue share."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

from shared.backends.base import MAX_BATCH_OPERATIONS
from shared.command_ops import CommandPayload
from shared.errors import AlreadyExists, Conflict, NotFound, PreconditionFailed
from shared.keys import ID_PATTERN
from shared.models_base import RequestBodyModel

#: Largest content of one message (UTF-8 text, or JSON parts serialised), checked before writing.
MAX_CONTENT_BYTES = 8 * 1024 * 1024
#: Messages per add_messages call: with the thread entity, an idempotency marker and the change record, one batch.
MAX_MESSAGES_PER_CALL = MAX_BATCH_OPERATIONS - 3
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
    type_slug = "thread-not-found"
    problem_fields = ("thread_id",)

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} does not exist")
        #: The thread asked for.
        self.thread_id = thread_id


class MessageNotFound(NotFound):
    """The message is not in the thread (never was, or was deleted) (404)."""

    title = "Message not found"
    type_slug = "message-not-found"
    problem_fields = ("thread_id", "message_id")

    def __init__(self, thread_id: str, message_id: str) -> None:
        super().__init__(f"message {message_id!r} does not exist in thread {thread_id!r}")
        #: The thread asked in.
        self.thread_id = thread_id
        #: The message asked for.
        self.message_id = message_id


class ThreadAlreadyExists(AlreadyExists):
    """A thread with this id exists already; choose another id, or leave it out to get one (409)."""

    title = "Thread already exists"
    type_slug = "thread-already-exists"
    problem_fields = ("thread_id",)

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} already exists; choose another id, or give none to get a new one")
        #: The id asked for.
        self.thread_id = thread_id


class ThreadFull(Conflict):
    """The thread has handed out its last seq; start a new thread (409)."""

    title = "Thread full"
    type_slug = "thread-full"
    problem_fields = ("thread_id",)

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} has reached the maximum number of messages; start a new thread")
        #: The thread concerned.
        self.thread_id = thread_id


class ThreadChanged(PreconditionFailed):
    """``If-Match`` named an ETag the thread is no longer at (412); ``current_etag`` is the one it is at."""

    title = "Thread changed"
    type_slug = "thread-changed"
    problem_fields = ("thread_id", "if_match", "current_etag")

    def __init__(self, thread_id: str, if_match: str, current_etag: str) -> None:
        super().__init__(f"thread {thread_id!r} is not at ETag {if_match}")
        #: The thread concerned.
        self.thread_id = thread_id
        #: The ETag the request required.
        self.if_match = if_match
        #: The thread's ETag now.
        self.current_etag = current_etag


class MessageChanged(PreconditionFailed):
    """``If-Match`` named an ETag the message is no longer at (412); ``current_etag`` is the one it is at."""

    title = "Message changed"
    type_slug = "message-changed"
    problem_fields = ("thread_id", "message_id", "if_match", "current_etag")

    def __init__(self, thread_id: str, message_id: str, if_match: str, current_etag: str) -> None:
        super().__init__(f"message {message_id!r} is not at ETag {if_match}")
        #: The thread it is in.
        self.thread_id = thread_id
        #: The message concerned.
        self.message_id = message_id
        #: The ETag the request required.
        self.if_match = if_match
        #: The message's ETag now.
        self.current_etag = current_etag


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
# One model per operation: HTTP bodies are these models; queue payloads are the same
# models with the ids HTTP takes from the path added (unknown fields are refused by both).

ID_RULE = "1-128 letters, digits, '.', '_', ':' or '-'"
#: shared.keys.check_id's rule, declared so that the document says it and the server refuses the same ids.
ID: dict[str, Any] = {"pattern": ID_PATTERN, "min_length": 1, "max_length": 128}
#: An id field of an input model, with that rule.
Id = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=128)]


class MessageInput(RequestBodyModel):
    """A message to append."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="Who wrote it: user, assistant, system or tool.")
    content: str | list[Any] | dict[str, Any] = Field(
        description="Text, or structured JSON parts (a list or an object). Up to 8 MiB; long content is "
                    "stored whole in a blob.")
    metadata: dict[str, Any] | None = Field(default=None, description="Any JSON object, up to 8 KiB.")
    parent_message_id: Id | None = Field(
        default=None,
        description="A message of the same thread this one answers: its id, e.g. 'msg_000000000042_1a2b3c4d'.")

    def new_message(self) -> NewMessage:
        """The message as the service takes it."""
        return NewMessage(self.role, self.content, self.metadata, self.parent_message_id)


class CreateThreadRequest(RequestBodyModel):
    """A thread to create."""

    model_config = ConfigDict(extra="forbid")

    resource: Id = Field(description=f"Owner inside the tenant, e.g. 'user_123' or 'team_ml': {ID_RULE}.")
    thread_id: Id | None = Field(default=None,
                                  description="The id to use (same rule); generated when absent (409 if taken).")
    title: str | None = Field(default=None, max_length=MAX_TITLE_LENGTH, description="A title.")
    metadata: dict[str, Any] | None = Field(default=None, description="Free JSON metadata, up to 8 KiB.")


class UpdateThreadRequest(RequestBodyModel):
    """Fields to change; absent fields are kept, null clears."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=MAX_TITLE_LENGTH, description="New title; null clears it.")
    metadata: dict[str, Any] | None = Field(default=None,
                                            description="New metadata (replaces the old); null clears it.")


class AddMessagesRequest(RequestBodyModel):
    """Several messages, appended atomically with consecutive seqs."""

    model_config = ConfigDict(extra="forbid")

    messages: list[MessageInput] = Field(min_length=1, max_length=MAX_MESSAGES_PER_CALL,
                                         description=f"1 to {MAX_MESSAGES_PER_CALL} messages, in order.")


class UpdateMessageRequest(RequestBodyModel):
    """Fields to change; absent fields are kept."""

    model_config = ConfigDict(extra="forbid")

    # Absent keeps the content; null is refused (400) by the service, so the document does not offer it.
    content: Annotated[Content | None, WithJsonSchema(TypeAdapter(Content).json_schema())] = Field(
        default=None, description="New content: text or JSON parts.")
    metadata: dict[str, Any] | None = Field(default=None, description="New metadata (replaces the old); null clears.")


# --------------------------------------------------------------------------- queue command payloads


class MemoryCreateThreadPayload(CreateThreadRequest, CommandPayload):
    """Create a thread. Without ``thread_id``, its id is derived from the idempotency key."""


class MemoryUpdateThreadPayload(UpdateThreadRequest, CommandPayload):
    """Set a thread's title and/or replace its metadata (fields given only)."""

    thread_id: Id = Field(description="The thread.")


class MemoryDeleteThreadPayload(CommandPayload):
    """Delete a thread and all its messages."""

    thread_id: Id = Field(description="The thread.")


class MemoryAddMessagesPayload(AddMessagesRequest, CommandPayload):
    """Append messages to a thread, atomically and once per idempotency key."""

    thread_id: Id = Field(description="The thread.")


class MemoryUpdateMessagePayload(UpdateMessageRequest, CommandPayload):
    """Edit a message's content and/or replace its metadata (fields given only)."""

    thread_id: Id = Field(description="The thread.")
    message_id: Id = Field(description="The message, e.g. 'msg_000000000042_1a2b3c4d'.")


class MemoryDeleteMessagePayload(CommandPayload):
    """Delete one message."""

    thread_id: Id = Field(description="The thread.")
    message_id: Id = Field(description="The message, e.g. 'msg_000000000042_1a2b3c4d'.")


def given(model: BaseModel, name: str) -> Any:
    """The field's value if the input set it (null included), else ``...`` (keep the stored value)."""
    return getattr(model, name) if name in model.model_fields_set else ...
