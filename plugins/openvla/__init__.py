"""OpenVLA (openvla/openvla-7b layout: DINOv2 + SigLIP → projector → Llama-2) on transformers 5.x,
loading the official checkpoint unchanged (its `norm_stats` included: `unnorm_key`,
`predict_action`); preset 'tiny' builds one offline."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from refine_core import BackboneOptions, BackboneSpec, hookimpl


class OpenVLAOptions(BackboneOptions):
    path: str | None = Field(None, description="Local directory of an OpenVLA checkpoint in the upstream "
                                               "layout (config.json + safetensors) or a Hub id (org/name); "
                                               "takes "
                                               "precedence over `preset`.")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: sdpa; eager is needed for attention maps.")
    unnorm_key: str | None = Field(
        None, description="Which dataset's action statistics in the checkpoint's norm_stats predict_action "
                          "un-normalises with; unset: the only one (several: name one).")


@hookimpl
def refine_backbones():
    yield BackboneSpec(
        name="openvla",
        summary="OpenVLA (DINOv2+SigLIP, Llama-2) from an upstream-layout directory; preset 'tiny' builds "
                "one offline",
        factory="refine_plugins.openvla.backbone:OpenVLABackbone",
        options=OpenVLAOptions,
    )
