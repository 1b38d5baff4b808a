"""Kept importable for the README and examples: the savers live in shared.domains.checkpoints.savers."""

from shared.domains.checkpoints.savers import RemoteCheckpointSaver, StowageCheckpointSaver

__all__ = ["RemoteCheckpointSaver", "StowageCheckpointSaver"]
