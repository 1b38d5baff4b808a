"""Objects: versioned key/value data (JSON, text, binary) per tenant, with TTL.

``models`` (results, limits, queue/HTTP inputs), ``_layout`` (keys, row codecs),
``service`` (:class:`ObjectService`), ``commands`` (queue ops), ``jobs`` (retention timer).
"""

from shared import names
from shared.domains.domain import Domain
from shared.domains.objects.commands import COMMANDS
from shared.domains.objects.jobs import JOBS
from shared.domains.objects.models import ObjectInfo, StoredObject
from shared.domains.objects.service import ObjectService

DOMAIN = Domain(
    name="objects",
    tables=(names.TABLE_OBJECTS,),
    service=ObjectService,
    router="functions.http.objects:router",
    commands=COMMANDS,
    jobs=JOBS,
    paths=("objects",),
)

__all__ = ["DOMAIN", "ObjectInfo", "ObjectService", "StoredObject"]
