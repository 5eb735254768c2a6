"""The `tiny` preset: a randomly initialised SpatialVLA with the upstream tiny fixture's sizes
(SigLIP 2 layers × 64, Gemma-2 4 layers × 64, ZoeDepth on a 4-layer BEiT × 32, ego3d_patch_reso 2)
and an in-process tokenizer: the PaliGemma-style tiny BPE of the `hf_vlm` preset (≈2.3k ids,
`<image>` included) plus SpatialVLA's 8194 `<ACTION…>` tokens, so nothing is downloaded and the
model, tokenizer and `spatial` codec line up exactly as in the official checkpoint.
"""
from __future__ import annotations

from typing import Any

SPATIAL_TOKENS = 8194
ACTION_TOKEN = "<ACTION{:05d}>"

_BEIT = {"model_type": "beit", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
         "intermediate_size": 64, "image_size": 384, "patch_size": 16, "hidden_act": "gelu",
         "layer_norm_eps": 1e-12, "layer_scale_init_value": 0.1, "drop_path_rate": 0.1,
         "use_absolute_position_embeddings": False, "use_relative_position_bias": True,
         "use_shared_relative_position_bias": False, "use_mean_pooling": True, "use_mask_token": False,
         "out_indices": [1, 2, 3, 4], "reshape_hidden_states": False, "add_fpn": False}
_ZOE = {"model_type": "zoedepth", "backbone_hidden_size": 32, "bottleneck_features": 16,
        "bin_embedding_dim": 16,
        "fusion_hidden_size": 16, "neck_hidden_sizes": [8, 16, 32, 64], "reassemble_factors": [4, 2, 1, 0.5],
        "readout_type": "project", "num_attractors": [16, 8, 4, 1], "num_relative_features": 8,
        "bin_configurations": [{"n_bins": 16, "min_depth": 0.001, "max_depth": 10.0}], "head_in_index": -1,
        "bin_centers_type": "softplus", "attractor_alpha": 1000, "attractor_gamma": 2,
        "attractor_kind": "mean",
        "min_temp": 0.0212, "max_temp": 50.0, "use_pretrained_backbone": False}


def build_tokenizer():
    """The hf_vlm tiny tokenizer with the 8194 action tokens appended (special, as upstream's)."""
    from refine_plugins.hf_vlm.tiny import build_tokenizer as base_tokenizer

    tokenizer = base_tokenizer()
    tokenizer.add_tokens([ACTION_TOKEN.format(i) for i in range(SPATIAL_TOKENS)], special_tokens=True)
    return tokenizer


def build_config(tokenizer) -> dict[str, Any]:
    """An upstream-style config.json dict for the tokenizer's ids."""
    from transformers import BeitConfig, ZoeDepthConfig

    vocab = len(tokenizer)
    zoe = ZoeDepthConfig(backbone_config=BeitConfig(**{k: v for k, v in _BEIT.items() if k != "model_type"}),
                         **{k: v for k, v in _ZOE.items() if k != "model_type"}).to_dict()
    return {
        "model_type": "spatialvla", "architectures": ["SpatialVLAForConditionalGeneration"],
        "_vocab_size": vocab, "hidden_size": 64, "projection_dim": 64, "pad_token_id": tokenizer.pad_token_id,
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "action_token_begin_idx": tokenizer.convert_tokens_to_ids(ACTION_TOKEN.format(0)),
        "spatial_token_num": SPATIAL_TOKENS, "use_spatial_token": True, "use_vision_zoe": True,
        "ego3d_patch_reso": 2, "n_freqs": 8,
        "text_config": {"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128,
                        "num_hidden_layers": 4,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                        "vocab_size": vocab},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                          "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 14,
                          "projection_dim": 64, "vision_use_head": False},
        "vision_zoe_config": zoe,
    }
