"""Generic Hugging Face vision-language backbone (PaliGemma / PaliGemma-2 layout) and its tiny preset."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from refine_core import BackboneSpec, hookimpl
from refine_core.specs import Decoder, decoder_option


class HFVLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="Local directory or hub id of a PaliGemma-layout model; "
                                               "takes precedence over `preset`.")
    preset: Literal["tiny"] | None = Field("tiny", description="Build a randomly initialised model from a "
                                                               "config (no download) when `path` is unset.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on CUDA, else fp32.")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: the model's default (Gemma-2 runs eager attention).")
    seed: int = Field(0, description="Seed of the preset's random initialisation.")
    decoder: Decoder = decoder_option()


@hookimpl
def refine_backbones():
    yield BackboneSpec(
        name="hf_vlm",
        summary="Any PaliGemma-layout Hugging Face VLM (local dir or hub); preset 'tiny' builds one offline",
        factory="plugins.hf_vlm.backbone:HFVLMBackbone",
        options=HFVLMOptions,
    )
