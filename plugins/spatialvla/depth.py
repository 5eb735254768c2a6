"""SpatialVLA's Ego3D position encoding: ZoeDepth metric depth → per-patch 3D points in the camera
frame (back-projected with the intrinsic matrix) → a NeRF-style frequency encoding → an MLP whose
output is added to the SigLIP patch features.

ZoeDepth is transformers' `ZoeDepthForDepthEstimation`, always frozen and in eval mode (upstream
freezes it but lets `model.train()` switch on its BEiT drop-path, which makes depth random).
transformers 5 renamed
the BEiT backbone's parameters; the official checkpoint keeps the 4.x names, so the module's
state dict is translated both ways (`UPSTREAM_TO_OURS`): `state_dict()` shows upstream names and
`load_state_dict` takes them.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ZoeDepthForDepthEstimation

ZOE_MEAN = ZOE_STD = 0.5  # upstream normalises Zoe's input as SigLIP's: (x - 0.5) / 0.5
ZOE_PAD = 31  # reflect padding on every side before the resize, as upstream (fixed for 224 inputs)
ZOE_SIZE = (384, 384)

# (upstream 4.x BEiT name, transformers 5 name) prefixes, relative to the ZoeDepth module; {i} = layer
_RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.embeddings.", "backbone.beit.embeddings."),
    ("backbone.encoder.layer.{i}.attention.attention.query.", "backbone.beit.layers.{i}.attention.q_proj."),
    ("backbone.encoder.layer.{i}.attention.attention.key.", "backbone.beit.layers.{i}.attention.k_proj."),
    ("backbone.encoder.layer.{i}.attention.attention.value.", "backbone.beit.layers.{i}.attention.v_proj."),
    ("backbone.encoder.layer.{i}.attention.attention.relative_position_bias.",
     "backbone.beit.layers.{i}.relative_position_bias."),
    ("backbone.encoder.layer.{i}.attention.output.dense.", "backbone.beit.layers.{i}.attention.o_proj."),
    ("backbone.encoder.layer.{i}.intermediate.dense.", "backbone.beit.layers.{i}.mlp.fc1."),
    ("backbone.encoder.layer.{i}.output.dense.", "backbone.beit.layers.{i}.mlp.fc2."),
    *((f"backbone.encoder.layer.{{i}}.{name}", f"backbone.beit.layers.{{i}}.{name}")
      for name in ("lambda_1", "lambda_2", "layernorm_before.", "layernorm_after.")),
)


def _rule(source: str, target: str) -> tuple[str, str]:
    pattern = "^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)")
    return pattern, target.replace("{i}", r"\1")


UPSTREAM_TO_OURS = tuple(_rule(upstream, ours) for upstream, ours in _RENAMES)
OURS_TO_UPSTREAM = tuple(_rule(ours, upstream) for upstream, ours in _RENAMES)


def _translate(name: str, rules: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, name)
        if count:
            return new
    return name


def _rename_under(state: dict, prefix: str, rules: tuple[tuple[str, str], ...]) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        new = prefix + _translate(key[len(prefix):], rules)
        if new != key:
            state[new] = state.pop(key)


class FrozenZoeDepth(ZoeDepthForDepthEstimation):
    """ZoeDepth that stays in eval mode whatever `train()` its parent model receives."""

    def train(self, mode: bool = True) -> "FrozenZoeDepth":
        return super().train(False)


def zoe_module(zoe_config) -> nn.Module:
    """transformers' ZoeDepth, frozen, in eval mode for good, its state dict in upstream's names."""
    module = FrozenZoeDepth(zoe_config)
    module.requires_grad_(False)
    module.eval()

    def to_upstream(mod, state, prefix, local_metadata):
        _rename_under(state, prefix, OURS_TO_UPSTREAM)

    def from_upstream(mod, state, prefix, local_metadata, strict, missing, unexpected, errors):
        _rename_under(state, prefix, UPSTREAM_TO_OURS)

    module.register_state_dict_post_hook(to_upstream)
    module.register_load_state_dict_pre_hook(from_upstream)
    return module


@torch.no_grad()
def metric_depth(zoe: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] → depth [B, 1, H, W]: reflect-pad, resize to 384², normalise, then the
    predicted depth resized back and the padding cropped (upstream's `process_zoe` path)."""
    height, width = pixel_values.shape[-2:]
    padded = F.pad(pixel_values, (ZOE_PAD, ZOE_PAD, ZOE_PAD, ZOE_PAD), mode="reflect")
    resized = F.interpolate(padded, size=ZOE_SIZE, mode="bicubic", align_corners=True)
    depth = zoe(pixel_values=(resized - ZOE_MEAN) / ZOE_STD).predicted_depth
    depth = F.interpolate(depth.unsqueeze(1), size=(height + 2 * ZOE_PAD, width + 2 * ZOE_PAD),
                          mode="bicubic", align_corners=True)
    return depth[..., ZOE_PAD:-ZOE_PAD, ZOE_PAD:-ZOE_PAD]


