"""Checkpoints' models: limits, results, enums, errors and the input models HTTP and the queue share.

Values are opaque typed bytes (LangGraph's ``dumps_typed`` pairs); nothing here
imports LangGraph.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictInt

from shared.command_ops import CommandPayload
from shared.errors import InvalidInput, NotFound
from shared.keys import ID_PATTERN
from shared.models_base import RequestBodyModel, StowageModel

MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 256  # namespaces, channels, versions, run ids
MAX_TYPE_LENGTH = 64
MAX_TASK_PATH_LENGTH = 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_CHANNELS = 1000
MAX_WRITES = 1000
MAX_BULK_IDS = 1000
#: Largest total of serialised bytes one put or put_writes may carry (checked before writing).
MAX_PUT_BYTES = 48 * 1024 * 1024
#: Values up to this size stay in their entity (split over properties); larger ones go to a blob.
INLINE_VALUE_BYTES = 256 * 1024
#: Unreferenced values younger than this are kept: a put in flight may be about to refer to them.
VALUE_GRACE_SECONDS = 600
#: A list page stops growing past this many bytes of values (it always holds one item).
LIST_PAGE_BYTES = 16 * 1024 * 1024


class PruneStrategy(str, Enum):
    """``keep_latest``: keep the newest checkpoint of each namespace; ``delete``: delete the thread."""

    KEEP_LATEST = "keep_latest"
    DELETE = "delete"


@dataclass(frozen=True)
class TypedValue:
    """A serialised value: the serializer's type tag and its bytes (LangGraph's ``dumps_typed`` pair)."""

    type: str
    data: bytes


@dataclass(frozen=True)
class PendingWrite:
    """A write a task made after a checkpoint, not yet folded into the next one."""

    task_id: str
    channel: str
    value: TypedValue
    #: Position in the task's writes; negative for LangGraph's special channels (errors, interrupts...).
    idx: int
    task_path: str = ""


@dataclass(frozen=True)
class TaskWrites:
    """A task's pending writes, each ``(idx, channel, value)``, carried by a put for its parent checkpoint."""

    task_id: str
    writes: Sequence[tuple[int, str, TypedValue]]
    task_path: str = ""


