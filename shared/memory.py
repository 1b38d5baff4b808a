"""Placeholder: being written (issue 3)."""

from __future__ import annotations

from shared.command_ops import CommandOp
from shared.stores import Stores


class MemoryService:
    def __init__(self, stores: Stores) -> None:
        self._stores = stores


COMMANDS: tuple[CommandOp, ...] = ()
