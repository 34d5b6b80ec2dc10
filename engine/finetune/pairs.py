"""Post-training records: read from JSONL, written, split by prompt, checked against a context.

    from engine.finetune.pairs import load_pairs_jsonl, split_pairs, check_fits
    records = load_pairs_jsonl("pairs.jsonl", "preference")   # PairsError names file and line
    train, heldout = split_pairs(records, heldout_fraction=0.1, seed=0)
    check_fits(ChatTemplate(tokenizer), train, block_size=256)  # PairsError names the record
    write_pairs_jsonl(train, "var/pairs/train.jsonl")

Records are plain dicts, the same everywhere in engine.finetune:

- SFT: ``{"prompt": str, "response": str[, "system": str]}``
- preference: ``{"prompt": str, "chosen": str, "rejected": str[, "system": str]}``

JSONL import accepts the field names data sets usually carry: SFT ``prompt/response``,
``prompt/completion``, ``instruction`` (+ optional ``input``) / ``output`` (Alpaca),
``question/answer``; preference ``prompt/chosen/rejected`` (the prompt may also be called
``instruction`` (+ ``input``) or ``question``). Other fields are ignored. Built-in pairs
from Shakespeare's plays: engine/finetune/shakespeare.py.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

Kind = Literal["sft", "preference"]
KINDS: tuple[str, ...] = ("sft", "preference")


class PairsError(ValueError):
    """Bad pairs: the message names the file and line, or the record index."""


# ---- JSONL import -------------------------------------------------------------------------
# (prompt field, response field) in the order they are tried; "instruction" also takes "input".
SFT_FIELDS: tuple[tuple[str, str], ...] = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("instruction", "output"),
    ("question", "answer"),
)
PROMPT_FIELDS: tuple[str, ...] = ("prompt", "instruction", "question")


def load_pairs_jsonl(path: str | Path, kind: Kind) -> list[dict]:
    """Read SFT or preference records from a JSONL file (``.jsonl.gz`` too), normalised.

    Blank lines are skipped. Every problem is a :class:`PairsError` naming the file and line:
    bad JSON, a line that is not an object, a missing field, a value that is not a string
    or is empty, ``chosen`` equal to ``rejected``, or a file without records.
    """
    if kind not in KINDS:
        raise PairsError(f"unknown pairs kind {kind!r}; use 'sft' or 'preference'")
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"{path}: no such file")
    records: list[dict] = []
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path} line {number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise PairsError(f"{where}: not UTF-8 ({error.reason})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as error:
                raise PairsError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(obj, dict):
                raise PairsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if kind == "sft":
                records.append(_sft_record(obj, where))
            else:
                records.append(_preference_record(obj, where))
    if not records:
        raise PairsError(f"{path}: no records (the file is empty)")
    return records


def _text_field(obj: Mapping, field: str, where: str) -> str:
    if field not in obj:
        raise PairsError(f"{where}: missing field {field!r}")
    value = obj[field]
    if not isinstance(value, str):
        raise PairsError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise PairsError(f"{where}: field {field!r} is empty")
    return value


def _prompt(obj: Mapping, field: str, where: str) -> str:
    prompt = _text_field(obj, field, where)
    if field == "instruction" and obj.get("input") is not None:
        extra = obj["input"]
        if not isinstance(extra, str):
            raise PairsError(f"{where}: field 'input' must be a string, got {type(extra).__name__}")
        if extra.strip():  # Alpaca leaves "input" empty for most records
            prompt = f"{prompt}\n\n{extra}"
    return prompt


def _with_system(record: dict, obj: Mapping, where: str) -> dict:
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise PairsError(
                f"{where}: field 'system' must be a string, got {type(system).__name__}"
            )
        if system.strip():  # an empty system message means none
            record["system"] = system
    return record


def _sft_record(obj: Mapping, where: str) -> dict:
    for prompt_field, response_field in SFT_FIELDS:
        if prompt_field in obj and response_field in obj:
            record = {
                "prompt": _prompt(obj, prompt_field, where),
                "response": _text_field(obj, response_field, where),
            }
            return _with_system(record, obj, where)
    # Name the field a user most likely forgot: the partner of a prompt field that is there.
    for prompt_field in dict.fromkeys(p for p, _ in SFT_FIELDS):
        if prompt_field in obj:
            alternatives = " or ".join(repr(r) for p, r in SFT_FIELDS if p == prompt_field)
            raise PairsError(f"{where}: missing field {alternatives}")
    raise PairsError(
        f"{where}: missing field 'prompt' (expected prompt/response, prompt/completion, "
        "instruction/output or question/answer)"
    )


def _preference_record(obj: Mapping, where: str) -> dict:
    prompt_field = next((f for f in PROMPT_FIELDS if f in obj), "prompt")
    record = {
        "prompt": _prompt(obj, prompt_field, where),
        "chosen": _text_field(obj, "chosen", where),
        "rejected": _text_field(obj, "rejected", where),
    }
    if record["chosen"] == record["rejected"]:
        raise PairsError(f"{where}: 'chosen' and 'rejected' are the same text")
    return _with_system(record, obj, where)


# ---- writing, splitting, checking ---------------------------------------------------------
def write_pairs_jsonl(records: Iterable[Mapping[str, str]], path: str | Path) -> Path:
    """One JSON object per line (gzip for ``.gz``); written to a temporary file, then renamed,
    so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)
    data = payload.encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime 0: the same records give the same bytes
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def split_pairs(
    records: Sequence[Mapping[str, str]], heldout_fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """(train, heldout), deterministic for a seed; records keep their order within each part.

    Records that share a prompt go to the same side (preference data often holds several
    pairs per prompt), so no held-out prompt was seen in training. ``heldout_fraction``
    counts prompts.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise PairsError(f"heldout_fraction must be between 0 and 1, got {heldout_fraction}")
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    if len(prompts) < 2:
        raise PairsError(
            f"cannot split {len(records)} record(s) with {len(prompts)} distinct prompt(s); "
            "a split needs at least two prompts"
        )
    random.Random(seed).shuffle(prompts)
    count = min(len(prompts) - 1, max(1, round(len(prompts) * heldout_fraction)))
    heldout_prompts = set(prompts[:count])
    train = [dict(r) for r in records if r["prompt"] not in heldout_prompts]
    heldout = [dict(r) for r in records if r["prompt"] in heldout_prompts]
    return train, heldout


def check_fits(template, records: Sequence[Mapping[str, str]], block_size: int) -> None:
    """PairsError naming the first record whose tokens do not fit ``block_size``.

    ``template`` is an :class:`engine.finetune.sft.ChatTemplate`. A preference record is
    checked as prompt + chosen and prompt + rejected. The whole sequence, end-of-text
    included, must fit: preference and PPO forwards read it whole (SFT could spare one).
    """
    for index, record in enumerate(records):
        if "chosen" in record or "rejected" in record:
            sides = ("chosen", "rejected")
        else:
            sides = ("response",)
        for side in sides:
            chat = {"prompt": record.get("prompt"), "response": record.get(side)}
            if record.get("system"):
                chat["system"] = record["system"]
            try:
                length = len(template.encode(chat, index).ids)
            except ValueError as error:
                message = str(error)
                if side != "response":
                    message = message.replace("'response'", repr(side))
                if not message.startswith("record "):
                    message = f"record {index}: {message}"
                raise PairsError(message) from None
            if length > block_size:
                what = "prompt + response" if side == "response" else f"prompt + {side}"
                raise PairsError(
                    f"record {index}: {length} tokens ({what} in the chat template) do not fit "
                    f"the context of {block_size} tokens; shorten it or raise block_size"
                )
