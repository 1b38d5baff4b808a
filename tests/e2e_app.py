"""The production function app plus one queue trigger that always fails, served by the
end-to-end tests to watch the local host retry a message and then poison it."""

import azure.functions as func

from function_app import app, context  # noqa: F401  (context is what `stowage serve` uses)
from shared import names

ALWAYS_FAILS_QUEUE = "e2e-always-fails"

bp = func.Blueprint()


@bp.function_name("always_fails")
@bp.queue_trigger(arg_name="msg", queue_name=ALWAYS_FAILS_QUEUE, connection=names.SETTING_QUEUE_CONNECTION)
def always_fails(msg: func.QueueMessage) -> None:
    raise RuntimeError(f"always fails (attempt {msg.dequeue_count})")


app.register_functions(bp)
