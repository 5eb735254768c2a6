"""SpatialVLA's spatial action tokenizer: 3 ids per step on Gaussian-quantile bins (8194 added tokens).

Layout (as upstream SpatialVLA `model/action_tokenizer.py`): tokens `<ACTION00000>`…`<ACTION08193>` hold
consecutive ids from `begin`; offsets 0..4095 are translation cells, 4096..8191 rotation cells,
8192 / 8193 the gripper (closed / open). A step is written [translation, rotation, gripper].

- Translation: the normalised (x, y, z), each clipped to [-1, 1], in spherical coordinates
  θ = atan2(√(x²+y²), z) ∈ [0, π], φ = atan2(y, x) ∈ [-π, π], r = |xyz| ∈ [0, √3]; 16 × 32 × 8 bins,
  cell offset (θ·32 + φ)·8 + r. Decoding takes each bin's centre, converts back and clips to [-1, 1]
  (the sphere circumscribes the cube, so corner cells decode onto the cube's surface).
- Rotation: normalised roll, pitch, yaw on [-1, 1], 16 bins each, offset (roll·16 + pitch)·16 + yaw.
- Gripper: refine's raw command (1 = open, 0 = closed; upstream's OXE data uses the same convention),
  open when ≥ 0.5; it is never normalised, whatever the statistics' mask says.

Bin edges ("bin policy", upstream's processor_config.json `bin_policy`): for a component with range
[lo, hi] and n bins, edges = Φ⁻¹(linspace(Φ(lo), Φ(hi), n+1)) of a Gaussian N(μ, max(σ, min_sigma)),
clipped to [lo, hi] — equal-probability bins. μ/σ describe the *normalised* components (θ, φ, r of the
normalised translation). Where they come from, first match wins:
  1. `bin_policy` option (or `SpatialCodec.from_processor_config`): a checkpoint's own edges, exactly;
  2. `gaussian` option: μ/σ as upstream's gaussian_statistic.json (`fit_gaussian(actions, stats)`
     computes them from sample actions the way upstream does: normalise, clip, convert, mean/std);
  3. `distribution: uniform`: uniform edges, as upstream without Gaussian parameters;
  4. otherwise at bind, from refine's Statistics alone (`gaussian_from_statistics`): rotation μ/σ are
     the raw mean/std mapped through the q01/q99 normalisation; θ/φ/r moments are integrated by
     Gauss–Hermite quadrature assuming independent Gaussian x, y, z (clipped as on encode). An
     approximation: prefer `fit_gaussian` on real actions when they are at hand.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from statistics import NormalDist, StatisticsError
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import ValidationError

from refine_core import (ActionCodec, ActionDecodeError, GRIPPER, Statistics, TokenizerLike, UsageError,
    default_action_mask)

from .options import SPATIAL_GRID, SpatialOptions

RANGES = {"theta": (0.0, math.pi), "phi": (-math.pi, math.pi), "r": (0.0, math.sqrt(3.0)),
          "roll": (-1.0, 1.0), "pitch": (-1.0, 1.0), "yaw": (-1.0, 1.0)}
TRANSLATION, ROTATION = tuple(SPATIAL_GRID["translation"]), tuple(SPATIAL_GRID["rotation"])
N_TRANSLATION = math.prod(SPATIAL_GRID["translation"].values())  # 4096
N_ROTATION = math.prod(SPATIAL_GRID["rotation"].values())  # 4096
N_TOKENS = N_TRANSLATION + N_ROTATION + 2  # 8194
ACTION_TOKENS = tuple(f"<ACTION{i:05d}>" for i in range(N_TOKENS))
_GROUPS = ("translation", "rotation", "gripper")
_OFFSETS = (0, N_TRANSLATION, N_TRANSLATION + N_ROTATION, N_TOKENS)
_SIGMA_FLOOR = 1e-6  # σ = 0 (a constant component) would make Φ a step function
_QUADRATURE = 20  # Gauss–Hermite nodes per axis (8000 points); cheap enough to run at every bind


# -- bin policies -------------------------------------------------------------------------------
def _flat(policy: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, np.ndarray]:
    """Upstream's nested {group: {name_bins: edges}} → {name: float64 edges}."""
    return {name: np.asarray(policy[group][f"{name}_bins"], dtype=np.float64)
            for group, names in SPATIAL_GRID.items() for name in names}


