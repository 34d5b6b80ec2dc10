"""``python -m engine data ...``: clean corpora, train tokenizers, pack token shards, images.

    python -m engine data run pipeline.yaml --output data/clean --processes 4
    python -m engine data train-tokenizer data/clean --kind bpe --vocab-size 8192 --out var/tok.json
    python -m engine data tokenize data/clean --tokenizer var/tok.json --out data/tokens
    python -m engine data images var/digits.npz --out data/digits      # or --digits
    python -m engine data find-subject data/clean user-42 --key-file var/subject.key
    python -m engine data erase data/clean --out data/clean-erased --id user-42 --key-file k
    python -m engine data pairs preference var/pairs.jsonl --count 2000   # or sft

Every command prints a short summary on stdout, progress bars on stderr (when it is a
terminal, or with --progress), and ``error: ...`` with exit status 2 for input a user
can fix.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.cli import EngineError

# Exceptions that carry a message written for the user (see each module's docstring).
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.data.config import ConfigError
    from engine.data.pipeline import PipelineError
    from engine.data.readers import InputError
    from engine.data.shards import ShardError

    return (ConfigError, InputError, PipelineError, ShardError, *_USER_ERRORS)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _user_errors() as error:
            raise EngineError(str(error).strip("'\"")) from None

    return run


class _Bars:
    """tqdm bars keyed by phase name; ``callback(phase, done, total)`` updates them."""

    def __init__(self, enabled: bool | None, unit: str = "unit"):
        self.enabled = enabled
        self.unit = unit
        self.bars: dict = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            for finished in self.bars.values():  # one bar at a time: phases run one after another
                finished.close()
            # disable=None: tqdm shows the bar only when stderr is a terminal
            bar = self.bars[phase] = tqdm(
                total=total,
                desc=phase,
                unit=self.unit,
                disable=None if self.enabled is None else not self.enabled,
                unit_scale=self.unit == "B",
                leave=True,
                file=sys.stderr,
            )
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return number


# ---- run ----------------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    from engine.data.config import load_pipeline_config
    from engine.data.pipeline import run_pipeline
    from engine.data.subject_index import read_subject_key_file

    config = load_pipeline_config(args.config)
    if args.strict:
        config.strict = True
    if args.key_file:
        config.subject_key = read_subject_key_file(args.key_file).hex()
    output = args.output or config.output.path
    if not output:
        raise EngineError(
            "no output folder: set `output: {path: ...}` in the config or pass --output"
        )
    bars = _Bars(args.progress)
    try:
        report = run_pipeline(
            config,
            inputs=args.input or None,
            output_dir=output,
            processes=args.processes,
            progress=bars,
        )
    finally:
        bars.close()
    print(report.summary(), end="")
    print(f"output: {output} (report.json, report.txt, manifest.json)")
    return 0


# ---- train-tokenizer ----------------------------------------------------------------------
def _cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from engine.data.packing import PackStats, iter_texts, plan_text_inputs
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer

    specs, units = plan_text_inputs(args.inputs, args.text_field, args.text_unit)
    stats = PackStats()
    texts = _limited(iter_texts(specs, units, stats, args.strict), args.max_chars)
    specials = args.special_token or list(DEFAULT_SPECIAL_TOKENS)
    if args.kind == "bpe":
        tokenizer = BPETokenizer.train(
            texts,
            vocab_size=args.vocab_size,
            special_tokens=specials,
            show_progress=bool(args.progress),
        )
    else:
        tokenizer = CharTokenizer.train(texts, special_tokens=specials)
    if stats.documents == 0:
        raise EngineError(f"no readable documents in {', '.join(args.inputs)}")
    tokenizer.save(args.out)
    print(
        f"trained a {args.kind} tokenizer on {stats.documents} documents"
        + (f" ({stats.problems} unreadable records skipped)" if stats.problems else "")
        + f": vocab_size {tokenizer.vocab_size}, end-of-text id {tokenizer.eot_id}, saved to {args.out}"
    )
    return 0


def _limited(texts, max_chars: int):
    used = 0
    for text in texts:
        if max_chars and used >= max_chars:
            return
        used += len(text)
        yield text


# ---- tokenize -----------------------------------------------------------------------------
def _cmd_tokenize(args: argparse.Namespace) -> int:
    from engine.data.packing import tokenize_to_shards

    bars = _Bars(args.progress, unit="B")
    try:
        manifest, stats = tokenize_to_shards(
            args.inputs,
            args.tokenizer,
            args.out,
            val_fraction=args.val_fraction,
            shard_tokens=args.shard_tokens,
            processes=args.processes,
            text_field=args.text_field,
            text_unit=args.text_unit,
            strict=args.strict,
            progress=lambda done, total: bars("tokenize", done, total),
        )
    finally:
        bars.close()
    train, val = manifest.num_tokens("train"), manifest.num_tokens("val")
    print(
        f"tokenized {stats.documents} documents: {train} train + {val} val tokens ({manifest.dtype}) "
        f"in {len(manifest.shards)} shard(s) under {args.out}"
        + (
            f"; {stats.problems} unreadable records skipped, first: {stats.problem_examples[0]}"
            if stats.problems
            else ""
        )
    )
    return 0


# ---- images -------------------------------------------------------------------------------
def _cmd_images(args: argparse.Namespace) -> int:
    from engine.data.images import digits_npz, prepare_images

    if not args.source and not args.digits:
        raise EngineError(
            "give a PNG folder or an .npz file, or --digits for scikit-learn's 8x8 digits"
        )
    with tempfile.TemporaryDirectory() as scratch:
        source = digits_npz(Path(scratch) / "digits.npz") if args.digits else args.source
        manifest = prepare_images(
            source, args.out, shard_images=args.shard_images, mode=args.mode, strict=args.strict
        )
    print(
        f"wrote {manifest.count} images of shape {tuple(manifest.shape)} in {len(manifest.shards)} shard(s) "
        f"under {args.out}"
        + (f"; classes: {', '.join(manifest.classes)}" if manifest.classes else "")
        + (f"; {len(manifest.problems)} unreadable files skipped" if manifest.problems else "")
    )
    return 0


# ---- find-subject -------------------------------------------------------------------------
def _cmd_find_subject(args: argparse.Namespace) -> int:
    from engine.data.subject_index import SubjectIndex

    key = _read_key_file(args.key_file) if args.key_file else None
    index = SubjectIndex.load(args.output_dir, salt=args.salt, key=key)
    hits = index.lookup(args.subject)
    print(json.dumps([{"shard": shard, "row": row} for shard, row in hits]))
    return 0


# ---- erase --------------------------------------------------------------------------------
_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}


def _byte_size(value: str) -> int:
    """``500MB``, ``2GiB``, ``1000000`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*(k|m|g|ki|mi|gi)?b?\s*", value.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"a size like 500MB or 2GiB, got {value!r}")
    return int(match[1]) * _SIZE_UNITS[match[2] or ""]


def _read_key_file(path: str) -> bytes:
    from engine.data.subject_index import SubjectKeyError, read_subject_key_file

    try:
        return read_subject_key_file(path)
    except (FileNotFoundError, SubjectKeyError) as error:
        raise EngineError(str(error)) from None


def _cmd_erase(args: argparse.Namespace) -> int:
    from engine.data.erasure import erase_subject, find_subject

    key = _read_key_file(args.key_file) if args.key_file else None
    subject = dict(
        subject_hashes=args.hash or (),
        identifiers=args.id or (),
        subject_field=args.subject_field,
        key=key,
        salt=args.salt,
        scan_budget_bytes=args.scan_budget,
    )
    if args.find_only:
        report = find_subject(args.folder, **subject)
        payload = report.to_dict()
        summary = f"{report.hits} records of the subject in {sum(1 for f in report.files if f.hits)} file(s)"
    else:
        if not args.out:
            raise EngineError("give --out (a new folder for the result) or --find-only")
        result = erase_subject(args.folder, args.out, **subject)
        report = result.find
        payload = result.to_dict()
        rewritten = sum(1 for f in result.files if f.status == "rewritten")
        summary = (
            f"removed {result.records_removed} records of the subject in {args.out}: "
            f"{rewritten} file(s) rewritten, {len(result.files) - rewritten} unchanged"
            + (f"; rebuild: {', '.join(result.rebuild)}" if result.rebuild else "")
            + _token_summary(result.token_shards)
        )
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        print(summary + f" ({report.hits} records of the subject in {args.folder})")
    return 0


def _token_summary(token_shards: dict) -> str:
    if token_shards.get("method") == "cut":
        return (
            f"; token shards cut: {sum(token_shards['documents_removed'].values())} documents, "
            f"{len(token_shards['affected'])} shard(s) rewritten, "
            f"{len(token_shards['unchanged'])} reused; tokenizer {token_shards['tokenizer']}"
        )
    if token_shards.get("method") == "rebuild":
        return f"; token shards left out ({token_shards['reason']})"
    return ""


# ---- pairs --------------------------------------------------------------------------------
def _cmd_pairs(args: argparse.Namespace) -> int:
    from engine.data.corpora import CorpusUnavailable
    from engine.finetune.pairs import write_pairs_jsonl
    from engine.finetune.shakespeare import shakespeare_preference_pairs, shakespeare_sft_pairs

    bounds = dict(
        max_prompt_chars=args.max_prompt_chars, max_response_chars=args.max_response_chars
    )
    try:
        if args.kind == "sft":
            records = shakespeare_sft_pairs(args.count, seed=args.seed, **bounds)
        else:
            records = shakespeare_preference_pairs(
                args.count, seed=args.seed, corruption=args.corruption, **bounds
            )
    except CorpusUnavailable as error:
        raise EngineError(str(error)) from None
    write_pairs_jsonl(records, args.out)
    detail = f"seed {args.seed}" + (
        f", corruption {args.corruption}" if args.kind == "preference" else ""
    )
    print(
        f"wrote {len(records)} {args.kind} pairs from the Shakespeare plays ({detail}) to {args.out}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="clean corpora, train tokenizers, pack token shards")
    commands = data.add_subparsers(
        dest="command", metavar="{run,train-tokenizer,tokenize,images,find-subject,erase,pairs}"
    )
    data.set_defaults(func=lambda args: data.print_help() or 2)
    _register_run(commands)
    _register_train_tokenizer(commands)
    _register_tokenize(commands)
    _register_images(commands)
    _register_find_subject(commands)
    _register_erase(commands)
    _register_pairs(commands)


def _add_processes_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes",
        type=_positive,
        default=1,
        help="worker processes (output is the same for any number)",
    )


def _add_text_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        help="pipeline output folders, files or folders (jsonl, txt, parquet, csv; .gz/.zst)",
    )
    parser.add_argument(
        "--text-field", default="text", help="field holding the text in JSONL/CSV/Parquet"
    )
    parser.add_argument(
        "--text-unit",
        default="file",
        choices=["file", "paragraph", "line"],
        help="plain text: one document per ...",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    _add_progress_flag(parser)


def _register_run(commands: argparse._SubParsersAction) -> None:
    """data run CONFIG: the cleaning pipeline."""
    run = commands.add_parser("run", help="run a cleaning pipeline config (YAML or JSON)")
    run.add_argument("config", help="pipeline config file")
    run.add_argument(
        "--input",
        action="append",
        help="input file or folder (repeatable); replaces the config's inputs",
    )
    run.add_argument("--output", help="output folder (default: the config's output.path)")
    _add_processes_flag(run)
    run.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    run.add_argument(
        "--key-file",
        default="",
        help="file holding a hex key: the subject index holds keyed hashes (HMAC-SHA256)",
    )
    _add_progress_flag(run)
    run.set_defaults(func=_guarded(_cmd_run))


def _register_train_tokenizer(commands: argparse._SubParsersAction) -> None:
    """data train-tokenizer INPUTS: a BPE or character tokenizer."""
    train = commands.add_parser(
        "train-tokenizer", help="train a byte-level BPE or character tokenizer"
    )
    _add_text_inputs(train)
    train.add_argument("--kind", choices=["bpe", "char"], default="bpe")
    train.add_argument(
        "--vocab-size",
        type=_positive,
        default=8192,
        help="BPE vocabulary size, special tokens included",
    )
    train.add_argument(
        "--special-token",
        action="append",
        metavar="TOKEN",
        help="special token (repeatable; the first is end-of-text). Default: <|endoftext|> "
        "<|system|> <|user|> <|assistant|> <|pad|> (the chat template's roles)",
    )
    train.add_argument(
        "--max-chars", type=int, default=0, help="train on at most this many characters (0: all)"
    )
    train.add_argument("--out", required=True, help="tokenizer JSON file to write")
    train.set_defaults(func=_guarded(_cmd_train_tokenizer))


def _register_tokenize(commands: argparse._SubParsersAction) -> None:
    """data tokenize INPUTS: train/val token shards."""
    tokenize = commands.add_parser(
        "tokenize", help="tokenize documents into train/val token shards"
    )
    _add_text_inputs(tokenize)
    tokenize.add_argument("--tokenizer", required=True, help="tokenizer file from train-tokenizer")
    tokenize.add_argument(
        "--out", required=True, help="output folder for the shards and manifest.json"
    )
    tokenize.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        help="share of documents for validation (by text hash)",
    )
    tokenize.add_argument(
        "--shard-tokens", type=_positive, default=100_000_000, help="tokens per shard file"
    )
    _add_processes_flag(tokenize)
    tokenize.set_defaults(func=_guarded(_cmd_tokenize))


def _register_images(commands: argparse._SubParsersAction) -> None:
    """data images SOURCE: image shards."""
    images = commands.add_parser(
        "images", help="normalize a PNG folder or an .npz array into .npy shards"
    )
    images.add_argument(
        "source", nargs="?", default="", help="folder of .png files (sub-folders = classes) or .npz"
    )
    images.add_argument(
        "--digits", action="store_true", help="use scikit-learn's 8x8 digits as the source"
    )
    images.add_argument("--out", required=True, help="output folder")
    images.add_argument("--shard-images", type=_positive, default=10_000, help="images per shard")
    images.add_argument(
        "--mode", default="", help="convert PNGs to this Pillow mode first (L, RGB, RGBA)"
    )
    images.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    images.set_defaults(func=_guarded(_cmd_images))


def _register_find_subject(commands: argparse._SubParsersAction) -> None:
    """data find-subject DIR SUBJECT: a data subject's records."""
    find = commands.add_parser(
        "find-subject", help="list the (shard, row) records of a data subject"
    )
    find.add_argument("output_dir", help="a pipeline output folder with a subject index")
    find.add_argument("subject", help="the subject id as it appears in the input's subject field")
    find.add_argument(
        "--key-file",
        default="",
        help="file holding the hex subject_key the pipeline ran with (keyed indexes)",
    )
    find.add_argument(
        "--salt", default="", help="the subject_salt the pipeline ran with (indexes before keys)"
    )
    find.set_defaults(func=_guarded(_cmd_find_subject))


def _register_erase(commands: argparse._SubParsersAction) -> None:
    """data erase FOLDER: a data subject's records found and removed (engine.data.erasure)."""
    from engine.data.erasure import DEFAULT_SCAN_BUDGET

    erase = commands.add_parser(
        "erase", help="find a data subject's records and write the folder again without them"
    )
    erase.add_argument("folder", help="a pipeline output folder or a raw upload folder")
    erase.add_argument("--out", help="new folder for the result (must not exist)")
    erase.add_argument("--find-only", action="store_true", help="report where, rewrite nothing")
    erase.add_argument(
        "--id", action="append", help="a raw identifier (e-mail, customer id); repeatable"
    )
    erase.add_argument(
        "--hash", action="append", help="a subject hash as the index holds it; repeatable"
    )
    erase.add_argument(
        "--subject-field", default="", help="raw JSONL: the field naming the subject"
    )
    erase.add_argument("--salt", default="", help="the subject_salt the pipeline ran with")
    erase.add_argument(
        "--key-file",
        default="",
        help="file holding the hex key of keyed (HMAC-SHA256) subject hashes",
    )
    erase.add_argument(
        "--scan-budget",
        type=_byte_size,
        default=DEFAULT_SCAN_BUDGET,
        help="bytes the full-text scan of not-indexed data may read (e.g. 500MB, 2GiB)",
    )
    erase.add_argument("--json", action="store_true", help="print the whole report as JSON")
    erase.set_defaults(func=_guarded(_cmd_erase))


def _register_pairs(commands: argparse._SubParsersAction) -> None:
    """data pairs KIND OUT: Shakespeare SFT or preference pairs."""
    # engine.finetune.pairs and .shakespeare import no torch: their defaults cost nothing here.
    from engine.finetune.pairs import KINDS
    from engine.finetune.shakespeare import CORRUPTIONS, MAX_PROMPT_CHARS, MAX_RESPONSE_CHARS

    pairs = commands.add_parser(
        "pairs", help="write SFT or preference pairs built from the Shakespeare plays (JSONL)"
    )
    pairs.add_argument("kind", choices=KINDS)
    pairs.add_argument("out", help="JSONL file to write (.jsonl.gz for gzip)")
    pairs.add_argument(
        "--count", type=_positive, default=None, help="number of pairs (default: all)"
    )
    pairs.add_argument("--seed", type=int, default=0, help="which pairs, in which order")
    pairs.add_argument(
        "--corruption",
        choices=CORRUPTIONS,
        default="mixed",
        help="preference: rejected = the continuation's words shuffled, another speech's "
        "continuation, or alternately one and the other",
    )
    pairs.add_argument(
        "--max-prompt-chars",
        type=_positive,
        default=MAX_PROMPT_CHARS,
        help="longest prompt (whole lines of a speech)",
    )
    pairs.add_argument(
        "--max-response-chars",
        type=_positive,
        default=MAX_RESPONSE_CHARS,
        help="longest response (whole lines, or one line cut at a word)",
    )
    pairs.set_defaults(func=_guarded(_cmd_pairs))
