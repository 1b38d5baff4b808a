"""JSON values from clients: parsed and checked once, the same way for every transport.

Every JSON value a client hands over (an HTTP body, a JSON query parameter, a
queue command's payload, a Python caller's dict) goes through these checks before
anything is written. A value that passes :func:`check_json_value` (and so anything
:func:`parse_client_json` returns) is guaranteed to:

* be made only of ``dict`` with ``str`` keys, ``list`` (or ``tuple``), ``str``,
  ``int``, finite ``float``, ``bool`` and ``None``, so it serialises to standard
  JSON and reads back equal;
* hold no surrogate code point (U+D800..U+DFFF) in any string or key, so it
  encodes as UTF-8. ``json.loads`` turns a lone ``"\\ud800"`` escape into such a
  string, which every backend then refuses to store (a 500 before this module);
* nest at most ``max_depth`` containers (default :data:`MAX_JSON_DEPTH`), so that
  serialising, validating and returning it stays far from Python's recursion
  limit (about 1000 frames; pydantic serialises about 250 levels).

The checks walk the value iteratively, so no input can exhaust the stack, and
every failure is :class:`~shared.errors.InvalidInput` (400) naming the value and
where in it the problem is. Nothing here reads or writes storage.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeAlias

from shared.errors import InvalidInput

#: Deepest nesting of objects and arrays accepted: ``{}`` and ``[]`` are depth 1.
MAX_JSON_DEPTH = 100

_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN = 40  # characters of a key shown in a message
#: Where the walk is: a linked (parent path, key or index) pair; None at the root.
_Path: TypeAlias = "tuple[_Path | None, str | int]"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _where(path: _Path | None) -> str:
    """A readable location such as ``$.a[3].b`` from the linked path the walk keeps."""
    parts: list[str] = []
    while path is not None:
        path, step = path
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            shown = _SURROGATE.sub("\ufffd", step)
            shown = shown if len(shown) <= _SHOWN else shown[:_SHOWN] + "…"
            parts.append("." + shown if shown.isidentifier() else f"[{json.dumps(shown, ensure_ascii=False)}]")
    parts.reverse()
    if len(parts) > 12:
        parts[4:-6] = [f"…({len(parts) - 10} levels)…"]
    return "$" + "".join(parts)


def _check_text(text: str, what: str, path: _Path | None, role: str) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        raise InvalidInput(f"{what}: {role} at {_where(path)} holds a lone surrogate (\\ud800-\\udfff), "
                           "which is not Unicode text; send valid UTF-8")


def check_json_value(value: Any, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``value`` unchanged if it is a JSON value with the guarantees above; InvalidInput otherwise.

    ``what`` names the value in the message, e.g. ``"thread metadata"``.
    """
    # A stack of (container, depth, path); path is a linked (parent path, key or index) pair.
    stack: list[tuple[Any, int, _Path | None]] = [([value], 0, None)]
    while stack:
        container, depth, path = stack.pop()
        is_object = isinstance(container, dict)
        for key, item in container.items() if is_object else enumerate(container):
            # The root sits in a one-item list at depth 0 whose index is not part of the path.
            here = (path, key) if depth else None
            if is_object:
                if not isinstance(key, str):
                    raise InvalidInput(f"{what}: object keys must be strings; {_where(path)} has the key "
                                       f"{key!r} ({type(key).__name__})")
                _check_text(key, what, here, "a key")
            if isinstance(item, str):
                _check_text(item, what, here, "the string")
            elif isinstance(item, (dict, list, tuple)):
                if depth + 1 > max_depth:
                    raise InvalidInput(f"{what} nests deeper than {max_depth} levels of objects and arrays "
                                       f"(at {_where(here)}); flatten it")
                stack.append((item, depth + 1, here))
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise InvalidInput(f"{what}: {_where(here)} is {item}, which JSON cannot hold; "
                                       "send a finite number")
            elif item is not None and not isinstance(item, int):
                raise InvalidInput(f"{what}: {_where(here)} is a Python {type(item).__name__}, not a JSON value "
                                   "(object, array, string, number, true, false or null)")
    return value


def parse_client_json(raw: bytes | bytearray | str, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON a client sent, with the guarantees of :func:`check_json_value`.

    Bytes must be UTF-8 (a leading byte-order mark is ignored); ``NaN`` and
    ``Infinity`` are refused, as standard JSON has no such numbers. Too deep a
    document is refused whether the parser or the check notices first.
    InvalidInput (400) on any failure, naming ``what``.
    """
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{what} is not valid UTF-8 (at byte {exc.start}); JSON must be UTF-8") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidInput(f"{what} must be JSON text")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidInput(f"{what} nests deeper than {max_depth} levels of objects and arrays; flatten it") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}") from None
    except ValueError as exc:  # NaN or Infinity, or an integer of more digits than Python reads (4300)
        raise InvalidInput(f"{what} is not standard JSON: {str(exc).split(';')[0]}") from None
    return check_json_value(value, what, max_depth=max_depth)


def json_text(value: Any, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> str:
    """``value`` as compact JSON text, after :func:`check_json_value`; the form every service stores.

    Non-ASCII characters are kept as they are (not ``\\u`` escaped), so
    ``len(text.encode("utf-8"))`` is the stored size.
    """
    check_json_value(value, what, max_depth=max_depth)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # an int of more digits than Python writes (4300)
        raise InvalidInput(f"{what} is not standard JSON: {str(exc).split(';')[0]}") from None
