"""Stowage: unified storage for AI agents.

    from shared import StorageManager, StowageCheckpointSaver, RemoteCheckpointSaver

Every name here loads on first use, not with the package: importing any
``shared.<module>`` runs this file first, and the function app imports
``shared.names`` and friends on every cold start without needing the facade
(``shared.manager`` imports every domain's client) or the savers (LangGraph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.domains.checkpoints.savers import RemoteCheckpointSaver, StowageCheckpointSaver
    from shared.manager import StorageManager

__all__ = ["RemoteCheckpointSaver", "StorageManager", "StowageCheckpointSaver"]


def __getattr__(name: str) -> Any:
    if name == "StorageManager":
        from shared.manager import StorageManager

        return StorageManager
    if name in ("StowageCheckpointSaver", "RemoteCheckpointSaver"):
        from shared.domains.checkpoints import savers

        return getattr(savers, name)
    raise AttributeError(f"module 'shared' has no attribute {name!r}")
