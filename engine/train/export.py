"""Export to (and import from) the Hugging Face GPT-2 layout: model.safetensors + config.json.

    python -m engine train export var/runs/shakespeare-char/checkpoints/step_002000 var/export/shakespeare
    model = import_model("var/export/shakespeare")         # back into engine.models.gpt.GPT

    # elsewhere:  transformers.GPT2LMHeadModel.from_pretrained("var/export/shakespeare")

Our module names already follow Hugging Face GPT-2 (``transformer.h.0.attn.c_attn`` ...);
the differences are that HF's ``Conv1D`` stores weights as (in, out), the transpose of
``nn.Linear``, and that the tied ``lm_head.weight`` is not stored. A model trained without
biases is written with zero biases (GPT-2 has them; zeros change nothing), and our own
config rides along in config.json under ``engine_config`` so an import is exact.

Only the GPT-2 variant fits that layout: the Llama-style switches (RMSNorm, rotary
positions, SwiGLU, an untied head) have no GPT-2 equivalent. Such a model is exported in
the engine's own layout instead: ``engine_model.safetensors`` with the engine's weight
names, and a config.json with ``engine_config``, no ``architectures`` and an
``export_note`` saying why transformers cannot load it. The weights file has its own name
on purpose: ``GPT2LMHeadModel.from_pretrained`` then refuses the folder ("no file named
model.safetensors") instead of silently building a randomly initialised GPT-2 from it.
``import_model`` (and engine.infer.loading) read both layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.data.tokenizers import load_tokenizer
from engine.models.gpt import GPT, GPTConfig
from engine.train.checkpoint import load_checkpoint_model

WEIGHTS_NAME = "model.safetensors"
NATIVE_WEIGHTS_NAME = "engine_model.safetensors"  # the engine's own layout (not GPT-2)
CONFIG_NAME = "config.json"
NATIVE_MODEL_TYPE = "engine-gpt"
NATIVE_FORMAT = "engine.export/1"
# Linear layers that HF GPT-2 stores as Conv1D, i.e. transposed.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class ExportError(ValueError):
    """The model or the folder does not fit the HF GPT-2 format; the message says how."""


def hf_config(config: GPTConfig, eot_id: int | None = None) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "engine_config": config.to_dict(),
    }


def native_config(config: GPTConfig, eot_id: int | None = None) -> dict:
    """config.json of an engine-layout export: no transformers architecture claims it."""
    switches = ", ".join(
        f"{name}={getattr(config, name)}"
        for name in ("norm", "position", "mlp", "tie_embeddings")
        if getattr(config, name) != getattr(GPTConfig, name)
    )
    return {
        "model_type": NATIVE_MODEL_TYPE,
        "format": NATIVE_FORMAT,
        "architectures": [],
        "export_note": (
            f"not loadable by Hugging Face transformers: this model uses {switches}, which "
            "GPT-2's layout cannot express, so it is exported in the engine's own layout "
            f"({NATIVE_WEIGHTS_NAME}: the engine's weight names; engine_config: its "
            "architecture). Load it with engine.infer.loading.load_for_generation(folder) "
            "or the registry's MLflow pyfunc model."
        ),
        "vocab_size": config.vocab_size,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
        "engine_config": config.to_dict(),
    }


def native_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict as it is (float32, CPU); a tied head is stored once, as the embedding."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # the same tensor as transformer.wte.weight (safetensors stores it once)
        out[name] = tensor.detach().to("cpu", torch.float32).contiguous()
    return out


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict renamed/transposed to HF GPT-2, with zero biases where we have none."""
    config = model.config
    if not config.is_gpt2:
        raise ExportError(
            "only the GPT-2 variant (layernorm, learned positions, gelu, tied embeddings) "
            "exports to the Hugging Face GPT-2 layout"
        )
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        tensor = tensor.detach().to("cpu", torch.float32)
        if name.endswith(CONV1D):
            tensor = tensor.t()
        out[name] = tensor.contiguous()
    if not config.bias:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                out[f"{name}.bias"] = torch.zeros(module.out_features)
            elif isinstance(module, torch.nn.LayerNorm):
                out[f"{name}.bias"] = torch.zeros(module.normalized_shape[0])
    return out


