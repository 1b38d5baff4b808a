"""Fixtures of the domain-service tests (a Stores per backend), shared with tests/services."""

from tests.services.conftest import *  # noqa: F403
