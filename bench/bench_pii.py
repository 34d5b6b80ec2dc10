"""PII detection an auditor can trust: per-type recall, false positives, throughput.

    .venv/bin/python bench/bench_pii.py             # 400 items per type and locale
    .venv/bin/python bench/bench_pii.py --quick     # 60

Personal data: generated in sentences for five locales (en_US, en_GB, de_DE, fr_FR, nl_NL).
E-mail, IBAN (written plain and in groups of four), IPv4/IPv6 and US SSN come from Faker;
phone numbers from a generator of the formats people write in each country (US with dots
and extensions, UK area codes in brackets, German and Dutch national and mobile numbers,
French pairs, each also international), because Faker's own phone strings include forms no
one writes (de_DE "00008063608"); Faker's are measured too, as "PHONE (faker)", for
reference. Payment cards: every issuer prefix at its lengths (12-digit Maestro included),
Luhn-completed. An item counts as found when its text is gone and the placeholder of its
type is there.

Not personal: digit-heavy sentences (ISBN-13 and EAN-13 codes, order numbers, dates, prices,
version strings). Any redaction in such a sentence is a false positive.

Throughput: the redactor against the reference one (`git show REF:engine/data/pii.py`,
loaded as a module; REF defaults to a1daa20, the hand-written patterns before
libphonenumber, "today's" redactor when issue 16 asked for "within 20%"; `--ref main`
compares with main) on the real Shakespeare texts with planted PII (what the cleaning
pipeline sees: prose with a few numbers) and on the digit-heavy sentences above.
Goals: recall >= 95% per type, false positives < 1%, throughput within 20% of the
reference's.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

from faker import Faker

from engine.data.corpora import shakespeare_files
from engine.data.pii import PII_TYPES, PIIConfig, PIIRedactor, luhn_valid
from engine.data.synthetic import chunk_documents, pii_records

LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL")
REGION = {"en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR", "nl_NL": "NL"}


def _d(rng: random.Random, count: int, first: str = "0123456789") -> str:
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(count - 1))


def phone(locale: str, rng: random.Random) -> str:
    """A phone number in one of the formats people write in ``locale``'s country."""
    if locale == "en_US":
        area, exchange, line = _d(rng, 3, "23456789"), _d(rng, 3, "23456789"), _d(rng, 4)
        return rng.choice(
            [
                f"({area}) {exchange}-{line}",
                f"{area}-{exchange}-{line}",
                f"{area}.{exchange}.{line}",
                f"{area}.{exchange}.{line} ext. {_d(rng, 3)}",
                f"{area}-{exchange}-{line} x{_d(rng, 4)}",
                f"+1 {area} {exchange} {line}",
                f"1-{area}-{exchange}-{line}",
                f"({area}) {exchange}-{line} ext {_d(rng, 2)}",
            ]
        )
    if locale == "en_GB":
        return rng.choice(
            [
                f"(020) {_d(rng, 4, '378')} {_d(rng, 4)}",
                f"(0161) {_d(rng, 3, '2456789')} {_d(rng, 4)}",
                f"(01632) {_d(rng, 6, '9')}",
                f"020 {_d(rng, 4, '78')} {_d(rng, 4)}",
                f"07{_d(rng, 3, '1456789')} {_d(rng, 6)}",
                f"+44 20 {_d(rng, 4, '78')} {_d(rng, 4)}",
                f"+44 (0)161 {_d(rng, 3, '456789')} {_d(rng, 4)}",
                f"0113 {_d(rng, 3, '2456789')} {_d(rng, 4)}",
            ]
        )
    if locale == "de_DE":
        area = rng.choice(["30", "40", "89", "221", "69", "711", "211", "351"])
        subscriber = _d(rng, 8 - len(area) + 1, "123456789")
        mobile = rng.choice(["151", "160", "170", "171", "176", "1520"])
        return rng.choice(
            [
                f"0{area} {subscriber}",
                f"(0{area}) {subscriber}",
                f"0{area}/{subscriber}",
                f"0{area}-{subscriber}",
                f"+49 {area} {subscriber}",
                f"+49 (0){area} {subscriber}",
                f"0{mobile} {_d(rng, 7, '123456789')}",
                f"+49 {mobile} {_d(rng, 7, '123456789')}",
            ]
        )
    if locale == "fr_FR":
        first = rng.choice("123456789")
        pairs = [_d(rng, 2) for _ in range(4)]
        return rng.choice(
            [
                f"0{first} {' '.join(pairs)}",
                f"0{first}.{'.'.join(pairs)}",
                f"0{first}{''.join(pairs)}",
                f"+33 {first} {' '.join(pairs)}",
                f"+33 (0){first} {' '.join(pairs)}",
            ]
        )
    area = rng.choice(["20", "10", "70", "30", "40", "50"])
    return rng.choice(
        [
            f"0{area}-{_d(rng, 7, '23456789')}",
            f"0{area} {_d(rng, 3, '23456789')} {_d(rng, 4)}",
            f"(0{area}) {_d(rng, 3, '23456789')} {_d(rng, 4)}",
            f"06-{_d(rng, 8, '12345')}",
            f"06 {_d(rng, 2, '12345')} {_d(rng, 2)} {_d(rng, 2)} {_d(rng, 2)}",
            f"+31 {area} {_d(rng, 3, '23456789')} {_d(rng, 4)}",
            f"+31 6 {_d(rng, 8, '12345')}",
        ]
    )


