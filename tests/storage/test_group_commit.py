"""shared.storage.group_commit: grouped writes into one partition (pure mechanics; the checkpoint
service's tests drive it on every backend)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from shared.errors import Busy, Conflict
from shared.storage.group_commit import GroupCommit


class Recorder:
    """together/alone callbacks that record what they wrote; ``together`` holds the first call open."""

    def __init__(self, *, fail_together: bool = False, failing: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.fail_together = fail_together
        self.failing = failing
        self.gate = threading.Event()
        self.entered = threading.Event()

    def together(self, writes: Sequence[str]) -> list[str] | None:
        if self.fail_together or self.failing & set(writes):
            return None
        self.batches.append(list(writes))
        return [f"done {w}" for w in writes]

    def alone(self, write: str) -> str:
        if not self.entered.is_set():
            self.entered.set()
            self.gate.wait(5)
        if write in self.failing:
            raise Conflict(f"{write} fails on its own")
        self.batches.append([write])
        return f"done {write}"


def _run(group: GroupCommit[str, str], writes: list[tuple[str, list[str]]], recorder: Recorder
         ) -> dict[str, str | BaseException]:
    """The first write takes the turn and blocks; the others queue behind it; then the turn goes on."""
    results: dict[str, str | BaseException] = {}

    def writer(name: str, keys: list[str]) -> None:
        try:
            results[name] = group.commit("p", name, row_keys=keys, size=10)
        except BaseException as exc:  # noqa: BLE001 - checked below
            results[name] = exc

    first = threading.Thread(target=writer, args=writes[0])
    first.start()
    assert recorder.entered.wait(5)
    others = [threading.Thread(target=writer, args=w) for w in writes[1:]]
    for thread in others:
        thread.start()
    deadline = threading.Event()
    while len(group._slots["p"].queue) < len(others) and not deadline.wait(0.01):  # all queued
        pass
    recorder.gate.set()
    for thread in [first, *others]:
        thread.join(5)
    return results


def test_writers_waiting_are_carried_along_in_one_batch_each_with_its_own_result():
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(together=recorder.together, alone=recorder.alone)
    results = _run(group, [("a", ["1"]), ("b", ["2"]), ("c", ["3"]), ("d", ["4"])], recorder)
    assert results == {name: f"done {name}" for name in "abcd"}
    assert recorder.batches[0] == ["a"] and sorted(recorder.batches[1]) == ["b", "c", "d"]


def test_a_failed_group_is_written_write_by_write_and_one_failure_stays_its_own():
    recorder = Recorder(failing=frozenset({"c"}))
    group: GroupCommit[str, str] = GroupCommit(together=recorder.together, alone=recorder.alone)
    results = _run(group, [("a", ["1"]), ("b", ["2"]), ("c", ["3"])], recorder)
    assert results["a"] == "done a" and results["b"] == "done b"
    assert isinstance(results["c"], Conflict)


def test_groups_respect_the_limits_and_never_hold_a_row_twice():
    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(together=recorder.together, alone=recorder.alone, max_operations=3)
    results = _run(group, [("a", ["1"]), ("b", ["2", "3"]), ("c", ["3"]), ("d", ["4", "5"])], recorder)
    assert set(results.values()) == {f"done {name}" for name in "abcd"}
    for batch in recorder.batches:
        keys = {"a": ["1"], "b": ["2", "3"], "c": ["3"], "d": ["4", "5"]}
        rows = [key for write in batch for key in keys[write]]
        assert len(rows) <= 3 and len(rows) == len(set(rows))


def test_an_interrupted_turn_answers_busy_to_the_writers_it_carried():
    class Interrupted(BaseException):
        pass

    def together(writes: Sequence[str]) -> list[str] | None:
        raise Interrupted()

    recorder = Recorder()
    group: GroupCommit[str, str] = GroupCommit(together=together, alone=recorder.alone)
    results = _run(group, [("a", ["1"]), ("b", ["2"]), ("c", ["3"])], recorder)
    assert results["a"] == "done a"
    carried = [results["b"], results["c"]]
    assert all(isinstance(result, (Busy, Interrupted)) for result in carried)
    assert any(isinstance(result, Busy) for result in carried)


def test_nothing_is_kept_once_the_writers_returned():
    recorder = Recorder()
    recorder.entered.set()
    group: GroupCommit[str, str] = GroupCommit(together=recorder.together, alone=recorder.alone)
    assert group.commit("p", "a", row_keys=["1"], size=1) == "done a"
    assert len(group._slots) == 0


@pytest.mark.parametrize("operations,size,fits", [(100, 10, True), (101, 10, False), (1, 4 * 1024 * 1024, False)])
def test_fits(operations, size, fits):
    group: GroupCommit[str, str] = GroupCommit(together=lambda w: None, alone=str)
    assert group.fits(operations, size) is fits