def _nested(edges: Mapping[str, np.ndarray]) -> dict[str, dict[str, list[float]]]:
    return {group: {f"{name}_bins": [float(e) for e in edges[name]] for name in names}
            for group, names in SPATIAL_GRID.items()}


def uniform_bin_policy() -> dict[str, dict[str, list[float]]]:
    """Uniform edges over each component's range (upstream's policy when no Gaussian is given)."""
    return _nested({name: np.linspace(*RANGES[name], bins + 1)
                    for names in SPATIAL_GRID.values() for name, bins in names.items()})


def _mu_sigma(params: Any) -> tuple[float, float]:
    return (float(params.mu), float(params.sigma)) if hasattr(params, "mu") else (
        float(params["mu"]), float(params["sigma"]))


def _gaussian_edges(name: str, bins: int, mu: float, sigma: float) -> np.ndarray:
    lo, hi = RANGES[name]
    dist = NormalDist(mu, max(sigma, _SIGMA_FLOOR))
    p_lo, p_hi = dist.cdf(lo), dist.cdf(hi)
    try:
        inner = [dist.inv_cdf(p_lo + (p_hi - p_lo) * k / bins) for k in range(1, bins)]
        edges = np.clip(np.array([lo, *inner, hi]), lo, hi)
    except StatisticsError:  # a probability of exactly 0 or 1: the Gaussian misses the range
        edges = np.full(bins + 1, lo)
    if not (np.diff(edges) > 0).all():
        raise UsageError(
            f"spatial: a Gaussian with mu={mu:.4g}, sigma={sigma:.4g} puts no usable mass on the {name} "
            "range "
            f"[{lo:.4g}, {hi:.4g}]; set codec.min_sigma (e.g. 0.05) or codec.distribution=uniform"
        )
    return edges


def gaussian_bin_policy(gaussian: Mapping[str, Any],
                        min_sigma: float = 0.0) -> dict[str, dict[str, list[float]]]:
    """Equal-probability edges of N(μ, max(σ, min_sigma)) per component, in upstream's `bin_policy` form.

    `gaussian` maps theta, phi, r, roll, pitch, yaw to {"mu", "sigma"} (extra keys such as x, y, z are
    ignored). UsageError when a Gaussian leaves bins of zero width.
    """
    edges = {}
    for names in SPATIAL_GRID.values():
        for name, bins in names.items():
            mu, sigma = _mu_sigma(gaussian[name])
            if not (math.isfinite(mu) and math.isfinite(sigma)):
                raise UsageError(f"spatial: the {name} Gaussian has mu={mu}, sigma={sigma}; both must be "
                                 "finite")
            edges[name] = _gaussian_edges(name, bins, mu, max(sigma, min_sigma))
    return _nested(edges)


