"""Generic Hugging Face vision-language backbone (PaliGemma / PaliGemma-2 layout) and its tiny preset."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from refine_core import BackboneOptions, BackboneSpec, hookimpl


class HFVLMOptions(BackboneOptions):
    path: str | None = Field(None, description="Local directory or hub id of a PaliGemma-layout model; "
                                               "takes precedence over `preset`.")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: the model's default (Gemma-2 runs eager attention).")


@hookimpl
def refine_backbones():
    yield BackboneSpec(
        name="hf_vlm",
        summary="Any PaliGemma-layout Hugging Face VLM (local dir or hub); preset 'tiny' builds one offline",
        factory="refine_plugins.hf_vlm.backbone:HFVLMBackbone",
        options=HFVLMOptions,
    )
