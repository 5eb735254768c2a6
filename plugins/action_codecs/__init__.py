"""Built-in action codecs: OpenVLA uniform bins, SpatialVLA spatial grid, VLM2VLA text numbers, VLM2VLA-AT
least-likely ids."""
from __future__ import annotations

from refine_core import ActionCodecSpec, hookimpl

from .options import BinsOptions, LeastLikelyOptions, SpatialOptions, TextOptions


@hookimpl
def refine_action_codecs():
    yield ActionCodecSpec(
        name="bins",
        summary="OpenVLA: q01/q99-normalised actions in 256 uniform bins, the last vocabulary ids",
        factory="refine_plugins.action_codecs.bins:BinsCodec",
        options=BinsOptions,
    )
    yield ActionCodecSpec(
        name="spatial",
        summary="SpatialVLA: 3 ids per step (spherical translation, rotation, gripper) on Gaussian-quantile "
                "bins",
        factory="refine_plugins.action_codecs.spatial:SpatialCodec",
        options=SpatialOptions,
    )
    yield ActionCodecSpec(
        name="text",
        summary="VLM2VLA: actions written as text numbers, [[dx, dy, dz, ..., g], ...]",
        factory="refine_plugins.action_codecs.text:TextCodec",
        options=TextOptions,
    )
    yield ActionCodecSpec(
        name="least-likely",
        summary="VLM2VLA-AT: the text form's digits and symbols mapped to reserved least-used ids",
        factory="refine_plugins.action_codecs.least_likely:LeastLikelyCodec",
        options=LeastLikelyOptions,
    )
