"""Rule-based rewards and filters from YAML (tether.checks.rules): each kind by hand, weights, filters, clear errors."""

from __future__ import annotations

import pytest

from tether.checks.rules import load_rules, parse_rules
from tether.errors import TetherError

POLICY = r"""
filter_score: -5
rules:
  - name: mentions_order
    required: ["order", "ship(ped|ping)"]
    weight: 1.0
  - name: both
    required: ["refund", "days"]
    match: all
    weight: 0.5
  - name: no_insults
    forbidden: ["\\bstupid\\b"]
    weight: 2.0
  - name: no_pii
    pii: [email, card]
    filter: true
  - name: length
    length: {min_words: 3, max_words: 12}
    weight: 0.25
  - name: refusal
    refusal: true
    weight: 1.5
"""


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_rules(path)


def test_each_rule_kind_by_hand(rules):
    texts = [
        "Your order has shipped today.",  # required +1; length ok (5 words) -> 1.0
        "Refund within 30 days, no order needed here",  # mentions_order +1, both +0.5 -> 1.5
        "That is a stupid question",  # forbidden -2; required missing 0 -> -2
        "Hi",  # too short: -0.25
        "I\u2019m sorry, I cannot help with that order.",  # refusal -1.5 (curly apostrophe); order +1 -> -0.5
        "Write to me at jane.doe@example.com about the order",  # PII filter fails -> filter_score -5
        "Pay with 4111 1111 1111 1112 for the order please",  # not a valid Luhn number: no PII -> 1.0
    ]
    scores = rules.score(texts)
    assert scores.total == pytest.approx([1.0, 1.5, -2.0, -0.25, -0.5, -5.0, 1.0])
    assert scores.passed == [True, True, True, True, True, False, True]
    assert scores.components["no_insults"] == [0, 0, -2.0, 0, 0, 0, 0]
    assert scores.components["length"] == [0, 0, 0, -0.25, 0, 0, 0]
    assert scores.components["both"] == [0, 0.5, 0, 0, 0, 0, 0]
    # A valid card number (Luhn) is PII.
    assert rules.score(["card 4111 1111 1111 1111 for the order"]).passed == [False]
    metrics = scores.metrics()
    assert metrics["rules/mentions_order"] == pytest.approx(5 / 7)
    assert metrics["rules/filtered"] == pytest.approx(1 / 7)
    assert rules.keep(["fine reply about the order", "mail a@b.co"]) == [True, False]


def test_refusal_only_looks_at_the_opening_and_can_use_own_patterns():
    rules = parse_rules({"rules": [{"refusal": True, "window": 20}, {"name": "custom", "refusal": ["^no\\b"], "weight": -1}]})
    values = [rules.check(t) for t in ["Sure! Here it is. I cannot wait to see it.", "As an AI, I won't", "No. Never."]]
    assert values == [{"refusal_1": 0.0, "custom": 0.0}, {"refusal_1": -1.0, "custom": 0.0}, {"refusal_1": 0.0, "custom": -1.0}]
    # A negative weight rewards refusing (e.g. on red-team prompts).
    assert rules.score(["No. Never."]).total == [1.0]


def test_case_sensitivity_and_bare_list():
    rules = parse_rules([{"forbidden": "Secret", "ignore_case": False}])
    assert rules.score(["a secret", "a Secret"]).total == [0.0, -1.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{required: '(unclosed'}]", "invalid regular expression"),
        ("rules: [{required: [a], forbidden: [b]}]", "exactly one of"),
        ("rules: [{pii: [emails]}]", "unknown PII kinds"),
        ("rules: [{length: {max_tokens: 3}}]", "length takes a mapping"),
        ("rules: [{required: [a], weight: heavy}]", "weight must be a number"),
        ("rules: [{required: [a], colour: red}]", "unknown key"),
        ("rules: []", "non-empty list"),
        ("rules: [{name: x, required: [a]}, {name: x, forbidden: [b]}]", "duplicate rule names"),
        ("rules: [oops", "not valid YAML"),
        ("just text", "expected a mapping"),
    ],
)
def test_invalid_rules_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TetherError, match=message) as info:
        load_rules(path)
    assert str(path) in info.value.message and info.value.fix


def test_missing_rules_file(tmp_path):
    with pytest.raises(TetherError, match="rules file not found"):
        load_rules(tmp_path / "nope.yaml")
