"""A replica's model files: downloaded from the store, verified, cached, loaded; and the
replica as a real process (READY, a request, SIGTERM -> drained, exit 0; ERROR, exit 3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from replica_helpers import SECRET, make_spec, vision_checkpoint_dir

from engine.serve import TextEngine
from engine.serve.images import DigitImageModel
from tests.enginemodels import text_export
from workers.serve.modelfiles import ModelLoadError, fetch_model_files, load_model
from workers.serve.protocol import ModelFileRef, to_dict
from workers.storage import project_key

ROOT = Path(__file__).resolve().parents[3]
ROLES = {"model.safetensors": "weights", "config.json": "config", "tokenizer.json": "tokenizer"}


def upload(store, folder: Path, roles: dict[str, str]) -> list[ModelFileRef]:
    refs = []
    for name, role in roles.items():
        stored = store.put_bytes(project_key(2, "models", "11", name), (folder / name).read_bytes())
        refs.append(ModelFileRef(name, role, stored.key, stored.sha256, stored.size))
    return refs


@pytest.fixture
def text_spec(local_store, tmp_path):
    files = upload(local_store, text_export(tmp_path / "export"), ROLES)
    return make_spec(files=files)


def test_text_model_is_fetched_verified_and_cached(local_store, text_spec, tmp_path):
    folder = fetch_model_files(local_store, text_spec, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "11"
    assert {p.name for p in folder.iterdir()} == {*ROLES, ".verified"}
    engine = load_model(text_spec, folder)
    assert isinstance(engine, TextEngine) and engine.max_batch == text_spec.max_batch
    for ref in text_spec.files:  # the cache is reused: the store is not read again
        local_store.delete(ref.object_key)
    assert fetch_model_files(local_store, text_spec, tmp_path / "cache") == folder


def test_a_file_that_does_not_match_the_registry_fails_by_name(local_store, text_spec, tmp_path):
    files = list(text_spec.files)
    files[1] = replace(files[1], sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="model file config.json: sha256"):
        fetch_model_files(local_store, replace(text_spec, files=files), tmp_path / "a")
    files[1] = replace(text_spec.files[1], size=3)
    with pytest.raises(ModelLoadError, match="model file config.json: the store holds"):
        fetch_model_files(local_store, replace(text_spec, files=files), tmp_path / "b")
    assert not any(p.name.endswith(".part") for p in (tmp_path / "b" / "11").iterdir())
    files[1] = replace(text_spec.files[1], name="../evil")
    with pytest.raises(ModelLoadError, match="not a plain file name"):
        fetch_model_files(local_store, replace(text_spec, files=files), tmp_path / "c")


def test_a_cache_with_a_changed_file_is_fetched_again(local_store, text_spec, tmp_path):
    folder = fetch_model_files(local_store, text_spec, tmp_path / "cache")
    (folder / "config.json").write_text("{}")
    fetch_model_files(local_store, text_spec, tmp_path / "cache")
    assert json.loads((folder / "config.json").read_text()) != {}


def test_image_model_and_missing_roles(local_store, tmp_path):
    checkpoint = vision_checkpoint_dir(tmp_path / "vision")
    files = upload(local_store, checkpoint.parent, {checkpoint.name: "checkpoint"})
    spec = make_spec("image-generation", files=files)
    model = load_model(spec, fetch_model_files(local_store, spec, tmp_path / "cache"))
    assert isinstance(model, DigitImageModel)
    with pytest.raises(ModelLoadError, match="roles"):
        load_model(make_spec(files=files), tmp_path / "cache" / "11")


@pytest.mark.slow
def test_replica_process_serves_then_drains_on_sigterm(local_store, text_spec, tmp_path):
    import openai

    archive = tmp_path / "archive.jsonl"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(to_dict(text_spec)))
    env = {
        **os.environ,
        "CP_SERVE_SECRET": SECRET,
        "OBJECT_STORE_ROOT": str(tmp_path / "objects"),
        "OBJECT_STORE_BUCKET": "test",
        "OBJECT_STORE_ENDPOINT": "",
        "CONTROLPLANE_DATA_DIR": str(tmp_path / "data"),
    }
    command = [sys.executable, "-m", "workers.serve.replica", "--spec", str(spec_file)]
    command += ["--port", "0", "--node", "n1", "--archive", f"file:{archive}", "--threads", "1"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith("READY "), line
        port = int(line.split()[1])
        api = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="x",
            default_headers={"X-CP-Internal": SECRET},
            max_retries=0,
        )
        answer = api.completions.create(model="m", prompt="To be", max_tokens=4, temperature=0)
        assert answer.model == "tiny:v3" and 1 <= answer.usage.completion_tokens <= 4
        assert (tmp_path / "data" / "serve-cache" / "11" / ".verified").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    [record] = [json.loads(line) for line in archive.read_text().splitlines()]
    assert record["status"] == "ok" and record["response"]["id"] == answer.id

    broken = replace(text_spec, files=[replace(text_spec.files[0], sha256="0" * 64)])
    spec_file.write_text(json.dumps(to_dict(broken)))
    env["CONTROLPLANE_DATA_DIR"] = str(tmp_path / "other")
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3
    assert failed.stdout.startswith("ERROR model file model.safetensors: sha256")
