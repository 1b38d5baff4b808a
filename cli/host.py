"""A local stand-in for the Azure Functions host, driven by the app's own bindings.

The Functions Core Tools cannot be installed on our machines, so ``stowage serve``
hosts the same ``function_app.app`` object this way:

* HTTP: the app's ASGI application (what ``AsgiFunctionApp`` wraps) under uvicorn, in
  ``--workers`` processes that share one listening socket (uvicorn's supervisor restarts a
  worker that dies); each worker imports the function app itself (:func:`served_app`);
* queue triggers: for every function whose binding is a ``queueTrigger``, a poller
  reads that queue from the configured backend with host.json's batch size,
  visibility timeout, polling interval and ``maxDequeueCount``, and after the last
  failed attempt moves the message to ``<queue>-poison``, as the host does;
* timer triggers: each fires on its 6-field NCRONTAB schedule (croniter, UTC).

Queue pollers and timers run in exactly one process (the only one with one worker, else
the supervisor, which serves no HTTP), so a timer fires once per schedule however many
workers serve HTTP, as one instance runs a given timer in Azure.

Every function is invoked through ``get_user_function()``, the callable the
Functions host itself invokes. Nothing about queues or schedules is repeated here.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest as HostTimerRequest
from croniter import croniter

from shared import names
from shared.backends import Backend
from shared.errors import StowageError

log = logging.getLogger("stowage.host")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?$")


def parse_timespan(value: str) -> float:
    """Seconds in a host.json timespan such as "00:00:30" or "1.00:00:00"."""
    match = _TIMESPAN.match(value)
    if not match:
        raise ValueError(f"not a timespan: {value!r}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class QueueSettings:
    """host.json ``extensions.queues``, with the Functions host's defaults."""

    batch_size: int = 16
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, path: Path) -> QueueSettings:
        queues = json.loads(path.read_text())["extensions"].get("queues", {}) if path.is_file() else {}
        defaults = cls()
        return cls(
            batch_size=int(queues.get("batchSize", defaults.batch_size)),
            max_dequeue_count=int(queues.get("maxDequeueCount", defaults.max_dequeue_count)),
            visibility_timeout=parse_timespan(queues.get("visibilityTimeout", "00:00:00")),
            max_polling_interval=parse_timespan(queues.get("maxPollingInterval", "00:01:00")),
            message_encoding=str(queues.get("messageEncoding", defaults.message_encoding)),
        )


def _binding(function: Any) -> dict[str, Any]:
    """The trigger binding of an indexed function, as function.json states it."""
    bindings = json.loads(function.get_function_json())["bindings"]
    return next(b for b in bindings if b["type"].endswith("Trigger"))


def _invoke(user_function: Callable[..., Any], **kwargs: Any) -> None:
    result = user_function(**kwargs)
    if inspect.isawaitable(result):
        asyncio.run(result)  # type: ignore[arg-type]


class QueueTrigger:
    """Runs one queue-triggered function against the backend's queue of the same name."""

    #: How long a message stays hidden while the function runs (the host renews its lease similarly).
    LEASE_SECONDS = 300

    def __init__(self, function: Any, backend: Backend, settings: QueueSettings) -> None:
        binding = _binding(function)
        self.name = function.get_function_name()
        self.queue_name: str = binding["queueName"]
        self.connection: str = binding["connection"]
        self.arg_name: str = binding["name"]
        self.settings = settings
        self.queue = backend.queue(self.queue_name)
        self.poison = backend.queue(self.queue_name + names.POISON_SUFFIX)
        self._user_function = function.get_user_function()

    def poll_once(self) -> int:
        """Receive one batch and run the function on each message; returns how many were received."""
        batch = self.queue.receive(max_messages=min(self.settings.batch_size, 32),
                                   visibility_timeout=self.LEASE_SECONDS)
        for message in batch:
            if message.undecodable:
                # The Functions host cannot decode it either, and moves it to the poison queue unchanged.
                log.warning("%s: message %s is undecodable (%s); moved to %s", self.name, message.id,
                            message.decode_error, self.poison.name)
                self.poison.send(message.body)
                self.queue.delete(message.receipt)
                continue
            host_message = HostQueueMessage(
                id=message.id, body=message.body.encode("utf-8"), dequeue_count=message.dequeue_count,
                pop_receipt=message.receipt, insertion_time=message.enqueued_at,
            )
            try:
                _invoke(self._user_function, **{self.arg_name: host_message})
            except Exception:  # noqa: BLE001 - any failure of user code is a failed attempt, as in the host
                log.exception("%s failed on message %s (attempt %d)", self.name, message.id, message.dequeue_count)
                self._after_failure(message.body, message.receipt, message.dequeue_count)
                continue
            self.queue.delete(message.receipt)
        return len(batch)

    def _after_failure(self, body: str, receipt: str, dequeue_count: int) -> None:
        if dequeue_count >= self.settings.max_dequeue_count:
            log.warning("%s: message moved to %s after %d attempts", self.name, self.poison.name, dequeue_count)
            self.poison.send(body)
            self.queue.delete(receipt)
        else:
            self.queue.extend(receipt, int(self.settings.visibility_timeout))

    def drain(self, max_batches: int = 1000) -> int:
        """Poll until a receive comes back empty; for tests and one-shot runs."""
        total = 0
        for _ in range(max_batches):
            received = self.poll_once()
            total += received
            if not received:
                break
        return total


