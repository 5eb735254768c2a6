"""Which hf_vlm layout a model gets: read `model_type` from the checkpoint's config (or the preset's
name) and build the backbone class written for it. Unknown types are one line naming the known ones."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_core import UsageError

# model_type → (module, class) inside this package; imported only when chosen
LAYOUTS = {"paligemma": ("backbone", "HFVLMBackbone"), "gemma3": ("gemma3", "Gemma3Backbone"),
           "qwen2_5_vl": ("qwen_vl", "QwenVLBackbone"), "qwen3_vl": ("qwen_vl", "Qwen3VLBackbone")}
PRESETS = {"tiny": "paligemma", "tiny-gemma3": "gemma3", "tiny-qwen2_5_vl": "qwen2_5_vl",
           "tiny-qwen3_vl": "qwen3_vl"}
SUPPORTED_MODEL_TYPES = tuple(LAYOUTS)


def read_model_config(path: str) -> Any:
    """The transformers config of a local directory or hub id, or a one-line UsageError."""
    from transformers import AutoConfig

    local = Path(path)
    if local.exists() and not (local / "config.json").is_file():
        raise UsageError(f"backbone.path {path} has no config.json: point it at a saved model directory")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read a model config from backbone.path={path!r}: "
                         f"{str(exc).splitlines()[0]}") from None


def unsupported(path: str, model_type: str) -> UsageError:
    return UsageError(f"hf_vlm loads model_type {', '.join(SUPPORTED_MODEL_TYPES)}; {path} has model_type "
                      f"{model_type!r}. Use the backbone made for it (refine list backbone).")


def build_hf_vlm(options) -> Any:
    """The hf_vlm factory: the layout class of `options.path`'s model type, else of the preset."""
    import importlib

    if options.path:
        model_type = read_model_config(options.path).model_type
        if model_type not in LAYOUTS:
            raise unsupported(options.path, model_type)
    else:
        model_type = PRESETS.get(options.preset, "paligemma")  # no preset: the class says what is missing
    module, name = LAYOUTS[model_type]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)(options)
