"""A put that carries its parent's pending writes (the remote saver's one request per step), on every
backend: one atomic batch, the put_writes rules kept, and nothing stored when any part is invalid."""

from __future__ import annotations

import uuid

import pytest

from shared.domains.checkpoints.service import CheckpointService, TaskWrites, TypedValue
from shared.errors import InvalidInput, NotFound, TooLarge
from tests.domains.checkpoints.batches import Batches, val


def _first(service: CheckpointService, tenant: str, thread: str) -> None:
    service.put(tenant, thread, "", "c1", val("cp1"), channel_versions={"x": "1"}, new_values={"x": val("one")})


def test_put_carries_parent_writes_in_its_one_batch(service, tenant, monkeypatch):
    thread = "th-" + uuid.uuid4().hex[:8]
    _first(service, tenant, thread)
    batches = Batches(service, monkeypatch)
    carried = [TaskWrites("task-a", [(0, "x", val("a0")), (-3, "__interrupt__", val("ask"))], "p"),
               TaskWrites("task-b", [(0, "y", val("b0"))])]
    ref = service.put(tenant, thread, "", "c2", val("cp2"), channel_versions={"x": "2"},
                      new_values={"x": val("two")}, parent_checkpoint_id="c1", writes=carried)
    assert ref.created
    assert batches.sizes == [4]  # three write rows and the checkpoint row, one atomic batch
    parent = service.get(tenant, thread, "", "c1")
    assert [(w.task_id, w.idx, w.channel, w.value.data, w.task_path) for w in parent.pending_writes] == [
        ("task-b", 0, "y", b"b0", ""), ("task-a", -3, "__interrupt__", b"ask", "p"), ("task-a", 0, "x", b"a0", "p")]
    child = service.get(tenant, thread, "", "c2")
    assert child.values == {"x": val("two")} and child.pending_writes == []

    # Repeated (a retried request): regular writes kept, special ones replaced, as put_writes does.
    again = [TaskWrites("task-a", [(0, "x", val("CHANGED")), (-3, "__interrupt__", val("ask again"))], "p")]
    service.put(tenant, thread, "", "c2", val("cp2"), channel_versions={"x": "2"}, new_values={"x": val("two")},
                parent_checkpoint_id="c1", writes=again)
    by_idx = {(w.task_id, w.idx): w.value.data for w in service.get(tenant, thread, "", "c1").pending_writes}
    assert by_idx[("task-a", 0)] == b"a0" and by_idx[("task-a", -3)] == b"ask again"


@pytest.mark.parametrize("writes, error", [
    ([TaskWrites("task-a", [(0, "x", val("a")), (0, "y", val("b"))])], InvalidInput),   # idx twice
    ([TaskWrites("task-a", [(0, "bad\x00channel", val("a"))])], InvalidInput),          # control character
    ([TaskWrites("", [(0, "x", val("a"))])], InvalidInput),                               # no task id
    ([TaskWrites("task-a", [(True, "x", val("a"))])], InvalidInput),                      # bool idx
    ([TaskWrites("task-a", [(0, "x", TypedValue("has space", b"a"))])], InvalidInput),   # bad type tag
    ([TaskWrites("task-a", [(0, "x", val("a"))]), TaskWrites("task-a", [(1, "x", val("b"))])], InvalidInput),
    ([("task-a", [(0, "x", val("a"))])], InvalidInput),                                   # not TaskWrites
])
def test_invalid_carried_writes_store_neither(service, tenant, writes, error):
    thread = "th-" + uuid.uuid4().hex[:8]
    _first(service, tenant, thread)
    with pytest.raises(error):
        service.put(tenant, thread, "", "c2", val("cp2"), channel_versions={"x": "2"},
                    new_values={"x": val("two")}, parent_checkpoint_id="c1",
                    writes=[TaskWrites("ok-task", [(0, "x", val("fine"))]), *writes])
    with pytest.raises(NotFound):
        service.get(tenant, thread, "", "c2")
    assert service.get(tenant, thread, "", "c1").pending_writes == []  # not even the valid task's writes


def test_carried_writes_need_a_parent_and_count_towards_the_size_limit(service, tenant):
    thread = "th-" + uuid.uuid4().hex[:8]
    with pytest.raises(InvalidInput, match="parent_checkpoint_id"):
        service.put(tenant, thread, "", "c1", val("cp1"), writes=[TaskWrites("t", [(0, "x", val("a"))])])
    with pytest.raises(NotFound):
        service.get(tenant, thread)
    _first(service, tenant, thread)
    service.max_bytes = 1000
    with pytest.raises(TooLarge, match="carried writes"):
        service.put(tenant, thread, "", "c2", val("cp2"), channel_versions={"x": "2"},
                    new_values={"x": val("x" * 600)}, parent_checkpoint_id="c1",
                    writes=[TaskWrites("t", [(0, "x", val("w" * 600))])])
    with pytest.raises(NotFound):
        service.get(tenant, thread, "", "c2")
    assert service.get(tenant, thread, "", "c1").pending_writes == []
    with pytest.raises(InvalidInput, match="at most"):
        service.put(tenant, thread, "", "c2", val("cp2"), parent_checkpoint_id="c1",
                    writes=[TaskWrites(f"t{i}", [(j, "x", val("w")) for j in range(300)]) for i in range(4)])
