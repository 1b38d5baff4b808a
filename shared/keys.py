"""Escaping user text into table keys, and checking user-facing names.

Table keys may not hold ``/ \\ # ?`` or control characters (Azure's rule, applied
on every backend). :func:`escape` maps those to ``%XX`` and ``%`` itself to
``%25``, and ``|`` (which services use to join key parts) to ``%7C``; it works
character by character, so a prefix of the text escapes to a
prefix of the key and prefix queries keep working.

Escaping grows text up to threefold, and a table key is at most 1 KiB (measured by
:func:`shared.backends.base.table_key_size`, where one character can take 6 bytes:
``%`` escaped is 3 characters of UTF-16; 4 for an emoji). So 256 characters of user
text do not always fit. :func:`key_part` is the escaped text when that takes at most
:data:`KEY_PART_BYTES` (880: every 146-character text fits, and most 256-character
ones), and otherwise ``escape(text[:j]) + "%~" + <32 hex of SHA-256(text)>`` with the
longest ``j`` that fits, at most :data:`MAX_KEY_PART_BYTES` (948) in all. ``%~`` never
occurs in escaped text, so a hashed part is never another text's part nor a prefix of
one followed by ``|``. Prefix queries keep working (:func:`key_part_prefix`): a prefix
whose escaped form fits selects exactly the parts of the texts that start with it,
hashed or not; a longer prefix selects a superset (texts with the same first ``j``
characters), which the caller filters by the full text it stores beside the hashed
part. Order: texts list in the order of their escaped form, except that hashed ones
with the same first ``j`` characters list in hash order among themselves.
"""

from __future__ import annotations

import hashlib
import re

from shared.backends.base import table_key_size
from shared.errors import InvalidInput, InvalidKey

_ESCAPED = {"%": "%25", "/": "%2F", "\\": "%5C", "#": "%23", "?": "%3F", "|": "%7C"}
_ESCAPE_PATTERN = re.compile(r"[%/\\#?|]")
_UNESCAPE_PATTERN = re.compile(r"%(25|2F|5C|23|3F|7C)")
_UNESCAPED = {v[1:]: k for k, v in _ESCAPED.items()}
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def escape(text: str) -> str:
    return _ESCAPE_PATTERN.sub(lambda m: _ESCAPED[m.group()], text)


def unescape(key: str) -> str:
    return _UNESCAPE_PATTERN.sub(lambda m: _UNESCAPED[m.group(1)], key)


#: Largest :func:`key_part` that is plain escaped text, in table key bytes.
KEY_PART_BYTES = 880
#: Marks a hashed :func:`key_part`; escaped text never holds "%~".
HASHED_MARK = "%~"
_HASH_CHARS = 32
#: Largest :func:`key_part` of all: a hashed one adds the mark and the hash (2 bytes each in UTF-16).
MAX_KEY_PART_BYTES = KEY_PART_BYTES + 2 * (len(HASHED_MARK) + _HASH_CHARS)


def _fitting_length(text: str, budget: int) -> int:
    """The largest ``j`` such that ``escape(text[:j])`` takes at most ``budget`` table key bytes."""
    low, high = 0, len(text)
    while low < high:  # table_key_size(escape(text[:j])) grows with j
        middle = (low + high + 1) // 2
        if table_key_size(escape(text[:middle])) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def key_part(text: str) -> str:
    """``text`` as a bounded part of a table key (see the module docstring): at most
    :data:`MAX_KEY_PART_BYTES`, escaped text whenever that fits :data:`KEY_PART_BYTES`."""
    escaped = escape(text)
    if table_key_size(escaped) <= KEY_PART_BYTES:
        return escaped
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return escape(text[:_fitting_length(text, KEY_PART_BYTES)]) + HASHED_MARK + digest


def is_hashed(part: str) -> bool:
    """Whether a :func:`key_part` is hashed (the text must then be stored beside it)."""
    return HASHED_MARK in part


def key_part_prefix(prefix: str) -> tuple[str, bool]:
    """What the :func:`key_part` of every text starting with ``prefix`` starts with, and
    whether that selects exactly those texts (False: filter by the full text)."""
    escaped = escape(prefix)
    if table_key_size(escaped) <= KEY_PART_BYTES:
        return escaped, True
    return escape(prefix[:_fitting_length(prefix, KEY_PART_BYTES)]) + HASHED_MARK, False


def check_tenant(tenant: str) -> str:
    """Tenant names: 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit."""
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise InvalidInput("tenant must be 1-63 lowercase letters, digits, '-' or '_'")
    return tenant


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_path_key(key: str, *, max_length: int = 256, what: str = "key") -> str:
    """A hierarchical user key like ``agent_configs/ceo``.

    Rejected: empty, longer than ``max_length`` characters, control characters,
    backslashes, empty segments (leading, trailing or doubled ``/``), and ``.``
    or ``..`` segments.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"{what} must not be empty")
    if len(key) > max_length:
        raise InvalidKey(f"{what} is longer than {max_length} characters")
    if _CONTROL.search(key):
        raise InvalidKey(f"{what} contains a control character")
    if "\\" in key:
        raise InvalidKey(f"{what} contains a backslash; use '/' to separate segments")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"{what} is not valid unicode") from exc
    for segment in key.split("/"):
        if not segment:
            raise InvalidKey(f"{what} has an empty segment (leading, trailing or doubled '/')")
        if segment in (".", ".."):
            raise InvalidKey(f"{what} has a '{segment}' segment")
        if segment.endswith("."):
            raise InvalidKey(f"{what} has a segment ending in '.'")
    return key


#: Ids of threads, sessions, workflows, checkpoints, events and resources.
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_ID = re.compile(ID_PATTERN)


def check_id(value: object, what: str) -> str:
    """An id: 1-128 letters, digits, '.', '_', ':' or '-' (InvalidKey otherwise)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidKey(f"{what} must be 1-128 letters, digits, '.', '_', ':' or '-'; got {value!r}")
    return value
