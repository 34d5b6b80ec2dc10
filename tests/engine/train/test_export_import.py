"""Export to the Hugging Face GPT-2 layout (safetensors + config.json) and import it back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from engine.cli import main
from engine.models.gpt import GPT, GPTConfig
from engine.train.export import ExportError, export_model, import_gpt2
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


def test_llama_style_models_do_not_pretend_to_be_gpt2(tmp_path):
    model = GPT(GPTConfig.llama_style(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ExportError, match="only the GPT-2 variant"):
        export_model(model, tmp_path / "export")


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
    from engine.infer.loading import load_for_generation

    model, tokenizer = load_for_generation(out)
    assert model.config.vocab_size == tokenizer.vocab_size
