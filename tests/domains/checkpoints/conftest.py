"""The fixtures of the service tests (a Stores on every backend)."""

from tests.services.conftest import *
