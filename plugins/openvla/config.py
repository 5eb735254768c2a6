"""OpenVLA configuration: reads and writes the upstream `config.json` (openvla/openvla
`prismatic/extern/hf/configuration_prismatic.py`, model_type "openvla") without transformers'
remote code, and turns it into the sizes our modules need.

Defaults are the released `openvla/openvla-7b` values, so `OpenVLAConfig()` is the full model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The upstream config stores a minimal `text_config` and relies on the LlamaConfig defaults of
# transformers 4.40.1. Those defaults may move between releases, so they are pinned here.
UPSTREAM_LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "hidden_act": "silu", "max_position_embeddings": 2048,
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2,
    "pretraining_tp": 1, "tie_word_embeddings": False, "rope_theta": 10000.0, "rope_scaling": None,
    "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
}

# Architecture of the timm models OpenVLA names, as built with `pretrained=False, num_classes=0`
# (timm's `vision_transformer.py` model registrations). Keyword overrides (the tiny fixture's
# `tiny_timm_overrides`) replace entries of these.
TOWER_ARCHS: dict[str, dict[str, Any]] = {
    # DINOv2 ViT-L/14 with 4 registers: class token + registers, position embedding on patches
    # only (`no_embed_class`), LayerScale.
    "vit_large_patch14_reg4_dinov2.lvd142m": {
        "patch_size": 14, "embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0,
        "class_token": True, "reg_tokens": 4, "layer_scale": True, "attn_pool": False,
    },
    # SigLIP So400m/14: no prefix tokens, attention-pool head ("map"), no LayerScale.
    "vit_so400m_patch14_siglip_224": {
        "patch_size": 14, "embed_dim": 1152, "depth": 27, "num_heads": 16, "mlp_ratio": 3.7362,
        "class_token": False, "reg_tokens": 0, "layer_scale": False, "attn_pool": True,
    },
}
TOWER_OVERRIDE_KEYS = {"embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size"}


@dataclass
class OpenVLAConfig:
    """Every field upstream serialises; unknown keys are kept in `extra` and written back."""

    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    llm_backbone_id: str = "llama2-7b-pure"
    arch_specifier: str = "no-align+fused-gelu-mlp"
    use_fused_vision_backbone: bool = True
    image_resize_strategy: str = "resize-naive"
    image_sizes: list[int] = field(default_factory=lambda: [224, 224])
    timm_model_ids: list[str] = field(default_factory=lambda: list(TOWER_ARCHS))
    timm_override_act_layers: list[str | None] = field(default_factory=lambda: [None, None])
    hf_llm_id: str = "meta-llama/Llama-2-7b-hf"
    llm_max_length: int = 2048
    pad_token_id: int = 32000
    pad_to_multiple_of: int = 64
    output_projector_states: bool = False
    norm_stats: dict[str, Any] | None = None
    n_action_bins: int = 256
    text_config: dict[str, Any] = field(default_factory=lambda: {
        "model_type": "llama", "pad_token_id": 32000, "vocab_size": 32064})
    tiny_timm_overrides: dict[str, dict[str, Any]] | None = None
    model_type: str = "openvla"
    architectures: list[str] = field(default_factory=lambda: ["OpenVLAForActionPrediction"])
    torch_dtype: str | None = None
    transformers_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type != "openvla":
            raise ValueError(f"expected an OpenVLA config (model_type 'openvla'), got {self.model_type!r}")
        if not self.use_fused_vision_backbone or len(self.timm_model_ids) != 2:
            raise ValueError("only the fused DINOv2 + SigLIP vision backbone (dinosiglip) is supported")
        for model_id in self.timm_model_ids:
            if model_id not in TOWER_ARCHS:
                raise ValueError(
                    f"unsupported vision tower {model_id!r}; supported: {', '.join(TOWER_ARCHS)}"
                )
        if any(act is not None for act in self.timm_override_act_layers):
            raise ValueError(f"activation overrides {self.timm_override_act_layers} are not supported "
                             "(the dinosiglip towers use none)")

    # -- serialisation ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OpenVLAConfig":
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "OpenVLAConfig":
        return cls.from_dict(json.loads((Path(directory) / "config.json").read_text()))

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        if data["tiny_timm_overrides"] is None:
            del data["tiny_timm_overrides"]  # upstream configs have no such key
        data.update(self.extra)
        return data

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    # -- derived sizes ----------------------------------------------------------------------------
    def tower_arch(self, index: int) -> dict[str, Any]:
        model_id = self.timm_model_ids[index]
        arch = dict(TOWER_ARCHS[model_id], img_size=self.image_sizes[index])
        overrides = (self.tiny_timm_overrides or {}).get(model_id, {})
        unknown = set(overrides) - TOWER_OVERRIDE_KEYS
        if unknown:
            raise ValueError(f"unsupported tower overrides for {model_id}: {sorted(unknown)}")
        arch.update(overrides)
        return arch

    def llama_config(self, attn_implementation: str = "sdpa"):
        from transformers import LlamaConfig

        values = dict(UPSTREAM_LLAMA_DEFAULTS)
        values.update({k: v for k, v in self.text_config.items() if k not in ("model_type", "torch_dtype")})
        config = LlamaConfig(**values)
        config._attn_implementation = attn_implementation
        return config
