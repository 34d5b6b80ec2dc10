"""Finding and swapping the layers that LoRA wraps and QLoRA quantises, by name pattern.

    chosen = match_modules(model, ["*.attn.c_attn"], (nn.Linear,), "LoRA target")
    replace_module(model, "transformer.h.0.attn.c_attn", new_layer)

Patterns are ``fnmatch`` patterns on module names (nanoGPT names:
``transformer.h.0.attn.c_attn``). A pattern that matches nothing is an error naming it,
since a typo would otherwise train or quantise nothing without a word.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

import torch.nn as nn


def match_modules(
    model: nn.Module,
    patterns: Sequence[str],
    accept: Callable[[nn.Module], bool],
    purpose: str,
) -> dict[str, nn.Module]:
    """The modules ``accept`` takes whose names match any pattern, in pattern order.

    Raises ValueError naming the first pattern that matches no accepted module.
    """
    candidates = {name: m for name, m in model.named_modules() if accept(m)}
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [name for name in candidates if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise ValueError(
                f"{purpose} {pattern!r} matches no Linear module; "
                f"Linear modules are e.g. {sorted(candidates)[:6]}"
            )
        chosen.update((name, candidates[name]) for name in hits if name not in chosen)
    return chosen


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
