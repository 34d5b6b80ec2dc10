"""The JSON parser's checks, unit by unit (the API-level behaviour is in test_bad_input.py)."""

import random
from itertools import accumulate

import pytest

from controlplane.api.parsers import JSONTextError, loads_storable, nested_deeper_than


def _depth(text: str) -> int:
    steps = [1 if c in "[{" else -1 for c in text if c in "[]{}"]
    return max(accumulate(steps), default=0)


def _nested(depth: int, rng: random.Random) -> str:
    if depth == 0:
        return rng.choice(["1", '"x]"', '"[{"'])  # brackets in strings do not nest
    items = [_nested(rng.randint(0, depth - 1), rng) for _ in range(rng.randint(0, 3))]
    items.insert(rng.randint(0, len(items)), _nested(depth - 1, rng))
    return "[" + ",".join(items) + "]"


def test_depth_check_agrees_with_a_plain_count():
    rng = random.Random(7)
    for _ in range(150):
        text = _nested(rng.randint(0, 25), rng)
        real = _depth(text.replace('"[{"', "").replace('"x]"', ""))
        for limit in (1, 5, 20):
            assert nested_deeper_than(text, limit) == (real > limit), (text, limit)


def test_unbalanced_brackets_are_left_to_the_decoder():
    assert not nested_deeper_than("[" * 100, 64)
    with pytest.raises(JSONTextError):
        loads_storable("[" * 100_000)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"a": {"b": ["ok", "x\\u0000"]}}', "a.b.1"),
        ('{"a": "\\udfff"}', "a"),
        ('["\\ud800 then text"]', "0"),
        ('"\\u0000"', "non_field_errors"),
    ],
)
def test_unstorable_strings_are_named_by_path(text, path):
    with pytest.raises(JSONTextError) as raised:
        loads_storable(text)
    assert raised.value.path == path


def test_valid_pairs_and_escaped_backslashes_pass():
    assert loads_storable('["\\ud83d\\ude00", "\\\\u0000", "\\\\ud800"]') == [
        "\U0001f600",
        "\\u0000",
        "\\ud800",
    ]
