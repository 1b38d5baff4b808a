"""Timer triggers: retention and maintenance, on NCRONTAB schedules (UTC)."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.context import AppContext

log = logging.getLogger(__name__)

# 6-field NCRONTAB (sec min hour day month dow), UTC; staggered so runs do not coincide.
PURGE_EXPIRED_OBJECTS = "30 */5 * * * *"
EXPIRE_IDLE_SESSIONS = "45 */5 * * * *"
FINISH_THREAD_DELETIONS = "15 */10 * * * *"
PROCESS_DUE_WORKFLOWS = "5 * * * * *"  # every minute: timeouts and schedules have minute resolution


def blueprint(context: AppContext) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("purge_expired_objects")
    @bp.timer_trigger(arg_name="timer", schedule=PURGE_EXPIRED_OBJECTS, run_on_startup=False, use_monitor=True)
    def purge_expired_objects(timer: func.TimerRequest) -> None:
        """Delete objects whose TTL has passed, a chunk per run; the next run takes the rest."""
        purged = context.objects.purge_expired()
        log.info("purged %d expired objects (past due: %s)", purged, timer.past_due)

    @bp.function_name("expire_idle_sessions")
    @bp.timer_trigger(arg_name="timer", schedule=EXPIRE_IDLE_SESSIONS, run_on_startup=False, use_monitor=True)
    def expire_idle_sessions(timer: func.TimerRequest) -> None:
        """End sessions idle longer than STOWAGE_SESSION_IDLE_SECONDS as expired, a chunk per run."""
        ended = context.sessions.expire_idle()
        log.info("expired %d idle sessions (past due: %s)", ended, timer.past_due)

    @bp.function_name("finish_thread_deletions")
    @bp.timer_trigger(arg_name="timer", schedule=FINISH_THREAD_DELETIONS, run_on_startup=False, use_monitor=True)
    def finish_thread_deletions(timer: func.TimerRequest) -> None:
        """Finish thread deletions that a crash interrupted halfway."""
        finished = context.memory.finish_deletions()
        log.info("finished %d interrupted thread deletions (past due: %s)", finished, timer.past_due)

    @bp.function_name("process_due_workflows")
    @bp.timer_trigger(arg_name="timer", schedule=PROCESS_DUE_WORKFLOWS, run_on_startup=False, use_monitor=True)
    def process_due_workflows(timer: func.TimerRequest) -> None:
        """Time out waits whose timeout passed and make scheduled workflows ready, a chunk per run."""
        done = context.workflows.process_due()
        log.info("due workflows handled: %s (past due: %s)", done, timer.past_due)

    return bp
