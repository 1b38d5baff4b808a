"""Storage primitives (blob, table, queue) and the three backends that implement them.

Services import only :func:`create_backend` and the contract in :mod:`.base`;
never a concrete backend module. SDKs are imported lazily, so the local backend
runs without the cloud SDKs loaded.
"""

from __future__ import annotations

from shared.backends.base import (
    Backend,
    Blob,
    BlobProperties,
    BlobStore,
    Entity,
    OpKind,
    Page,
    QueueMessage,
    QueueStore,
    TableOp,
    TableStore,
)
from shared.config import Settings

__all__ = [
    "Backend",
    "Blob",
    "BlobProperties",
    "BlobStore",
    "Entity",
    "OpKind",
    "Page",
    "QueueMessage",
    "QueueStore",
    "TableOp",
    "TableStore",
    "create_backend",
]


def create_backend(settings: Settings) -> Backend:
    """The backend the settings name, connected but with nothing created yet (see ``ensure``)."""
    if settings.backend == "local":
        from shared.backends.local import LocalBackend

        return LocalBackend(settings.data_dir, synchronous=settings.local_synchronous,
                            token_secret=settings.token_secret)
    if settings.backend == "azure":
        from shared.backends.azure import AzureBackend, AzureOptions

        return AzureBackend(AzureOptions.from_settings(settings))
    from shared.backends.aws import AwsBackend, AwsOptions

    return AwsBackend(AwsOptions.from_settings(settings))
