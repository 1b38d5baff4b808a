"""shared.jsonvalues: the one parser and checker of JSON from clients (no backend needed)."""

from __future__ import annotations

import enum
import json

import pytest

from shared.errors import InvalidInput
from shared.jsonvalues import MAX_JSON_DEPTH, check_json_value, json_text, parse_client_json


def nested(depth: int, leaf: object = 1) -> list:
    """``depth`` lists inside each other, built without recursion."""
    value: object = leaf
    for _ in range(depth):
        value = [value]
    return value  # type: ignore[return-value]


def refused(call, *args, match: str | None = None, **kwargs) -> str:
    """The InvalidInput message ``call`` raises; it must be encodable (it goes into a problem+json body)."""
    with pytest.raises(InvalidInput, match=match) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    message.encode("utf-8")
    return message


@pytest.mark.parametrize("raw", [
    b'{"a": [1, 2.5, "x", true, false, null, {"b": {}}]}', b"[]", b'"text"', b"0", b"null",
    '{"caf\u00e9": "\u00e9\u00e8"}'.encode(), b'"\\ud83d\\ude00"',
])
def test_valid_json_parses_as_json_loads_does(raw):
    assert parse_client_json(raw, what="body") == json.loads(raw)
    assert parse_client_json(raw.decode("utf-8"), what="body") == json.loads(raw)


@pytest.mark.parametrize("raw, where", [
    (b'"\\ud800"', "$"),
    (b'{"a": "x\\udfffy"}', "$.a"),
    (b'{"a": [1, {"b": "\\udc00"}]}', "$.a[1].b"),
    (b'{"\\ud800": 1}', "$["),
    (b'{"a": {"k\\udbff": null}}', "$.a["),
    (b'"\\ude00\\ud83d"', "$"),  # a pair in the wrong order is two lone surrogates
])
def test_lone_surrogates_in_strings_and_keys_are_refused_with_where(raw, where):
    message = refused(parse_client_json, raw, what="thread metadata", match="lone surrogate")
    assert message.startswith("thread metadata") and where in message


@pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b'"\xed\xa0\x80"', b'"\xc3"', b'\xff\xfe{\x00}\x00'])
def test_invalid_utf8_is_refused(raw):
    assert "UTF-8" in refused(parse_client_json, raw, what="body")


def test_a_utf8_byte_order_mark_is_ignored():
    assert parse_client_json(b'\xef\xbb\xbf{"a": 1}', what="body") == {"a": 1}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 10_000, 100_000])
def test_deep_nesting_is_refused_without_recursion_error(depth):
    for raw in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        refused(parse_client_json, raw, what="context", match=f"context nests deeper than {MAX_JSON_DEPTH}")


def test_nesting_up_to_the_limit_is_accepted():
    raw = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_client_json(raw, what="body") == nested(MAX_JSON_DEPTH - 1, [])
    assert parse_client_json(b"[[[]]]", what="body", max_depth=3) == [[[]]]
    refused(parse_client_json, b"[[[[]]]]", what="body", max_depth=3, match="deeper than 3")


@pytest.mark.parametrize("raw, match", [
    (b"NaN", "NaN"), (b'{"a": Infinity}', "Infinity"), (b"[-Infinity]", "Infinity"),
    (b"9" * 5000, "digits"), (b"{not json", "not JSON"), (b"", "not JSON"), (b'{"a": 1} x', "not JSON"),
])
def test_non_standard_or_broken_json_is_refused(raw, match):
    refused(parse_client_json, raw, what="body", match=match)


def test_check_accepts_json_values_and_returns_them_unchanged():
    class Colour(str, enum.Enum):
        red = "red"

    value = {"a": [1, 2.5, True, None, "é", ("t", 1)], Colour.red: Colour.red, "n": 10**30, "deep": nested(99)}
    assert check_json_value(value, "value") is value
    assert check_json_value("plain", "value") == "plain"
    assert check_json_value(None, "value") is None


@pytest.mark.parametrize("value, match", [
    ({"a": "\ud800"}, r"lone surrogate"),
    ({"\udfff": 1}, r"a key at \$\["),
    (["ok", ["\ud83d\ude00"]], r"\$\[1\]\[0\]"),  # a surrogate pair as two code points is not text either
    ({1: "x"}, "keys must be strings"),
    ({"a": {None: 1}}, "keys must be strings"),
    ({"a": float("nan")}, "finite"),
    ([float("inf")], "finite"),
    ({"a": {1, 2}}, "not a JSON value"),
    ({"a": b"bytes"}, "not a JSON value"),
    ({"a": object()}, "not a JSON value"),
])
def test_check_refuses_what_json_cannot_hold(value, match):
    refused(check_json_value, value, "metadata", match=match)


def test_check_walks_iteratively_so_any_depth_is_a_clean_refusal():
    message = refused(check_json_value, {"a": nested(200_000)}, "context", match="deeper than 100")
    assert "$.a[0]" in message and len(message) < 300  # the location is shortened, not 200,000 levels long


def test_long_keys_are_shortened_in_messages():
    message = refused(check_json_value, {"k" * 1000 + "\ud800": 1}, "metadata")
    assert len(message) < 300


def test_json_text_is_compact_keeps_unicode_and_checks_first():
    assert json_text({"a": [1, "é"], "b": None}, "value") == '{"a":[1,"é"],"b":null}'
    refused(json_text, {"a": "\ud800"}, "value", match="lone surrogate")
    refused(json_text, nested(MAX_JSON_DEPTH + 1), "value", match="deeper")
    refused(json_text, {"a": 10**5000}, "value", match="digits")
    refused(json_text, nested(3), "value", max_depth=2, match="deeper than 2")
