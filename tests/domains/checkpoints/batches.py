"""Helpers of the checkpoint service tests: a typed value, and a counter of the batches the service sends."""

from __future__ import annotations

import pytest

from shared.domains.checkpoints.service import CheckpointService, TypedValue


def val(text: str) -> TypedValue:
    return TypedValue("bytes", text.encode())


class Batches:
    """Counts the atomic batches the service sends to its (real) table."""

    def __init__(self, service: CheckpointService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = service._table.batch

        def batch(operations):
            operations = list(operations)
            self.sizes.append(len(operations))
            return real(operations)

        monkeypatch.setattr(service._table, "batch", batch)
