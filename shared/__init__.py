"""Stowage: unified storage for AI agents. Services live here, above shared.backends."""

from shared.manager import StorageManager

__all__ = ["StorageManager"]