# (prefix, length) of each issuer; a card is the prefix, random digits and a Luhn digit.
_CARDS = [
    ("4", 16),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("2720", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("65", 16),
    ("644", 16),
    ("50", 12),  # Maestro
    ("5018", 16),
    ("6759", 12),
    ("6304", 19),
    ("3528", 16),
    ("3589", 16),
    ("36", 14),
    ("300", 14),
    ("38", 14),
    ("62", 16),
    ("62", 19),
]


def card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARDS)
    body = prefix + _d(rng, length - len(prefix) - 1)
    digits = next(body + c for c in "0123456789" if luhn_valid(body + c))
    if length == 15:  # Amex is written 4-6-5
        return rng.choice([digits, f"{digits[:4]} {digits[4:10]} {digits[10:]}"])
    groups = " ".join(digits[i : i + 4] for i in range(0, length, 4))
    return rng.choice([digits, groups, groups.replace(" ", "-")])


def personal_items(locale: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(type, value) pairs; the value is what must disappear."""
    fake = Faker(locale)
    fake.seed_instance(seed)
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        iban = fake.iban()
        if rng.random() < 0.5:
            iban = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        items += [
            ("EMAIL", fake.email()),
            ("IBAN", iban),
            ("IP_ADDRESS", fake.ipv4() if rng.random() < 0.5 else fake.ipv6()),
            ("CREDIT_CARD", card(rng)),
            ("PHONE", phone(locale, rng)),
            ("PHONE (faker)", fake.phone_number()),
        ]
        if locale == "en_US":
            items.append(("NATIONAL_ID", fake.ssn()))
    return items


def non_personal_items(n: int, seed: int) -> list[tuple[str, str]]:
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        isbn = fake.isbn13()
        date = fake.date_object()
        items += [
            ("ISBN", rng.choice([isbn, isbn.replace("-", "")])),
            ("EAN-13", fake.ean13()),
            (
                "order number",
                rng.choice(
                    [
                        f"#{_d(rng, rng.randint(6, 12), '123456789')}",
                        f"ORD-{date.year}-{_d(rng, 6)}",
                        f"{_d(rng, 3)}-{_d(rng, 7)}-{_d(rng, 7)}",  # Amazon style
                        _d(rng, rng.randint(8, 11), "123456789"),
                    ]
                ),
            ),
            (
                "date",
                rng.choice(
                    [
                        date.isoformat(),
                        date.strftime("%d.%m.%Y"),
                        date.strftime("%m/%d/%Y"),
                        date.strftime("%d/%m/%Y"),
                        date.strftime("%Y%m%d"),
                        f"{date.isoformat()} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00",
                    ]
                ),
            ),
            (
                "price",
                rng.choice(
                    [
                        f"${rng.randint(1, 99_999):,}.{rng.randint(0, 99):02d}",
                        f"€ {rng.randint(1, 999)}.{rng.randint(0, 999):03d},{rng.randint(0, 99):02d}",
                        f"{rng.randint(1, 999)} {rng.randint(0, 999):03d},{rng.randint(0, 99):02d} €",
                        f"£{rng.randint(1, 9_999_999):,}",
                    ]
                ),
            ),
            (
                "version",
                rng.choice(
                    [
                        f"v{rng.randint(0, 20)}.{rng.randint(0, 40)}.{rng.randint(0, 200)}",
                        f"{rng.randint(1, 12)}.0.{rng.randint(10000, 26000)}.{rng.randint(1, 9999)}",
                        f"{rng.randint(1, 5)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}-rc{rng.randint(1, 5)}",
                    ]
                ),
            ),
        ]
    return items


def in_sentence(fake: Faker, kind: str, value: str) -> str:
    return f"{fake.sentence(nb_words=6)} {kind.split()[0]}: {value}. {fake.sentence(nb_words=5)}"


REFERENCE = "a1daa20"  # the redactor before libphonenumber (hand-written phone patterns)


def load_main_redactor(ref: str = REFERENCE) -> type | None:
    """engine/data/pii.py at `ref` as a module, or None outside a git checkout."""
    try:
        source = subprocess.run(
            ["git", "show", f"{ref}:engine/data/pii.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("pii_main")
    sys.modules["pii_main"] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:engine/data/pii.py", "exec"), module.__dict__)
    return module


def measure(redactor, sentences: list[tuple[str, str, str]]) -> tuple[Counter, Counter]:
    """(hits, totals) per kind: personal kinds count a hit when found, others when redacted."""
    hits, totals = Counter(), Counter()
    for kind, value, sentence in sentences:
        text, found = redactor.redact(sentence)
        totals[kind] += 1
        if kind.split()[0] in PII_TYPES:
            pii_type = kind.split()[0]
            hits[kind] += value not in text and f"<{pii_type}>" in text
        else:
            hits[kind] += bool(found)
    return hits, totals


def throughput(redactors: list, texts: list[str], rounds: int) -> list[float]:
    """MB/s of each redactor, best of ``rounds``; rounds alternate so load hits both alike."""
    size = sum(len(t.encode()) for t in texts) / 1e6
    best = [float("inf")] * len(redactors)
    for _ in range(rounds):
        for i, redactor in enumerate(redactors):
            started = time.perf_counter()
            for text in texts:
                redactor.redact(text)
            best[i] = min(best[i], time.perf_counter() - started)
    return [size / seconds for seconds in best]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ref", default=REFERENCE, help="the commit to compare with")
    args = parser.parse_args(argv)
    n = 60 if args.quick else 400

    fake = Faker("en_US")
    fake.seed_instance(0)
    personal = [
        (kind, value, in_sentence(fake, kind, value))
        for i, locale in enumerate(LOCALES)
        for kind, value in personal_items(locale, n, seed=i)
    ]
    other = [(k, v, in_sentence(fake, k, v)) for k, v in non_personal_items(n * 2, seed=99)]

    main_module = load_main_redactor(args.ref)
    new = PIIRedactor(PIIConfig())
    old = main_module.PIIRedactor(main_module.PIIConfig()) if main_module else None

    print(f"personal items: {len(personal)} in {len(LOCALES)} locales; not personal: {len(other)}")
    print(f"{'type':<16}{'recall new':>12}{'recall ref':>13}")
    for kind in sorted({k for k, _, _ in personal}):
        rows = [s for s in personal if s[0] == kind]
        hits, totals = measure(new, rows)
        line = f"{kind:<16}{hits[kind] / totals[kind]:>12.1%}"
        if old:
            old_hits, _ = measure(old, rows)
            line += f"{old_hits[kind] / totals[kind]:>13.1%}"
        print(line)
    print("phone recall per locale (new / ref):")
    for i, locale in enumerate(LOCALES):
        rows = [(k, v, in_sentence(fake, k, v)) for k, v in personal_items(locale, n, seed=i)]
        rows = [r for r in rows if r[0] == "PHONE"]
        hits, totals = measure(new, rows)
        line = f"  {locale}: {hits['PHONE'] / totals['PHONE']:.1%}"
        if old:
            line += f" / {measure(old, rows)[0]['PHONE'] / totals['PHONE']:.1%}"
        print(line)

    print(f"{'not personal':<16}{'FP new':>12}{'FP ref':>13}")
    hits, totals = measure(new, other)
    old_hits = measure(old, other)[0] if old else Counter()
    for kind in totals:
        line = f"{kind:<16}{hits[kind] / totals[kind]:>12.2%}"
        if old:
            line += f"{old_hits[kind] / totals[kind]:>13.2%}"
        print(line)
    all_fp = sum(hits.values()) / sum(totals.values())
    line = f"{'all':<16}{all_fp:>12.2%}"
    if old:
        line += f"{sum(old_hits.values()) / sum(totals.values()):>13.2%}"
    print(line)

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in shakespeare_files("all")]
    prose = chunk_documents(texts)[: 300 if args.quick else 3000]
    prose += [r["text"] for r in pii_records(len(prose) // 20, texts[0], seed=1)]
    digit_heavy = [s for _, _, s in personal + other]
    rounds = 3 if args.quick else 5
    for name, corpus in (("prose + planted PII", prose), ("digit-heavy sentences", digit_heavy)):
        mb = sum(len(t.encode()) for t in corpus) / 1e6
        rates = throughput([new, old] if old else [new], corpus, rounds)
        line = f"throughput {name} ({mb:.1f} MB): new {rates[0]:.2f} MB/s"
        if old:
            line += f", {args.ref} {rates[1]:.2f} MB/s, ratio {rates[0] / rates[1]:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
