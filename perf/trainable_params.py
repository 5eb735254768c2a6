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
    from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    from plugins.hf_vlm.backbone import HFVLMBackbone

    vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=224, patch_size=14, projection_dim=2304)
    text = Gemma2Config(vocab_size=257_216, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=257_152,
                             projection_dim=2304, hidden_size=2304)
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
    backbone = HFVLMBackbone.__new__(HFVLMBackbone)  # only the module accessors are used: no tokenizer needed
    backbone.model = model
    backbone.pretrained = True  # stands for the published checkpoint: ReFineVLA's recipe applies
    return backbone


def tiny():
    from refine_core.plugins import Registry

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
    rows.append(("lora r16 (LM linears)", trainable, total - trainable))  # base size, adapters excluded
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

    rows = measure("hf_vlm tiny", tiny) + measure("PaliGemma-2 3B 224", paligemma2_3b_224)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'preset':20s} {'recipe':38s} {'trainable':>14s} {'of base':>14s} {'share':>7s} {'AdamW state':>12s}")
    for row in rows:
        print(f"{row['preset']:20s} {row['recipe']:38s} {row['trainable']:>14,d} {row['total']:>14,d} "
              f"{row['trainable'] / row['total']:>7.2%} {human(row['adam_bytes'], 'B'):>12s}")


if __name__ == "__main__":
    main()