def export_model(
    model: GPT,
    out_dir: str | Path,
    *,
    tokenizer_file: Path | None = None,
    eot_id: int | None = None,
) -> Path:
    """The HF GPT-2 layout when the model is GPT-2, else the engine's own (see above)."""
    out_dir = Path(out_dir)
    if model.config.is_gpt2:
        state, weights_name = to_hf_state_dict(model), WEIGHTS_NAME
        config = hf_config(model.config, eot_id)
    else:
        state, weights_name = native_state_dict(model), NATIVE_WEIGHTS_NAME
        config = native_config(model.config, eot_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A re-export over another layout's folder must not leave the other weights behind.
    for stale in {WEIGHTS_NAME, NATIVE_WEIGHTS_NAME} - {weights_name}:
        (out_dir / stale).unlink(missing_ok=True)
    # Weights first, config.json last: a folder with config.json is complete.
    tmp = out_dir / f".{weights_name}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / weights_name)
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
    tmp = out_dir / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(config, indent=1), encoding="utf-8")
    tmp.replace(out_dir / CONFIG_NAME)
    return out_dir


def export_checkpoint(checkpoint: Path, out_dir: Path) -> Path:
    """A training checkpoint folder -> an export folder (weights, config, tokenizer): the HF
    GPT-2 layout for a GPT-2 model, the engine's own layout for any other variant."""
    model, tokenizer_file = load_checkpoint_model(checkpoint)
    eot_id = None
    if tokenizer_file is not None:
        eot_id = load_tokenizer(tokenizer_file).eot_id
    return export_model(model, out_dir, tokenizer_file=tokenizer_file, eot_id=eot_id)


def config_from_hf(payload: dict) -> GPTConfig:
    if "engine_config" in payload:
        return GPTConfig(**payload["engine_config"])
    if payload.get("model_type") != "gpt2":
        raise ExportError(
            f"config.json has model_type {payload.get('model_type')!r}, expected 'gpt2'"
        )
    if payload.get("activation_function", "gelu_new") != "gelu_new" or payload.get(
        "n_inner"
    ) not in (None, 4 * payload["n_embd"]):
        raise ExportError("only GPT-2 models with the gelu_new MLP of width 4 * n_embd import")
    return GPTConfig(
        vocab_size=payload["vocab_size"],
        block_size=payload["n_positions"],
        n_layer=payload["n_layer"],
        n_head=payload["n_head"],
        n_embd=payload["n_embd"],
        dropout=0.0,
        bias=True,
        norm_eps=payload.get("layer_norm_epsilon", 1e-5),
    )


def import_model(folder: str | Path) -> GPT:
    """A GPT from an export folder of either layout (HF GPT-2, or the engine's own)."""
    folder = Path(folder)
    if (folder / NATIVE_WEIGHTS_NAME).is_file():
        return import_native(folder)
    return import_gpt2(folder)


def import_native(folder: str | Path) -> GPT:
    """A GPT from an engine-layout export (``native_config`` + ``native_state_dict``)."""
    config_path, weights_path = _export_files(folder, NATIVE_WEIGHTS_NAME, "an engine export")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
        config = GPTConfig(**payload["engine_config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ExportError(f"{config_path} has no usable engine_config: {error}") from None
    model = GPT(config)
    state = load_file(str(weights_path))
    if config.tie_embeddings and "transformer.wte.weight" in state:
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])
    return _load_checked(model, state, weights_path)


def import_gpt2(folder: str | Path) -> GPT:
    """Build a GPT from an HF GPT-2 folder (ours, or ``save_pretrained`` of GPT2LMHeadModel)."""
    config_path, weights_path = _export_files(folder, WEIGHTS_NAME, "an exported GPT-2 folder")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
        config = config_from_hf(payload)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ExportError(f"{config_path} is not a GPT-2 config: {error}") from None
    model = GPT(config)
    hf = load_file(str(weights_path))
    expected = model.state_dict()
    state = {}
    for name, tensor in hf.items():
        if not name.startswith("transformer.") and name != "lm_head.weight":
            name = "transformer." + name  # the original OpenAI upload has no prefix
        if name.endswith(("attn.bias", "attn.masked_bias")) and name not in expected:
            continue  # HF's stored causal-mask buffers
        if name.endswith(".bias") and name not in expected:
            if tensor.abs().max() > 0:
                raise ExportError(f"{name} is not zero but the model config has bias=False")
            continue
        if name.endswith(CONV1D):
            tensor = tensor.t()
        state[name] = tensor
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    return _load_checked(model, state, weights_path)


def _export_files(folder: str | Path, weights_name: str, what: str) -> tuple[Path, Path]:
    """The config and weights paths of an export folder, both checked to exist."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / weights_name
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ExportError(f"{folder} is not {what}: {path.name} is missing")
    return config_path, weights_path


def _load_checked(model: GPT, state: dict, weights_path: Path) -> GPT:
    """Load ``state`` into ``model`` after checking names and shapes match exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ExportError(f"{weights_path} lacks {len(missing)} weights, e.g. {missing[0]}")
    for name, tensor in state.items():
        if name not in expected:
            raise ExportError(f"{weights_path} has an unexpected weight {name}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ExportError(
                f"{name} has shape {tuple(tensor.shape)} in {weights_path}, the config implies "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model
