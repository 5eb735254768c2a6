"""P6 -- trainable parameters and AdamW state for ReFineVLA freezing vs LoRA vs full fine-tuning.

Run: ``python perf/trainable_params.py`` (a few seconds; no download, no weights).

Per backbone preset, three recipes are applied with refine's own code (`apply_freeze`,
`apply_lora`), and the trainable parameters counted:
- freeze-24: the ReFineVLA recipe default (`freeze.first_n_layers` unset = all but the last 2
  blocks; vision tower and embeddings frozen -- PaliGemma's lm_head is tied to the embeddings);
- lora-r16: VLM2VLA's LoRA (r 16, alpha 32) on every linear layer of the language-model blocks;
- full: everything trains.
Optimizer state = AdamW's two fp32 moments per trainable parameter (8 bytes each); master
weights and gradients are not included.

SpatialVLA's "lora r16" is its backbone's default scope: upstream's `linear` target set (language
model, SigLIP, projector, Ego3D head; never ZoeDepth, which stays frozen in every recipe).

Presets:
- hf_vlm tiny: the randomly initialised test preset (4 Gemma-2 blocks, so "freeze-24" freezes 2).
- PaliGemma-2 3B 224 (google/paligemma2-3b-pt-224): SigLIP so400m/14 at 224 (hidden 1152, 27
  layers, 16 heads, MLP 4304) + Gemma-2 2B (hidden 2304, 26 layers, 8 heads, 4 KV heads, head
  dim 256, MLP 9216, vocab 257,216), projector 1152→2304; built on the meta device (shapes only).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def paligemma2_3b_224():
    """A PaliGemma-2 3B 224 model on the meta device, wrapped as an hf_vlm backbone (no tokenizer)."""
    import torch
    from transformers import (Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
        SiglipVisionConfig)

    from refine_plugins.hf_vlm.backbone import HFVLMBackbone

    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=224, patch_size=14, projection_dim=2304)
    text = Gemma2Config(vocab_size=257_216, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_id=257_152,
                             projection_dim=2304, hidden_size=2304)
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
    backbone = HFVLMBackbone.__new__(HFVLMBackbone)  # only the module accessors are used: no tokenizer needed
    backbone.model = model
    backbone.pretrained = True  # stands for the published checkpoint: ReFineVLA's recipe applies
    return backbone


def spatialvla_4b_config():
    """IPEC-COMMUNITY/spatialvla-4b-224-pt's configuration, from its published config.json facts:
    PaliGemma-2 3B 224 (SigLIP so400m/14, Gemma-2 2B with an untied lm_head, vocab 257,152 + 8,194
    spatial tokens = 265,347), projector 1152→2304, ego3d_patch_reso 2, ZoeDepth NYU+KITTI on BEiT-L/16
    at 384 (hidden 1024, 24 layers, out indices 6/12/18/24, neck 256/512/1024/1024, fusion 256,
    bottleneck 256, bin embedding 128, 4 patch-transformer layers of 128)."""
    from transformers import BeitConfig, ZoeDepthConfig

    from refine_plugins.spatialvla.config import SpatialVLAConfig

    beit = BeitConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      image_size=384, patch_size=16, use_relative_position_bias=True, use_mean_pooling=True,
                      layer_scale_init_value=0.1, out_indices=[6, 12, 18, 24], reshape_hidden_states=False)
    zoe = ZoeDepthConfig(backbone_config=beit, backbone_hidden_size=1024, bottleneck_features=256,
                         bin_embedding_dim=128, fusion_hidden_size=256,
                         neck_hidden_sizes=[256, 512, 1024, 1024],
                         num_relative_features=32, num_patch_transformer_layers=4,
                         patch_transformer_hidden_size=128,
                         patch_transformer_intermediate_size=1024, patch_transformer_num_attention_heads=4,
                         bin_configurations=[{"n_bins": 64, "min_depth": 0.001, "max_depth": 10.0,
                                              "name": "nyu"},
                                             {"n_bins": 64, "min_depth": 0.001, "max_depth": 80.0,
                                              "name": "kitti"}])
    return SpatialVLAConfig.from_dict({
        "model_type": "spatialvla", "_vocab_size": 265_347, "action_token_begin_idx": 257_153,
        "image_token_index": 257_152, "spatial_token_num": 8194, "use_spatial_token": True,
        "use_vision_zoe": True,
        "ego3d_patch_reso": 2, "n_freqs": 8, "hidden_size": 2048, "projection_dim": 2304,
        "text_config": {"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                        "num_key_value_heads": 4, "tie_word_embeddings": False, "vocab_size": 265_347},
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                          "num_hidden_layers": 27, "patch_size": 14, "projection_dim": 2304,
                          "vision_use_head": False},
        "vision_zoe_config": zoe.to_dict()})


def spatialvla_4b():
    """SpatialVLA 4B 224 on the meta device, wrapped as a backbone (module accessors only)."""
    import torch

    from refine_plugins.spatialvla.backbone import SpatialVLABackbone
    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration

    with torch.device("meta"):
        model = SpatialVLAForConditionalGeneration(spatialvla_4b_config())
    backbone = SpatialVLABackbone.__new__(SpatialVLABackbone)  # module accessors only
    backbone.model, backbone.pretrained = model, True
    return backbone


def spatialvla_tiny():
    from refine_core.registry import Registry

    return Registry(entry_points=False).build("backbone", "spatialvla", {"preset": "tiny"})


def spatialvla_tiny_step_seconds(steps: int = 6) -> float:
    """Median forward+backward time of the SpatialVLA tiny preset (spatial codec, reasoning and a
    4-step chunk in the target), batch 1, one CPU thread; the first step is warm-up."""
    import statistics
    import time

    import numpy as np
    import torch

    from refine_plugins.action_codecs.spatial import SpatialCodec
    from refine_core import Statistics
    from refine_core.backbone import TrainingSample
    from refine_core.loss import reasoning_aware_loss

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    backbone = spatialvla_tiny().attach_codec(SpatialCodec(),
                                              Statistics.from_array(rng.normal(0, 0.02, (400, 7))))
    sample = TrainingSample(images={"main": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)},
                            primary_camera="main", instruction="put the red block on the plate",
                            actions=rng.normal(0, 0.02, (4, 7)),
                            reasoning="<Observation>: the gripper is above the red block <Task Planning>: "
                                      "<logical_steps><1> descend <2> grasp <sub_action> descend")
    batch = backbone.collate([sample])
    backbone.model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 0.3)
        out.loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def tiny():
    from refine_core.registry import Registry

    return Registry(entry_points=False).build("backbone", "hf_vlm", {"preset": "tiny"})


def count(backbone) -> tuple[int, int]:
    parameters = list(backbone.model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def measure(name: str, build) -> list[dict]:
    from refine_core.config import FreezeSettings, LoraSettings
    from refine_core.training.freeze import apply_freeze
    from refine_core.training.lora import apply_lora

    rows = []
    backbone = build()
    n_blocks = len(backbone.blocks())
    # ReFineVLA spelled out (a random-weight preset's own recipe would train everything)
    frozen = apply_freeze(backbone, FreezeSettings(vision=True, embeddings=True, first_n_layers=n_blocks - 2))
    rows.append((f"freeze-{frozen} of {n_blocks} (+vision, embeddings)", *count(backbone)))
    apply_freeze(backbone, FreezeSettings(vision=False, embeddings=False, first_n_layers=0))
    rows.append(("full", *count(backbone)))
    lora_backbone = build()
    apply_lora(lora_backbone, LoraSettings(r=16, alpha=32, dropout=0.0))
    trainable, total = count(lora_backbone)
    rows.append(("lora r16 (backbone scope)", trainable, total - trainable))  # base size, adapters excluded
    return [{"preset": name, "recipe": recipe, "trainable": trainable, "total": total,
             "adam_bytes": 8 * trainable} for recipe, trainable, total in rows]


def human(n: float, unit: str = "") -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}"


def main() -> None:
    import torch
    import transformers

    rows = (measure("hf_vlm tiny", tiny) + measure("PaliGemma-2 3B 224", paligemma2_3b_224)
            + measure("SpatialVLA tiny", spatialvla_tiny) + measure("SpatialVLA 4B 224", spatialvla_4b))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'preset':20s} {'recipe':38s} {'trainable':>14s} {'of base':>14s} {'share':>7s} "
          f"{'AdamW state':>12s}")
    for row in rows:
        print(f"{row['preset']:20s} {row['recipe']:38s} {row['trainable']:>14,d} {row['total']:>14,d} "
              f"{row['trainable'] / row['total']:>7.2%} {human(row['adam_bytes'], 'B'):>12s}")
    print(f"SpatialVLA tiny: forward+backward {spatialvla_tiny_step_seconds():.3f} s per step (batch 1, 1 "
          "thread)")


if __name__ == "__main__":
    main()
