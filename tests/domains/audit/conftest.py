"""Fixtures of the audit domain's tests (a Stores per backend, shared with tests/services), and anchored stores.

``anchored_stores``: a Stores over the test's backend whose audit checkpoints are also
written to an anchor: another container locally and on Azurite, and on moto an S3
bucket created with Object Lock enabled and a default COMPLIANCE retention of one day.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from shared.config import Settings
from shared.stores import Stores
from tests.services.conftest import *  # noqa: F403


def s3_client(settings: Settings) -> Any:  # boto3 clients are untyped
    return boto3.client("s3", endpoint_url=settings.aws_endpoint_url, region_name=settings.aws_region)


@pytest.fixture
def anchor_setting(settings: Settings) -> str:
    """``STOWAGE_AUDIT_ANCHOR`` for this test: a fresh container, or a fresh Object Lock bucket on aws."""
    if settings.backend != "aws":
        return f"container:anchor-{uuid.uuid4().hex[:12]}"
    bucket = f"anchor-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(settings)
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    s3.close()
    return f"s3://{bucket}"


@pytest.fixture
def anchored_settings(settings: Settings, anchor_setting: str) -> Settings:
    return dataclasses.replace(settings, audit_anchor=anchor_setting)


@pytest.fixture
def anchored_stores(stores: Stores, anchored_settings: Settings) -> Iterator[Stores]:
    """Stores over the same backend data as ``stores``, with the anchor configured and ensured."""
    instance = Stores.from_settings(anchored_settings)
    instance.ensure()
    try:
        yield instance
    finally:
        instance.close()
