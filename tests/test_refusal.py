"""The one refusal detector (tether.checks.refusal): what it counts, and that rules use the same one."""

from tether.checks.refusal import is_refusal
from tether.checks.rules import parse_rules

# Replies the two former detectors read differently: monitoring matched only at the very start of a reply, rules
# anywhere in its first 200 characters.
CASES = [
    ("I'm sorry, but I can't help with that.", True),
    ("As an AI, I cannot do that", True),
    ("Hello! I\u2019m sorry, but I cannot share that address.", True),  # after a greeting; typographic apostrophe
    ("Sure! Sorry for the wait, here it is.", False),
    ("Here is the recipe: mix the flour and the sugar, then bake it for an hour.", False),
]


def test_is_refusal_reads_the_opening():
    assert [is_refusal(text) for text, _ in CASES] == [expected for _, expected in CASES]
    late = "Here is what you asked for. " * 10 + "I cannot wait to hear how it went."
    assert not is_refusal(late)  # past the first 200 characters
    assert is_refusal(late, window=len(late))


def test_rules_count_refusals_with_the_same_detector():
    rule = parse_rules({"rules": [{"name": "refusal", "refusal": True}]}).rules[0]
    assert [rule.value(text) < 0 for text, _ in CASES] == [is_refusal(text) for text, _ in CASES]