# -- where μ/σ come from ----------------------------------------------------------------------
def to_spherical(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(θ, φ, r) of [..., 3] points: polar angle from +z, azimuth from +x, radius."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.arctan2(np.hypot(x, y), z), np.arctan2(y, x), np.sqrt(x * x + y * y + z * z)


def to_cartesian(theta: np.ndarray, phi: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.stack([r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), r * np.cos(theta)], -1)


def _with_mask(stats: Statistics) -> Statistics:
    return stats if stats.mask is not None else dataclasses.replace(stats,
                                                                    mask=default_action_mask(stats.dim))


def fit_gaussian(actions: np.ndarray, stats: Statistics) -> dict[str, dict[str, float]]:
    """μ/σ of the normalised components of sample `actions` [N, 7], as upstream's gaussian_statistic.json.

    Actions are normalised with `stats` and clipped to [-1, 1] exactly as `encode` does; σ is the
    population standard deviation (the maximum-likelihood Gaussian fit).
    """
    values = np.asarray(actions, dtype=np.float64).reshape(-1, stats.dim)
    norm = np.clip(_with_mask(stats).normalize(values), -1.0, 1.0)
    columns = dict(zip(("x", "y", "z", *TRANSLATION, *ROTATION),
                       (*norm[:, :3].T, *to_spherical(norm[:, :3]), *norm[:, 3:6].T)))
    return {name: {"mu": float(np.mean(v)), "sigma": float(np.std(v))} for name, v in columns.items()}


def gaussian_from_statistics(stats: Statistics) -> dict[str, dict[str, float]]:
    """μ/σ estimated from refine's per-dimension Statistics alone (no sample actions); see module doc."""
    stats = _with_mask(stats)
    span = np.maximum(stats.q99 - stats.q01, 1e-8)
    # encode clips to [-1, 1], so a mean past q01/q99 (a skewed dimension) sits at the range's end
    mu = np.clip(np.where(stats.mask, 2.0 * (stats.mean - stats.q01) / span - 1.0, stats.mean), -1.0, 1.0)
    sigma = np.where(stats.mask, 2.0 * stats.std / span, stats.std)
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE)
    weights = weights / weights.sum()
    axes = [np.clip(mu[i] + sigma[i] * nodes, -1.0, 1.0) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    w = np.einsum("i,j,k->ijk", weights, weights, weights)
    out = {}
    for name, values in zip(TRANSLATION, to_spherical(grid)):
        mean = float((w * values).sum())
        out[name] = {"mu": mean, "sigma": float(np.sqrt((w * (values - mean) ** 2).sum()))}
    for i, name in enumerate(ROTATION, start=3):
        out[name] = {"mu": float(mu[i]), "sigma": float(sigma[i])}
    return out


# -- the codec ------------------------------------------------------------------------------------
class SpatialCodec(ActionCodec):
    name = "spatial"
    options_model = SpatialOptions
    options: SpatialOptions

    def __init__(self, options: SpatialOptions | None = None):
        super().__init__(options)
        opts, policy = self.options, None
        if opts.bin_policy is not None:
            policy = opts.bin_policy
        elif opts.gaussian is not None:
            policy = gaussian_bin_policy(opts.gaussian, opts.min_sigma)
        elif opts.distribution == "uniform":
            policy = uniform_bin_policy()
        self._from_statistics = policy is None  # computed in bind, from the dataset's statistics
        self._edges = None if policy is None else _flat(policy)
        self._begin = 0

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any] | str | Path, **options: Any) -> "SpatialCodec":
        """The codec a SpatialVLA checkpoint was trained with: its `bin_policy` and `action_chunk_size`.

        `config` is processor_config.json (a path, its folder, or the parsed dict); `options` override.
        """
        data = _read_config(config)
        action = data.get("action_config") or {}
        if action.get("use_spherical", True) is not True:
            raise UsageError("spatial: the checkpoint bins Cartesian translation (use_spherical false); "
                             "unsupported")
        num = action.get("num_bins") or {}
        for group, names in SPATIAL_GRID.items():
            for name, bins in names.items():
                if (num.get(group) or {}).get(f"{name}_bins", bins) != bins:
                    raise UsageError(f"spatial: the checkpoint has {num[group][f'{name}_bins']} {name} bins, "
                                     f"this codec {bins}")
        if "bin_policy" not in data:
            raise UsageError("spatial: the processor config has no 'bin_policy'")
        merged = {"bin_policy": data["bin_policy"], "chunk_size": int(data.get("action_chunk_size", 4)),
                  **options}
        try:
            return cls(SpatialOptions.model_validate(merged))
        except ValidationError as exc:
            detail = exc.errors()[0]
            raise UsageError(f"spatial: processor config {detail['loc'][0]}: {detail['msg']}") from None

    # -- shape and vocabulary ------------------------------------------------------------------
    @property
    def span_length(self) -> int:
        return 3 * self.chunk_size

    def new_tokens(self) -> list[str]:
        return list(ACTION_TOKENS)

    def _bind_vocabulary(self, tokenizer: TokenizerLike) -> None:
        vocab = tokenizer.get_vocab()
        ids = np.array([vocab[token] for token in ACTION_TOKENS], dtype=np.int64)
        if not (np.diff(ids) == 1).all():
            where = int(np.argmax(np.diff(ids) != 1)) + 1
            raise UsageError(
                f"spatial: the {N_TOKENS} action tokens must have consecutive ids, as SpatialVLA lays them "
                "out, but "
                f"{ACTION_TOKENS[where]} has id {int(ids[where])} after {int(ids[where - 1])}; add "
                f"codec.new_tokens() to the tokenizer in order"
            )
        self._begin = int(ids[0])

    def bind(self, tokenizer: TokenizerLike, stats: Statistics) -> "SpatialCodec":
        super().bind(tokenizer, stats)
        if self._from_statistics:
            try:
                self._edges = _flat(gaussian_bin_policy(gaussian_from_statistics(self.stats),
                                                        self.options.min_sigma))
            except Exception:
                self._tokenizer = self._stats = self._edges = None  # a failed bind leaves the codec unbound
                raise
        return self

    @property
    def action_token_ids(self) -> np.ndarray:
        self._require_bound()
        return np.arange(self._begin, self._begin + N_TOKENS, dtype=np.int64)

    def group_ids(self) -> tuple[range, range, range]:
        """Token ids allowed at a step's translation, rotation and gripper positions (constrained
        decoding)."""
        self._require_bound()
        return tuple(range(self._begin + a, self._begin + b) for a, b in zip(_OFFSETS, _OFFSETS[1:]))

    def allowed_ids_at(self, position: int) -> np.ndarray:
        """Translation, rotation or gripper ids, by the position's place in its step."""
        return np.asarray(self.group_ids()[position % 3], dtype=np.int64)

    @property
    def bin_policy(self) -> dict[str, dict[str, list[float]]]:
        """The edges in use, in upstream's processor_config `bin_policy` form (save it with a checkpoint)."""
        if self._edges is None:
            self._require_bound()
        return _nested(self._edges)

    # -- the contract ----------------------------------------------------------------------------
    def encode(self, actions: np.ndarray) -> list[int]:
        self._require_bound()
        chunk = self._as_chunk(actions)
        norm = np.clip(self.normalize(chunk), -1.0, 1.0)
        translation = self._cells(TRANSLATION, to_spherical(norm[:, :3]))
        rotation = self._cells(ROTATION, norm[:, 3:6].T)
        gripper = (chunk[:, GRIPPER] >= 0.5).astype(np.int64)
        steps = np.stack([translation, _OFFSETS[1] + rotation, _OFFSETS[2] + gripper], axis=1)
        return (steps + self._begin).reshape(-1).tolist()

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        self._require_bound()
        array = self._id_array(ids)
        if len(array) != self.span_length:
            raise ActionDecodeError(
                f"expected {self.span_length} action ids ({self.chunk_size} step(s) × 3), got {len(array)}",
                text=str(array.tolist()), ids=array,
            )
        offsets = array - self._begin
        group = np.arange(len(offsets)) % 3
        wrong = np.flatnonzero((offsets < np.take(_OFFSETS,
                                                  group)) | (offsets >= np.take(_OFFSETS, group + 1)))
        if wrong.size:
            where, kind = int(wrong[0]), int(group[wrong[0]])
            raise ActionDecodeError(
                f"id {int(array[where])} at position {where} is not a {_GROUPS[kind]} action id "
                f"({self._begin + _OFFSETS[kind]}..{self._begin + _OFFSETS[kind + 1] - 1})",
                text=str(array.tolist()), ids=array,
            )
        steps = offsets.reshape(-1, 3)
        xyz = np.clip(to_cartesian(*self._centres(TRANSLATION, steps[:, 0])), -1.0, 1.0)
        rpy = np.stack(self._centres(ROTATION, steps[:, 1] - _OFFSETS[1]), axis=1)
        actions = self.unnormalize(np.concatenate([xyz, rpy, np.zeros((len(steps), 1))], axis=1))
        actions[:, GRIPPER] = (steps[:, 2] - _OFFSETS[2]).astype(np.float64)  # 1 = open, never normalised
        return actions.astype(np.float32)

    # -- helpers ----------------------------------------------------------------------------------
    def _cells(self, names: tuple[str, ...], values: Sequence[np.ndarray]) -> np.ndarray:
        """Mixed-radix cell offset of per-component values (first component most significant)."""
        index = np.zeros(len(values[0]), dtype=np.int64)
        for name, value in zip(names, values):
            bins = len(self._edges[name]) - 1
            index = index * bins + np.digitize(value, self._edges[name][1:-1])
        return index

    def _centres(self, names: tuple[str, ...], offsets: np.ndarray) -> list[np.ndarray]:
        out, rest = [], offsets.astype(np.int64)
        for name in reversed(names):
            edges = self._edges[name]
            rest, cell = np.divmod(rest, len(edges) - 1)
            out.append((edges[cell] + edges[cell + 1]) / 2.0)
        return out[::-1]

    def _trailing_ids(self) -> set[int]:
        """Only eos/pad (action tokens may be special tokens too); a minimal tokenizer's special ids."""
        enders = set()
        for attr in ("eos_token_id", "pad_token_id"):
            value = getattr(self.tokenizer, attr, None)
            enders.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
        if not enders:
            enders = set(getattr(self.tokenizer, "all_special_ids", None) or ())
        return {int(i) for i in enders} - set(range(self._begin, self._begin + N_TOKENS))

