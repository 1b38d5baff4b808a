"""Every app resource on one backend, for module-scoped fixtures of the domain-level suites."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.config import Settings
from shared.stores import Stores
from tests.conftest import ENV_BACKENDS, selected_backends


def app_stores(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, label: str) -> Iterator[Stores]:
    """Yield a ``Stores`` with every table, queue and container made, on the backend ``request.param`` names."""
    kind: str = request.param
    if kind not in selected_backends():
        pytest.skip(f"{ENV_BACKENDS} excludes {kind}")
    if kind == "local":
        settings = Settings(backend="local", data_dir=tmp_path_factory.mktemp(label))
    elif kind == "azure":
        settings = Settings(backend="azure", azure_connection_string=request.getfixturevalue("azurite").connection_string)
    else:
        tag = uuid.uuid4().hex[:10]
        settings = Settings(backend="aws", aws_endpoint_url=request.getfixturevalue("moto_server").endpoint_url,
                            aws_region="us-east-1", aws_bucket=f"stowage-test-{tag}",
                            aws_table_prefix=f"t{tag}-", aws_queue_prefix=f"q{tag}-")
    stores = Stores.from_settings(settings)
    stores.ensure()
    try:
        yield stores
    finally:
        stores.close()
