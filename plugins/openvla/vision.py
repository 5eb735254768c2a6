"""The two OpenVLA vision towers (DINOv2-reg4 ViT-L/14 and SigLIP So400m/14), written in plain
torch with timm's parameter names, so the upstream checkpoint's `vision_backbone.*` keys load
strictly. timm itself is not used: its import needs torchvision, and OpenVLA only ever reads the
patch tokens of the second-to-last block, which a small module reproduces exactly.

Numerics follow timm's VisionTransformer: pre-norm blocks, LayerNorm eps 1e-6, exact GELU,
scaled-dot-product attention with qkv bias.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel scale. Named `scale_factor` as in the upstream checkpoint (timm calls it
    `gamma`, a name transformers 4.x rewrote on load, which is why upstream renamed it)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, layer_scale: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """SigLIP's "map" head. OpenVLA never runs it; it exists so the checkpoint loads strictly."""

    def __init__(self, dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)


class VisionTower(nn.Module):
    """A ViT whose `features()` returns the patch tokens after the second-to-last block (prefix
    tokens dropped, no final norm), as upstream's `get_intermediate_layers(n={depth - 2})`."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        dim, patch = int(arch["embed_dim"]), int(arch["patch_size"])
        mlp_hidden = int(dim * float(arch["mlp_ratio"]))
        self.embed_dim = dim
        self.num_patches = (int(arch["img_size"]) // patch) ** 2
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if arch["class_token"] else None
        self.reg_token = nn.Parameter(torch.zeros(1, arch["reg_tokens"], dim)) if arch["reg_tokens"] else None
        self.num_prefix_tokens = int(bool(arch["class_token"])) + int(arch["reg_tokens"])
        # Position embedding covers the patches only: DINOv2-reg (`no_embed_class`) and SigLIP
        # (no prefix tokens) both add it before prefix tokens are prepended.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        self.blocks = nn.ModuleList(
            Block(dim, int(arch["num_heads"]), mlp_hidden,
                  bool(arch["layer_scale"])) for _ in range(int(arch["depth"])))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn_pool = AttentionPoolLatent(dim, mlp_hidden) if arch["attn_pool"] else None

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = torch.cat([*prefix, x], dim=1)
        for block in self.blocks[:-1]:  # the last block's output is never used
            x = block(x)
        return x[:, self.num_prefix_tokens:]


class PrismaticVisionBackbone(nn.Module):
    """`featurizer` (DINOv2) on the first 3 channels, `fused_featurizer` (SigLIP) on the last 3;
    patch features concatenated on channels → [B, num_patches, dino_dim + siglip_dim]."""

    def __init__(self, dino_arch: dict[str, Any], siglip_arch: dict[str, Any]) -> None:
        super().__init__()
        self.featurizer = VisionTower(dino_arch)
        self.fused_featurizer = VisionTower(siglip_arch)
        self.embed_dim = self.featurizer.embed_dim + self.fused_featurizer.embed_dim
        self.num_patches = self.featurizer.num_patches

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dino, siglip = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer.features(dino), self.fused_featurizer.features(siglip)], dim=2)


class PrismaticProjector(nn.Module):
    """Fused-GELU MLP: fc1 (4 × vision dim) → GELU → fc2 (LLM dim) → GELU → fc3."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()
        self.act_fn2 = nn.GELU()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(patches)))))
