"""SpatialVLA (IPEC-COMMUNITY/spatialvla-4b-224-pt layout: SigLIP + ZoeDepth Ego3D positions →
projector → Gemma-2 with spatial action tokens) on transformers 5.x, loading the official
checkpoint unchanged; preset 'tiny' builds one offline."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from refine_core import BackboneOptions, BackboneSpec, hookimpl


class SpatialVLAOptions(BackboneOptions):
    path: str | None = Field(None,
                             description="Local directory of a SpatialVLA checkpoint in the upstream layout "
                                               "(config.json, safetensors, tokenizer, "
                                               "processor_config.json); "
                                               "or a Hub id (org/name); takes precedence over `preset`.")
    unnorm_key: str | None = Field(None,
                                   description="Dataset whose statistics (processor_config.json) and camera "
                                                     "intrinsic to use; required when the checkpoint has "
                                                     "several.")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto",
        description="SigLIP's attention (auto: sdpa; eager for attention maps). Gemma-2 is always eager.")
    sync_spatial_embeddings: bool = Field(True,
                                          description="On load, copy spatial_embed_tokens into the token "
                                                            "embedding's action rows, as upstream's loader "
                                                            "does.")


@hookimpl
def refine_backbones():
    yield BackboneSpec(
        name="spatialvla",
        summary="SpatialVLA (SigLIP+ZoeDepth Ego3D, Gemma-2, spatial action tokens) from an upstream-layout "
                "directory; preset 'tiny' builds one offline",
        factory="refine_plugins.spatialvla.backbone:SpatialVLABackbone",
        options=SpatialVLAOptions,
        default_codec="spatial",  # its action tokens are the spatial grid's
    )
