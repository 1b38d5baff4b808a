"""Fixtures of the audit domain's tests (a Stores per backend), shared with tests/services."""

from tests.services.conftest import *  # noqa: F403
