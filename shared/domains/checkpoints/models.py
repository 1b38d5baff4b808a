"""Checkpoints' models: limits, results, enums and the input models HTTP and the queue share.

Values are opaque typed bytes (LangGraph's ``dumps_typed`` pairs); nothing here
imports LangGraph.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import Field

from shared.command_ops import CommandPayload

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


# --------------------------------------------------------------------------- queue command inputs


class DeleteThreadPayload(CommandPayload):
    """Delete a thread's checkpoints, values and writes."""

    thread_id: str = Field(description="The thread to delete.")


class DeleteRunsPayload(CommandPayload):
    """Delete every checkpoint these runs wrote."""

    run_ids: list[str] = Field(min_length=1, max_length=100, description="Run ids (metadata 'run_id').")


class CopyThreadPayload(CommandPayload):
    """Copy a thread's checkpoints, values and writes to another thread."""

    source_thread_id: str = Field(description="The thread to copy from.")
    target_thread_id: str = Field(description="The thread to copy to; rows it already has are kept.")


class PrunePayload(CommandPayload):
    """Prune threads: keep the latest checkpoint of each namespace, or delete them."""

    thread_ids: list[str] = Field(min_length=1, max_length=100, description="The threads to prune.")
    strategy: PruneStrategy = Field(default=PruneStrategy.KEEP_LATEST, description="keep_latest or delete.")
