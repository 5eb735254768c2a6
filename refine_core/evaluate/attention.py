"""Where does the policy look? Attention from a target token to the image patches (ReFineVLA, Algorithm 4).

For one sample:

1. Run the backbone with eager attention (`forward(batch, output_attentions=True)`); each layer
   gives weights [heads, T, T] (row = query position, column = key position).
2. Target queries. The target tokens are the supervised suffix's action tokens (eos excluded)
   or its reasoning tokens (eos excluded). Causal-LM shift: the token at position p is
   *predicted* by the query at p − 1, so we read the rows p − 1 — the attention that produces
   the prediction, not the attention of the token after it has been written. With several
   target tokens the rows are averaged: A[l, h, i] = mean over targets of attention(l, h,
   query p − 1 → key image_position i).
3. Image keys: the backbone's image-token positions (patch order, row-major), giving
   A ∈ [layers, heads, n_image].
4. Top-k fusion over layers×heads: mass[l, h] = Σ_i A[l, h, i] (the share of that head's
   attention spent on the image). The k (layer, head) pairs with the largest mass are kept
   (ties: lower layer, then lower head first). `max`: F[i] = max over the k maps of A[l, h, i];
   `mean`: F[i] = their average.
   Shown: F min-max normalised to [0, 1] (a constant map shows as all zero), as attention
   visualisations usually are. Because stretching makes any map look focused, two numbers
   keep the comparison honest: `image_share` (mean mass of the k heads on the image) and
   `focus` (the share of F held by its 10% most attended patches: 0.1 for a uniform map, 1 when
   those patches hold all of it).
5. Patch grid: n_image must be a square g²; patch index i → (row i // g, column i % g).
6. Upsampled (bilinear) to the frame's height × width. Backbones resize frames to their square
   input without cropping, so the grid covers the whole frame.
7. Share on objects (`box_share`): boxes [top, left, bottom, right] in fractions of the frame
   (step metadata `boxes`) select the patches whose cell overlaps a box with positive area (a
   patch token sees its whole cell, so a patch showing any of the object counts). share = the
   un-normalised fused map's mass on those patches / its total mass; chance = those patches'
   count / g², the share a uniform map would give them. With `mean` fusion the share is exactly
   the fraction of the selected heads' image attention that lands on the boxes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from refine_core.data.collate import IGNORE
from refine_core.errors import UsageError

Target = Literal["action", "reasoning"]
Fusion = Literal["max", "mean"]
TARGETS: tuple[str, ...] = ("action", "reasoning")
FUSIONS: tuple[str, ...] = ("max", "mean")


@dataclass
class AttentionMap:
    """One frame's fused attention, with what produced it."""

    frame: np.ndarray  # uint8 HWC, the frame as the dataset gave it
    grid: np.ndarray  # [g, g] fused attention per patch, min-max normalised
    heat: np.ndarray  # [H, W] the grid upsampled to the frame
    heads: list[tuple[int, int]] = field(default_factory=list)  # the top-k (layer, head) pairs, best first
    image_share: float = 0.0  # mean image mass of the selected heads (before normalisation)
    focus: float = 0.0  # share of the fused map held by its 10% most attended patches
    target_tokens: int = 0  # how many target tokens were averaged
    raw: np.ndarray | None = None  # [g, g] the fused attention before normalisation (attention mass)


# -- the math (numpy only, tested on hand-built tensors) -----------------------------------------
def target_query_positions(labels: np.ndarray, action_mask: np.ndarray, target: Target,
                           eos_id: int) -> np.ndarray:
    """Positions of the queries that predict the target tokens (target position − 1), ascending."""
    labels, action_mask = np.asarray(labels), np.asarray(action_mask, dtype=bool)
    supervised = (labels != IGNORE) & (labels != eos_id)
    if target == "action":
        chosen = supervised & action_mask
    elif target == "reasoning":
        chosen = supervised & ~action_mask
    else:
        raise UsageError(f"Unknown attention target {target!r}; use one of: {', '.join(TARGETS)}")
    positions = np.flatnonzero(chosen)
    return positions[positions > 0] - 1


def image_attention(layers: Sequence[np.ndarray], query_positions: np.ndarray,
                    image_positions: np.ndarray) -> np.ndarray:
    """[layers, heads, n_image]: attention of the (averaged) target queries to each image position.

    `layers` holds one [heads, T, T] array per layer (one sample's attentions).
    """
    if len(query_positions) == 0:
        raise ValueError("no target query positions")
    maps = [np.asarray(layer)[:, query_positions][:, :, image_positions].mean(axis=1) for layer in layers]
    return np.stack(maps).astype(np.float64)