class TimerTrigger:
    """Runs one timer-triggered function on its NCRONTAB schedule."""

    def __init__(self, function: Any) -> None:
        binding = _binding(function)
        self.name = function.get_function_name()
        self.schedule: str = binding["schedule"]
        self.run_on_startup = bool(binding.get("runOnStartup", False))
        self.arg_name: str = binding["name"]
        if len(self.schedule.split()) != 6:
            raise ValueError(f"{self.name}: schedule {self.schedule!r} is not 6-field NCRONTAB")
        self._user_function = function.get_user_function()

    def next_after(self, moment: datetime) -> datetime:
        return croniter(self.schedule, moment, ret_type=datetime, second_at_beginning=True).get_next(datetime)

    def fire(self, *, past_due: bool = False) -> None:
        _invoke(self._user_function, **{self.arg_name: HostTimerRequest(past_due=past_due)})


class LocalHost:
    """Queue pollers and timers for a function app, on background threads."""

    def __init__(self, functions: list[Any], backend: Backend, host_json: Path) -> None:
        """``functions``: ``app.get_functions()``, which may be called only once per app."""
        settings = QueueSettings.from_host_json(host_json)
        self.queues: list[QueueTrigger] = []
        self.timers: list[TimerTrigger] = []
        for function in functions:
            kind = _binding(function)["type"]
            if kind == "queueTrigger":
                self.queues.append(QueueTrigger(function, backend, settings))
            elif kind == "timerTrigger":
                self.timers.append(TimerTrigger(function))
        self.queue_settings = settings
        # The Functions host creates a trigger's poison queue when it first needs it; ensure both up front.
        backend.ensure(queues=[name for q in self.queues for name in (q.queue_name, q.poison.name)])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for trigger in self.queues:
            self._spawn(f"queue:{trigger.queue_name}", self._run_queue, trigger)
        for timer in self.timers:
            self._spawn(f"timer:{timer.name}", self._run_timer, timer)

    def _spawn(self, name: str, target: Callable[[Any], None], arg: Any) -> None:
        thread = threading.Thread(target=target, args=(arg,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run_queue(self, trigger: QueueTrigger) -> None:
        # Back off while the queue is empty, as the host does, up to maxPollingInterval.
        idle = 0.1
        while not self._stop.is_set():
            try:
                received = trigger.poll_once()
            except StowageError:
                log.exception("polling %s failed; retrying", trigger.queue_name)
                received = 0
            idle = 0.1 if received else min(idle * 2, self.queue_settings.max_polling_interval)
            if not received:
                self._stop.wait(idle)

    def _run_timer(self, timer: TimerTrigger) -> None:
        if timer.run_on_startup:
            self._fire(timer, past_due=False)
        due = timer.next_after(datetime.now(timezone.utc))
        while not self._stop.wait(max(0.0, (due - datetime.now(timezone.utc)).total_seconds())):
            late = datetime.now(timezone.utc) - due > timedelta(seconds=30)
            self._fire(timer, past_due=late)
            due = timer.next_after(datetime.now(timezone.utc))

    @staticmethod
    def _fire(timer: TimerTrigger, *, past_due: bool) -> None:
        try:
            timer.fire(past_due=past_due)
        except Exception:  # noqa: BLE001 - a failed run is logged; the next one comes on schedule, as in the host
            log.exception("timer %s failed", timer.name)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)


#: The environment variable naming the ``module:attribute`` of the FunctionApp that :func:`served_app` serves.
APP_ENVIRONMENT = "STOWAGE_SERVE_APP"


def served_app() -> Any:
    """The ASGI app of the FunctionApp ``$STOWAGE_SERVE_APP`` names: uvicorn's factory in every HTTP worker
    of `stowage serve` (a spawned worker imports the function app anew and has its own context)."""
    module_name, _, attribute = os.environ[APP_ENVIRONMENT].partition(":")
    return asgi_app_of(getattr(importlib.import_module(module_name), attribute or "app"))


def asgi_app_of(app: func.FunctionApp) -> Any:
    """The ASGI application an ``AsgiFunctionApp`` serves over its HTTP function."""
    middleware = getattr(app, "middleware", None)
    inner = getattr(middleware, "_app", None)
    if inner is None:
        raise TypeError("function_app.app is not an AsgiFunctionApp; nothing to serve over HTTP")
    return inner
