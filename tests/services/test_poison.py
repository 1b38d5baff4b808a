"""The commands poison queue tools: list and replay page through every message, on every backend.

Peeking shows at most 32 messages, so ``PoisonQueue`` walks the queue by
receiving and makes every message visible again afterwards; these tests hold it
to seeing everything, more than once, and to surviving messages it cannot decode.
"""

from __future__ import annotations

import json
import uuid

import pytest

import cli.main as cli
from shared import names
from shared.commands import SHOWN_CHARS, CommandProcessor, PoisonQueue
from tests.backends.test_conformance import post_undecodable

DEEP = "[" * 10_000 + "]" * 10_000


def _command(n: int) -> str:
    return json.dumps({"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": f"k{n}",
                       "payload": {"key": f"k/{n}"}})  # no content: poison when applied


def _poison_many(stores, count: int) -> dict[str, str]:
    """``count`` wrapped poison messages; their original bodies by message id (in sending order)."""
    processor = CommandProcessor(stores)
    bodies = [_command(n) for n in range(count)]
    for n, body in enumerate(bodies):
        processor.poison(body, f"reason {n}", dequeue_count=1, message_id=f"m{n}")
    by_body = {e.body: e.message_id for e in PoisonQueue(stores).list()}
    return {by_body[body]: body for body in bodies}


def _take(stores):
    """The one message of the raw commands queue, deleted from it (Azurite is shared: nothing may come back later)."""
    queue = stores.backend.queue(names.QUEUE_COMMANDS)
    [message] = queue.receive(max_messages=32, visibility_timeout=30)
    queue.delete(message.receipt)
    return message


def _commands_queue(stores) -> list[str]:
    return [m.body for m in _drain(stores, names.QUEUE_COMMANDS)]


def _drain(stores, queue_name: str):
    queue, taken = stores.queue(queue_name), []
    while batch := queue.receive(max_messages=32, visibility_timeout=60):
        for message in batch:
            taken.append(message)
            queue.delete(message.receipt)
    return taken


def test_list_shows_every_message_beyond_a_peek_and_leaves_them_all_visible(stores):
    mine = _poison_many(stores, 40)
    assert len(mine) == 40
    poison = PoisonQueue(stores)
    for _ in range(2):  # a second list sees them all again: the first made them visible again
        entries = poison.list()
        assert {e.message_id for e in entries} == set(mine)
        assert {e.reason for e in entries} == {f"reason {n}" for n in range(40)}
    assert len(poison.list(limit=5)) == 5
    assert len(poison.list()) == 40


def test_replay_by_id_finds_a_message_at_any_depth(stores):
    mine = _poison_many(stores, 40)
    last_id, last_body = list(mine.items())[-1]
    report = PoisonQueue(stores).replay({last_id, "no-such-id"})
    assert report.moved == [last_id] and report.skipped == [] and report.not_found == ["no-such-id"]
    assert _commands_queue(stores) == [last_body]
    assert {e.message_id for e in PoisonQueue(stores).list()} == set(mine) - {last_id}


def test_a_10000_deep_message_neither_breaks_list_nor_replay(stores):
    processor = CommandProcessor(stores)
    raw_poison = stores.backend.queue(names.QUEUE_COMMANDS_POISON)
    raw_poison.send(DEEP)  # as the host moves a message that failed every delivery
    raw_poison.send("not json {")
    assert processor.process(DEEP).status == "poisoned"  # poisoned at once, wrapped with its reason
    good = _command(1)
    processor.poison(good, "rejected", dequeue_count=1)

    entries = PoisonQueue(stores).list()
    assert len(entries) == 4
    raw = [e for e in entries if not e.replayable]
    assert len(raw) == 2
    deep_raw = next(e for e in raw if e.body.startswith("["))
    assert "cannot be decoded" in deep_raw.reason and "nests deeper" in deep_raw.reason
    assert len(deep_raw.body) == SHOWN_CHARS + 1 and deep_raw.body.endswith("…")
    assert "cannot be decoded" in next(e for e in raw if e.body.startswith("not")).reason
    wrapped_deep = next(e for e in entries if e.replayable and e.body == DEEP)
    assert "nests deeper" in wrapped_deep.reason

    report = PoisonQueue(stores).replay()
    assert sorted(e.message_id for e in report.skipped) == sorted(e.message_id for e in raw)
    assert len(report.moved) == 2
    assert sorted(_commands_queue(stores)) == sorted([DEEP, good])
    assert sorted(e.message_id for e in PoisonQueue(stores).list()) == sorted(e.message_id for e in raw)


def test_replay_does_not_move_a_message_twice_when_it_fails_again_meanwhile(stores, monkeypatch):
    processor = CommandProcessor(stores)
    body = _command(7)
    processor.poison(body, "rejected", dequeue_count=1)
    commands = stores.queue(names.QUEUE_COMMANDS)
    sent = commands.send

    def bounce(message: str, **kwargs):  # a worker that poisons it again at once
        sent(message, **kwargs)
        processor.poison(message, "rejected again", dequeue_count=1)

    monkeypatch.setattr(commands, "send", bounce)
    report = PoisonQueue(stores).replay()
    assert len(report.moved) == 1
    assert [e.reason for e in report.skipped] == ["already replayed by this run, and failed again: rejected again"]


