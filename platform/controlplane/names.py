"""The one check of every name a user gives something we store and show to others.

A name is displayed beside other names (file lists, project switchers, audit views), so
characters that change how a name *looks* without changing what it *is* are refused:

- bidi controls (U+202A-202E, U+2066-2069, U+200E/200F, U+061C): "\\u202egnp.exe" is
  shown as "exe.png", disguising the extension of a file someone is about to download;
- zero-width and other invisible format characters (U+200B-200D, U+2060, U+FEFF, ...):
  two different names that look identical;
- control characters (C0, DEL, C1, line/paragraph separators) and lone surrogates
  (PostgreSQL refuses them in text and jsonb);
- names not in Unicode normal form NFC: "é" as one code point and as "e" + U+0301 are
  the same name to a reader and two names to the database.

We refuse rather than silently strip or normalise (a concise error beats a fix the user
never sees): the error names the field and the offending code point. Django's
ValidationError is used so the same callable serves DRF serializers
(`validators=[validate_name]`), Django forms and services (`name_problem`).
"""

from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError

# Categories refused everywhere: Cc control, Cf format (bidi, zero-width, soft hyphen,
# BOM...), Cs surrogate, Zl/Zp line and paragraph separator.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_ZERO_WIDTH = {0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF}


def _describe(char: str) -> str:
    code = ord(char)
    name = unicodedata.name(char, "")
    label = f"U+{code:04X}" + (f" {name}" if name else "")
    if code in _BIDI:
        return f"{label}, which can disguise a file's extension or reorder what is shown"
    if code in _ZERO_WIDTH:
        return f"{label}, an invisible character that makes different names look alike"
    if unicodedata.category(char) == "Cs":
        return f"{label}, a lone surrogate (not a character)"
    return f"{label}, a control or formatting character"


def name_problem(value: str, *, field: str = "name") -> str | None:
    """What is wrong with `value` as a displayed name, or None when it is fine."""
    for char in value:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return f"{field} contains {_describe(char)}"
    normalised = unicodedata.normalize("NFC", value)
    if normalised != value:
        # The first code point whose arrival makes the prefix unnormalised: the combining
        # mark of a decomposed letter, or a singleton such as U+212B ANGSTROM SIGN.
        at = next(
            c for i, c in enumerate(value) if not unicodedata.is_normalized("NFC", value[: i + 1])
        )
        return (
            f"{field} is not in Unicode normal form NFC (U+{ord(at):04X} "
            f"{unicodedata.name(at, '')}); send the name NFC-normalised"
        )
    return None


def validate_name(value: str) -> None:
    """Django/DRF validator: refuse a name that would display as something it is not."""
    if not isinstance(value, str):
        return  # the field's own type check reports it
    problem = name_problem(value)
    if problem is not None:
        raise ValidationError(problem, code="invalid_name")