def _read_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    path = path / "processor_config.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"spatial: cannot read the processor config {path}: {exc}") from None


def statistics_from_processor_config(config: Mapping[str, Any] | str | Path,
                                     dataset: str | None = None) -> Statistics:
    """A SpatialVLA checkpoint's action statistics for `dataset` (its `unnorm_key`), for decoding."""
    table = _read_config(config).get("statistics") or {}
    if dataset is None and len(table) == 1:
        dataset = next(iter(table))
    if dataset not in table:
        raise UsageError("spatial: pick the dataset whose statistics decode actions. Available: "
                         f"{', '.join(table)}")
    a = table[dataset]["action"]
    q01, q99 = np.asarray(a["q01"], float), np.asarray(a["q99"], float)
    return Statistics(mean=a.get("mean", (q01 + q99) / 2), std=a.get("std", (q99 - q01) / 2),
                      min=a.get("min", q01),
                      max=a.get("max", q99), q01=q01, q99=q99, mask=a.get("mask"))


# -- embedding re-gridding --------------------------------------------------------------------------
def _regrid_matrix(old_edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """[new bins, old bins]: linear interpolation of old-centre values at the new centres, clamped at the
    ends."""
    old_c, new_c = (old_edges[:-1] + old_edges[1:]) / 2, (new_edges[:-1] + new_edges[1:]) / 2
    return np.stack([np.interp(new_c, old_c, column) for column in np.eye(len(old_c))], axis=1)


def spatial_embedding_adaption(old_policy: Mapping, new_policy: Mapping, weight):
    """Re-grid SpatialVLA's action-token embeddings when the bins change (a new robot's statistics).

    `weight` is the [8194, D] `spatial_embed_tokens` weight, row i for `<ACTIONi>`. Each translation
    and rotation embedding is re-read at its new bin centre: rows are viewed as a 16×32×8 (θ, φ, r) and a
    16×16×16 (roll, pitch, yaw) grid of values at the old centres and interpolated trilinearly at the
    new centres; beyond the outermost old centres the edge value is kept. Gripper rows are copied.
    Returns a new tensor (same dtype/device); `weight` is not modified.

    Upstream (`SphericalCoordinateActionTokenizer.spatial_embedding_adaption`) pads each grid with the
    range ends (replicated values, i.e. the same clamping) and calls scipy `griddata(method="linear")`,
    which interpolates on a Delaunay triangulation rather than trilinearly, and builds its point lists
    with np.meshgrid's default "xy" indexing, which pairs the θ/φ (and roll/pitch) coordinates with the
    wrong rows; here the grid axes follow the id layout. Both agree when the policies are equal.
    """
    import torch

    old, new = _flat(old_policy), _flat(new_policy)
    for names in SPATIAL_GRID.values():
        for name, bins in names.items():
            if len(old[name]) != bins + 1 or len(new[name]) != bins + 1:
                raise ValueError(f"{name}: both policies need {bins + 1} edges")
    if weight.ndim != 2 or weight.shape[0] < N_TRANSLATION + N_ROTATION:
        raise ValueError(f"expected a [{N_TOKENS}, D] embedding weight, got shape {tuple(weight.shape)}")
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    out, start = weight.detach().clone(), 0
    for names in (TRANSLATION, ROTATION):
        sizes = [len(old[name]) - 1 for name in names]
        count = math.prod(sizes)
        block = weight.detach()[start:start + count].to(work).reshape(*sizes, -1)
        for axis, name in enumerate(names):
            matrix = torch.as_tensor(_regrid_matrix(old[name], new[name]), dtype=work, device=weight.device)
            block = torch.movedim(torch.tensordot(matrix, block, dims=([1], [axis])), 0, axis)
        out[start:start + count] = block.reshape(count, -1).to(weight.dtype)
        start += count
    return out
