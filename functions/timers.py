"""Timer triggers, one per job a registered domain declares (NCRONTAB schedules, UTC).

Schedules are staggered so runs do not coincide; each job does a bounded chunk per
run and is safe on two instances (see the domain's ``jobs``).
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions.context import AppContext
from shared.domains import DOMAINS, Domain, Job

log = logging.getLogger(__name__)


def _timer(bp: func.Blueprint, context: AppContext, domain: Domain, job: Job) -> None:
    def run(timer: func.TimerRequest) -> None:
        handled = job.run(context.service(domain.name))
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
            _timer(bp, context, domain, job)
    return bp
