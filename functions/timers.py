"""Timer triggers, one per job a registered domain declares and per platform job (NCRONTAB, UTC).

Schedules are staggered so runs do not coincide; each job does a bounded chunk per
run and is safe on two instances (see the domain's ``jobs`` and ``shared.platform_jobs``).
A domain job runs on its domain's service, a platform job on the app's stores. Each
run is attributed to the system actor ``timer`` with source ``timer`` and the job's
name as a correlation id (:func:`shared.request_context.acting_as`), so what it changes
is recorded as the system's work; the local host (cli/host.py) calls the same function.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from functions.context import AppContext
from shared.domains import DOMAINS, Job
from shared.platform_jobs import PLATFORM_JOBS
from shared.request_context import Actor, RequestContext, acting_as

#: Who timer work is attributed to.
TIMER_ACTOR = Actor("system", "timer")

log = logging.getLogger(__name__)


def _timer(bp: func.Blueprint, job: Job, target: Callable[[], Any]) -> None:
    def run(timer: func.TimerRequest) -> None:
        with acting_as(RequestContext(actor=TIMER_ACTOR, source="timer").with_ids(job=job.name)):
            handled = job.run(target())
        log.info("%s: %s handled (past due: %s)", job.name, handled, timer.past_due)

    run.__name__ = job.name
    run.__qualname__ = job.name
    run.__doc__ = job.description
    bp.function_name(job.name)(
        bp.timer_trigger(arg_name="timer", schedule=job.schedule, run_on_startup=False, use_monitor=True)(run))


def blueprint(context: AppContext) -> func.Blueprint:
    bp = func.Blueprint()
    for domain in DOMAINS:
        for job in domain.jobs:
            _timer(bp, job, functools.partial(context.service, domain.name))
    for job in PLATFORM_JOBS:
        _timer(bp, job, lambda: context.stores)
    return bp
