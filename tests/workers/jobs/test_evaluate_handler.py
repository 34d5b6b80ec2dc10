"""The evaluate job handler, run outside Celery on a local object store (no Django)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from engine.evaluate import EvalConfig
from tests.engine.evaluate.eval_helpers import (
    TEXT_FIGURES,
    ascii_tokenizer,
    tiny_export,
    write_shards,
)
from workers.events import ListSink
from workers.jobs import HANDLERS
from workers.protocol import ArtifactRef, EventType, JobKind, JobSpec, cancel_marker_key
from workers.runtime import run_attempt

torch.set_num_threads(1)

TRAIN = [
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. " * 3
]
VAL = [
    "However little known the feelings or views of such a man may be on his first "
    "entering a neighbourhood, this truth is so well fixed in the minds. " * 2
]
SETTINGS = {"samples": 3, "sample_tokens": 40, "eval_batches": 2, "batch_size": 2, "device": "cpu"}


def _text_files(folder: Path, val: list[str] = VAL) -> dict[str, Path]:
    """A tiny exported GPT and the token shards of its data, by local input name."""
    tokenizer = ascii_tokenizer()
    shards = write_shards(folder / "tokens", tokenizer, TRAIN, val)
    model = tiny_export(folder / "model", tokenizer, shards / "tokenizer.json")
    files = {f"model/{p.name}": p for p in sorted(model.iterdir())}
    for path in sorted(shards.iterdir()):
        if path.name.startswith(("val_", "manifest", "tokenizer")):
            files[f"eval/{path.name}"] = path
        if path.name.startswith(("train_", "manifest")):
            files[f"train/{path.name}"] = path
    return files


def _spec(store, files: dict[str, Path], task: str = "text-generation", **settings) -> JobSpec:
    inputs = []
    for index, path in enumerate(files.values()):
        stored = store.put_bytes(f"projects/1/inputs/{index}-{path.name}", path.read_bytes())
        inputs.append(ArtifactRef(stored.key, stored.sha256, stored.size))
    params = {
        **dataclasses.asdict(EvalConfig()),
        **SETTINGS,
        **settings,
        "task": task,
        "model_version_id": 5,
        "dataset_version_id": 2,
        "training_dataset_version_id": 2,
        "input_names": list(files),
    }
    return JobSpec(
        job_id=11,
        kind=JobKind.EVALUATE,
        project_id=1,
        attempt=1,
        inputs=tuple(inputs),
        params=params,
        output_prefix="projects/1/jobs/11/attempt-1/",
        heartbeat_seconds=30,
    )


def _run(store, spec):
    sink = ListSink()
    outcome = run_attempt(spec, sink, store, HANDLERS)
    return outcome, sink.events


def test_a_text_model_gets_its_figures_in_the_result(local_store, tmp_path):
    outcome, events = _run(local_store, _spec(local_store, _text_files(tmp_path)))
    assert outcome == EventType.FINISHED, events[-1].payload
    result = events[-1].payload["result"]
    metrics = result["metrics"]
    for key in TEXT_FIGURES:
        assert isinstance(metrics[key], float), key
    assert metrics["samples"] == 3.0
    assert len(result["details"]["samples"]) == 3
    assert result["details"]["model_version_id"] == 5
    assert result["details"]["settings"]["samples"] == 3
    json.dumps(result)  # travels as JSON
    progress = [e.payload["message"] for e in events if e.type == EventType.PROGRESS]
    assert progress[0] == "downloading the model and the data"
    assert "held-out loss" in progress and "memorisation" in progress


def test_without_training_shards_memorisation_is_left_out_and_said_so(local_store, tmp_path):
    files = {k: v for k, v in _text_files(tmp_path).items() if not k.startswith("train/")}
    outcome, events = _run(local_store, _spec(local_store, files))
    assert outcome == EventType.FINISHED
    result = events[-1].payload["result"]
    assert "memorisation_share" not in result["metrics"]
    assert "not checked" in result["details"]["memorisation"]["note"]


def test_a_cancel_is_honoured_between_phases(local_store, tmp_path, monkeypatch):
    import engine.evaluate.text as text

    monkeypatch.setattr("workers.runtime.STOP_CHECK_SECONDS", 0.0)
    spec = _spec(local_store, _text_files(tmp_path))
    original, seen = text.generate_samples, []

    def cancelled_while_sampling(*args, **kwargs):
        local_store.put_bytes(cancel_marker_key(spec.job_id), b"cancel requested\n")
        seen.append(True)
        return original(*args, **kwargs)

    monkeypatch.setattr(text, "generate_samples", cancelled_while_sampling)
    outcome, events = _run(local_store, spec)
    assert seen and outcome == EventType.CANCELLED
    progress = [e.payload["message"] for e in events if e.type == EventType.PROGRESS]
    assert "generating samples" in progress and "scoring samples" not in progress
    assert not any(e.type == EventType.FINISHED for e in events)


def test_a_failure_says_what_went_wrong(local_store, tmp_path):
    files = _text_files(tmp_path, val=["tiny"])
    outcome, events = _run(local_store, _spec(local_store, files))
    assert outcome == EventType.FAILED
    assert "larger val_fraction" in events[-1].payload["error"]


def test_params_missing_a_setting_fail_with_a_clear_message(local_store, tmp_path):
    spec = _spec(local_store, _text_files(tmp_path))
    params = {k: v for k, v in spec.params.items() if k != "samples"}
    outcome, events = _run(local_store, dataclasses.replace(spec, params=params))
    assert outcome == EventType.FAILED and "lack samples" in events[-1].payload["error"]


def test_an_image_model_gets_recognition_per_digit_and_the_frechet_distance(
    local_store, tmp_path, monkeypatch
):
    import sys

    from engine.vision import evaluate as vision_evaluate
    from engine.vision.train import train

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine" / "vision"))
    from vision_helpers import tiny_config

    # A classifier trained for 3 epochs instead of 30: seconds, and enough to score with.
    real = vision_evaluate.train_classifier
    monkeypatch.setattr(
        vision_evaluate, "train_classifier", lambda split, epochs=30, seed=0: real(split, 3, seed)
    )
    monkeypatch.setenv("CONTROLPLANE_DATA_DIR", str(tmp_path / "data"))
    checkpoint = Path(train(tiny_config("vae", tmp_path / "run")).checkpoint)
    spec = _spec(
        local_store, {f"model/{checkpoint.name}": checkpoint}, task="image-generation", per_class=3
    )
    outcome, events = _run(local_store, spec)
    assert outcome == EventType.FINISHED, events[-1].payload
    metrics = events[-1].payload["result"]["metrics"]
    assert set(metrics) == {
        "recognition",
        "frechet",
        "samples",
        *(f"recognition_{d}" for d in range(10)),
    }
    assert metrics["samples"] == 30.0
    assert (tmp_path / "data" / "cache" / "digit-classifier.pt").is_file()  # kept for next time
