"""PII across locales: phone formats of five countries, issuer-checked cards, product codes kept."""

from __future__ import annotations

import random

import pytest

from engine.data.config import ConfigError, load_pipeline_config
from engine.data.pii import (
    PIIConfig,
    PIIRedactor,
    card_issuer_valid,
    ean13_valid,
    luhn_valid,
)

redactor = PIIRedactor(PIIConfig())


def _luhn_complete(body: str) -> str:
    return next(body + digit for digit in "0123456789" if luhn_valid(body + digit))


@pytest.mark.parametrize(
    "number",
    [
        # en_US: extensions and dots
        "415.555.0132",
        "415.555.0132 ext. 12",
        "(415) 555-0132 x204",
        "212-555-0199 ext 7",
        "+1 415 555 0132",
        # en_GB: area codes in brackets
        "(020) 7946 0958",
        "(0161) 496 0000",
        "(01632) 960391",
        "+44 (0)161 496 0000",
        "07700 900123",
        # de_DE
        "030 12345678",
        "(030) 1234567",
        "089/1234567",
        "0221-9876543",
        "0151 23456789",
        "+49 30 12345678",
        "+49 (0)89 1234567",
        # fr_FR
        "01 23 45 67 89",
        "06.12.34.56.78",
        "0612345678",
        "+33 1 23 45 67 89",
        "+33 (0)6 12 34 56 78",
        # nl_NL
        "020-1234567",
        "06-12345678",
        "(020) 123 4567",
        "010 123 4567",
        "+31 20 123 4567",
        "+31 6 12345678",
    ],
)
def test_each_locales_phone_formats_are_found(number):
    text, found = redactor.redact(f"Please call {number} before noon.")
    assert text == "Please call <PHONE> before noon." and found == {"PHONE": 1}


def test_maestro_with_12_digits_is_a_card():
    for body in ("50123456789", "67591234567", "56001234567"):
        number = _luhn_complete(body)
        for written in (number, f"{number[:4]} {number[4:8]} {number[8:]}"):
            text, found = redactor.redact(f"Maestro {written}, exp 09/28.")
            assert text == "Maestro <CREDIT_CARD>, exp 09/28." and found == {"CREDIT_CARD": 1}


def test_issuer_prefixes_and_lengths():
    assert card_issuer_valid("4111111111111111") and card_issuer_valid("378282246310005")
    assert card_issuer_valid("2221000000000009") and card_issuer_valid("6011000990139424")
    assert not card_issuer_valid("4111111111111")  # 13-digit Visa: no longer issued
    assert not card_issuer_valid("37828224631000")  # Amex is 15 digits
    assert not card_issuer_valid("9111111111111111")  # no issuer starts with 9
    number = _luhn_complete("911111111111111")
    assert redactor.redact(f"ref {number}")[1] == {}  # Luhn alone is not enough


def _gtin13_also_luhn_valid(rng: random.Random, prefix: str) -> str:
    """A 13-digit product code whose EAN check digit also passes Luhn: the hard case."""
    while True:
        body = prefix + "".join(rng.choice("0123456789") for _ in range(12 - len(prefix)))
        code = next(body + d for d in "0123456789" if ean13_valid(body + d))
        if luhn_valid(code):
            return code


@pytest.mark.parametrize("prefix", ["40", "50", "57", "62", "87", "978", "979", "0"])
def test_ean13_and_isbn13_are_not_cards(prefix):
    rng = random.Random(prefix)
    for _ in range(30):
        code = _gtin13_also_luhn_valid(rng, prefix)
        assert redactor.redact(f"EAN {code} in stock")[1] == {}, code
    assert redactor.redact("ISBN 978-0-14-044913-6 and 9780140449136")[1] == {}


@pytest.mark.parametrize(
    "text",
    [
        "Order #48213977 shipped, order ORD-2024-004417 and 114-3941689-8772232 too.",
        "Dates: 2024-03-15, 15.03.2024, 03/15/2024, 15/03/2024, 20240315, 2024-03-15 14:07:00.",
        "Prices: $1,299.99, € 1.299,00, 1 299,00 €, £4,431,097 and 19.99.",
        "Versions: v1.2.3, 10.0.19045.3693, 2.14.0-rc1, build 4.18.0-513.",
    ],
)
def test_digit_heavy_text_that_is_not_personal_is_kept(text):
    assert redactor.redact(text) == (text, {})


def test_international_numbers_are_found_whatever_the_regions():
    only_us = PIIRedactor(PIIConfig(regions=["US"]))
    text, found = only_us.redact("Bureau: +33 1 23 45 67 89, Berlin +49 30 12345678.")
    assert text == "Bureau: <PHONE>, Berlin <PHONE>." and found == {"PHONE": 2}


def test_valid_leniency_checks_number_ranges():
    strict = PIIRedactor(PIIConfig(phone_leniency="valid"))
    assert strict.redact("London (020) 7946 0958")[0] == "London <PHONE>"
    assert strict.redact("fictional 555-010-4477")[1] == {}  # no 555 area code exists
    assert redactor.redact("fictional 555-010-4477")[0] == "fictional <PHONE>"


def test_regions_and_leniency_are_checked_in_the_pipeline_config():
    config = load_pipeline_config({"stages": [{"pii": {"regions": ["BE", "AT"]}}]})
    assert config.stage("pii").params.regions == ["BE", "AT"]
    with pytest.raises(ConfigError, match=r"stages\[0\]\.pii\.regions\[1\]: 'XX'"):
        load_pipeline_config({"stages": [{"pii": {"regions": ["DE", "XX"]}}]})
    with pytest.raises(ConfigError, match=r"phone_leniency"):
        load_pipeline_config({"stages": [{"pii": {"phone_leniency": "exact"}}]})
    with pytest.raises(ValueError, match="unknown phone regions"):
        PIIRedactor(PIIConfig(regions=["EN"]))


def test_faker_phone_numbers_of_five_locales():
    faker = pytest.importorskip("faker")
    for locale in ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL"):
        fake = faker.Faker(locale)
        fake.seed_instance(7)
        numbers = [fake.phone_number() for _ in range(40)]
        found = sum(
            number not in text and "<PHONE>" in text
            for number in numbers
            for text in [redactor.redact(f"Ring {number} tomorrow.")[0]]
        )
        assert found >= 0.9 * len(numbers), locale
