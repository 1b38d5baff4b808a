"""Timer work of the platform itself, as data: jobs that serve every table, not one domain.

A domain's jobs run on its service (:attr:`shared.domains.domain.Domain.jobs`); a
platform job's ``run`` takes the app's :class:`~shared.stores.Stores`.
``functions/timers.py`` makes one timer trigger per job of both lists, so the
Functions host and the local host (``stowage serve``, which reads the app's timer
bindings) run them alike.

``sweep_offloaded_blobs`` deletes offloaded value blobs that no row names any more
(left by blind writes, failed or crashed writes; see :mod:`shared.backends.offload`),
for every table in :data:`shared.names.TABLES`, each table within its own budget and
resuming where its last run stopped. Two instances at once are safe: every delete
is conditional on the blob's ETag and re-checks the owner row first.
"""

from __future__ import annotations

import logging

from shared import names
from shared.domains.domain import Job
from shared.storage.due import Budget
from shared.stores import Stores

log = logging.getLogger(__name__)

#: Wall time one run may spend per table.
SWEEP_SECONDS_PER_TABLE = 20.0
#: Blobs one run may examine per table (each costs a head, a row read, and maybe a delete).
SWEEP_BLOBS_PER_TABLE = 2000


def sweep_offloaded_blobs(stores: Stores) -> int:
    """One sweep run over every table; returns how many blobs it examined."""
    examined = 0
    for table_name in names.TABLES:
        stats = stores.table(table_name).sweep_unreferenced(
            budget=Budget(seconds=SWEEP_SECONDS_PER_TABLE, items=SWEEP_BLOBS_PER_TABLE))
        examined += stats.examined
        if stats.examined:
            log.info("sweep %s: %s", table_name, stats)
        if stats.unattributable:
            log.warning("sweep %s: %d blob(s) record no owner row (written before owners were recorded); "
                        "they are kept", table_name, stats.unattributable)
    return examined


PLATFORM_JOBS: tuple[Job, ...] = (
    Job("sweep_offloaded_blobs", "0 20 * * * *", sweep_offloaded_blobs,
        f"Delete offloaded value blobs no row names any more, older than an hour, for every table, "
        f"up to {SWEEP_BLOBS_PER_TABLE} blobs or {SWEEP_SECONDS_PER_TABLE:.0f} s per table per run."),
)
