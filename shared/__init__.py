"""Stowage: unified storage for AI agents.

    from shared import StorageManager, StowageCheckpointSaver, RemoteCheckpointSaver

The savers import LangGraph, so they load on first use, not with the package (the
function app imports ``shared`` on every cold start and needs no LangGraph).
"""

from typing import Any

from shared.manager import StorageManager

__all__ = ["RemoteCheckpointSaver", "StorageManager", "StowageCheckpointSaver"]


def __getattr__(name: str) -> Any:
    if name in ("StowageCheckpointSaver", "RemoteCheckpointSaver"):
        from shared.domains.checkpoints import savers

        return getattr(savers, name)
    raise AttributeError(f"module 'shared' has no attribute {name!r}")