def test_a_host_moved_claim_check_message_is_listed_and_replayed_as_it_is(stores):
    big = json.dumps({"version": 1, "op": "objects.put", "tenant": "a", "idempotency_key": "big",
                      "payload": {"key": "k", "text": "x" * (40 * 1024), "json": 1}})
    stores.queue(names.QUEUE_COMMANDS).send(big)
    raw = _take(stores)
    processor = CommandProcessor(stores)
    assert processor.process(raw.body).status == "poisoned"  # wrapped around the claim check itself
    [entry] = PoisonQueue(stores).list()
    assert entry.body == raw.body and "exactly one of" in entry.reason
    assert PoisonQueue(stores).replay().moved == [entry.message_id]
    back = _take(stores)
    assert back.body == raw.body
    assert processor.process(back.body).status == "poisoned"  # its blob followed it back


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def run_cli(stores, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_stores", lambda: stores)
    monkeypatch.setattr(cli, "apply_local_settings", lambda: None)
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kwargs: None)  # keep pytest's log handlers

    def run(*args: str) -> tuple[int, str]:
        code = cli.main(list(args))
        return code, capsys.readouterr().out

    return run


def test_the_cli_lists_and_replays_every_message(stores, run_cli):
    mine = _poison_many(stores, 40)
    stores.backend.queue(names.QUEUE_COMMANDS_POISON).send(DEEP)
    code, out = run_cli("poison", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 41
    assert {e["message_id"] for e in listed if e["replayable"]} == set(mine)
    code, out = run_cli("poison", "list")
    assert code == 0 and "41 message(s)" in out and "(raw)" in out
    last_id = list(mine)[-1]
    code, out = run_cli("poison", "replay", "--id", last_id, "--json")
    assert code == 0 and json.loads(out)["moved"] == [last_id]
    code, out = run_cli("poison", "replay", "--id", uuid.uuid4().hex)
    assert code == 1 and "not in the poison queue" in out
    code, out = run_cli("poison", "replay")
    assert code == 0 and "moved 39 message(s)" in out and "skipped" in out and "nests deeper" in out


# --------------------------------------------------------------------------- messages the queue cannot decode


def test_an_undecodable_message_is_poisoned_at_once_with_its_reason_and_listed_raw(stores, settings):
    """A foreign producer's message that is not base64/UTF-8 neither breaks the queue nor is applied."""
    expected = post_undecodable(stores.backend, settings, names.QUEUE_COMMANDS)
    stores.queue(names.QUEUE_COMMANDS).send(_command(1))  # a good one next to them still decodes
    processor = CommandProcessor(stores)
    received = _drain(stores, names.QUEUE_COMMANDS)
    assert sorted(m.body for m in received if m.undecodable) == sorted(expected)
    assert [m.body for m in received if not m.undecodable] == [_command(1)]
    outcomes = {}
    for message in received:
        if message.undecodable:
            outcomes[message.id] = processor.process(message.body, dequeue_count=message.dequeue_count,
                                                     message_id=message.id, decode_error=message.decode_error)
    for outcome in outcomes.values():
        assert outcome.status == "poisoned"
        assert outcome.detail.startswith("message body is not valid base64/UTF-8: ")

    entries = PoisonQueue(stores).list()
    assert sorted(e.body for e in entries) == sorted(expected)  # the raw text, as received
    assert sorted(e.reason for e in entries) == sorted(o.detail for o in outcomes.values())
    assert {e.message_id for e in entries}.isdisjoint(outcomes)  # poison messages are new messages
    assert all(e.reason.startswith("message body is not valid base64/UTF-8: ") for e in entries)


def test_an_undecodable_message_the_host_moved_as_it_is_is_listed_raw_and_never_replayed(stores, settings, run_cli):
    """The Functions host moves a message it cannot decode to the poison queue unchanged."""
    expected = post_undecodable(stores.backend, settings, names.QUEUE_COMMANDS_POISON)
    CommandProcessor(stores).poison(_command(2), "rejected", dequeue_count=1)

    code, out = run_cli("poison", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and len(listed) == 1 + len(expected)
    raw = [e for e in listed if not e["replayable"]]
    assert sorted(e["body"] for e in raw) == sorted(expected)
    assert all(e["reason"].startswith("cannot be decoded: ") for e in raw)
    code, out = run_cli("poison", "list")
    assert code == 0 and f"{1 + len(expected)} message(s)" in out and "(raw)" in out

    report = PoisonQueue(stores).replay()
    assert len(report.moved) == 1 and sorted(e.body for e in report.skipped) == sorted(expected)
    assert _commands_queue(stores) == [_command(2)]
    assert sorted(e.body for e in PoisonQueue(stores).list()) == sorted(expected)
