"""PII at the edges: of the text, of a word or digit run, and of the digit windows scanned."""

from __future__ import annotations

import pytest

from engine.data.pii import PIIConfig, PIIRedactor, card_issuer_valid

redactor = PIIRedactor(PIIConfig())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GB82 WEST 1234 5698 7654 32", "<IBAN>"),
        ("192.168.0.17", "<IP_ADDRESS>"),
        ("255.255.255.255 and 250.249.199.99", "<IP_ADDRESS> and <IP_ADDRESS>"),
        ("fe80::1", "<IP_ADDRESS>"),
        ("123-45-6789", "<NATIONAL_ID>"),
        ("JG 10 37 51 A", "<NATIONAL_ID>"),
        ("(555) 010-4477", "<PHONE>"),
        ("+44 20 7946 0958", "<PHONE>"),
        ("555-010-4477", "<PHONE>"),
        (",555-010-4477", ",<PHONE>"),  # the separator check looks before the text's start
    ],
)
def test_each_kind_is_found_filling_the_whole_text(text, expected):
    assert redactor.redact(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "xGB82WEST12345698765432",  # an IBAN starts a word
        "_GB82WEST12345698765432",
        "éGB82WEST12345698765432",
        "1192.168.0.17",  # 1192 is no octet
        "1.192.168.0.17",  # five octets
        "v6 fe80:1",  # one colon: a time or a label, not IPv6
        "A123-45-6789",
        "666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
        "XJG 10 37 51 A",
        "GB 10 37 51 A and NK 10 37 51 A",  # prefixes never issued
        "x555-010-4477",
        "7,555-010-4477",  # the tail of a longer number
        "ab 7-555-010-4477",
    ],
)
def test_kinds_glued_to_a_word_or_number_are_kept(text):
    assert redactor.redact(text) == (text, {})


def test_numbers_at_the_edges_of_the_scanned_windows():
    # Windows reach 64 characters around digits and merge when digits are at most 128
    # apart: put numbers at exactly those distances and at both ends of a long text.
    phone, ip = "(020) 7946 0958", "192.168.0.17"
    for gap in (63, 64, 65, 127, 128, 129, 200):
        filler = " " + ("to be or not " * 20)[: gap - 2] + " "
        text = f"{phone}{filler}{ip}{filler}06 12 34 56 78{filler}{phone}"
        redacted, found = redactor.redact(text)
        expected = f"<PHONE>{filler}<IP_ADDRESS>{filler}<PHONE>{filler}<PHONE>"
        assert redacted == expected and found == {"PHONE": 3, "IP_ADDRESS": 1}, gap
        # A number one separator after another one is a longer number's tail, however far
        # the window around it reaches.
        assert redactor.redact(f"{filler}4,{phone}")[1] == {}, gap
        assert redactor.redact(f"4,{filler}{phone}")[0] == f"4,{filler}<PHONE>", gap


def test_issuer_prefixes_at_the_ends_of_their_ranges():
    assert card_issuer_valid("2720" + "0" * 12) and not card_issuer_valid("2721" + "0" * 12)
    assert card_issuer_valid("3589" + "0" * 12) and not card_issuer_valid("3590" + "0" * 12)
    assert card_issuer_valid("305" + "0" * 11) and not card_issuer_valid("306" + "0" * 11)
    assert card_issuer_valid("34" + "0" * 13) and not card_issuer_valid("33" + "0" * 13)
    assert not any(card_issuer_valid(short) for short in ("", "4", "34", "6011"))
