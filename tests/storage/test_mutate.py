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


def _increment(table: TableStore, *, by: int = 1, idempotency: Idempotency | None = None, sleep=None,
               policy: RetryPolicy | None = None):
    def read() -> Entity | None:
        return find(table, PK, "c")

    def decide(row: Entity | None) -> Change[int]:
        if row is None:
            return Change([TableOp.insert(Entity(PK, "c", {"n": by}))], by, status=201)
        value = int(row.get("n")) + by
        return Change([TableOp.update(Entity(PK, "c", {"n": value}), if_match=row.etag)], value)

    kwargs: dict = {"sleep": sleep} if sleep else {}
    if policy is not None:
        kwargs["policy"] = policy
    return mutate(table, partition=PK, read=read, decide=decide, what="counter", idempotency=idempotency, **kwargs)


#: Enough tries that six writers on one row never run out, however slow the machine: this test is
#: about exact sums, not the retry bound (Busy when tries run out is tested on its own below).
PATIENT = RetryPolicy(attempts=400)


def test_concurrent_mutations_add_up_exactly(table: TableStore) -> None:
    threads, each = 6, 10
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(each):
                _increment(table, policy=PATIENT)
        except BaseException as exc:  # noqa: BLE001 (surfaced below)
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


# --------------------------------------------------------------------------- change records (issue 11)


def _feed(backend, table: TableStore):
    import uuid

    from shared.storage.changefeed import ChangeFeed

    name = "f" + uuid.uuid4().hex[:12]
    backend.ensure(tables=[name])
    return ChangeFeed(backend.table(name), {table.name: table})


def _outbox_rows(table: TableStore) -> list[Entity]:
    from shared.storage.changefeed import OUTBOX_PREFIX

    return list(table.query_all(PK, prefix=OUTBOX_PREFIX))


def _recorded(table: TableStore, feed, *, by: int = 1, idempotency: Idempotency | None = None,
              fail: type[Exception] | None = None, noop: bool = False):
    from shared.storage.changefeed import ChangeRecord
    from shared.storage.mutate import Outbox

    def decide(row: Entity | None) -> Change[int]:
        if noop:
            return Change([], 0)
        value = (int(row.get("n")) if row is not None else 0) + by
        new = Entity(PK, "c", {"n": value})
        op = TableOp.insert(new) if row is None else TableOp.update(new, if_match=row.etag)
        if fail is not None:  # a second op that refuses the whole batch
            op2 = TableOp.update(Entity(PK, "absent", {"n": 1}), if_match="nope")
            return Change([op, op2], value)
        return Change([op], value)

    return mutate(table, partition=PK, read=lambda: find(table, PK, "c"), decide=decide, what="counter",
                  idempotency=idempotency, outbox=Outbox(feed, "tenant-a", table.name),
                  record=lambda value: ChangeRecord("counters", "counters.add", "counter", "c",
                                                    details={"value": value}),
                  policy=RetryPolicy(attempts=2, base=0.0, cap=0.0))


def test_a_change_record_is_written_in_the_batch_of_its_change_with_the_current_actor(backend, table) -> None:
    from shared.request_context import Actor, RequestContext, acting_as

    feed = _feed(backend, table)
    batches: list[list[str]] = []

    class Spy:
        def __getattr__(self, name):
            return getattr(table, name)

        def batch(self, ops):
            batches.append([op.entity.row_key for op in ops])
            return table.batch(ops)

    actor = Actor("user", "u-1", "Ada", ("admin",))
    with acting_as(RequestContext(actor=actor, source="http", trace_id="a" * 32, span_id="b" * 16)):
        assert _recorded(Spy(), feed, by=3).result == 3  # type: ignore[arg-type]
    assert len(batches) == 1 and batches[0][0] == "c" and batches[0][1].startswith("~outbox|")  # one op + record
    [row] = _outbox_rows(table)
    assert (row["domain"], row["op"], row["target_id"], row["audited"]) == ("counters", "counters.add", "c", True)
    assert '"id":"u-1"' in str(row["actor"]) and '"trace_id":"' + "a" * 32 in str(row["context"])
    assert feed.sequence("tenant-a").total == 1
    [change] = feed.changes("tenant-a").items
    assert (change.seq, change.details, change.actor["name"]) == (1, {"value": 3}, "Ada")
    assert _outbox_rows(table) == []


def test_a_failed_batch_leaves_no_record_and_a_no_op_or_replay_writes_none(backend, table) -> None:
    feed = _feed(backend, table)
    with pytest.raises((Busy, PreconditionFailed, Conflict)):
        _recorded(table, feed, fail=PreconditionFailed)
    assert _outbox_rows(table) == [] and find(table, PK, "c") is None
    assert _recorded(table, feed, noop=True).result == 0
    assert _outbox_rows(table) == []
    key = Idempotency.of("k-1", "counters.add", {"by": 2})
    first = _recorded(table, feed, by=2, idempotency=key)
    again = _recorded(table, feed, by=2, idempotency=key)
    assert (first.replayed, again.replayed, again.result) == (False, True, 2)
    assert len(_outbox_rows(table)) == 1  # the first application's only
    assert feed.sequence("tenant-a").total == 1 and feed.sequence("tenant-a").total == 0


def test_without_a_feed_the_outbox_records_nothing_and_a_record_needs_an_outbox(table) -> None:
    from shared.storage.changefeed import ChangeRecord
    from shared.storage.mutate import Outbox

    assert Outbox(None, "tenant-a", table.name).ops(PK, ChangeRecord("d", "d.op", "t", "x")) == []
    assert _recorded(table, None, by=1).result == 1
    assert _outbox_rows(table) == []
    with pytest.raises(ValueError):
        mutate(table, partition=PK, read=lambda: None, decide=lambda _: Change([], 0), what="x",
               record=ChangeRecord("d", "d.op", "t", "x"))
