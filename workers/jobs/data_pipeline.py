"""The data-pipeline job: a dataset version in, a cleaned and tokenized dataset version out.

Runs the engine's pipeline (engine.data) on the input version's files, then trains a
tokenizer on the cleaned records and packs them into token shards. Every output file is
put into the object store under the attempt's prefix and reported as an artifact; the
platform turns those artifacts into the new dataset version when the job finishes.

Params (validated and filled in by the platform before the job exists, with the engine's
schema, engine/jobparams.py; no defaults here):
    input_names     the file names of the inputs, aligned with spec.inputs (formats come
                    from their extensions)
    pipeline        the engine's pipeline config, minus inputs/output (engine.data.config)
    text_field, subject_field
    (not a param: spec.subject_key, the project's HMAC key for the subject index, sent with
    the job for a dataset with a subject field and never stored with it)
    tokenizer       {"kind": "char" | "bpe", "vocab_size": int (bpe only)}
    val_fraction    share of documents held out for validation
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

from workers.runtime import JobContext, JobFailed

PREVIEW_RECORDS = 5
PREVIEW_CHARS = 400


def _download_inputs(ctx: JobContext, folder: Path) -> list[Path]:
    """Copy each input object to a local file, checking its sha256 on the way."""
    names = ctx.spec.params.get("input_names") or []
    paths = []
    for index, ref in enumerate(ctx.spec.inputs):
        name = Path(names[index] if index < len(names) else f"input-{index}").name
        paths.append(ctx.download(ref.uri, folder / f"{index:05d}-{name}", ref.sha256))
        ctx.check_stop()
    return paths


def _pipeline_config(params: dict[str, Any], inputs: list[Path], subject_key: str = ""):
    from engine.data.config import ConfigError, load_pipeline_config

    raw = dict(params["pipeline"])
    if params["subject_field"]:
        # The project's key from the dispatch message: the subject index holds HMACs that
        # a guessed e-mail address cannot be checked against without it. Empty only from
        # a platform older than keyed hashes: then the index is unkeyed, as it was.
        raw["subject_key"] = subject_key
    raw["inputs"] = [
        {
            "path": str(p),
            "text_field": params["text_field"],
            "subject_field": params["subject_field"],
        }
        for p in inputs
    ]
    try:
        return load_pipeline_config(raw)
    except ConfigError as error:
        raise JobFailed(f"pipeline config: {error}") from None


def _tokenize_config(params: dict[str, Any]):
    from engine.data.config import ConfigError, tokenize_config

    try:
        return tokenize_config({**params["tokenizer"], "val_fraction": params["val_fraction"]})
    except ConfigError as error:
        raise JobFailed(f"tokenizer: {error}") from None


def _preview(clean_dir: Path, text_field: str) -> list[dict[str, Any]]:
    from engine.data.records import read_records

    records = []
    for record in itertools.islice(
        read_records(clean_dir, verify_checksums=False), PREVIEW_RECORDS
    ):
        text = str(record.get(text_field, ""))
        records.append({**record, text_field: text[:PREVIEW_CHARS]})
    return records


def _texts(clean_dir: Path, text_field: str):
    from engine.data.records import read_records

    # Plain or zstd shards alike: the engine's reader knows the output format.
    for record in read_records(clean_dir, verify_checksums=False):
        yield record[text_field]


def _publish(ctx: JobContext, root: Path) -> list[dict[str, Any]]:
    """Put every output file into the store and report it; returns the manifest rows."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        ctx.check_stop()  # a cancel during publishing: stop before the next file
        files.append(ctx.publish(path, path.relative_to(root).as_posix()))
    return files


def run_data_pipeline(ctx: JobContext) -> dict[str, Any]:
    from engine.data.packing import tokenize_to_shards
    from engine.data.pipeline import PipelineError, run_pipeline
    from engine.data.readers import InputError
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, BPETokenizer, CharTokenizer

    params = ctx.spec.params
    with tempfile.TemporaryDirectory(prefix=f"job-{ctx.spec.job_id}-") as work:
        work_dir = Path(work)
        (work_dir / "in").mkdir()
        ctx.progress(0.02, "downloading the input version")
        inputs = _download_inputs(ctx, work_dir / "in")
        config = _pipeline_config(params, inputs, ctx.spec.subject_key)
        spec = _tokenize_config(params)
        out = work_dir / "out"
        clean_dir = out / "clean"

        def on_progress(phase: str, done: int, total: int) -> None:
            ctx.progress(0.05 + 0.6 * (done / total if total else 0), f"cleaning: {phase}")
            ctx.check_stop()

        try:
            report = run_pipeline(config, output_dir=clean_dir, progress=on_progress)
        except (PipelineError, InputError) as error:
            raise JobFailed(f"pipeline: {error}") from None
        ctx.check_stop()
        ctx.log(report.summary())
        ctx.tracker.log_text(report.summary(), "report.txt")
        if report.records_written == 0:
            raise JobFailed(
                "the pipeline removed every record; loosen the thresholds (see the report)"
            )

        ctx.progress(0.7, "training the tokenizer")
        clean_files = sorted(str(p) for p in clean_dir.glob("records-*.jsonl*"))
        text_field = config.output.text_field
        texts = _texts(clean_dir, text_field)
        if spec.kind == "bpe":
            tokenizer = BPETokenizer.train(texts, vocab_size=spec.vocab_size)
        else:
            # The chat role tokens too, so a model pre-trained on these shards can be
            # fine-tuned with the chat template (engine.finetune.sft) without a new vocabulary.
            tokenizer = CharTokenizer.train(texts, special_tokens=DEFAULT_SPECIAL_TOKENS)
        tokenizer_path = work_dir / "tokenizer.json"
        tokenizer.save(tokenizer_path)
        ctx.check_stop()

        ctx.progress(0.8, "tokenizing")
        try:
            manifest, _stats = tokenize_to_shards(
                clean_files,
                tokenizer_path,
                out / "tokens",
                val_fraction=spec.val_fraction,
                text_field=text_field,
            )
        except InputError as error:
            raise JobFailed(f"tokenize: {error}") from None
        ctx.check_stop()
        ctx.progress(0.9, "storing the new version")
        files = _publish(ctx, out)
        return {
            "report": report.to_dict(),
            "summary": report.summary(),
            "records": report.records_written,
            "preview": _preview(clean_dir, text_field),
            "tokenizer": {"kind": spec.kind, "vocab_size": tokenizer.vocab_size},
            "tokens": {"train": manifest.num_tokens("train"), "val": manifest.num_tokens("val")},
            "files": files,
        }
