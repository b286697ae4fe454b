r"""Rule-based rewards and filters, written in YAML: patterns, PII, length limits, refusals.

A rules file lists checks; each gives every completion a *value* in {-1, 0, +1} and adds ``weight x value`` to its
reward. Every component is reported on its own (``rules/<name>``, the mean weighted contribution), so a run shows
which rule moved. Standard library plus PyYAML; PII detection comes from ``tether.checks.pii``.

```yaml
filter_score: -1.0          # the reward of a completion that fails a filter rule (replaces the sum); default -1
rules:
  - name: mentions_order    # names default to KIND_N; they key the logged components
    required: ["order", "ship(ped|ping)"]   # regular expressions; +1 when they match
    match: any              # any (default) or all of the patterns
    weight: 1.0             # default 1.0; a negative weight turns a bonus into a penalty and back
  - name: no_insults
    forbidden: ["\\bstupid\\b", "\\bidiot\\b"]   # -1 when any pattern matches
    weight: 2.0
  - name: no_pii
    pii: [email, phone, card]   # tether.checks.pii kinds, or `all`; -1 when any is found
    filter: true            # a completion that fails this rule is filtered: its reward becomes filter_score
  - name: length
    length: {min_words: 3, max_words: 80}   # also min_chars / max_chars; -1 outside the limits
    weight: 0.5
  - name: refusal
    refusal: true           # tether.checks.refusal's phrases in the first `window` characters (default 200);
    weight: 1.0             # or a list of regular expressions instead of `true`; -1 when the reply refuses
```

Patterns ignore case unless ``ignore_case: false``. A rule fails (for ``filter``) when its value is below its best:
a forbidden pattern, PII, a length outside the limits or a refusal is found, or a required pattern is missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.checks.refusal import DEFAULT_WINDOW, is_refusal, refusal_patterns
from tether.errors import TetherError

KINDS = ("required", "forbidden", "pii", "length", "refusal")
COMMON_KEYS = {"name", "weight", "filter", "ignore_case"}
LENGTH_KEYS = ("min_words", "max_words", "min_chars", "max_chars")

@dataclass
class Rule:
    """One check: ``value(text)`` is in {-1, 0, +1}; the reward adds ``weight * value``."""

    name: str
    kind: str
    weight: float = 1.0
    is_filter: bool = False
    patterns: list[re.Pattern[str]] = field(default_factory=list)
    match_all: bool = False
    pii_kinds: tuple[str, ...] | None = None
    limits: dict[str, int] = field(default_factory=dict)
    window: int = DEFAULT_WINDOW

    def value(self, text: str) -> float:
        if self.kind == "required":
            found = [p.search(text) is not None for p in self.patterns]
            return 1.0 if (all(found) if self.match_all else any(found)) else 0.0
        if self.kind == "forbidden":
            return -1.0 if any(p.search(text) for p in self.patterns) else 0.0
        if self.kind == "pii":
            from tether.checks.pii import find_pii

            return -1.0 if find_pii(text, self.pii_kinds) else 0.0
        if self.kind == "length":
            words, chars = len(text.split()), len(text)
            limits = self.limits
            too_short = words < limits.get("min_words", 0) or chars < limits.get("min_chars", 0)
            too_long = words > limits.get("max_words", words) or chars > limits.get("max_chars", chars)
            return -1.0 if too_short or too_long else 0.0
        if self.kind == "refusal":
            return -1.0 if is_refusal(text, self.patterns, self.window) else 0.0
        raise AssertionError(self.kind)

    def passes(self, value: float) -> bool:
        return value > 0 if self.kind == "required" else value == 0


@dataclass
class RuleScores:
    """The result of ``RuleSet.score`` for B completions.

    total: (B,) the reward (sum of weighted values, or ``filter_score`` when filtered); components: rule name ->
    (B,) weighted values; passed: (B,) False when a filter rule failed.
    """

    total: list[float]
    components: dict[str, list[float]]
    passed: list[bool]

    def metrics(self, prefix: str = "rules/") -> dict[str, float]:
        """Mean of every component (``rules/<name>``) and the filtered fraction (``rules/filtered``)."""
        n = max(1, len(self.total))
        out = {f"{prefix}{name}": sum(vals) / n for name, vals in self.components.items()}
        out[f"{prefix}filtered"] = sum(not p for p in self.passed) / n
        return out


@dataclass
class RuleSet:
    rules: list[Rule]
    filter_score: float = -1.0
    source: str = ""

    def check(self, text: str) -> dict[str, float]:
        """Each rule's unweighted value for one text."""
        return {rule.name: rule.value(text) for rule in self.rules}

    def score(self, completions: Sequence[str], prompts: Sequence[Any] | None = None) -> RuleScores:
        """Score completions (the prompts are accepted for a uniform reward interface and not used)."""
        components: dict[str, list[float]] = {rule.name: [] for rule in self.rules}
        total, passed = [], []
        for text in completions:
            reward, ok = 0.0, True
            for rule in self.rules:
                value = rule.value(text)
                components[rule.name].append(rule.weight * value)
                reward += rule.weight * value
                if rule.is_filter and not rule.passes(value):
                    ok = False
            total.append(reward if ok else self.filter_score)
            passed.append(ok)
        return RuleScores(total, components, passed)

    def keep(self, completions: Sequence[str]) -> list[bool]:
        """True for the completions that pass every filter rule."""
        return self.score(completions).passed