class Ego3DPositionEmbedding(nn.Module):
    """xyz points per patch [B, N, 3·reso²] → embeddings [B, N, F] (upstream `Ego3DPositionEmbeddingMLP`).

    Encoding per coordinate c (centred on (0, 0, 2) and halved): [c, sin(2^k c)…, cos(2^k c)…] for
    k = 0..n_freqs-1; the head is Linear → LayerNorm → ReLU → Linear (indices 0, 1, 3 in the checkpoint).
    """

    def __init__(self, in_channels: int, features: int, n_freqs: int = 8) -> None:
        super().__init__()
        self.n_freqs, self.in_channels = n_freqs, in_channels
        self.register_buffer("freq_bands", self._freq_bands(), persistent=False)
        self.register_buffer("center", self._center(), persistent=False)
        encoded = in_channels * (2 * n_freqs + 1)
        self.position_embedding_head = nn.Sequential(nn.Linear(encoded, features), nn.LayerNorm(features),
                                                     nn.ReLU(),
                                                     nn.Linear(features, features))
        for parameter in self.parameters():  # small initial weights: the 3D term starts near zero
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter, gain=0.01)

    def _freq_bands(self) -> torch.Tensor:
        return 2.0 ** torch.linspace(0, self.n_freqs - 1, self.n_freqs)

    def _center(self) -> torch.Tensor:
        return torch.tensor([0.0, 0.0, 2.0]).repeat(self.in_channels // 3)

    def rebuild_meta_buffers(self) -> None:
        """Recompute the buffers a meta-device build left without values (see buffers.py)."""
        if self.freq_bands.is_meta:
            self.freq_bands = self._freq_bands()
        if self.center.is_meta:
            self.center = self._center()

    def encode(self, xyz: torch.Tensor) -> torch.Tensor:
        centred = ((xyz - self.center) / 2.0).to(self.freq_bands.dtype)
        scaled = centred.unsqueeze(-1) * self.freq_bands
        return torch.cat([centred.unsqueeze(-1), scaled.sin(), scaled.cos()], dim=-1).flatten(2)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            encoded = self.encode(xyz)
        return self.position_embedding_head(encoded.to(self.position_embedding_head[0].weight.dtype))


def patch_pixel_grid(image_size: int, patch_size: int, reso: int) -> torch.Tensor:
    """Homogeneous pixel coordinates (u, v, 1) of the reso×reso sample points of every patch,
    row-major over the image: [3, (image_size / (patch_size / reso))²]."""
    step = patch_size // reso
    ys, xs = torch.meshgrid(torch.arange(0, image_size, step), torch.arange(0, image_size, step),
                            indexing="ij")
    offset = patch_size / reso / 2
    xs, ys = xs + offset, ys + offset
    return torch.stack([xs, ys, torch.ones_like(xs)], dim=0).reshape(3, -1).float()


def backproject_patches(intrinsic: torch.Tensor, depth: torch.Tensor, grid: torch.Tensor, patch_size: int,
                        reso: int) -> torch.Tensor:
    """Camera-frame points of each patch's sample grid: [B, patches, reso²·3] (x, y, z per point)."""
    b, c, h, w = depth.shape
    rows, cols = h // patch_size, w // patch_size
    sampled = F.interpolate(depth.float(), size=(rows * reso, cols * reso), mode="area").reshape(b, c, -1)
    points = (
        torch.linalg.inv(intrinsic.float()) @ grid.float()
    ) * sampled  # [B, 3, points], fp32 as upstream
    points = points.reshape(b, 3, rows, reso, cols, reso).permute(0, 2, 4, 3, 5, 1)
    return points.reshape(b, rows * cols, -1)


def scale_features(features: torch.Tensor, text_hidden: int) -> torch.Tensor:
    """Projected image features are divided by √hidden, as PaliGemma does (Gemma scales embeddings up)."""
    return features / math.sqrt(text_hidden)
