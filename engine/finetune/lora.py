"""LoRA: low-rank adapters on the Linear layers of a GPT (Hu et al. 2021).

    from engine.finetune.lora import LoRAConfig, apply_lora, save_adapter, load_adapter
    model = GPT(config)                       # pre-trained base
    apply_lora(model, LoRAConfig(r=8, alpha=16))
    ...train: only lora_A / lora_B have requires_grad...
    save_adapter(model, "out/adapter")        # adapter.safetensors + adapter.json, a few MB
    merge_lora(model)                         # W += scaling * B @ A, same outputs, no overhead
    unmerge_lora(model)                       # back to the base weights + adapters

Each targeted ``nn.Linear`` is replaced by a :class:`LoRALinear` that keeps the frozen
base layer and adds ``scaling * B(A(dropout(x)))`` with ``scaling = alpha / r``. A is
initialised Kaiming-uniform and B with zeros, so at step 0 the model equals the base.
Targets are ``fnmatch`` patterns on module names (nanoGPT names:
``transformer.h.0.attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``); a pattern
that matches no Linear layer is an error naming it.

QLoRA: the base may be a 4-bit :class:`~engine.finetune.qlora.NF4Linear` (see qlora.py);
its adapters are made in the base's compute dtype. Merging into a 4-bit base is refused
(re-quantising would round the update away): ``dequantize_model(model)`` first, then
``merge_lora(model)``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

# dequantize_model is re-exported: the merge error below sends users to it.
from engine.configfile import check_ranges, setting
from engine.finetune.modules import match_modules, replace_module
from engine.finetune.qlora import NF4Linear, dequantize_model  # noqa: F401
from engine.finetune.tokens import TOKEN_LAYERS, add_token_rows

ADAPTER_FORMAT = "engine.lora-adapter/1"
WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"


@dataclass
class LoRAConfig:
    # Rank of the update; 4-16 is plenty for most fine-tuning.
    r: int = setting(8, minimum=1, maximum=256, help="rank of the update")
    # scaling = alpha / r, so changing r does not change the step size much.
    alpha: float = setting(16.0, exclusiveMinimum=0.0, maximum=1024.0, help="scaling = alpha / r")
    # On the adapter's input only; the base path is untouched.
    dropout: float = setting(0.0, minimum=0.0, maximum=0.9, help="dropout on the adapter input")
    # fnmatch patterns on module names; the defaults cover attention and MLP projections.
    target_modules: list[str] = setting(
        default_factory=lambda: ["*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj"],
        minItems=1,
        minLength=1,
        help="module-name patterns that get adapters",
    )
    # Token ids whose embedding (and output-head) rows train too: tokens the base never
    # learnt, such as a chat template's roles (engine/finetune/tokens.py). Empty: none.
    trainable_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # r, alpha, dropout, target_modules: the fields' own ranges (as in the job schemas).
        check_ranges(self, ValueError, "lora.")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` or NF4Linear plus a trainable update ``scaling * B @ A``."""

    def __init__(self, base: nn.Linear | NF4Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.r = r
        self.scaling = alpha / r
        self.in_features, self.out_features = base.in_features, base.out_features
        if isinstance(base, NF4Linear):
            # QLoRA: adapters train in the compute dtype, not in the base's uint8 storage.
            factory = dict(device=base.weight_packed.device, dtype=base.compute_dtype)
        else:
            factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        # Same init as nn.Linear's weight (and the LoRA paper's reference code).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)
        self.merged = False
        self.disabled = False  # True: behave as the base alone (DPO's reference model)
        for param in base.parameters():
            param.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            # The update is inside base.weight already; take it out again when disabled.
            if self.disabled:
                out = out - x @ self.delta_weight().t()
            return out
        if self.disabled:
            return out
        # The adapters may be bf16 in an fp32 model (QLoRA's compute dtype): cast in and out.
        x = self.lora_dropout(x.to(self.lora_A.dtype))
        update = x @ self.lora_A.t() @ self.lora_B.t()  # (..., out)
        return out + (update * self.scaling).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if isinstance(self.base, NF4Linear):
            raise ValueError(_NF4_MERGE_ERROR.format(name="this layer"))
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False


_NF4_MERGE_ERROR = (
    "cannot merge LoRA into {name}: its base is 4-bit NF4 and re-quantising would round "
    "the update away; call engine.finetune.qlora.dequantize_model(model) first"
)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of ``model`` and wrap the targeted Linear layers; return their names.

    Raises ValueError naming any target pattern that matches no ``nn.Linear`` / NF4Linear.
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters")
    linears = match_modules(
        model, config.target_modules, lambda m: isinstance(m, nn.Linear | NF4Linear), "LoRA target"
    )
    for param in model.parameters():
        param.requires_grad_(False)
    for name, layer in linears.items():
        replace_module(model, name, LoRALinear(layer, config.r, config.alpha, config.dropout))
    if config.trainable_tokens:
        add_token_rows(model, list(config.trainable_tokens))
    model.lora_config = config  # read by save_adapter
    return sorted(linears)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer that adds a trainable update to a frozen base: LoRA and token rows."""
    kinds = (LoRALinear, *TOKEN_LAYERS)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only: ``<module>.lora_A`` / ``.lora_B``, ``<module>.rows.delta``."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{name}.lora_A"] = module.lora_A.detach()
        state[f"{name}.lora_B"] = module.lora_B.detach()
    seen: set[int] = set()
    for name, module in adapter_layers(model).items():
        if isinstance(module, TOKEN_LAYERS) and id(module.rows.delta) not in seen:
            seen.add(id(module.rows.delta))  # a tied head shares the embedding's delta
            state[f"{name}.rows.delta"] = module.rows.delta.detach()
    return state


def merge_lora(model: nn.Module) -> None:
    modules = lora_modules(model)
    for name, module in modules.items():  # refuse before merging anything
        if isinstance(module.base, NF4Linear):
            raise ValueError(_NF4_MERGE_ERROR.format(name=repr(name)))
    for module in adapter_layers(model).values():
        module.merge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain base layer back, in place.

    The model is then an ordinary one again (what gets exported). NF4 bases must be
    dequantised first (dequantize_model), as for merge_lora.
    """
    merge_lora(model)
    for name, module in adapter_layers(model).items():
        replace_module(model, name, module.base)
    return model


def unmerge_lora(model: nn.Module) -> None:
    for module in adapter_layers(model).values():
        module.unmerge()


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter off (the model is then the base) or back on."""
    for module in adapter_layers(model).values():
        module.disabled = not enabled


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; total counts tied weights once."""
    params = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)


