"""The moto the tests start applies one request at a time (see tests/moto_serial.py).

Plain boto3, no Stowage code: this checks the emulator harness, not the product.
Against ``moto_server`` itself (each request on its own thread, no locks in moto)
the increment race below loses acknowledged increments in nearly every run: moto
deep-copies every table a transaction names, and when the transaction is cancelled
puts the copies back over whatever other clients committed meanwhile.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.moto_serial import _may_wait, serialised

# Two workers increment a counter by conditional transactions for as long as a third
# makes SLOW_ATTEMPTS transactions that increment it too but also check an item of a
# big table, a check that fails: each of those is cancelled after moto spent some
# 0.1 s copying the big table, the window in which an unserialised moto loses the
# others' increments. (Measured against moto_server: 1 to 4 lost in each of 12 runs.)
FAST_WORKERS = 2
SLOW_ATTEMPTS = 8
BIG_ITEMS, BIG_LIST_LENGTH = 4, 20_000


def _create_table(client: Any, name: str) -> None:
    client.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")


def transactional_increments(endpoint_url: str) -> tuple[int, int, int]:
    """Run the race; returns (final count, final version, successful transactions),
    which must all be equal."""
    client: Any = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name="us-east-1",
                               config=Config(max_pool_connections=FAST_WORKERS + 2))
    tag = uuid.uuid4().hex[:12]
    table, big_table = f"harness-{tag}", f"harness-big-{tag}"
    _create_table(client, table)
    _create_table(client, big_table)
    key = {"pk": {"S": "counter"}}
    client.put_item(TableName=table, Item={**key, "n": {"N": "0"}, "ver": {"N": "0"}})
    for index in range(BIG_ITEMS):
        client.put_item(TableName=big_table, Item={"pk": {"S": f"item-{index}"},
                                                   "list": {"L": [{"N": "1"}] * BIG_LIST_LENGTH}})
    slow_done = threading.Event()

    def increment(also: list[dict[str, Any]]) -> bool:
        """Read the counter, then increment it conditionally on the version read; False when cancelled."""
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        count, version = int(item["n"]["N"]), int(item["ver"]["N"])
        try:
            client.transact_write_items(TransactItems=[{"Update": {
                "TableName": table, "Key": key,
                "UpdateExpression": "SET n = :n, ver = :next",
                "ConditionExpression": "ver = :ver",
                "ExpressionAttributeValues": {":n": {"N": str(count + 1)}, ":next": {"N": str(version + 1)},
                                              ":ver": {"N": str(version)}},
            }}, *also])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            return False
        return True

    def slow() -> int:
        failing_check = {"ConditionCheck": {"TableName": big_table, "Key": {"pk": {"S": "item-0"}},
                                            "ConditionExpression": "attribute_not_exists(pk)"}}
        try:
            return sum(increment([failing_check]) for _ in range(SLOW_ATTEMPTS))
        finally:
            slow_done.set()

    def fast() -> int:
        made = 0
        while not slow_done.is_set():
            made += increment([])
        return made

    try:
        with ThreadPoolExecutor(FAST_WORKERS + 1) as pool:
            runs = [pool.submit(slow)] + [pool.submit(fast) for _ in range(FAST_WORKERS)]
            successes = sum(run.result() for run in runs)
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        return int(item["n"]["N"]), int(item["ver"]["N"]), successes
    finally:
        client.delete_table(TableName=table)
        client.delete_table(TableName=big_table)
        client.close()


def test_concurrent_conditional_transactions_lose_no_increment(moto_server):
    count, version, successes = transactional_increments(moto_server.endpoint_url)
    assert successes > 0
    assert (count, version) == (successes, successes)


# --------------------------------------------------------------------------- the middleware itself


def _environ(target: str = "", body: bytes = b"", query: str = "", content_type: str = "") -> dict[str, Any]:
    return {"REQUEST_METHOD": "POST", "HTTP_X_AMZ_TARGET": target, "QUERY_STRING": query,
            "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}


def test_only_a_receive_that_may_long_poll_runs_outside_the_lock():
    receive = "AmazonSQS.ReceiveMessage"
    assert _may_wait(_environ(receive, json.dumps({"QueueUrl": "q", "WaitTimeSeconds": 5}).encode()))
    assert _may_wait(_environ(receive, json.dumps({"QueueUrl": "q"}).encode()))  # the queue's default applies
    assert not _may_wait(_environ(receive, json.dumps({"QueueUrl": "q", "WaitTimeSeconds": 0}).encode()))
    assert not _may_wait(_environ("DynamoDB_20120810.TransactWriteItems", b"{}"))
    assert not _may_wait(_environ("AmazonSQS.SendMessage", b"{}"))
    form = "application/x-www-form-urlencoded"
    assert _may_wait(_environ(body=b"Action=ReceiveMessage&WaitTimeSeconds=20", content_type=form))
    assert not _may_wait(_environ(body=b"Action=ReceiveMessage&WaitTimeSeconds=0", content_type=form))
    assert not _may_wait(_environ(query="Action=SendMessage"))
    # The body is still there for moto to read after the middleware looked at it.
    environ = _environ(receive, b'{"WaitTimeSeconds": 0}')
    _may_wait(environ)
    assert environ["wsgi.input"].read() == b'{"WaitTimeSeconds": 0}'


def test_a_long_poll_does_not_stop_the_request_that_ends_it():
    polling, sent = threading.Event(), threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        if environ["HTTP_X_AMZ_TARGET"] == "AmazonSQS.ReceiveMessage":
            polling.set()
            return [b"received" if sent.wait(timeout=10) else b"timed out"]
        sent.set()
        return [b"sent"]

    server = serialised(app)
    results: list[bytes] = []
    receiver = threading.Thread(target=lambda: results.extend(server(
        _environ("AmazonSQS.ReceiveMessage", b'{"WaitTimeSeconds": 20}'), lambda *args: None)))
    receiver.start()
    assert polling.wait(timeout=10)
    assert list(server(_environ("AmazonSQS.SendMessage", b"{}"), lambda *args: None)) == [b"sent"]
    receiver.join(timeout=10)
    assert results == [b"received"]


def test_requests_that_cannot_wait_run_one_at_a_time_body_included():
    inside, peak = 0, 0
    guard = threading.Lock()
    # Unserialised, both requests would meet here; serialised, the first gives up
    # waiting for the second, which then finds the barrier broken.
    both_inside = threading.Barrier(2, timeout=1)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        start_response("200 OK", [])

        def body() -> Any:
            nonlocal inside
            try:
                yield b"part one, "
                try:
                    both_inside.wait()
                except threading.BrokenBarrierError:
                    pass
                yield b"part two"
            finally:
                with guard:
                    inside -= 1

        return body()

    server = serialised(app)
    with ThreadPoolExecutor(2) as pool:
        bodies = list(pool.map(
            lambda _: b"".join(server(_environ("DynamoDB_20120810.GetItem", b"{}"), lambda *args: None)), range(2)))
    assert bodies == [b"part one, part two"] * 2
    assert peak == 1
