"""Checkpoints' queue ops: maintenance of threads and runs, through the public service API.

Each op passes the envelope's idempotency key to the service, which records a
marker of :mod:`shared.storage.idempotency` once the work is done: a redelivery
is answered from the marker ("duplicate") without doing the work again, and the
same key with another payload is refused (422, the message is poisoned).
"""

from __future__ import annotations

from shared.command_ops import CommandOp
from shared.command_ops import Outcome as CommandOutcome
from shared.domains.checkpoints.models import CopyThreadPayload, DeleteRunsPayload, DeleteThreadPayload, PrunePayload
from shared.domains.checkpoints.service import CheckpointService
from shared.errors import InvalidInput, NotFound
from shared.storage.mutate import Outcome


def _verdict(outcome: Outcome[int], detail: str) -> CommandOutcome:
    return CommandOutcome("duplicate" if outcome.replayed else "applied", detail)


def _apply_delete_thread(service: CheckpointService, tenant: str, payload: DeleteThreadPayload,
                         idempotency_key: str) -> CommandOutcome:
    try:
        outcome = service.delete_thread_outcome(tenant, payload.thread_id, idempotency_key=idempotency_key)
    except NotFound:
        return CommandOutcome("applied", f"thread {payload.thread_id} had no checkpoints")
    return _verdict(outcome, f"thread {payload.thread_id}: {outcome.result} checkpoints deleted")


def _apply_delete_runs(service: CheckpointService, tenant: str, payload: DeleteRunsPayload,
                       idempotency_key: str) -> CommandOutcome:
    try:
        outcome = service.delete_for_runs_outcome(tenant, payload.run_ids, idempotency_key=idempotency_key)
    except NotFound:
        return CommandOutcome("applied", "none of these runs wrote checkpoints")
    return _verdict(outcome, f"{outcome.result} checkpoints of {len(payload.run_ids)} runs deleted")


def _apply_copy_thread(service: CheckpointService, tenant: str, payload: CopyThreadPayload,
                       idempotency_key: str) -> CommandOutcome:
    try:
        outcome = service.copy_thread_outcome(tenant, payload.source_thread_id, payload.target_thread_id,
                                              idempotency_key=idempotency_key)
    except NotFound:
        # Nothing to copy now means nothing to copy on any redelivery: poison it with this reason.
        raise InvalidInput(f"thread {payload.source_thread_id} has no checkpoints to copy") from None
    return _verdict(outcome, f"{outcome.result} checkpoints copied to {payload.target_thread_id}")


def _apply_prune(service: CheckpointService, tenant: str, payload: PrunePayload,
                 idempotency_key: str) -> CommandOutcome:
    try:
        outcome = service.prune_outcome(tenant, payload.thread_ids, payload.strategy,
                                        idempotency_key=idempotency_key)
    except NotFound:
        return CommandOutcome("applied", "none of these threads has checkpoints")
    return _verdict(outcome, f"{outcome.result} checkpoints pruned ({payload.strategy.value})")


COMMANDS = (
    CommandOp("checkpoints.delete_thread", DeleteThreadPayload, _apply_delete_thread,
              "Delete a thread's checkpoints, values and pending writes."),
    CommandOp("checkpoints.delete_runs", DeleteRunsPayload, _apply_delete_runs,
              "Delete every checkpoint the given runs wrote."),
    CommandOp("checkpoints.copy_thread", CopyThreadPayload, _apply_copy_thread,
              "Copy a thread's checkpoints, values and pending writes to another thread."),
    CommandOp("checkpoints.prune", PrunePayload, _apply_prune,
              "Prune threads: keep the latest checkpoint per namespace, or delete them."),
)
