"""Options of the built-in action codecs (pydantic only, so registration stays import-light)."""
from __future__ import annotations

from pydantic import Field, field_validator

from refine_core.codec import CodecOptions
from refine_core.episode import ACTION_DIM, GRIPPER

# The characters of the compact text form, in the order explicit `token_ids` are given.
SYMBOLS = "0123456789-.,[]"


class BinsOptions(CodecOptions):
    """OpenVLA: each normalised dimension → one of `n_bins` uniform bins on [-1, 1], as the last ids."""

    n_bins: int = Field(256, ge=2, description="Uniform bin edges on [-1, 1]; uses the last n_bins vocabulary ids.")
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
    normalize: bool = Field(True, description="Write q01/q99-normalised values in [-1, 1] instead of raw units.")

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
            raise ValueError(f"must be {len(SYMBOLS)} distinct non-negative ids, one per symbol of {SYMBOLS!r}")
        return ids
