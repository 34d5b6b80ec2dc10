"""Export to the Hugging Face GPT-2 layout (safetensors + config.json) and import it back;
transformers loads our GPT-2 exports with the same logits; the Llama-style variant, which
GPT-2's layout cannot express, is exported in the engine's own layout with a note."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.cli import main
from engine.infer.generate import Generator, SamplingParams
from engine.infer.loading import load_for_generation
from engine.models.gpt import GPT, GPTConfig
from engine.train.export import (
    NATIVE_WEIGHTS_NAME,
    ExportError,
    export_checkpoint,
    export_model,
    import_gpt2,
    import_model,
    to_hf_state_dict,
)
from engine.train.trainer import Trainer


def _tiny(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **changes)
    ).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_round_trip_gives_the_same_logits(tmp_path, bias):
    model = _tiny(bias=bias)
    export_model(model, tmp_path / "export")
    again = import_gpt2(tmp_path / "export").eval()
    assert again.config == model.config
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(again(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_files_follow_hugging_face_gpt2_names_and_shapes(tmp_path):
    export_model(_tiny(bias=False), tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_positions"], config["n_embd"], config["n_layer"], config["n_head"]) == (
        16,
        16,
        2,
        2,
    )
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    # HF's Conv1D stores (in, out); the head is tied and not stored; biases exist (zeros).
    assert weights["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)
    assert weights["transformer.h.1.mlp.c_fc.weight"].shape == (16, 64)
    assert weights["transformer.wpe.weight"].shape == (16, 16)
    assert "lm_head.weight" not in weights
    assert torch.count_nonzero(weights["transformer.h.0.attn.c_attn.bias"]) == 0


def test_import_reads_a_plain_hf_folder_without_our_config(tmp_path):
    model = _tiny()
    export_model(model, tmp_path / "export")
    config_path = tmp_path / "export" / "config.json"
    config = json.loads(config_path.read_text())
    del config["engine_config"]  # as written by transformers' save_pretrained
    config_path.write_text(json.dumps(config))
    again = import_gpt2(tmp_path / "export").eval()
    idx = torch.randint(0, 50, (1, 10))
    torch.testing.assert_close(again(idx)[0], model(idx)[0])


def _transformers_gpt2(folder):
    transformers = pytest.importorskip("transformers")  # a dev dependency (pyproject)
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_transformers_loads_an_export_with_the_engines_logits(tmp_path, bias):
    model = _tiny(bias=bias)
    export_model(model, tmp_path / "export")
    hf = _transformers_gpt2(tmp_path / "export")
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)[0]
        theirs = hf(input_ids=idx).logits
    assert theirs.shape == ours.shape == (3, 16, 50)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


def test_transformers_loads_a_trained_checkpoints_export(make_config, tmp_path):
    summary = Trainer(make_config("run", train={"max_iters": 4})).fit()
    out = export_checkpoint(summary.checkpoint, tmp_path / "export")
    model, tokenizer = load_for_generation(summary.checkpoint)
    hf = _transformers_gpt2(out)
    lines = ["To be, or not to be", "O, that this too too"]  # a fixed batch, 19 tokens each
    batch = torch.tensor([tokenizer.encode(line)[:19] for line in lines])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=batch).logits, model(batch)[0], rtol=0, atol=1e-4)
    assert hf.config.eos_token_id == tokenizer.eot_id


def _llama(**changes) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig.llama_style(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(config.replace(**changes)).eval()


def test_llama_style_models_do_not_pretend_to_be_gpt2(tmp_path):
    with pytest.raises(ExportError, match="only the GPT-2 variant"):
        to_hf_state_dict(_llama())


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": True}], ids=["untied", "tied"])
def test_llama_style_exports_in_the_engine_layout_and_imports_exactly(tmp_path, changes):
    model = _llama(**changes)
    folder = export_model(model, tmp_path / "export", eot_id=0)
    assert {p.name for p in folder.iterdir()} == {NATIVE_WEIGHTS_NAME, "config.json"}
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [] and config["model_type"] != "gpt2"
    assert config["engine_config"] == model.config.to_dict()
    note = config["export_note"]
    assert "not loadable by Hugging Face transformers" in note and "rmsnorm" in note
    weights = load_file(str(folder / NATIVE_WEIGHTS_NAME))
    assert "transformer.h.0.mlp.c_gate.weight" in weights  # the engine's own names (SwiGLU)
    assert ("lm_head.weight" in weights) == (not model.config.tie_embeddings)
    again = import_model(folder).eval()
    assert again.config == model.config
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(again(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_transformers_refuses_an_engine_layout_export_instead_of_guessing(tmp_path):
    export_model(_llama(), tmp_path / "export")
    with pytest.raises(OSError, match="model.safetensors"):
        _transformers_gpt2(tmp_path / "export")
    with pytest.raises(ExportError, match="model.safetensors is missing"):
        import_gpt2(tmp_path / "export")


def test_a_llama_style_run_exports_and_generates(make_config, tmp_path):
    """What a pre-training job of the Llama variant does at its end (workers/jobs/pretrain.py)."""
    llama = {"norm": "rmsnorm", "position": "rotary", "mlp": "swiglu", "tie_embeddings": False}
    summary = Trainer(make_config("run", model=llama, train={"max_iters": 2})).fit()
    out = export_checkpoint(summary.checkpoint, tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {NATIVE_WEIGHTS_NAME, "config.json", "tokenizer.json"}
    model, tokenizer = load_for_generation(out)
    reference, _ = load_for_generation(summary.checkpoint)
    assert model.config == reference.config and model.config.position == "rotary"
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    ours = Generator(model, tokenizer).generate(["To be"], params).generations[0].text
    theirs = Generator(reference, tokenizer).generate(["To be"], params).generations[0].text
    assert ours == theirs and len(ours) > 0


def test_re_exporting_in_another_layout_leaves_no_stale_weights(tmp_path):
    export_model(_tiny(), tmp_path / "export")
    export_model(_llama(), tmp_path / "export")
    assert not (tmp_path / "export" / "model.safetensors").exists()
    assert import_model(tmp_path / "export").config.norm == "rmsnorm"


def test_import_names_a_missing_file(tmp_path):
    with pytest.raises(ExportError, match="model.safetensors is missing"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "config.json").write_text("{}")
        import_gpt2(tmp_path / "x")


def test_cli_exports_a_trained_checkpoint_that_generates(make_config, tmp_path):
    summary = Trainer(make_config("run", train={"max_iters": 2})).fit()
    out = tmp_path / "export"
    assert main(["train", "export", str(summary.checkpoint), str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    model, tokenizer = load_for_generation(out)
    assert model.config.vocab_size == tokenizer.vocab_size
