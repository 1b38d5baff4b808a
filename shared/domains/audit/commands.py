"""The audit domain's queue ops: none. Entries are made by the sequencer, never sent; erasure is an API call."""

from __future__ import annotations

from shared.command_ops import CommandOp

COMMANDS: tuple[CommandOp, ...] = ()
