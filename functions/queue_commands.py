"""Queue trigger: applies command envelopes posted to the commands queue."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.context import AppContext
from shared import names

log = logging.getLogger(__name__)


def blueprint(context: AppContext) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("process_command")
    @bp.queue_trigger(arg_name="msg", queue_name=names.QUEUE_COMMANDS, connection=names.SETTING_QUEUE_CONNECTION)
    def process_command(msg: func.QueueMessage) -> None:
        """Apply one command; raising makes the host retry, then poison it after maxDequeueCount."""
        try:
            body = msg.get_body().decode("utf-8")
        except UnicodeDecodeError:
            context.commands.poison(repr(msg.get_body()[:1000]), "message body is not UTF-8 text",
                                    dequeue_count=msg.dequeue_count or 1, message_id=msg.id or "")
            return
        outcome = context.commands.process(body, dequeue_count=msg.dequeue_count or 1, message_id=msg.id or "")
        log.info("command %s: %s %s", msg.id, outcome.status, outcome.detail)

    return bp
