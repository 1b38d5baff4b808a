"""Checkpoints' timer work, as data: none today (pruning is asked for, per thread or run, by clients)."""

from __future__ import annotations

from shared.domains.domain import Job

JOBS: tuple[Job, ...] = ()