def _bad(source: str, where: str, problem: str, fix: str) -> TetherError:
    return TetherError(f"{source}: {where}: {problem}", fix=fix)


def _compile(source: str, where: str, patterns: Any, ignore_case: bool) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise _bad(source, where, "expected a non-empty list of regular expressions", 'write e.g. required: ["refund", "order"]')
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE if ignore_case else 0))
        except re.error as exc:
            raise _bad(source, where, f"invalid regular expression {pattern!r}: {exc}", "escape special characters (\\\\b, \\\\.)") from None
    return compiled


def parse_rule(spec: Any, index: int, source: str = "rules") -> Rule:
    """One rule from its YAML mapping (see the module doc). ``index`` counts from 1, for messages."""
    where = f"rule {index}"
    if not isinstance(spec, dict):
        raise _bad(source, where, f"expected a mapping, got {type(spec).__name__}", "write each rule as `- required: [...]`, `- pii: all`, ...")
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise _bad(source, where, f"needs exactly one of {', '.join(KINDS)} (found {kinds or 'none'})", "give each rule one kind")
    kind = kinds[0]
    allowed = COMMON_KEYS | {kind} | ({"match"} if kind == "required" else set()) | ({"window"} if kind == "refusal" else set())
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise _bad(source, where, f"unknown key(s) {unknown} for a {kind} rule", f"valid keys: {', '.join(sorted(allowed))}")
    name = str(spec.get("name") or f"{kind}_{index}")
    where = f"rule {index} ({name})"
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise _bad(source, where, f"weight must be a number, got {weight!r}", "write weight: 0.5")
    is_filter = spec.get("filter", False)
    ignore_case = spec.get("ignore_case", True)
    if not isinstance(is_filter, bool) or not isinstance(ignore_case, bool):
        raise _bad(source, where, "filter and ignore_case must be true or false", "write filter: true")
    rule = Rule(name=name, kind=kind, weight=float(weight), is_filter=is_filter)
    value = spec[kind]
    if kind in ("required", "forbidden"):
        rule.patterns = _compile(source, where, value, ignore_case)
        match = spec.get("match", "any")
        if match not in ("any", "all"):
            raise _bad(source, where, f"match must be any or all, got {match!r}", "write match: all")
        rule.match_all = match == "all"
    elif kind == "pii":
        from tether.checks.pii import KINDS as PII_KINDS

        if value in ("all", True):
            rule.pii_kinds = None
        else:
            kinds_list = [value] if isinstance(value, str) else value
            if not isinstance(kinds_list, list) or not kinds_list or set(kinds_list) - set(PII_KINDS):
                raise _bad(source, where, f"unknown PII kinds {value!r}", f"write pii: all, or a list of: {', '.join(PII_KINDS)}")
            rule.pii_kinds = tuple(kinds_list)
    elif kind == "length":
        if not isinstance(value, dict) or not value or set(value) - set(LENGTH_KEYS):
            raise _bad(source, where, f"length takes a mapping of {', '.join(LENGTH_KEYS)}", "write length: {max_words: 80}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()):
            raise _bad(source, where, "length limits must be whole numbers >= 0", "write length: {max_words: 80}")
        rule.limits = dict(value)
    else:  # refusal
        if value is True:
            rule.patterns = refusal_patterns(ignore_case)
        else:
            rule.patterns = _compile(source, where, value, ignore_case)
        window = spec.get("window", DEFAULT_WINDOW)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise _bad(source, where, f"window must be a positive number of characters, got {window!r}", "write window: 200")
        rule.window = window
    return rule


def parse_rules(data: Any, source: str = "rules") -> RuleSet:
    """A RuleSet from parsed YAML: a mapping with ``rules`` (and ``filter_score``), or a bare list of rules."""
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or "rules" not in data:
        raise TetherError(f"{source}: expected a mapping with a `rules:` list", fix="see `tether.checks.rules` for the format: rules: [- required: [...], ...]")
    unknown = sorted(set(data) - {"rules", "filter_score"})
    if unknown:
        raise TetherError(f"{source}: unknown top-level key(s) {unknown}", fix="valid keys: rules, filter_score")
    specs = data["rules"]
    if not isinstance(specs, list) or not specs:
        raise TetherError(f"{source}: `rules` must be a non-empty list", fix="add at least one rule")
    rules = [parse_rule(spec, i, source) for i, spec in enumerate(specs, start=1)]
    names = [r.name for r in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TetherError(f"{source}: duplicate rule names {duplicates}", fix="give every rule its own name")
    filter_score = data.get("filter_score", -1.0)
    if isinstance(filter_score, bool) or not isinstance(filter_score, (int, float)):
        raise TetherError(f"{source}: filter_score must be a number", fix="write filter_score: -1.0")
    return RuleSet(rules, float(filter_score), source)


def load_rules(path: str | Path) -> RuleSet:
    """A RuleSet from a YAML file; a clear ``TetherError`` for a missing file or a malformed rule."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TetherError(f"rules file not found: {path}", fix="check the path after rules:")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TetherError(f"{path} is not valid YAML: {exc}", fix="correct the file (see `tether.checks.rules` for the format)") from None
    return parse_rules(data, str(path))
