"""Objects: versioned key/value data (JSON, text, binary) per tenant, with TTL."""

from shared import names
from shared.domains.domain import Domain, Job
from shared.domains.objects.service import COMMANDS, ObjectService

DOMAIN = Domain(
    name="objects",
    tables=(names.TABLE_OBJECTS,),
    service=ObjectService,
    router="functions.http.objects:router",
    commands=COMMANDS,
    jobs=(Job("purge_expired_objects", "30 */5 * * * *", lambda service: service.purge_expired(),
            "Delete objects whose TTL has passed, a chunk per run; the next run takes the rest."),),
    paths=("objects",),
)

__all__ = ["DOMAIN", "ObjectService"]
