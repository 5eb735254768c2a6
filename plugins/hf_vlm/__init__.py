"""Generic Hugging Face vision-language backbone: PaliGemma / PaliGemma-2, Gemma-3, Qwen2.5-VL and
Qwen3-VL layouts (chosen by the checkpoint's model_type or the preset), with tiny presets built offline."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from refine_core import BackboneOptions, BackboneSpec, hookimpl


class HFVLMOptions(BackboneOptions):
    path: str | None = Field(None, description="Local directory or hub id of a PaliGemma, Gemma-3, "
                                               "Qwen2.5-VL or Qwen3-VL model (model_type paligemma, "
                                               "gemma3, qwen2_5_vl, qwen3_vl); takes precedence over "
                                               "`preset`.")
    preset: Literal["tiny", "tiny-gemma3", "tiny-qwen2_5_vl", "tiny-qwen3_vl"] | None = Field(
        "tiny", description="A randomly initialised model built from a config (no download) when `path` is "
                            "unset: tiny (PaliGemma-2 layout), tiny-gemma3 (Gemma-3 layout), "
                            "tiny-qwen2_5_vl or tiny-qwen3_vl (Qwen-VL layouts).")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: the model's default (Gemma-2 runs eager attention).")


@hookimpl
def refine_backbones():
    yield BackboneSpec(
        name="hf_vlm",
        summary="A PaliGemma-, Gemma-3- or Qwen-VL-layout Hugging Face VLM (local dir or hub); presets "
                "'tiny', 'tiny-gemma3', 'tiny-qwen2_5_vl' and 'tiny-qwen3_vl' build one offline",
        factory="refine_plugins.hf_vlm.layouts:build_hf_vlm",
        options=HFVLMOptions,
    )
