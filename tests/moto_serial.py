"""moto server that applies one request at a time: ``python -m tests.moto_serial -H 127.0.0.1 -p PORT``.

A harness fix for an emulator bug; the product is not changed. ``moto_server``
always serves each request on a thread of its own (werkzeug ``threaded=True``, no
flag to turn it off), and moto's backends hold no locks: DynamoDB's
``TransactWriteItems`` deep-copies the tables, checks the conditions, writes, and on
a failed condition puts the whole copy back, so two transactions can pass the same
ETag check, and a cancelled one erases writes other clients were told had succeeded.
S3's conditional ``PutObject`` (``If-Match`` / ``If-None-Match``) is a check then a
set too. Tests saw lost counter increments and duplicate or missing message
sequence numbers, a few in a thousand runs.

So this module builds the same WSGI app as ``moto_server`` (the domain dispatcher
over every service) and wraps it in a middleware that holds one process-wide lock
around each request, body included: to clients, moto becomes a store that applies
requests one after another, as the real services appear to. Connections are still
accepted on threads, so a slow client never blocks the others while it sends.

One kind of request runs outside the lock: an SQS ``ReceiveMessage`` that may wait
(``WaitTimeSeconds`` above 0, or not given, when the queue's own default applies).
moto long-polls inside the request, so holding the lock there would stop the very
``SendMessage`` that would end the wait. Stowage's own receives never wait
(``WaitTimeSeconds=0``), so they are serialised like everything else. Serialising
only DynamoDB would leave S3's conditional writes racy; moto is pure Python under
one GIL, so serialising everything costs little.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _buffered_body(environ: dict[str, Any]) -> bytes:
    """Read the request body and put an equal stream back, so the app can still read it."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _may_wait(environ: dict[str, Any]) -> bool:
    """Whether this is an SQS ReceiveMessage that may long-poll (so must not hold the lock)."""
    if environ.get("HTTP_X_AMZ_TARGET", "") == "AmazonSQS.ReceiveMessage":  # JSON protocol (boto3 today)
        try:
            wait = json.loads(_buffered_body(environ) or b"{}").get("WaitTimeSeconds")
        except ValueError:
            return True
    else:  # query protocol: Action=ReceiveMessage in the query string or a form body
        fields = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if environ.get("REQUEST_METHOD") == "POST" and str(environ.get("CONTENT_TYPE", "")).startswith(
            "application/x-www-form-urlencoded"
        ):
            fields.update(urllib.parse.parse_qs(_buffered_body(environ).decode("utf-8", "replace")))
        if fields.get("Action") != ["ReceiveMessage"]:
            return False
        wait = (fields.get("WaitTimeSeconds") or [None])[0]
    try:
        return wait is None or int(wait) > 0
    except (TypeError, ValueError):
        return True


def serialised(app: WsgiApp) -> WsgiApp:
    """``app`` behind one lock: each request, response body included, runs alone."""
    lock = threading.Lock()

    def run(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        result = app(environ, start_response)
        try:
            return [b"".join(result)]  # consume the body while still holding the lock
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if _may_wait(environ):
            return run(environ, start_response)
        with lock:
            return run(environ, start_response)

    return middleware


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("-p", "--port", type=int, required=True, help="port to listen on")
    args = parser.parse_args(argv)

    # As moto_server does: moto builds some URLs from MOTO_PORT; SIGTERM exits cleanly.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    dispatcher = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialised(dispatcher), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
