"""The stored row format, written one way by every domain.

* Every row a domain writes carries ``fmt``, the version of the format that wrote
  it (:func:`stamped`), so a later release can read old rows and migrate them.
* Timestamps are stored as epoch seconds (a float, microsecond precision) and
  shown to clients as ISO-8601 UTC (:func:`iso`), nowhere the other way round.
* JSON values are stored as compact UTF-8 JSON text after the checks of
  :mod:`shared.jsonvalues` (no lone surrogates, bounded depth, finite numbers),
  with a byte limit checked before anything is written (:func:`json_field`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidInput, TooLarge
from shared.jsonvalues import json_text

ROW_FMT = "fmt"


def stamped(properties: dict[str, Any], fmt: int) -> dict[str, Any]:
    """``properties`` with the row format version set."""
    properties[ROW_FMT] = fmt
    return properties


def iso(timestamp: float) -> str:
    """A stored timestamp (epoch seconds) as ISO-8601 UTC."""
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


def stored_time(timestamp: float) -> float:
    """A timestamp as stored: epoch seconds rounded to the microsecond."""
    return round(float(timestamp), 6)


def json_field(value: Any, what: str, *, max_bytes: int, require_object: bool = False) -> str:
    """``value`` as the JSON text a row stores; InvalidInput or TooLarge (413) before any write."""
    if require_object and not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    text = json_text(value, what)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise TooLarge(f"{what} is {size} bytes as JSON; the limit is {max_bytes}")
    return text


def json_value(text: str | None, default: Any = None) -> Any:
    """A JSON field read back (``default`` when absent)."""
    return default if text is None else json.loads(text)
