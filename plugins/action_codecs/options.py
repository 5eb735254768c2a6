"""Options of the built-in action codecs (pydantic only, so registration stays import-light)."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from refine_core import ACTION_DIM, CodecOptions, GRIPPER

# The characters of the compact text form, in the order explicit `token_ids` are given.
SYMBOLS = "0123456789-.,[]"


class BinsOptions(CodecOptions):
    """OpenVLA: each normalised dimension → one of `n_bins` uniform bins on [-1, 1], as the last ids."""

    n_bins: int = Field(256, ge=2,
                        description="Uniform bin edges on [-1, 1]; uses the last n_bins vocabulary ids.")
    clip_out_of_range: bool = Field(
        False,
        description="Decode ids outside the action range to the nearest bin, as upstream OpenVLA does, "
        "instead of raising ActionDecodeError.",
    )


class TextOptions(CodecOptions):
    """VLM2VLA: actions written as text numbers, `[[dx, dy, dz, ..., g], ...]`, one list per step."""

    decimals: int = Field(3, ge=0, le=8, description="Digits after the decimal point.")
    dims: list[int] = Field(
        default_factory=lambda: list(range(ACTION_DIM)),
        description="Action dimensions written per step, increasing, gripper (6) included; e.g. "
        "[0, 1, 2, 6] for VLM2VLA's [dx, dy, dz, g]. Dimensions not written decode to 0.",
    )
    normalize: bool = Field(True,
                            description="Write q01/q99-normalised values in [-1, 1] instead of raw units.")

    @field_validator("dims")
    @classmethod
    def _check_dims(cls, dims: list[int]) -> list[int]:
        if not dims or any(b <= a for a, b in zip(dims, dims[1:])):
            raise ValueError("must be a non-empty, strictly increasing list of action dimensions")
        if dims[0] < 0 or dims[-1] >= ACTION_DIM:
            raise ValueError(f"action dimensions are 0..{ACTION_DIM - 1}")
        if GRIPPER not in dims:
            # an unwritten gripper would decode to 0 = closed on every step
            raise ValueError(f"must include the gripper ({GRIPPER})")
        return dims


class LeastLikelyOptions(TextOptions):
    """VLM2VLA-AT ablation: the compact text form with each symbol mapped to a reserved vocabulary id."""

    token_ids: list[int] | None = Field(
        None,
        description=f"Explicit ids for the symbols {SYMBOLS!r}, in that order; default: the last "
        f"{len(SYMBOLS)} non-special ids of the base vocabulary.",
    )

    @field_validator("token_ids")
    @classmethod
    def _check_token_ids(cls, ids: list[int] | None) -> list[int] | None:
        if ids is None:
            return None
        if len(ids) != len(SYMBOLS) or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"must be {len(SYMBOLS)} distinct non-negative ids, one per symbol of "
                             f"{SYMBOLS!r}")
        return ids


# SpatialVLA's grid: bins per component, grouped as upstream's `bin_policy` (translation in spherical
# coordinates θ, φ, r; rotation roll, pitch, yaw). 16·32·8 + 16³ + 2 gripper = 8194 action tokens.
SPATIAL_GRID = {"translation": {"theta": 16, "phi": 32, "r": 8}, "rotation": {"roll": 16, "pitch": 16,
                                                                              "yaw": 16}}


class GaussianParams(BaseModel):
    """μ and σ of one component in the normalised action space (upstream's `gs_params` entry)."""

    model_config = ConfigDict(extra="forbid")
    mu: float
    sigma: float = Field(ge=0.0)


class SpatialOptions(CodecOptions):
    """SpatialVLA: 3 ids per step (translation θ,φ,r cell; roll/pitch/yaw cell; gripper) on Gaussian-quantile
    bins."""

    chunk_size: int = Field(4, ge=1, description="Action steps per prediction (SpatialVLA predicts 4).")
    bin_policy: dict[str, dict[str, list[float]]] | None = Field(
        None,
        description="Explicit bin edges as a SpatialVLA checkpoint stores them (processor_config.json "
        "'bin_policy': translation.{theta,phi,r}_bins, rotation.{roll,pitch,yaw}_bins). Wins over the rest.",
    )
    gaussian: dict[str, GaussianParams] | None = Field(
        None,
        description="μ/σ of the normalised theta, phi, r, roll, pitch, yaw (upstream's "
                    "gaussian_statistic.json); "
        "default: estimated from the dataset statistics at bind.",
    )
    distribution: Literal["gaussian", "uniform"] = Field(
        "gaussian", description="Bin edges at Gaussian quantiles (SpatialVLA) or uniform over each range.",
    )
    min_sigma: float = Field(0.0, ge=0.0,
                             description="Lower bound on σ when edges are computed from a Gaussian.")

    @field_validator("bin_policy")
    @classmethod
    def _check_bin_policy(cls, policy: dict | None) -> dict | None:
        if policy is None:
            return None
        expected = {group: {f"{name}_bins" for name in names} for group, names in SPATIAL_GRID.items()}
        if {group: set(edges) for group, edges in policy.items()} != expected:
            raise ValueError(f"must hold exactly {expected} (edge lists)")
        for group, names in SPATIAL_GRID.items():
            for name, bins in names.items():
                edges = policy[group][f"{name}_bins"]
                if len(edges) != bins + 1:
                    raise ValueError(f"{group}.{name}_bins needs {bins + 1} edges, got {len(edges)}")
                if not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
                    raise ValueError(f"{group}.{name}_bins must be finite and strictly increasing")
        return policy

    @field_validator("gaussian")
    @classmethod
    def _check_gaussian(cls, params: dict | None) -> dict | None:
        needed = [name for names in SPATIAL_GRID.values() for name in names]
        if params is not None and any(name not in params for name in needed):
            raise ValueError(f"needs mu/sigma for each of {needed}")
        return params