@dataclass(frozen=True)
class CheckpointRef:
    """Where a checkpoint was stored."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    created_at: str
    #: False when a checkpoint with this id was already there and has been replaced.
    created: bool = True


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint with its channel values and pending writes."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    #: The checkpoint as the client serialised it, without its channel values.
    checkpoint: TypedValue
    metadata: dict[str, Any]
    #: Version of each channel that holds a value at this checkpoint.
    channel_versions: dict[str, str]
    values: dict[str, TypedValue]
    #: In (task_path, task_id, idx) order, the order LangGraph applies them in.
    pending_writes: list[PendingWrite]
    created_at: str

    @property
    def size(self) -> int:
        """Serialised bytes of the checkpoint, its values and its pending writes."""
        return (len(self.checkpoint.data) + sum(len(v.data) for v in self.values.values())
                + sum(len(w.value.data) for w in self.pending_writes))


@dataclass(frozen=True)
class WritesResult:
    """What put_writes did: writes stored (new or replaced) and writes already there (kept)."""

    written: int
    kept: int


@dataclass(frozen=True)
class ThreadInfo:
    """A thread that has (or had) checkpoints."""

    thread_id: str
    created_at: str


# --------------------------------------------------------------------------- errors


class CheckpointThreadNotFound(NotFound):
    """The thread has no checkpoints (never had, deleted, or another tenant's) (404).

    ``thread_id`` names it; an operation on several threads names them in ``thread_ids``.
    """

    title = "Checkpoint thread not found"
    type_slug = "checkpoint-thread-not-found"
    problem_fields = ("thread_id", "thread_ids")

    def __init__(self, thread_id: str | None = None, *, thread_ids: Sequence[str] | None = None) -> None:
        super().__init__(f"thread {thread_id!r} has no checkpoints" if thread_id is not None
                         else "none of these threads has checkpoints")
        #: The thread asked for.
        self.thread_id = thread_id
        #: The threads asked for, when there were several.
        self.thread_ids = None if thread_ids is None else list(thread_ids)


class CheckpointNotFound(NotFound):
    """No checkpoint with this id (or, without one, none at all) in the thread's namespace (404)."""

    title = "Checkpoint not found"
    type_slug = "checkpoint-not-found"
    problem_fields = ("thread_id", "checkpoint_ns", "checkpoint_id")

    def __init__(self, thread_id: str, checkpoint_ns: str, checkpoint_id: str | None = None) -> None:
        if checkpoint_id is None:
            message = f"thread {thread_id!r} has no checkpoint in namespace {checkpoint_ns!r}"
        else:
            message = f"thread {thread_id!r} has no checkpoint {checkpoint_id!r} in namespace {checkpoint_ns!r}"
        super().__init__(message)
        #: The thread asked in.
        self.thread_id = thread_id
        #: The namespace asked in ('' is the root).
        self.checkpoint_ns = checkpoint_ns
        #: The checkpoint asked for; None when the latest was asked for.
        self.checkpoint_id = checkpoint_id


class RunCheckpointsNotFound(NotFound):
    """None of these runs wrote a checkpoint (in this tenant) (404)."""

    title = "Run checkpoints not found"
    type_slug = "run-checkpoints-not-found"
    problem_fields = ("run_ids",)

    def __init__(self, run_ids: Sequence[str]) -> None:
        super().__init__("none of these runs wrote checkpoints")
        #: The runs asked for.
        self.run_ids = list(run_ids)


# --------------------------------------------------------------------------- inputs (HTTP bodies and queue payloads)
# One model per operation: HTTP bodies are these models; queue payloads are the same
# models with what HTTP takes from the path added (and unknown fields refused).

ID_RULE = "1-128 letters, digits, '.', '_', ':' or '-'"
#: The service's rules, declared so that the document says them and the server refuses the same values:
#: ids as shared.keys.check_id, texts (channels, versions, namespaces, task ids, run ids) without control characters.
ID: dict[str, Any] = {"pattern": ID_PATTERN, "min_length": 1, "max_length": MAX_ID_LENGTH}
#: An id field of an input model, with that rule.
Id = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=MAX_ID_LENGTH)]
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
TEXT: dict[str, Any] = {"pattern": TEXT_PATTERN, "min_length": 1, "max_length": MAX_TEXT_LENGTH}
Text = Annotated[str, Field(**TEXT)]
#: Standard base64 with padding, as base64.b64decode(validate=True) takes it.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _integral(value: Any) -> Any:
    """3.0 as 3: JSON Schema's integer includes it; booleans and strings stay refused (StrictInt)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


def _text_keys(schema: dict[str, Any]) -> None:
    """A dict keyed by Text, as JSON Schema says it: pydantic puts the key pattern in patternProperties
    (which leaves other keys free), so move it to propertyNames and the value schema to additionalProperties."""
    patterns = schema.pop("patternProperties", {})
    if patterns:
        (schema["additionalProperties"],) = patterns.values()
    schema["propertyNames"] = {"pattern": TEXT["pattern"], "minLength": TEXT["min_length"],
                               "maxLength": TEXT["max_length"]}


class Value(StowageModel):
    """A serialised value: the serializer's type tag and the bytes, base64-encoded."""

    type: str = Field(pattern=f"^[!-~]{{1,{MAX_TYPE_LENGTH}}}$",
                      description="Serializer type tag, e.g. 'msgpack' or 'json': printable ASCII, no spaces.")
    data: str = Field(pattern=BASE64_PATTERN, description="The serialised bytes, standard base64 with padding.")

    @classmethod
    def of(cls, value: TypedValue) -> Value:
        """A stored value as sent back (valid by construction: not checked again)."""
        return cls.model_construct(type=value.type, data=base64.b64encode(value.data).decode("ascii"))

    def typed(self, what: str) -> TypedValue:
        """The value as the service takes it; InvalidInput when ``data`` is not base64."""
        try:
            return TypedValue(self.type, base64.b64decode(self.data, validate=True))
        except ValueError:  # binascii.Error, or a non-ASCII character, which b64decode refuses as a plain ValueError
            raise InvalidInput(f"{what}: data is not valid base64 (standard alphabet, with padding)") from None