def _base_fingerprint(model: nn.Module) -> dict:
    """Shapes of the adapted layers: an adapter for another base fails on load, by name."""
    return {name: [m.out_features, m.in_features] for name, m in lora_modules(model).items()}


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write adapter.safetensors then adapter.json (last, as the manifest) into ``directory``."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA adapters to save")
    if any(m.merged for m in adapter_layers(model).values()):
        raise ValueError("unmerge the adapters before saving them (unmerge_lora)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": ADAPTER_FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    manifest = {
        "format": ADAPTER_FORMAT,
        "lora": asdict(model.lora_config),
        "modules": _base_fingerprint(model),
    }
    tmp = directory / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, directory / CONFIG_NAME)
    return directory


def read_adapter_config(directory: str | Path) -> LoRAConfig:
    manifest = _read_manifest(Path(directory))
    return LoRAConfig(**manifest["lora"])


def _read_manifest(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA adapter at {directory} ({CONFIG_NAME} is missing)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a LoRA adapter ({ADAPTER_FORMAT})")
    return manifest


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a saved adapter into ``model``: adds LoRA layers if it has none yet.

    Raises ValueError naming the module when the adapter was made for another base model.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if not lora_modules(model):
        apply_lora(model, LoRAConfig(**manifest["lora"]))
    ours = _base_fingerprint(model)
    for name, shape in manifest["modules"].items():
        if name not in ours:
            raise ValueError(f"adapter module {name!r} does not exist in this model")
        if list(ours[name]) != list(shape):
            raise ValueError(
                f"adapter for another base model: module {name!r} is {shape} "
                f"(out, in) in the adapter but {ours[name]} here"
            )
    tensors = load_file(str(directory / WEIGHTS_NAME))
    targets = lora_state_dict(model)  # the live tensors, keyed as in the file
    with torch.no_grad():
        for key, target in targets.items():
            if key not in tensors:
                raise ValueError(f"adapter file lacks {key!r}")
            if tensors[key].shape != target.shape:
                raise ValueError(
                    f"adapter tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                    f"this model needs {tuple(target.shape)} (different rank or vocabulary?)"
                )
            target.copy_(tensors[key])
    return model
