"""The fixtures of the checkpoint service tests: a Stores on every backend, a fresh tenant, the service."""

import uuid

import pytest

from shared.domains.checkpoints.service import CheckpointService
from tests.services.conftest import *


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def service(stores) -> CheckpointService:
    return CheckpointService(stores)
