"""PII redaction: typed placeholders, checksums that spare look-alike numbers, counts per type."""

from __future__ import annotations

import pytest

from engine.data.documents import Document
from engine.data.pii import PIIConfig, PIIRedactor, iban_valid, luhn_valid
from engine.data.synthetic import INVALID_IBANS, VALID_IBANS, pii_records

redactor = PIIRedactor(PIIConfig())


def test_luhn_and_iban_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert all(iban_valid(iban) for iban in VALID_IBANS)
    assert not any(iban_valid(iban) for iban in INVALID_IBANS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail ophelia.p+notes@elsinore.dk now", "mail <EMAIL> now"),
        ("card 4111 1111 1111 1111.", "card <CREDIT_CARD>."),
        ("card 4111-1111-1111-1112 fails Luhn", "card 4111-1111-1111-1112 fails Luhn"),
        ("IBAN GB82 WEST 1234 5698 7654 32 ok", "IBAN <IBAN> ok"),
        ("IBAN GB82 WEST 1234 5698 7654 33 bad", "IBAN GB82 WEST 1234 5698 7654 33 bad"),
        ("from 192.168.0.17, not 999.1.1.1", "from <IP_ADDRESS>, not 999.1.1.1"),
        ("v6 2001:db8::8a2e:370:7334 and fe80::1", "v6 <IP_ADDRESS> and <IP_ADDRESS>"),
        ("SSN 123-45-6789; NINO JG 10 37 51 A", "SSN <NATIONAL_ID>; NINO <NATIONAL_ID>"),
        ("call +1 (555) 010-4477 or 06 12 34 56 78", "call <PHONE> or <PHONE>"),
        ("dial 555-010-4477 or 020 7946 0958", "dial <PHONE> or <PHONE>"),
        ("account 1234 5698 7654 33", None),
        ("in 1 000 000 years, act 3 scene 2, ISBN 978-0-14-044913-6?", None),
        ("the year 1603, 5 acts and 37 plays at 10:30", None),
    ],
)
def test_each_kind_is_replaced_and_look_alikes_are_kept(text, expected):
    redacted, found = redactor.redact(text)
    assert redacted == (text if expected is None else expected)
    assert sum(found.values()) == redacted.count("<")


def test_planted_records_lose_all_their_pii_and_keep_the_real_text(hamlet_text):
    records = pii_records(30, hamlet_text[20_000:80_000], seed=3)
    stage = PIIRedactor(PIIConfig())
    for record in records:
        doc = Document(record["text"])
        assert stage(doc) is None  # redaction never drops a document
        assert "@example.com" not in doc.text and "SSN 123-45-" not in doc.text
        assert "Card <CREDIT_CARD>, order number" in doc.text  # valid card gone
        assert "order number <" not in doc.text  # the Luhn-failing number stays
        assert "IBAN <IBAN>, not " in doc.text and "not <IBAN>" not in doc.text
        assert doc.text.count("<IP_ADDRESS>") == 2
        assert record["text"].split("\n\n")[0] in doc.text  # the Shakespeare around it is intact
    assert stage.counts == {
        "EMAIL": 30,
        "PHONE": 30,
        "IP_ADDRESS": 60,
        "CREDIT_CARD": 30,
        "IBAN": 30,
        "NATIONAL_ID": 30,
    }


def test_shakespeare_has_no_false_positives(shakespeare_paths):
    for name in ("hamlet_gut", "sonnets_gut", "henry_v_gut_f"):
        text = shakespeare_paths[name].read_text(encoding="utf-8", errors="replace")
        assert redactor.redact(text)[1] == {}


def test_types_and_placeholder_are_configurable():
    only_email = PIIRedactor(PIIConfig(types=["EMAIL"], placeholder="[{type} removed]"))
    text, found = only_email.redact("yorick@court.dk 4111 1111 1111 1111")
    assert text == "[EMAIL removed] 4111 1111 1111 1111" and found == {"EMAIL": 1}
