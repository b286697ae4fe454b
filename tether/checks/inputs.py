"""The one check on data from outside before it is stored: text must be storable Unicode, numbers finite.

Every boundary runs it: the API's request bodies (``tether.app.schemas``), the web forms and query strings
(``tether.app.deps``), the importers (``tether.data.formats.parse_record``), the store's own write functions
(``tether.store.campaigns``) and ``tether.client`` before it sends.

What it refuses, and why refused rather than cleaned:
- NUL (U+0000): PostgreSQL cannot store it in text or JSON columns; SQLite stores it and C-string tools cut the
  text there, so the same data would differ between the two stores.
- Lone surrogates (U+D800..U+DFFF not in a pair; JSON can spell them as ``"\\ud800"``): not Unicode characters,
  so nothing can encode them as UTF-8; stored, they break every page, API answer and export that shows them.
- NaN and infinities (JSON has no such numbers; Python's parser accepts ``NaN``, ``Infinity`` and ``1e999``):
  they would be written as non-standard JSON into snapshots and exports, and poison any mean they enter.
Cleaning would change what annotators judge and what trainers learn without anyone deciding it; such values
nearly always mean a broken export (a UTF-16 pair cut in half, a division by zero), which the source should fix.
So the record is refused with a one-line reason naming the field (an import can skip such records with
``--skip-invalid`` and count them).
"""

from __future__ import annotations

import math
import re
from typing import Any

from tether.errors import TetherError

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
FIX = "remove NUL characters and unpaired UTF-16 surrogates, and write numbers as finite JSON numbers"


def _string_problem(text: str) -> str | None:
    if "\x00" not in text:
        if text.isascii():  # O(1) in CPython: ASCII text holds no surrogate
            return None
        try:  # CPython's UTF-8 encoder is 4x faster than a regex scan, and refuses exactly the surrogates
            text.encode("utf-8")
            return None
        except UnicodeEncodeError as exc:
            index = exc.start
    else:
        index = _BAD_CHAR.search(text).start()
    if text[index] == "\x00":
        return f"a NUL character (U+0000) at character {index + 1}"
    return f"a lone surrogate (U+{ord(text[index]):04X}) at character {index + 1}, which is not valid Unicode"


def _clean(value: Any) -> bool:
    """The fast pass: True when nothing in ``value`` needs a closer look (no paths built)."""
    if isinstance(value, str):
        return _string_problem(value) is None
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all((not isinstance(k, str) or _string_problem(k) is None) and _clean(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_clean(v) for v in value)
    return True


def find_unstorable(value: Any, what: str = "") -> str | None:
    """A one-line description of the first thing in ``value`` (text, numbers, or dicts and lists of them) that
    cannot be stored, naming where it is (``what`` names the whole, e.g. "the record"); None when all is clean."""
    try:
        if _clean(value):
            return None
    except RecursionError:  # deeper than the fast pass can go: the walk below has no depth limit
        pass
    stack: list[tuple[str, Any]] = [(what, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem is not None:
                return f"{where or 'the text'} holds {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                spelled = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
                return f"{where or 'the number'} is {spelled} (numbers must be finite)"
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                problem = _string_problem(key) if isinstance(key, str) else None
                if problem is not None:
                    return f"a field name in {where or 'the object'} holds {problem}"
                children.append((_child(where, key), child))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(f"{where}[{index}]", child) for index, child in enumerate(item)]))
    return None


_PLAIN_KEY = re.compile(r"[\w .-]{1,80}")


def _child(where: str, key: Any) -> str:
    """The place of ``key`` under ``where``: ``a.b`` for a plain key, ``a['odd\nkey']`` otherwise (one line)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{str(key)[:80]!r}]"


def require_storable(value: Any, what: str) -> Any:
    """``value`` unchanged, or TetherError naming what in it cannot be stored."""
    problem = find_unstorable(value, what)
    if problem is not None:
        raise TetherError(problem, fix=FIX)
    return value


def model_text(text: str) -> str:
    """A model's decoded output made storable: NUL characters dropped, lone surrogates replaced by U+FFFD.

    Unlike data from outside, which is refused, text Tether samples from a model is cleaned: a small or byte-level
    model can emit a NUL byte token, and a reply that cannot be stored would stop a run (the demo's queue, a round
    of the loop) over a character nobody can see. The cleaned text is what rewards score and people judge."""
    if _string_problem(text) is None:
        return text
    return _BAD_CHAR.sub(lambda bad: "" if bad.group() == "\x00" else "\ufffd", text)