class WriteIn(StowageModel):
    """One pending write."""

    idx: JsonInt = Field(ge=-(2**31), le=2**31,
                         description="Position in the task's writes (an integer; true/false are refused); "
                                       "negative for special channels (replaced, not kept, when written again).")
    channel: Text
    value: Value


class WritesPut(StowageModel):
    """A task's pending writes for a checkpoint."""

    task_path: str = Field(default="", max_length=MAX_TASK_PATH_LENGTH, pattern=TEXT_PATTERN,
                           description="Path of the task in the graph.")
    writes: list[WriteIn] = Field(max_length=MAX_WRITES)


class CarriedWrites(WritesPut):
    """One task's pending writes for the parent checkpoint, carried by the put of the next checkpoint."""

    task_id: Text = Field(description="The task's id: 1-256 characters, no control characters.")


class CheckpointPut(StowageModel):
    """A checkpoint to store, with the channel values it introduces."""

    parent_checkpoint_id: Id | None = Field(default=None, description="The checkpoint this one follows.")
    checkpoint: Value = Field(description="The checkpoint as serialised by the client, without channel values.")
    metadata: dict[str, Any] = Field(default_factory=dict,
                                     description="JSON metadata: source, step, run_id, parents and user keys.")
    channel_versions: dict[Text, Text] = Field(
        default_factory=dict, json_schema_extra=_text_keys,
        description="Version of every channel that holds a value at this checkpoint.")
    new_values: dict[Text, Value] = Field(
        default_factory=dict, json_schema_extra=_text_keys,
        description="Values this checkpoint writes, by channel (stored once per channel version; the others "
                    "come from earlier checkpoints).")
    writes: list[CarriedWrites] = Field(
        default_factory=list, max_length=MAX_WRITES,
        description="Pending writes of tasks of the parent checkpoint (needs parent_checkpoint_id; at most "
                    f"{MAX_WRITES} writes in all), stored with this checkpoint: everything is validated before "
                    "anything is written, and the rows share the checkpoint's atomic batch (so both are stored, "
                    "or neither) whenever they fit one, as its values do. The rules of PUT .../writes/{task_id} "
                    "apply: a regular write already stored is kept, a special one (idx < 0) replaced.")


class CopyRequest(RequestBodyModel):
    """Where to copy a thread."""

    target_thread_id: Id = Field(description=f"The thread to copy to: {ID_RULE}; rows it already has "
                                                     "are kept.")


class PruneRequest(RequestBodyModel):
    """How to prune a thread."""

    strategy: PruneStrategy = Field(default=PruneStrategy.KEEP_LATEST,
                                    description="keep_latest: the newest checkpoint of each namespace; "
                                                "delete: the whole thread.")


class RunsDelete(RequestBodyModel):
    """Runs whose checkpoints to delete."""

    run_ids: list[Text] = Field(min_length=1, max_length=100, description="Run ids (metadata 'run_id').")


# --------------------------------------------------------------------------- queue command payloads


class DeleteThreadPayload(CommandPayload):
    """Delete a thread's checkpoints, values and writes."""

    thread_id: Id = Field(description=f"The thread to delete: {ID_RULE}.")


class DeleteRunsPayload(RunsDelete, CommandPayload):
    """Delete every checkpoint these runs wrote."""


class CopyThreadPayload(CopyRequest, CommandPayload):
    """Copy a thread's checkpoints, values and writes to another thread."""

    source_thread_id: Id = Field(description=f"The thread to copy from: {ID_RULE}.")


class PrunePayload(PruneRequest, CommandPayload):
    """Prune threads: keep the latest checkpoint of each namespace, or delete them."""

    thread_ids: list[Id] = Field(min_length=1, max_length=100,
                                                          description=f"The threads to prune: {ID_RULE}.")
