"""SpatialVLA configuration: reads and writes the upstream `config.json` (SpatialVLA
`model/configuration_spatialvla.py`, model_type "spatialvla") without remote code, and builds the
transformers 5.x sub-configs our modules need.

Upstream serialises its three sub-configs through transformers 4.47, which omits values equal to
the defaults of that release (the tiny fixture's `text_config` lists nine keys). Defaults move
between releases, so the 4.47 defaults of Gemma-2 and SigLIP are pinned here and applied first.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

GEMMA2_447_DEFAULTS: dict[str, Any] = {
    "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192, "initializer_range": 0.02, "rms_norm_eps": 1e-6, "pad_token_id": 0,
    "eos_token_id": 1, "bos_token_id": 2, "tie_word_embeddings": True, "rope_theta": 10000.0,
    "attention_bias": False, "attention_dropout": 0.0, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
}
SIGLIP_447_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "attention_dropout": 0.0,
}
# What upstream builds when a sub-config is absent (its configuration_spatialvla defaults).
UPSTREAM_VISION_DEFAULT = {"model_type": "siglip_vision_model", "intermediate_size": 4096,
                           "hidden_size": 1152,
                           "patch_size": 14, "image_size": 224, "num_hidden_layers": 27,
                           "num_attention_heads": 16, "vision_use_head": False}
UPSTREAM_TEXT_DEFAULT = {"model_type": "gemma2", "hidden_size": 2048, "num_hidden_layers": 18,
                         "intermediate_size": 16384, "num_attention_heads": 8, "num_key_value_heads": 1,
                         "vocab_size": 257152}
# keys 4.47 wrote that transformers 5 configs refuse or recompute
_DROPPED_SUBCONFIG_KEYS = ("model_type", "torch_dtype", "dtype", "_attn_implementation_autoset",
                           "num_image_tokens", "num_positions", "transformers_version",
                           "cache_implementation",
                           "rope_scaling")


@dataclass
class SpatialVLAConfig:
    """Every field upstream serialises; unknown keys are kept in `extra` and written back."""

    vision_config: dict[str, Any] = field(default_factory=lambda: dict(UPSTREAM_VISION_DEFAULT))
    text_config: dict[str, Any] = field(default_factory=lambda: dict(UPSTREAM_TEXT_DEFAULT))
    vision_zoe_config: dict[str, Any] | None = None
    image_token_index: int = 256000
    vocab_size: int = 257152  # serialised as "_vocab_size"
    projection_dim: int = 2048
    hidden_size: int = 2048
    action_token_begin_idx: int | None = None
    spatial_token_num: int = 259
    use_spatial_token: bool = False
    ego3d_patch_reso: int = 4
    n_freqs: int = 8
    use_vision_zoe: bool = True
    pad_token_id: int | None = 0
    model_type: str = "spatialvla"
    architectures: list[str] = field(default_factory=lambda: ["SpatialVLAForConditionalGeneration"])
    torch_dtype: str | None = None
    transformers_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type != "spatialvla":
            raise ValueError("expected a SpatialVLA config (model_type 'spatialvla'), got "
                             f"{self.model_type!r}")
        if self.text_config.get("model_type", "gemma2") != "gemma2":
            raise ValueError(f"the language model must be gemma2, got {self.text_config.get('model_type')!r}")
        if self.vision_config.get("model_type", "siglip_vision_model") != "siglip_vision_model":
            raise ValueError("the vision tower must be siglip_vision_model, got "
                             f"{self.vision_config.get('model_type')!r}")
        if self.use_vision_zoe and not self.vision_zoe_config:
            raise ValueError("use_vision_zoe is set but the config has no vision_zoe_config")
        if self.use_spatial_token and self.action_token_begin_idx is None:
            raise ValueError("use_spatial_token is set but action_token_begin_idx is missing")

    # -- serialisation ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpatialVLAConfig":
        data = dict(data)
        if "_vocab_size" in data:
            data["vocab_size"] = data.pop("_vocab_size")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None or k == "vision_zoe_config"}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SpatialVLAConfig":
        return cls.from_dict(json.loads((Path(directory) / "config.json").read_text()))

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data["_vocab_size"] = data.pop("vocab_size")
        data.update(self.extra)
        return data

    def save(self, directory: str | Path) -> None:
        (Path(directory) / "config.json").write_text(json.dumps(self.to_dict(), indent=2,
                                                                sort_keys=True) + "\n")

    # -- transformers 5.x sub-configs --------------------------------------------------------------
    @staticmethod
    def _clean(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k not in _DROPPED_SUBCONFIG_KEYS}

    def gemma2_config(self, attn_implementation: str = "sdpa"):
        from transformers import Gemma2Config

        values = dict(GEMMA2_447_DEFAULTS)
        values.update(self._clean(self.text_config))
        rope_theta = values.pop("rope_theta")
        config = Gemma2Config(**values, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
        config._attn_implementation = attn_implementation
        return config

    def siglip_config(self, attn_implementation: str = "sdpa"):
        from transformers import SiglipVisionConfig

        values = dict(SIGLIP_447_DEFAULTS)
        values.update(self._clean(self.vision_config))
        values.pop("projection_dim", None)  # upstream's projector reads it from here; SigLIP does not
        values.pop("vocab_size", None)
        config = SiglipVisionConfig(**values)
        config._attn_implementation = attn_implementation
        return config

    def zoe_config(self):
        from transformers import ZoeDepthConfig

        data = dict(self.vision_zoe_config)
        if isinstance(data.get("backbone_config"), dict):
            # ZoeDepth's neck reads token sequences: its own default BEiT sets this, a config that
            # names a BEiT without the key would get BeitConfig's default (feature maps) and fail
            data["backbone_config"] = {"reshape_hidden_states": False, **data["backbone_config"]}
        return ZoeDepthConfig.from_dict(data)

    # -- derived sizes -----------------------------------------------------------------------------
    @property
    def text_hidden_size(self) -> int:
        return int(self.text_config.get("hidden_size", GEMMA2_447_DEFAULTS["hidden_size"]))

    @property
    def vision_hidden_size(self) -> int:
        return int(self.vision_config.get("hidden_size", SIGLIP_447_DEFAULTS["hidden_size"]))

    @property
    def image_size(self) -> int:
        return int(self.vision_config.get("image_size", SIGLIP_447_DEFAULTS["image_size"]))

    @property
    def patch_size(self) -> int:
        return int(self.vision_config.get("patch_size", SIGLIP_447_DEFAULTS["patch_size"]))

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2
