"""Detect and redact personal data (PII) in free text: regular expressions plus checksums, standard library only.

Kinds (``KINDS``):
- ``email``: ``name@domain.tld``.
- ``phone``: international numbers (``+44 20 7946 0958``, ``0044 ...``; 8 to 15 digits as E.164 allows), US/NANP
  numbers with separators or parentheses (``(415) 555-0132``, ``415-555-0132``, ``+1 415 555 0132``) and national
  numbers with a trunk ``0`` and separators (``020 7946 0958``). A bare run of ten digits is *not* a phone number
  (order ids, timestamps); that trades a little recall for precision.
- ``card``: payment card numbers, 13 to 19 digits, optionally grouped by spaces or hyphens, starting 2-6 (the
  major networks' ranges) and passing the Luhn checksum (ISO/IEC 7812-1).
- ``iban``: IBANs, 15 to 34 characters, passing the ISO 13616 mod-97 check.
- ``ssn``: US social security numbers written ``AAA-GG-SSSS`` outside the never-issued ranges.
- ``address``: street addresses: a house number, one to four capitalized name words (or an ordinal such as
  ``5th``) and a street type (Street, Ave, Road, ...), optionally a unit, a city, a US state and ZIP or a UK
  postcode; also ``P.O. Box 123``.

Overlaps are resolved by kind priority (``PRIORITY``), then by the longer match, so a card number is never also
reported as a phone number.

API (stable; tether.checks.rules imports it): ``find_pii(text, kinds=None) -> list[Match]`` (sorted by start),
``redact(text, kinds=None) -> (redacted_text, counts_by_kind)``, ``contains_pii(text, kinds=None) -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("email", "phone", "card", "iban", "ssn", "address")
# Lower number wins when two matches overlap.
PRIORITY = {"email": 0, "iban": 1, "card": 2, "ssn": 3, "phone": 4, "address": 5}
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}


@dataclass(frozen=True)
class Match:
    """One detected span: ``text[start:end] == self.text``."""

    kind: str
    start: int
    end: int
    text: str


# ---------------------------------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)

_SEP = r"[ .\-]"
# International: + or 00, a country code, then digit groups separated by space, dot or hyphen; "(0)" allowed.
_PHONE_INTL = re.compile(
    r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:" + _SEP + r"?\(0\))?(?:" + _SEP + r"?\(?\d{1,5}\)?){1,6}(?![\w])"
)
# US / NANP: optional +1 / 1, area code 2-9xx (parentheses or not), exchange, line; separators required
# unless the area code is in parentheses.
_PHONE_US = re.compile(
    r"(?<![\w+])(?:(?:\+?1)[ .\-]?)?"
    r"(?:\([2-9]\d{2}\)[ .\-]?|[2-9]\d{2}[ .\-])"
    r"\d{3}[ .\-]\d{4}"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w])"
)
# National formats with a trunk 0: 0xx(x) xxxx xxxx, 07700 900123.
_PHONE_NATIONAL = re.compile(r"(?<![\w+.\-])0\d{1,4}[ \-]\d{3,4}[ \-]?\d{3,4}(?![\w.\-]?\d)")

_CARD = re.compile(r"(?<![\w+.\-])[2-6]\d{2,3}(?:[ \-]?\d){9,15}(?![\w]|[.\-]\d)")

_IBAN = re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w])")

_SSN = re.compile(r"(?<![\w\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w\-])")

_STREET_TYPES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|Ter|"
    "Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Close|Crescent|Cres|Alley|Trail|Trl|Row|Plaza|Gardens"
)
_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|"
    "ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY"
)
_ADDRESS = re.compile(
    r"(?<![\w\-/.,])\d{1,6}[A-Za-z]?,?\s+"
    r"(?:(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"
    r"(?:(?:[A-Z][a-zA-Z'\-]+|\d{1,3}(?:st|nd|rd|th))\s+){1,4}"
    r"(?:" + _STREET_TYPES + r")\b\.?"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b\.?)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl)\.?\s*#?\s*[A-Za-z0-9\-]+|,?\s+#\s?\d+[A-Za-z]?)?"
    r"(?:,\s+[A-Z][a-zA-Z]+(?:\s+[A-Z][a-zA-Z]+){0,2}"  # city
    r"(?:,?\s+(?:" + _US_STATES + r")(?:\s+\d{5}(?:-\d{4})?)?"  # state and ZIP
    r"|,?\s+[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}"  # UK postcode
    r"|,?\s+\d{5})?"  # a plain 5-digit postcode (DE, FR, ...)
    r")?(?![\w])"
)
_DIGIT = re.compile(r"\d")
_ADDRESS_HINT = re.compile(r"\b(?:" + _STREET_TYPES + r"|Box)\b", re.IGNORECASE)
_PO_BOX = re.compile(r"(?<![\w])P\.?\s?O\.?\s+Box\s+\d{1,7}(?![\w])", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum: from the right, double every second digit (minus 9 when over 9); the sum ends in 0."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35; the number mod 97 is 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34) or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _card_ok(s: str) -> bool:
    digits = _digits(s)
    if not (13 <= len(digits) <= 19) or not luhn_valid(digits):
        return False
    # Grouped numbers use one kind of separator (4111 1111 1111 1111, 4111-1111-...), not a mix.
    seps = {ch for ch in s if not ch.isdigit()}
    return len(seps) <= 1


def _intl_phone_ok(s: str) -> bool:
    n = len(_digits(s)) - (2 if s.startswith("00") else 0)
    return 8 <= n <= 15


# ---------------------------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------------------------


def _candidates(text: str, kinds: set[str]) -> Iterable[Match]:
    def emit(kind: str, m: re.Match[str]) -> Match:
        span = m.group(0)
        # trailing punctuation is not part of the span (the dot of "St." is ambiguous with a full stop)
        stripped = span.rstrip(".,;:")
        return Match(kind, m.start(), m.start() + len(stripped), stripped)

    # Cheap gates first: most texts hold no "@" and no digit, and then no detector below can match.
    has_digit = _DIGIT.search(text) is not None
    if "email" in kinds and "@" in text:
        for m in _EMAIL.finditer(text):
            yield emit("email", m)
    if not has_digit:
        return
    if "iban" in kinds:
        for m in _IBAN.finditer(text):
            if iban_valid(m.group(0)):
                yield emit("iban", m)
    if "card" in kinds:
        for m in _CARD.finditer(text):
            if _card_ok(m.group(0)):
                yield emit("card", m)
    if "ssn" in kinds:
        for m in _SSN.finditer(text):
            yield emit("ssn", m)
    if "phone" in kinds:
        for m in _PHONE_INTL.finditer(text):
            if _intl_phone_ok(m.group(0)):
                yield emit("phone", m)
        for pattern in (_PHONE_US, _PHONE_NATIONAL):
            for m in pattern.finditer(text):
                yield emit("phone", m)
    if "address" in kinds and _ADDRESS_HINT.search(text):
        for pattern in (_ADDRESS, _PO_BOX):
            for m in pattern.finditer(text):
                yield emit("address", m)


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[Match]:
    """All PII spans in ``text``, non-overlapping, sorted by start.

    ``kinds`` limits the search (default: all of ``KINDS``); an unknown kind raises ``ValueError``.
    """
    wanted = set(KINDS if kinds is None else kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}; valid kinds: {', '.join(KINDS)}")
    if not text:
        return []
    found = sorted(_candidates(text, wanted), key=lambda m: (PRIORITY[m.kind], -(m.end - m.start), m.start))
    kept: list[Match] = []
    for cand in found:
        if all(cand.end <= k.start or cand.start >= k.end for k in kept):
            kept.append(cand)
    return sorted(kept, key=lambda m: m.start)


def redact(text: str, kinds: Iterable[str] | None = None) -> tuple[str, dict[str, int]]:
    """``text`` with every PII span replaced by ``[EMAIL]``, ``[PHONE]``, ... and the count of spans per kind."""
    matches = find_pii(text, kinds)
    counts: dict[str, int] = {}
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos : m.start])
        parts.append(PLACEHOLDERS[m.kind])
        counts[m.kind] = counts.get(m.kind, 0) + 1
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts), counts


def contains_pii(text: str, kinds: Iterable[str] | None = None) -> bool:
    """Whether ``text`` holds any PII span of ``kinds``."""
    return bool(find_pii(text, kinds))
