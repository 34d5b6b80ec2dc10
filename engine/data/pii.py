"""PII redaction: typed placeholders (``<EMAIL>``, ``<PHONE>`` ...) and counts per type.

Numbers that carry a checksum are only redacted when the checksum holds: a payment card
must pass Luhn, an IBAN must pass ISO 13616 mod-97. This keeps order numbers, ISBNs and
random digit runs in the text (false positives cost training data) while real card and
account numbers go. National ids: US social security numbers and UK national insurance
numbers, by their published structure.

A payment card must also start with an issuer prefix (IIN) at a length that issuer uses,
and a 13-digit number that is a valid EAN-13 is a product code, not a card. Phone numbers
are found by Google's libphonenumber (the ``phonenumbers`` port) over the regions a dataset
declares, then kept only in a shape people write phone numbers in (international, a
bracketed area code, a national trunk 0, or North American 3-3-4), so dates, prices and
order numbers that happen to be a "possible" number stay.

Patterns run in a fixed order (e-mail, IBAN, card, IP, national id, phone); a placeholder
has no digits, so a later pattern never bites into an earlier replacement.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import phonenumbers
from phonenumbers import phonenumbermatcher as _matcher

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


def ean13_valid(digits: str) -> bool:
    """GS1 check digit of a 13-digit EAN (ISBN-13 included): weights 1,3,1,3... mod 10."""
    if len(digits) != 13:
        return False
    total = sum((ord(char) - 48) * (3 if i % 2 else 1) for i, char in enumerate(digits[:12]))
    return (10 - total % 10) % 10 == ord(digits[12]) - 48


# Issuer identification numbers (ISO/IEC 7812): (first digits low, high, lengths). Ranges are
# compared on the leading len(low) digits. Visa's 13-digit cards are no longer issued.
_IIN_RANGES: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),
    ("6011", "6011", frozenset(range(16, 20))),  # Discover
    ("644", "649", frozenset(range(16, 20))),
    ("65", "65", frozenset(range(16, 20))),
    ("50", "50", frozenset(range(12, 20))),  # Maestro
    ("56", "69", frozenset(range(12, 20))),
    ("3528", "3589", frozenset(range(16, 20))),  # JCB
    ("300", "305", frozenset(range(14, 20))),  # Diners Club
    ("36", "36", frozenset(range(14, 20))),
    ("38", "38", frozenset(range(14, 20))),
    ("62", "62", frozenset(range(16, 20))),  # UnionPay
)


def _issuer_lengths(number: str) -> frozenset[int]:
    """Card lengths of the issuers whose ranges hold ``number`` (compared on len(low) digits)."""
    return frozenset().union(
        *(lengths for low, high, lengths in _IIN_RANGES if low <= number[: len(low)] <= high)
    )


# No range's low end is longer than four digits, so the first four settle the issuer: one
# dictionary look-up per candidate instead of 15 comparisons.
_IIN_PREFIX = 4
_ISSUER_LENGTHS = {
    f"{prefix:04d}": _issuer_lengths(f"{prefix:04d}") for prefix in range(10**_IIN_PREFIX)
}


def card_issuer_valid(digits: str) -> bool:
    """True when the number starts with a card issuer's prefix at a length that issuer uses."""
    lengths = _ISSUER_LENGTHS.get(digits[:_IIN_PREFIX])
    if lengths is None:  # shorter than four digits, or not digits: range by range
        lengths = _issuer_lengths(digits)
    return len(digits) in lengths


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
# Most patterns open with a character class and move a leading word-boundary or lookbehind
# test to just after it: the regex engine then skips to candidate characters in C instead of
# trying the whole pattern at every position (2-3x faster on digit-heavy text). Each is the
# same language at the same start positions as the plain form in its comment.
# \b[A-Z]{2}[0-9]{2}...
_IBAN = re.compile(r"[A-Z](?<!\w.)[A-Z][0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"[0-9](?<![0-9]{2})(?:[ -]?[0-9]){11,18}(?![0-9])")
# How cards are printed: one block, groups of four (the last one shorter), or Amex/Diners 4-6-5/4-6-4.
_CARD_GROUPS = re.compile(
    r"[0-9]{12,19}|[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,4})?|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5}"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# (?<![0-9.]){_OCTET}(?:\.{_OCTET}){3}(?![0-9]|\.[0-9]): the first octet as its first digit
# and the digits that may follow that one.
_IPV4 = re.compile(
    rf"[0-9](?<![0-9.].)(?:(?<=2)(?:5[0-5]|[0-4][0-9])|(?<=1)[0-9]{{2}}|(?<=[1-9])[0-9])?"
    rf"(?:\.{_OCTET}){{3}}(?![0-9]|\.[0-9])"
)
_IPV6_CANDIDATE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Two colons with at most four hex digits between them: in every IPv6 candidate.
_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")
# \b(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}\b
_US_SSN = re.compile(r"[0-8](?<!\w.)[0-9]{2}(?<!000|666)-(?!00)[0-9]{2}-(?!0000)[0-9]{4}\b")
# \b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b
_UK_NINO = re.compile(
    r"[A-CEGHJ-PR-TW-Z](?<!\w.)[A-CEGHJ-NPR-TW-Z](?<!BG|GB|NK|KN|TN|NT|ZZ)"
    r" ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b"
)
_NON_DIGIT = re.compile(r"[^0-9]")
_WINDOW_MARGIN = 64  # > the longest digit-bearing match (an IBAN with spaces: 42 characters)
# Digits with gaps of at most two margins between them: one window each, found in C. The
# gap is possessive: giving back a non-digit can never put a digit after it.
_DIGIT_CLUSTER = re.compile(f"[0-9](?:[^0-9]{{0,{2 * _WINDOW_MARGIN}}}+[0-9])*")


def _digit_windows(text: str) -> list[tuple[int, int]]:
    """Disjoint [start, end) spans reaching _WINDOW_MARGIN characters around every digit."""
    length, windows = len(text), []
    for match in _DIGIT_CLUSTER.finditer(text):
        start, end = match.span()
        start, end = start - _WINDOW_MARGIN, end + _WINDOW_MARGIN
        windows.append((start if start > 0 else 0, end if end < length else length))
    return windows


def _digits(text: str) -> str:
    return _NON_DIGIT.sub("", text)


def _is_card(match: str) -> bool:
    if not _CARD_GROUPS.fullmatch(match):
        return False  # 664-8494739-3391329 is an order number, whatever its checksum
    digits = _digits(match)
    return card_issuer_valid(digits) and luhn_valid(digits) and not ean13_valid(digits)


def _is_ipv6(match: str) -> bool:
    if match.count(":") < 2 or ("::" not in match and match.count(":") != 7):
        return False
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


_NANP_SHAPE = re.compile(
    r"(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)|[2-9][0-9]{2})[ .-]?[0-9]{3}[ .-][0-9]{4}"
)
# Where a phone number may be: 7 or more digits with the separators and brackets phone
# numbers are written with, and an extension. libphonenumber runs on these snippets only.
# (?<![\w+])[+(]?[0-9][0-9 ().\-/]{5,24}[0-9]..., opening with its first character.
_PHONE_CANDIDATE = re.compile(
    r"[+(0-9](?<![\w+].)(?:(?<=[0-9])|(?<=[+(])[0-9])"
    r"[0-9 ().\-/]{5,24}[0-9](?:,? ?(?:ext\.?|x|#) ?[0-9]{1,6})?(?![0-9])"
)
_NOT_PLAIN = re.compile(r"[x#]|ext|[^0-9 ().\-/+]|[ .\-/]{2}")  # extension, odd separators
_DATE = re.compile(r"[0-9]{1,2}([./-])[0-9]{1,2}\1[0-9]{2,4}|[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A match that continues a longer digit sequence (the tail of a failed IBAN or account
# number, one group of a card) is not a phone number on its own.
_DIGIT_BEFORE = re.compile(r"[0-9][ .,:\-/]?\Z")  # searched in the two characters before
_DIGIT_AFTER = re.compile(r"[ .,:\-/]?[0-9]")
_LENIENCY = {"possible": phonenumbers.Leniency.POSSIBLE, "valid": phonenumbers.Leniency.VALID}
PHONE_LENIENCIES = tuple(_LENIENCY)
PHONE_REGIONS = frozenset(phonenumbers.SUPPORTED_REGIONS)
_NATIONAL_PREFIX = {
    region: phonenumbers.PhoneMetadata.metadata_for_region(region).national_prefix
    for region in PHONE_REGIONS
}


def _continues_digits(text: str, start: int, end: int) -> bool:
    """text[start:end] has a digit right before or after it, or one separator away."""
    # _DIGIT_BEFORE's match is at most two characters long: no need to scan from 0.
    return bool(
        _DIGIT_BEFORE.search(text, max(0, start - 2), start) or _DIGIT_AFTER.match(text, end)
    )


def _phone_shaped(raw: str) -> bool:
    """A number written the way people write phone numbers, not a date, price or product code.

    International (+), a bracketed area code, a national trunk prefix 0 (written as one
    block: 10 or 11 digits, so not a 13-digit EAN), or North American 3-3-4.
    """
    if raw.startswith(("+", "(")):
        return True
    if raw.startswith("0"):
        if raw.isdigit():
            return 10 <= len(raw) <= 11 and not raw.startswith("00")
        return not _DATE.fullmatch(raw)
    return _NANP_SHAPE.match(raw) is not None


@dataclass(frozen=True)
class _Rule:
    pii_type: str
    pattern: re.Pattern
    accept: Callable[[str], bool] | None
    hint: str | None  # substring the text must contain for the pattern to have a chance
    # A cheaper pattern the text must contain, where one character is too common a hint.
    gate: re.Pattern | None = None


_RULES = {
    "EMAIL": [_Rule("EMAIL", _EMAIL, None, "@")],
    "IBAN": [_Rule("IBAN", _IBAN, iban_valid, None)],
    "CREDIT_CARD": [_Rule("CREDIT_CARD", _CARD, _is_card, None)],
    "IP_ADDRESS": [
        _Rule("IP_ADDRESS", _IPV6_CANDIDATE, _is_ipv6, ":", _IPV6_GATE),
        _Rule("IP_ADDRESS", _IPV4, None, "."),
    ],
    "NATIONAL_ID": [
        _Rule("NATIONAL_ID", _US_SSN, None, "-"),
        _Rule("NATIONAL_ID", _UK_NINO, None, None),
    ],
    "PHONE": [],  # libphonenumber, not a regex: PIIRedactor._redact_phones
}


@dataclass
class PIIConfig:
    types: list[str] = field(default_factory=lambda: list(PII_TYPES))  # which kinds to redact
    placeholder: str = "<{type}>"  # typed, so a model still learns "an e-mail goes here"
    # Regions whose national phone formats are recognised (ISO 3166 alpha-2, libphonenumber's
    # metadata); numbers written with +country code are found whatever the list says.
    regions: list[str] = field(default_factory=lambda: ["US", "GB", "DE", "FR", "NL"])
    # libphonenumber leniency: "possible" (right length for the region) finds fictional and
    # newly allocated numbers too; "valid" also checks the number ranges in the metadata.
    phone_leniency: str = "possible"


class PIIRedactor:
    name = "pii"

    def __init__(self, config: PIIConfig):
        unknown = sorted(set(config.types) - set(PII_TYPES))
        if unknown:
            raise ValueError(f"unknown PII types {unknown}; known: {list(PII_TYPES)}")
        bad_regions = sorted(r for r in config.regions if r not in PHONE_REGIONS)
        if bad_regions:
            raise ValueError(f"unknown phone regions {bad_regions}; use ISO 3166 alpha-2 codes")
        if config.phone_leniency not in _LENIENCY:
            raise ValueError(f"phone_leniency must be one of {sorted(_LENIENCY)}")
        self.config = config
        self._phones = "PHONE" in config.types
        self._leniency = _LENIENCY[config.phone_leniency]
        self._placeholders = {t: config.placeholder.format(type=t) for t in PII_TYPES}
        self._trunk_zero_first = sorted(config.regions, key=lambda r: _NATIONAL_PREFIX[r] != "0")
        self.counts: Counter[str] = Counter()
        self._rules = [
            rule for pii_type in PII_TYPES if pii_type in config.types for rule in _RULES[pii_type]
        ]
        self._email_rules = [rule for rule in self._rules if rule.pii_type == "EMAIL"]
        self._digit_rules = [rule for rule in self._rules if rule.pii_type != "EMAIL"]
        self._any_digit_rules = bool(self._digit_rules) or self._phones

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Text with every detected PII span replaced, and how many of each type."""
        found: Counter[str] = Counter()
        if self._email_rules and "@" in text:
            text = self._apply(self._email_rules, text, found)
        if not self._any_digit_rules:
            return text, found
        windows = _digit_windows(text)
        if not windows:
            return text, found
        if windows[0] == (0, len(text)):  # a short text with numbers: no slicing and joining
            text = self._apply(self._digit_rules, text, found)
            return (self._redact_phones(text, found) if self._phones else text), found
        # Every other kind holds a digit and is at most ~45 characters long, so it lies
        # inside a window of _WINDOW_MARGIN characters around some digit run; scanning only
        # the windows keeps prose with a few numbers fast. Windows start and end at least
        # _WINDOW_MARGIN from any digit, so no match can reach or straddle their edges.
        pieces, position = [], 0
        for start, end in windows:
            pieces.append(text[position:start])
            window = self._apply(self._digit_rules, text[start:end], found)
            if self._phones:
                window = self._redact_phones(window, found)
            pieces.append(window)
            position = end
        pieces.append(text[position:])
        return "".join(pieces), found

    def _apply(self, rules: list[_Rule], text: str, found: Counter[str]) -> str:
        for rule in rules:
            if rule.hint is not None and rule.hint not in text:
                continue
            if rule.gate is not None and rule.gate.search(text) is None:
                continue
            placeholder = self._placeholders[rule.pii_type]

            def replace(match: re.Match, rule: _Rule = rule, placeholder: str = placeholder) -> str:
                if rule.accept is not None and not rule.accept(match.group()):
                    return match.group()
                found[rule.pii_type] += 1
                return placeholder

            text = rule.pattern.sub(replace, text)
        return text

    def _whole_candidate_is_a_number(self, text: str, candidate: re.Match, regions) -> bool:
        """Fast path: the snippet as a whole parses as a possible number of one of the regions.

        The same checks and parse PhoneNumberMatcher makes at leniency POSSIBLE, without its
        search for numbers inside the snippet (about 40% of its time); most snippets are one
        number. Extensions, several numbers, odd separators go to the matcher.
        """
        raw = candidate.group()
        if self._leniency != phonenumbers.Leniency.POSSIBLE:
            return False  # VALID adds the matcher's checks of the text around the number
        if not raw[-1].isdigit() or _NOT_PLAIN.search(raw):
            return False
        # The matcher's own refusals before it parses (pinned version: private names).
        if not _matcher.fullmatch(_matcher._MATCHING_BRACKETS, raw) or _matcher._PUB_PAGES.search(
            raw
        ):
            return False
        if _continues_digits(text, candidate.start(), candidate.end()):
            return False
        for region in regions:
            try:
                number = phonenumbers.parse(raw, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_possible_number(number):
                return True
        return False

    def _redact_phones(self, text: str, found: Counter[str]) -> str:
        spans = []
        for candidate in _PHONE_CANDIDATE.finditer(text):
            raw, offset = candidate.group(), candidate.start()
            if len(_digits(raw)) < 7 or not _phone_shaped(raw):
                continue  # any match inside would be refused below: skip libphonenumber's parse
            # A +country number reads the same in every region; national ones need each,
            # those with a trunk 0 first when the number starts with one.
            if raw[0] == "+":
                regions = self.config.regions[:1]
            elif raw[0] == "0" or raw[:2] == "(0":
                regions = self._trunk_zero_first
            else:
                regions = self.config.regions
            if self._whole_candidate_is_a_number(text, candidate, regions):
                spans.append(candidate.span())
                continue
            for region in regions:
                matches = [
                    (offset + match.start, offset + match.end)
                    for match in phonenumbers.PhoneNumberMatcher(raw, region, self._leniency)
                    if _phone_shaped(match.raw_string)
                    and not _continues_digits(text, offset + match.start, offset + match.end)
                ]
                spans += matches
                if matches and matches[0][0] == offset and matches[-1][1] == candidate.end():
                    break  # the whole snippet is one region's number: the others add nothing
        if not spans:
            return text
        placeholder = self._placeholders["PHONE"]
        pieces, position = [], 0
        # Regions can find the same number, or overlapping ones: keep the longest of each overlap.
        for start, end in sorted(spans, key=lambda span: (span[0], -span[1])):
            if start < position:
                continue
            pieces += [text[position:start], placeholder]
            found["PHONE"] += 1
            position = end
        pieces.append(text[position:])
        return "".join(pieces)

    def __call__(self, doc: Document) -> str | None:
        text, found = self.redact(doc.text)
        if found:
            self.counts.update(found)
            doc.set_text(text)
        return None