def top_k_heads(maps: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The k (layer, head) pairs whose maps hold the most attention mass on the image, best first."""
    if k < 1:
        raise UsageError(f"--top-k must be at least 1, got {k}")
    layers, heads, _ = maps.shape
    mass = maps.sum(axis=2).reshape(-1)
    order = np.argsort(-mass, kind="stable")[: min(k, layers * heads)]
    return [(int(i // heads), int(i % heads)) for i in order]


def fuse(maps: np.ndarray, heads: Sequence[tuple[int, int]], mode: Fusion) -> np.ndarray:
    """[n_image]: the given (layer, head) maps fused by `max` or `mean` (not normalised)."""
    chosen = np.stack([maps[layer, head] for layer, head in heads])
    if mode == "max":
        return chosen.max(axis=0)
    if mode == "mean":
        return chosen.mean(axis=0)
    raise UsageError(f"Unknown fusion {mode!r}; use one of: {', '.join(FUSIONS)}")


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map (no preference for any patch) becomes all zero."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=np.float64)


def focus(values: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the total held by the top `fraction` of patches (at least one patch)."""
    total = float(values.sum())
    if total <= 0:
        return 0.0
    top = max(1, math.ceil(len(values) * fraction))
    return float(np.sort(values)[::-1][:top].sum() / total)


def patch_grid(fused: np.ndarray) -> np.ndarray:
    """[g, g] from [g²]: patch i → (row i // g, column i % g), the row-major order of patch embeddings."""
    side = math.isqrt(len(fused))
    if side * side != len(fused):
        raise ValueError(f"{len(fused)} image tokens do not form a square patch grid")
    return np.asarray(fused).reshape(side, side)


def box_cells(boxes: Sequence[Sequence[float]], side: int) -> np.ndarray:
    """[side, side] bool: the cells of a row-major patch grid over the frame that overlap a box.

    A box is [top, left, bottom, right] in fractions of the frame; cell (r, c) spans [r/side, (r+1)/side)
    × [c/side, (c+1)/side). Overlap must have positive area: a box edge on a cell border does not
    reach into the next cell.
    """
    edges = np.arange(side + 1) / side
    cells = np.zeros((side, side), dtype=bool)
    for top, left, bottom, right in boxes:
        rows = (top < edges[1:]) & (bottom > edges[:-1])
        cols = (left < edges[1:]) & (right > edges[:-1])
        cells |= rows[:, None] & cols[None, :]
    return cells


def box_share(mass: np.ndarray, boxes: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(share, chance): the share of a [g, g] attention-mass grid on the cells the boxes overlap, and
    the share a uniform map would put there (the overlapped cells' fraction of the grid)."""
    mass = np.asarray(mass, dtype=np.float64)
    cells = box_cells(boxes, mass.shape[0])
    total = float(mass.sum())
    if total <= 0:
        raise ValueError("the attention map holds no mass")
    return float(mass[cells].sum() / total), float(cells.mean())


def upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[height, width] bilinear upsampling of a patch grid (cell centres at patch centres)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.as_tensor(np.asarray(grid, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def fused_map(maps: np.ndarray, frame: np.ndarray, top_k: int, mode: Fusion,
              target_tokens: int = 0) -> AttentionMap:
    """Steps 4–6 on [layers, heads, n_image] maps for one frame."""
    heads = top_k_heads(maps, top_k)
    fused = fuse(maps, heads, mode)
    grid = patch_grid(normalise(fused))
    share = float(np.mean([maps[layer, head].sum() for layer, head in heads]))
    return AttentionMap(frame=frame, grid=grid, heat=upsample(grid, frame.shape[0], frame.shape[1]),
                        heads=heads, image_share=share, focus=focus(fused), target_tokens=target_tokens,
                        raw=patch_grid(fused))


# -- running a backbone ----------------------------------------------------------------------------
def image_positions(backbone: Any, input_ids: Any) -> np.ndarray:
    """Positions of the image tokens in one sequence, in patch order (the backbone knows its layout)."""
    locate = getattr(backbone, "image_token_positions", None)
    if locate is None:
        raise UsageError(f"Backbone '{backbone.name}' does not say where its image tokens are "
                         f"(no image_token_positions); attention maps need it")
    return np.asarray(locate(input_ids).cpu())


def _ensure_eager(backbone: Any) -> None:
    """SDPA returns no attention weights: switch the model to eager attention when it is not."""
    model = backbone.model
    text_config = getattr(model.config, "text_config", model.config)
    if getattr(text_config, "_attn_implementation", "eager") != "eager" and hasattr(model,
                                                                                    "set_attn_implementation"):
        model.set_attn_implementation("eager")


def sample_image_maps(backbone: Any, sample: Any, targets: Sequence[Target] = ("action",),
                      order: str = "reason_then_act") -> dict[str, tuple[np.ndarray, int]]:
    """{target: ([layers, heads, n_image] maps, target token count)} of one TrainingSample (its primary
    frame) under `backbone`, all targets from one forward pass."""
    if "reasoning" in targets and not sample.reasoning:
        raise UsageError(f"Sample {sample.key or sample.instruction!r} has no reasoning text; "
                         f"--target reasoning needs an annotated run")
    _ensure_eager(backbone)
    batch = backbone.collate([sample], order=order)
    with backbone.inference():
        out = backbone.forward(batch, output_attentions=True)
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise UsageError(f"Backbone '{backbone.name}' returned no attention weights; load it with eager "
                         f"attention (e.g. --set backbone.attn_implementation=eager)")
    layers = [a[0].float().cpu().numpy() for a in attentions]
    images = image_positions(backbone, batch["input_ids"][0])
    found = {}
    for target in targets:
        queries = target_query_positions(batch["labels"][0].numpy(), batch["action_mask"][0].numpy(), target,
                                         backbone.eos_id)
        if len(queries) == 0:
            raise UsageError(f"Sample {sample.key!r} has no {target} tokens to take attention from")
        found[target] = (image_attention(layers, queries, images), len(queries))
    return found


def sample_attention(backbone: Any, sample: Any, target: Target = "action", top_k: int = 8,
                     mode: Fusion = "max", order: str = "reason_then_act") -> AttentionMap:
    """The fused attention map of one TrainingSample (its primary frame) under `backbone`."""
    maps, tokens = sample_image_maps(backbone, sample, (target,), order)[target]
    return fused_map(maps, sample.image, top_k, mode, target_tokens=tokens)
