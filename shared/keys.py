"""Escaping user text into table keys, and checking user-facing names.

Table keys may not hold ``/ \\ # ?`` or control characters (Azure's rule, applied
on every backend). :func:`escape` maps those to ``%XX`` and ``%`` itself to
``%25``, and ``|`` (which services use to join key parts) to ``%7C``; it works
character by character, so a prefix of the text escapes to a
prefix of the key and prefix queries keep working.
"""

from __future__ import annotations

import re

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
