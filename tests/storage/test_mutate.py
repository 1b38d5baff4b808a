"""shared.storage.retry, idempotency and mutate on every backend."""

from __future__ import annotations

import threading

import pytest

from shared.backends import Entity, TableOp, TableStore
from shared.errors import Busy, Conflict, PreconditionFailed
from shared.storage.idempotency import Idempotency, IdempotencyKeyReused, marker_row
from shared.storage.mutate import Change, Codec, find, mutate
from shared.storage.retry import LostRace, RetryPolicy, conditional, retry_races

PK = "tenant-a|counter"


def _increment(table: TableStore, *, by: int = 1, idempotency: Idempotency | None = None, sleep=None):
    def read() -> Entity | None:
        return find(table, PK, "c")

    def decide(row: Entity | None) -> Change[int]:
        if row is None:
            return Change([TableOp.insert(Entity(PK, "c", {"n": by}))], by, status=201)
        value = int(row["n"]) + by
        return Change([TableOp.update(Entity(PK, "c", {"n": value}), if_match=row.etag)], value)

    kwargs = {"sleep": sleep} if sleep else {}
    return mutate(table, partition=PK, read=read, decide=decide, what="counter", idempotency=idempotency, **kwargs)


def test_concurrent_mutations_add_up_exactly(table: TableStore) -> None:
    threads, each = 6, 10
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(each):
                _increment(table)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert table.get(PK, "c")["n"] == threads * each


def test_idempotent_mutation_applies_once_and_replays_status_and_result(table: TableStore) -> None:
    key = Idempotency.of("k-1", "counter.add", {"by": 5})
    first = _increment(table, by=5, idempotency=key)
    again = _increment(table, by=5, idempotency=key)
    assert (first.result, first.replayed, first.status) == (5, False, 201)
    assert (again.result, again.replayed, again.status) == (5, True, 201)
    assert table.get(PK, "c")["n"] == 5
    marker = table.get(PK, marker_row("k-1"))
    assert marker["fmt"] == 1 and marker["fp"] == key.fingerprint


def test_reused_key_with_another_request_is_refused_and_writes_nothing(table: TableStore) -> None:
    _increment(table, by=5, idempotency=Idempotency.of("k-1", "counter.add", {"by": 5}))
    with pytest.raises(IdempotencyKeyReused) as caught:
        _increment(table, by=7, idempotency=Idempotency.of("k-1", "counter.add", {"by": 7}))
    assert caught.value.status == 422
    with pytest.raises(IdempotencyKeyReused):
        _increment(table, by=5, idempotency=Idempotency.of("k-1", "counter.sub", {"by": 5}))
    assert table.get(PK, "c")["n"] == 5


def test_concurrent_first_applications_of_one_key_apply_once(table: TableStore) -> None:
    key = Idempotency.of("same", "counter.add", {"by": 1})
    results: list[tuple[int, bool]] = []
    lock = threading.Lock()

    def work() -> None:
        outcome = _increment(table, idempotency=key)
        with lock:
            results.append((outcome.result, outcome.replayed))

    workers = [threading.Thread(target=work) for _ in range(5)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert table.get(PK, "c")["n"] == 1
    assert sorted(results) == [(1, False)] + [(1, True)] * 4


def test_a_decision_error_is_permanent_and_not_retried(table: TableStore) -> None:
    calls = []

    def decide(row):
        calls.append(row)
        raise PreconditionFailed("client's If-Match is stale")

    with pytest.raises(PreconditionFailed):
        mutate(table, partition=PK, read=lambda: None, decide=decide, what="x")
    assert len(calls) == 1


def test_codec_keeps_structured_results_in_the_marker(table: TableStore) -> None:
    codec = Codec(encode=lambda pair: list(pair), decode=lambda stored: tuple(stored))
    key = Idempotency.of("k", "op", {})

    def decide(_row):
        return Change([TableOp.upsert(Entity(PK, "x", {"v": 1}))], ("a", 1))

    first = mutate(table, partition=PK, read=lambda: None, decide=decide, what="x", idempotency=key, codec=codec)
    second = mutate(table, partition=PK, read=lambda: None, decide=decide, what="x", idempotency=key, codec=codec)
    assert first.result == second.result == ("a", 1)
    assert second.replayed


def test_losing_every_race_is_busy_with_the_policy_attempts() -> None:
    attempts = []
    sleeps: list[float] = []

    def attempt():
        attempts.append(1)
        with conditional():
            raise PreconditionFailed("etag moved")

    with pytest.raises(Busy) as caught:
        retry_races(attempt, what="thread 't'", policy=RetryPolicy(attempts=5), sleep=sleeps.append)
    assert len(attempts) == 5 and len(sleeps) == 4
    assert all(0 <= s <= RetryPolicy().cap for s in sleeps)
    assert "thread 't'" in str(caught.value) and caught.value.status == 503
    assert not isinstance(caught.value, Conflict)


def test_lost_race_is_not_a_public_error() -> None:
    from shared.errors import StowageError

    assert not issubclass(LostRace, StowageError)


def test_idempotency_keys_are_bounded() -> None:
    from shared.errors import InvalidInput

    with pytest.raises(InvalidInput):
        Idempotency.of("", "op", {})
    with pytest.raises(InvalidInput):
        Idempotency.of("x" * 201, "op", {})
    assert marker_row("x" * 200).startswith("i|") and len(marker_row("x" * 200)) == 42


def test_rows_json_field_limits_and_checks() -> None:
    from shared.errors import InvalidInput, TooLarge
    from shared.storage.rows import iso, json_field, json_value, stamped

    assert json_field({"a": "é"}, "metadata", max_bytes=100) == '{"a":"é"}'
    with pytest.raises(TooLarge):
        json_field({"a": "x" * 100}, "metadata", max_bytes=50)
    with pytest.raises(InvalidInput):
        json_field({"a": "\ud800"}, "metadata", max_bytes=100)
    with pytest.raises(InvalidInput):
        json_field([1], "metadata", max_bytes=100, require_object=True)
    assert json_value(None, {}) == {} and json_value('{"a":1}') == {"a": 1}
    assert stamped({"x": 1}, 2) == {"x": 1, "fmt": 2}
    assert iso(0) == "1970-01-01T00:00:00+00:00"


def test_one_operation_is_a_plain_write_and_several_are_one_batch(table: TableStore) -> None:
    from shared.storage.mutate import write

    calls: list[str] = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(table, name)

    write(Spy(), [TableOp.insert(Entity(PK, "one", {"n": 1}))])
    write(Spy(), [TableOp.upsert(Entity(PK, "two", {"n": 2})), TableOp.upsert(Entity(PK, "three", {"n": 3}))])
    etag = table.get(PK, "one").etag
    write(Spy(), [TableOp.update(Entity(PK, "one", {"n": 4}), if_match=etag)])
    with pytest.raises(PreconditionFailed):
        write(Spy(), [TableOp.update(Entity(PK, "one", {"n": 5}), if_match=etag)])
    write(Spy(), [TableOp.delete(PK, "two")])
    assert calls == ["insert", "batch", "update", "update", "delete"]
    assert table.get(PK, "one")["n"] == 4 and table.get(PK, "three")["n"] == 3
