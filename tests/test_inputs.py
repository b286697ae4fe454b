"""``tether.checks.inputs.find_unstorable``: the one check every boundary runs (NUL, lone surrogates, non-finite numbers)."""

from __future__ import annotations

import json

import pytest

from tether.checks.inputs import find_unstorable, require_storable
from tether.errors import TetherError


@pytest.mark.parametrize(("value", "problem"), [
    ({"prompt": "ok", "completions": ["a", {"text": "b\x00"}]}, "completions[1].text holds a NUL character (U+0000) at character 2"),
    ({"m": [{"content": "é\ud800"}]}, "m[0].content holds a lone surrogate (U+D800) at character 2, which is not valid Unicode"),
    (json.loads('{"x": "\\udc00 first"}'), "x holds a lone surrogate (U+DC00) at character 1"),
    ({"a": {"b\x00": 1}}, "a field name in a holds a NUL character"),
    ({"margin": float("nan")}, "margin is NaN (numbers must be finite)"),
    ({"r": [1.0, float("-inf")]}, "r[1] is -Infinity"),
    (json.loads('{"m": 1e999}'), "m is Infinity"),
    ("\x00", "the text holds a NUL"),
    ({"completion": {"\n\nHuman: ": "a\x00"}}, "completion['\\n\\nHuman: '] holds a NUL"),  # still one line
])
def test_the_first_problem_is_named_with_its_place(value, problem):
    assert problem in find_unstorable(value)


@pytest.mark.parametrize("value", [
    {"emoji": json.loads('"\\ud83d\\ude43"'), "n": [1, 2.5, -0.0, 10**30, True, None], "é": "ü\u202e\u00a0\t\n"},
    "",
    json.loads("[" * 900 + "]" * 900),  # near the parser's own depth limit
])
def test_clean_values_pass(value):
    assert find_unstorable(value) is None


def test_require_storable_raises_a_one_line_tether_error():
    assert require_storable({"a": "b"}, "the body") == {"a": "b"}
    with pytest.raises(TetherError) as refused:
        require_storable({"a": "b\x00"}, "the body")
    assert refused.value.message == "the body.a holds a NUL character (U+0000) at character 2" and refused.value.fix
