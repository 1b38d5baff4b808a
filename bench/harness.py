"""What every benchmark shares: timing loops and settings for a backend, emulators started on demand."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.config import Settings  # noqa: E402
from tests.emulators import start_azurite, start_moto  # noqa: E402

T = TypeVar("T")


def rate(count: int, action: Callable[[int], object]) -> float:
    """Calls per second of ``action(i)`` for i in range(count)."""
    start = time.perf_counter()
    for i in range(count):
        action(i)
    return count / (time.perf_counter() - start)


def settings_for(kind: str, workdir: Path, stack: ExitStack) -> Settings:
    """Settings for ``kind``; Azurite or moto is started under ``stack`` when needed."""
    if kind == "local":
        return Settings(backend="local", data_dir=workdir / "local")
    if kind == "azure":
        azurite = stack.enter_context(start_azurite(workdir / "azurite"))
        return Settings(backend="azure", azure_connection_string=azurite.connection_string)
    if kind == "aws":
        moto = stack.enter_context(start_moto(workdir / "moto"))
        return Settings(backend="aws", aws_endpoint_url=moto.endpoint_url, aws_bucket=f"bench-{uuid.uuid4().hex[:8]}")
    raise SystemExit(f"unknown backend {kind!r}: choose local, azure or aws")


def backend_list(text: str) -> list[str]:
    return [kind.strip() for kind in text.split(",") if kind.strip()]


def measure_on_backends(kinds: list[str], measure: Callable[[str, Any], T], announce: Callable[[str], None]) -> dict[str, T]:
    """``measure(kind, stores)`` on each backend in turn, every app resource created first."""
    from shared.stores import Stores

    results: dict[str, T] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            stores = Stores.from_settings(settings_for(kind, Path(tmp), stack))
            try:
                stores.ensure()
                announce(kind)
                results[kind] = measure(kind, stores)
            finally:
                stores.close()
    return results
