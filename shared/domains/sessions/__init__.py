"""Sessions: a user's working session with metrics and a task context.

models (results, enums, errors, input models), _layout (keys and row codecs),
service (the service), commands (queue ops), jobs (timer work).
"""

from shared import names
from shared.domains.domain import Domain
from shared.domains.sessions.commands import COMMANDS
from shared.domains.sessions.jobs import JOBS
from shared.domains.sessions.service import SessionService

DOMAIN = Domain(
    name="sessions",
    tables=(names.TABLE_SESSIONS,),
    service=SessionService,
    router="functions.http.sessions:router",
    commands=COMMANDS,
    jobs=JOBS,
    paths=("sessions",),
)

__all__ = ["DOMAIN", "SessionService"]
