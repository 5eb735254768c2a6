"""LoRA through peft, injected in place so `backbone.model` stays the model the backbone knows.

`lora.targets`:
- `all-linear` (VLM2VLA's "all linear layers"): the backbone's `lora_targets()` name suffixes,
  matched only inside `backbone.lora_scope()` — the language-model blocks unless the backbone's
  recipe says more. PaliGemma's vision tower
  also has `q_proj`/`k_proj`/`v_proj`, and peft's own "all-linear" would adapt the vision tower
  and projector too; restricting to the blocks keeps LoRA on the language model, as the recipe
  says. A backbone whose `lora_targets()` is "all-linear" gets every `nn.Linear` in its blocks.
- a list of names: peft's meaning (a module whose name equals or ends with an entry), anywhere
  in the model — for users who do want the projector or the vision tower adapted.

Base weights are frozen; only the adapters (parameters named `lora_*`) train, whatever the
freeze settings say. Checkpoints of a LoRA run hold only the adapter weights.
"""
from __future__ import annotations

from typing import Any

import torch

from refine_core.config import LoraSettings
from refine_core.errors import UsageError


def lora_module_names(backbone: Any, targets: str | list[str]) -> list[str]:
    """Exact qualified names of the modules to adapt."""
    if targets == "all-linear":
        suffixes = backbone.lora_targets()
        names = []
        for prefix, block in backbone.lora_scope():
            for name, module in block.named_modules():
                if not isinstance(module, torch.nn.Linear) or not name:
                    continue
                if suffixes == "all-linear" or name.split(".")[-1] in suffixes:
                    names.append(f"{prefix}.{name}")
    else:
        names = [name for name, module in backbone.model.named_modules()
                 if any(name == t or name.endswith("." + t) for t in targets)]
    if not names:
        raise UsageError(f"lora.targets={targets!r} matches no module of backbone {backbone.name}; "
                         f"use all-linear or module names such as q_proj")
    return names


def resolve_lora(backbone: Any, settings: LoraSettings) -> LoraSettings:
    """`lora.alpha/dropout/init` left unset (null) take the backbone's `lora_recipe()`."""
    recipe = backbone.lora_recipe()
    return settings.model_copy(update={key: recipe[key] for key in ("alpha", "dropout", "init")
                                       if getattr(settings, key) is None})


def apply_lora(backbone: Any, settings: LoraSettings) -> list[str]:
    """Inject adapters into `backbone.model` (in place); freeze everything but them."""
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_module_names(backbone, settings.targets)
    settings = resolve_lora(backbone, settings)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=names, bias="none",
                        init_lora_weights="gaussian" if settings.init == "gaussian" else True)
    inject_adapter_in_model(config, backbone.model)
    for name, parameter in backbone.model.named_parameters():
        parameter.requires_grad_(is_adapter_parameter(name))
    return names


def is_adapter_parameter(name: str) -> bool:
    return ".lora_" in name
