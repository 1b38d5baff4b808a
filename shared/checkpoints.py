"""Placeholder: being written (issue 4)."""

from __future__ import annotations

from shared.stores import Stores


class CheckpointService:
    def __init__(self, stores: Stores) -> None:
        self._stores = stores
