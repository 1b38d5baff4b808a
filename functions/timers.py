"""Timer triggers: retention and maintenance, on NCRONTAB schedules (UTC)."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.context import AppContext

log = logging.getLogger(__name__)

# Every five minutes, at second 30 (6-field NCRONTAB: sec min hour day month dow).
PURGE_EXPIRED_OBJECTS = "30 */5 * * * *"


def blueprint(context: AppContext) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("purge_expired_objects")
    @bp.timer_trigger(arg_name="timer", schedule=PURGE_EXPIRED_OBJECTS, run_on_startup=False, use_monitor=True)
    def purge_expired_objects(timer: func.TimerRequest) -> None:
        """Delete objects whose TTL has passed, a chunk per run; the next run takes the rest."""
        purged = context.objects.purge_expired()
        log.info("purged %d expired objects (past due: %s)", purged, timer.past_due)

    return bp
