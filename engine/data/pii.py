"""PII redaction: typed placeholders (``<EMAIL>``, ``<PHONE>`` ...) and counts per type.

Numbers that carry a checksum are only redacted when the checksum holds: a payment card
must pass Luhn, an IBAN must pass ISO 13616 mod-97. This keeps order numbers, ISBNs and
random digit runs in the text (false positives cost training data) while real card and
account numbers go. National ids: US social security numbers and UK national insurance
numbers, by their published structure.

Patterns run in a fixed order (e-mail, IBAN, card, IP, national id, phone); a placeholder
has no digits, so a later pattern never bites into an earlier replacement.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.data.documents import Document

PII_TYPES = ("EMAIL", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "NATIONAL_ID", "PHONE")


def luhn_valid(digits: str) -> bool:
    """Luhn checksum (ISO/IEC 7812) over a string of digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters -> 10..35, mod 97 == 1."""
    iban = candidate.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)
_IBAN = re.compile(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"[0-9](?<![0-9]{2})(?:[ -]?[0-9]){12,18}(?![0-9])")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![0-9.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9]|\.[0-9])")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_US_SSN = re.compile(r"\b(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}\b")
_UK_NINO = re.compile(
    r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b"
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-][0-9]{1,4}){1,5}(?![\w])"
)
_NANP = re.compile(r"[2-9][0-9]{2}[ .-][0-9]{3}[ .-][0-9]{4}")
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:[ ,.][0-9]{3})+")
_NON_DIGIT = re.compile(r"[^0-9]")
_WINDOW_MARGIN = 64  # > the longest digit-bearing match (an IBAN with spaces: 42 characters)
# Digits with gaps of at most two margins between them: one window each, found in C.
_DIGIT_CLUSTER = re.compile(f"[0-9](?:[^0-9]{{0,{2 * _WINDOW_MARGIN}}}[0-9])*")


def _digit_windows(text: str) -> list[tuple[int, int]]:
    """Disjoint [start, end) spans reaching _WINDOW_MARGIN characters around every digit."""
    return [
        (max(0, m.start() - _WINDOW_MARGIN), min(len(text), m.end() + _WINDOW_MARGIN))
        for m in _DIGIT_CLUSTER.finditer(text)
    ]


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _is_card(match: str) -> bool:
    return luhn_valid(_digits(match))


def _is_ipv6(match: str) -> bool:
    if match.count(":") < 2 or ("::" not in match and match.count(":") != 7):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _is_phone(match: str) -> bool:
    digit_count = len(_digits(match))
    if match.startswith("+") or "(" in match:
        return 7 <= digit_count <= 15  # E.164 caps numbers at 15 digits
    # Plain digit groups are a phone only in a national format: a trunk prefix 0 and 9-11
    # digits (06 12 34 56 78, 020 7946 0958) or North American 3-3-4 (555-010-4477).
    # Counts (1 000 000 000), account numbers and failed IBANs stay.
    if match.startswith("0"):
        return 9 <= digit_count <= 11 and not _THOUSANDS.fullmatch(match)
    return _NANP.fullmatch(match) is not None


@dataclass(frozen=True)
class _Rule:
    pii_type: str
    pattern: re.Pattern
    accept: Callable[[str], bool] | None
    hint: str | None  # substring the text must contain for the pattern to have a chance


_RULES = {
    "EMAIL": [_Rule("EMAIL", _EMAIL, None, "@")],
    "IBAN": [_Rule("IBAN", _IBAN, iban_valid, None)],
    "CREDIT_CARD": [_Rule("CREDIT_CARD", _CARD, _is_card, None)],
    "IP_ADDRESS": [
        _Rule("IP_ADDRESS", _IPV6_CANDIDATE, _is_ipv6, ":"),
        _Rule("IP_ADDRESS", _IPV4, None, "."),
    ],
    "NATIONAL_ID": [
        _Rule("NATIONAL_ID", _US_SSN, None, "-"),
        _Rule("NATIONAL_ID", _UK_NINO, None, None),
    ],
    "PHONE": [_Rule("PHONE", _PHONE, _is_phone, None)],
}


@dataclass
class PIIConfig:
    types: list[str] = field(default_factory=lambda: list(PII_TYPES))  # which kinds to redact
    placeholder: str = "<{type}>"  # typed, so a model still learns "an e-mail goes here"


class PIIRedactor:
    name = "pii"

    def __init__(self, config: PIIConfig):
        unknown = sorted(set(config.types) - set(PII_TYPES))
        if unknown:
            raise ValueError(f"unknown PII types {unknown}; known: {list(PII_TYPES)}")
        self.config = config
        self.counts: Counter[str] = Counter()
        self._rules = [
            rule for pii_type in PII_TYPES if pii_type in config.types for rule in _RULES[pii_type]
        ]
        self._email_rules = [rule for rule in self._rules if rule.pii_type == "EMAIL"]
        self._digit_rules = [rule for rule in self._rules if rule.pii_type != "EMAIL"]

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Text with every detected PII span replaced, and how many of each type."""
        found: Counter[str] = Counter()
        if self._email_rules and "@" in text:
            text = self._apply(self._email_rules, text, found)
        if not self._digit_rules:
            return text, found
        windows = _digit_windows(text)
        if not windows:
            return text, found
        # Every other kind holds a digit and is at most ~45 characters long, so it lies
        # inside a window of _WINDOW_MARGIN characters around some digit run; scanning only
        # the windows keeps prose with a few numbers fast. Windows start and end at least
        # _WINDOW_MARGIN from any digit, so no match can reach or straddle their edges.
        pieces, position = [], 0
        for start, end in windows:
            pieces.append(text[position:start])
            pieces.append(self._apply(self._digit_rules, text[start:end], found))
            position = end
        pieces.append(text[position:])
        return "".join(pieces), found

    def _apply(self, rules: list[_Rule], text: str, found: Counter[str]) -> str:
        for rule in rules:
            if rule.hint is not None and rule.hint not in text:
                continue
            placeholder = self.config.placeholder.format(type=rule.pii_type)

            def replace(match: re.Match, rule: _Rule = rule, placeholder: str = placeholder) -> str:
                if rule.accept is not None and not rule.accept(match.group()):
                    return match.group()
                found[rule.pii_type] += 1
                return placeholder

            text = rule.pattern.sub(replace, text)
        return text

    def __call__(self, doc: Document) -> str | None:
        text, found = self.redact(doc.text)
        if found:
            self.counts.update(found)
            doc.set_text(text)
        return None
