"""Generic Hugging Face vision-language backbone: PaliGemma / PaliGemma-2 and Gemma-3 layouts (chosen
by the checkpoint's model_type or the preset), with tiny presets built offline."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from refine_core import BackboneOptions, BackboneSpec, hookimpl


class HFVLMOptions(BackboneOptions):
    path: str | None = Field(None, description="Local directory or hub id of a PaliGemma or Gemma-3 model "
                                               "(model_type paligemma, gemma3); takes precedence over "
                                               "`preset`.")
    preset: Literal["tiny", "tiny-gemma3"] | None = Field(
        "tiny", description="A randomly initialised model built from a config (no download) when `path` is "
                            "unset: tiny (PaliGemma-2 layout) or tiny-gemma3 (Gemma-3 layout).")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: the model's default (Gemma-2 runs eager attention).")


@hookimpl
def refine_backbones():
    yield BackboneSpec(
        name="hf_vlm",
        summary="A PaliGemma- or Gemma-3-layout Hugging Face VLM (local dir or hub); presets 'tiny' and "
                "'tiny-gemma3' build one offline",
        factory="refine_plugins.hf_vlm.layouts:build_hf_vlm",
        options=HFVLMOptions,
    )
