"""What every service is built on: one backend, with the claim-check rule applied, and the change feed.

Services take a :class:`Stores` and never import a concrete backend.

:attr:`Stores.changes` is the one :class:`~shared.storage.changefeed.ChangeFeed` of
these stores: its feed is the raw ``stowagechanges`` table (feed, counter and
dedupe rows are small and never offloaded), and it reaches every table of
:data:`shared.names.TABLES` through the offloading tables the services use, so the
sequencer reads outbox rows exactly as they were written. :meth:`Stores.outbox`
binds it to a tenant and a table for :func:`shared.storage.mutate.mutate`.

:meth:`Stores.audit_anchor` is where the audit log's checkpoints are also written
(``STOWAGE_AUDIT_ANCHOR``), built here because it may need a concrete backend:

* ``container:<name>``: another container of this backend (locally, another
  directory of the blob store; on Azure, a container that should carry a
  container-level immutability policy, see infra/; on AWS, another key prefix of
  the same bucket, which protects nothing against a writer of that bucket);
* ``s3://<bucket>``: an S3 bucket with Object Lock and a default COMPLIANCE
  retention (:class:`shared.backends.aws.AwsObjectLockBackend`), reached with
  ``STOWAGE_AWS_REGION``, ``STOWAGE_AWS_ENDPOINT_URL`` and boto3's credential chain,
  whatever the backend of the rest. Objects go under the ``anchor`` container
  (key prefix ``stowage-anchor/``). Its listings are only followed within one call,
  so their continuation tokens are signed with a per-process secret unless
  ``STOWAGE_TOKEN_SECRET`` is set, and nothing mutable is kept in that bucket.
"""

from __future__ import annotations

import secrets
import threading

from shared import names
from shared.backends import Backend, BlobStore, create_backend
from shared.backends.offload import OffloadingQueue, OffloadingTable
from shared.config import Settings
from shared.errors import InvalidInput
from shared.storage.changefeed import ChangeFeed
from shared.storage.mutate import Outbox


class Stores:
    """Hands out offloading tables and queues, blob stores and the change feed, from one backend.

    ``record_changes`` False makes :meth:`outbox` record nothing: only for the outbox
    benchmark's baseline, never in the app (a change without its record breaks the feed).
    """

    def __init__(self, backend: Backend, settings: Settings, *, record_changes: bool = True) -> None:
        self.backend = backend
        self.settings = settings
        self.record_changes = record_changes
        self._tables: dict[str, OffloadingTable] = {}
        self._queues: dict[str, OffloadingQueue] = {}
        self._changes: ChangeFeed | None = None
        self._anchor: BlobStore | None = None
        self._anchor_backend: Backend | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        return cls(create_backend(settings), settings)

    def blobs(self, container: str = names.CONTAINER_DATA) -> BlobStore:
        return self.backend.blobs(container)

    def table(self, name: str) -> OffloadingTable:
        table = self._tables.get(name)
        if table is None:
            with self._lock:
                table = self._tables.get(name)
                if table is None:
                    table = self._tables[name] = OffloadingTable(
                        self.backend.table(name), self.blobs(), self.settings.offload_threshold_bytes
                    )
        return table

    @property
    def changes(self) -> ChangeFeed:
        """The change feed: writers' outbox rows, the sequencer and the feed's readers (made once)."""
        feed = self._changes
        if feed is None:
            tables = {name: self.table(name) for name in names.TABLES}
            with self._lock:
                if self._changes is None:
                    self._changes = ChangeFeed(self.backend.table(names.TABLE_CHANGES), tables)
                feed = self._changes
        return feed

    def outbox(self, tenant: str, table: str) -> Outbox:
        """Where ``tenant``'s change records of changes in ``table`` go."""
        return Outbox(self.changes if self.record_changes else None, tenant, table)

    def queue(self, name: str) -> OffloadingQueue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = OffloadingQueue(
                self.backend.queue(name), self.blobs(), self.settings.offload_threshold_bytes
            )
        return queue

    def audit_anchor(self) -> BlobStore | None:
        """The store the audit checkpoints are also written to (module doc); None when not configured."""
        spec = self.settings.audit_anchor
        if spec is None:
            return None
        with self._lock:
            if self._anchor is None:
                if spec.startswith("container:"):
                    self._anchor = self.backend.blobs(spec.removeprefix("container:"))
                elif spec.startswith("s3://"):
                    from shared.backends.aws import AwsObjectLockBackend, AwsOptions

                    backend = AwsObjectLockBackend(AwsOptions(
                        region=self.settings.aws_region, endpoint_url=self.settings.aws_endpoint_url,
                        bucket=spec.removeprefix("s3://"),
                        token_secret=self.settings.token_secret or secrets.token_urlsafe(32)))
                    self._anchor_backend = backend
                    self._anchor = backend.blobs(ANCHOR_BUCKET_CONTAINER)
                else:
                    raise InvalidInput(f"{names.SETTING_AUDIT_ANCHOR} {spec!r} is neither 'container:<name>' "
                                       "nor 's3://<bucket>'")
            return self._anchor

    def ensure(self) -> None:
        """Create every container, table and queue the app uses (idempotent).

        An anchor container is created too; an anchor bucket is only checked (Object Lock
        with a COMPLIANCE default retention): it is never created here.
        """
        self.backend.ensure(containers=names.CONTAINERS, tables=names.TABLES, queues=names.QUEUES)
        anchor = self.audit_anchor()
        if anchor is not None:
            (self._anchor_backend or self.backend).ensure(containers=[anchor.container])

    def close(self) -> None:
        if self._anchor_backend is not None:
            self._anchor_backend.close()
        self.backend.close()


#: The container (key prefix) of an ``s3://`` anchor bucket.
ANCHOR_BUCKET_CONTAINER = "stowage-anchor"
