"""Helpers of the checkpoint service tests: a typed value, and a counter of the batches the service sends."""

from __future__ import annotations

import pytest

from shared.domains.checkpoints.service import CheckpointService, TypedValue
from shared.storage.changefeed import OUTBOX_PREFIX


def val(text: str) -> TypedValue:
    return TypedValue("bytes", text.encode())


class Batches:
    """Counts the atomic batches the service sends to its (real) table: ``sizes`` their data rows,
    ``records`` their change records (outbox rows), ``operations`` both."""

    def __init__(self, service: CheckpointService, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.records: list[int] = []
        self.operations: list[int] = []
        real = service._table.batch

        def batch(operations):
            operations = list(operations)
            records = sum(op.entity.row_key.startswith(OUTBOX_PREFIX) for op in operations)
            self.sizes.append(len(operations) - records)
            self.records.append(records)
            self.operations.append(len(operations))
            return real(operations)

        monkeypatch.setattr(service._table, "batch", batch)
