"""Sessions: a user's working session with metrics and a task context."""

from shared import names
from shared.domains.domain import Domain, Job
from shared.domains.sessions.service import COMMANDS, SessionService

DOMAIN = Domain(
    name="sessions",
    tables=(names.TABLE_SESSIONS,),
    service=SessionService,
    router="functions.http.sessions:router",
    commands=COMMANDS,
    jobs=(Job("expire_idle_sessions", "45 */5 * * * *", lambda service: service.expire_idle(),
            "End sessions idle longer than STOWAGE_SESSION_IDLE_SECONDS as expired, a chunk per run."),),
    paths=("sessions",),
)

__all__ = ["DOMAIN", "SessionService"]
