"""Index the function app as the Functions host does, and check what it declares."""

from __future__ import annotations

import json
from pathlib import Path

import azure.functions as func
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest
from croniter import croniter

import function_app
from shared import names
from shared.config import Settings
from cli.host import LocalHost, QueueSettings, asgi_app_of

ROOT = Path(__file__).resolve().parents[1]
TIMERS = {"purge_expired_objects": "30 */5 * * * *", "expire_idle_sessions": "45 */5 * * * *",
          "finish_thread_deletions": "15 */10 * * * *", "process_due_workflows": "5 * * * * *",
          "sweep_offloaded_blobs": "0 20 * * * *",
          "sequence_changes": "15 * * * * *"}


INDEXED = function_app.app.get_functions()  # the host indexes once; a second call raises


def _functions() -> dict[str, dict]:
    indexed = {}
    for function in INDEXED:
        document = json.loads(function.get_function_json())
        assert document["scriptFile"] == "function_app.py"
        assert callable(function.get_user_function())
        indexed[function.get_function_name()] = document
    return indexed


def test_the_app_declares_exactly_these_triggers():
    indexed = _functions()
    assert set(indexed) == {"http_app_func", "process_command", *TIMERS}
    http = indexed["http_app_func"]["bindings"][0]
    assert http["type"] == "httpTrigger" and http["route"] == "/{*route}" and http["authLevel"] == "ANONYMOUS"


def test_queue_trigger_names_a_declared_queue_and_the_connection_setting():
    binding = _functions()["process_command"]["bindings"][0]
    assert binding["type"] == "queueTrigger"
    assert binding["queueName"] == names.QUEUE_COMMANDS
    assert binding["queueName"] + names.POISON_SUFFIX in names.QUEUES
    assert binding["connection"] == names.SETTING_QUEUE_CONNECTION
    assert names.SETTING_QUEUE_CONNECTION in names.APP_SETTINGS


def test_timer_schedules_are_valid_six_field_ncrontab():
    indexed = _functions()
    for name, schedule in TIMERS.items():
        binding = indexed[name]["bindings"][0]
        assert binding["type"] == "timerTrigger" and binding["runOnStartup"] is False
        assert binding["schedule"] == schedule and len(schedule.split()) == 6
        assert croniter.is_valid(schedule, second_at_beginning=True)


def test_host_json_routes_and_queue_settings_agree_with_the_app():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ""  # FastAPI routes carry /api themselves
    queues = host["extensions"]["queues"]
    # Producers (shared.backends.azure) base64-encode, so the host must decode base64.
    assert queues["messageEncoding"] == "base64"
    settings = QueueSettings.from_host_json(ROOT / "host.json")
    assert (settings.batch_size, settings.max_dequeue_count) == (queues["batchSize"], queues["maxDequeueCount"])
    assert settings.visibility_timeout == 10


def test_local_host_takes_its_queues_and_schedules_from_the_bindings(tmp_path):
    from shared.stores import Stores

    stores = Stores.from_settings(Settings(data_dir=tmp_path))
    host = LocalHost(INDEXED, stores.backend, ROOT / "host.json")
    assert [(q.name, q.queue_name, q.poison.name) for q in host.queues] == [
        ("process_command", names.QUEUE_COMMANDS, names.QUEUE_COMMANDS_POISON)]
    assert {t.name: t.schedule for t in host.timers} == TIMERS
    stores.close()


def test_the_served_asgi_app_is_the_one_the_function_app_wraps():
    asgi = asgi_app_of(function_app.app)
    assert asgi is function_app.app.middleware._app
    assert "/api/v1/objects/{key}" in asgi.openapi()["paths"]


def test_user_functions_can_be_called_like_the_host_calls_them(tmp_path, monkeypatch):
    """The documented unit-test idiom: build the trigger's input by hand and call the user function."""
    from functions import queue_commands, timers
    from functions.context import AppContext

    context = AppContext(Settings(data_dir=tmp_path))
    app = func.FunctionApp()
    app.register_functions(queue_commands.blueprint(context))
    app.register_functions(timers.blueprint(context))
    by_name = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}
    body = json.dumps({"version": 1, "op": "objects.put", "tenant": "acme", "idempotency_key": "1",
                       "payload": {"key": "hello", "text": "world"}})
    by_name["process_command"](QueueMessage(id="m1", body=body.encode(), dequeue_count=1))
    assert context.objects.get("acme", "hello").data == b"world"
    for timer in TIMERS:
        by_name[timer](TimerRequest(past_due=False))
    context.close()


def test_the_sample_settings_list_every_app_setting_with_a_working_local_value(tmp_path):
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    missing = [name for name in names.APP_SETTINGS if name not in sample]
    assert not missing, f"local.settings.sample.json lacks {missing}"
    copy = tmp_path / "local.settings.json"
    copy.write_text(json.dumps({"Values": {**sample, "STOWAGE_DATA_DIR": str(tmp_path / "data")}}))
    settings = Settings.from_env({}, settings_file=copy)
    assert settings.backend == "local"
    from shared.stores import Stores

    stores = Stores.from_settings(settings)
    stores.ensure()
    stores.backend.ping()
    stores.close()


def test_the_local_host_moves_an_undecodable_message_to_poison_unchanged(tmp_path):
    """As the Functions host does: a body it cannot decode is never handed to the function."""
    import contextlib
    import sqlite3
    import time

    from functions import queue_commands
    from functions.context import AppContext
    from cli.host import QueueTrigger

    context = AppContext(Settings(data_dir=tmp_path))
    app = func.FunctionApp()
    app.register_functions(queue_commands.blueprint(context))
    [function] = app.get_functions()
    backend = context.stores.backend
    trigger = QueueTrigger(function, backend, QueueSettings())
    # A valid envelope, but stored as bytes that are not UTF-8 by a foreign writer of the queue file.
    envelope = json.dumps({"version": 1, "op": "objects.put", "tenant": "acme", "idempotency_key": "1",
                           "payload": {"key": "hello", "text": "world"}}).encode() + b"\xff"
    with contextlib.closing(sqlite3.connect(backend.table_db.path)) as conn, conn:
        conn.execute("INSERT INTO messages (queue, id, body, visible_at, enqueued_at) VALUES (?, ?, ?, ?, ?)",
                     (names.QUEUE_COMMANDS, "raw-1", envelope, time.time(), time.time()))
    assert trigger.poll_once() == 1
    assert backend.queue(names.QUEUE_COMMANDS).peek() == []
    [moved] = backend.queue(names.QUEUE_COMMANDS_POISON).peek()
    assert moved.body.startswith('{"version": 1') and moved.body.endswith("\ufffd")
    import pytest

    from shared.errors import NotFound

    with pytest.raises(NotFound):
        context.objects.get("acme", "hello")  # never applied
    context.close()
