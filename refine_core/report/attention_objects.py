"""Attention measured, not only drawn: the share of the action (and reasoning) tokens' image attention
that falls on the task objects, base model vs fine-tuned checkpoint, over held-out frames.

Per frame and model: the target tokens' attention to the image patches, the top-k heads by image
mass fused by `mean` (so the map is attention mass: a max-fused map is a picture, not a share), then
`refine_core.evaluate.attention.box_share` on the boxes of the instruction's target and destination
(step metadata `boxes`, names from `target` and `destination`): the share of that mass on the
patches the boxes overlap, and chance, the share a uniform map would put there.

Across frames: the mean with a 95% percentile-bootstrap interval over frames (2000 resamples,
seed 0), for each model and for the paired difference fine-tuned − base on the same frames. Frames
of one episode are correlated, so the interval is narrower than one over as many independent
scenes would be; frames are spread over as many held-out episodes as there are.

`attention_object_numbers(run_dir)` gives the numbers as a plain dict for any report section; the
Attention maps section shows them as a table and writes them to OUT/report/attention_objects.json.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from refine_core.report.blocks import Table, cell

MEASURE_FRAMES = 24  # held-out frames measured per target (tiny model on CPU: seconds)
MEASURE_FUSION = "mean"
RESAMPLES = 2000
INTERVAL = f"95% percentile bootstrap over frames ({RESAMPLES} resamples)"
NUMBERS_FILE = "attention_objects.json"


@dataclass
class Estimate:
    mean: float
    low: float  # 95% interval
    high: float


@dataclass
class ObjectShare:
    """One target's measurement: shares on the task objects' patches, per model, on the same frames."""

    target: str  # "action" | "reasoning"
    frames: int
    chance: Estimate  # what a uniform map would put on those patches
    base: Estimate
    tuned: Estimate
    difference: Estimate  # fine-tuned − base, paired over frames


@dataclass
class ObjectAttention:
    shares: dict[str, ObjectShare]  # target → measurement (reasoning only where frames have reasoning)
    tuned_label: str
    checkpoint: str
    held_out: bool
    top_k: int
    seconds: float  # wall time of the measurement, both models (loading them not counted)
    fusion: str = MEASURE_FUSION
    interval: str = INTERVAL
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def task_boxes(metadata: dict[str, Any]) -> list[list[float]] | None:
    """Boxes of the step's target and destination objects, or None when the step has none."""
    boxes = metadata.get("boxes")
    if not isinstance(boxes, dict):
        return None
    names = [metadata.get("target"), metadata.get("destination")]
    chosen = [boxes[name] for name in names if name is not None and name in boxes]
    return chosen or None


def bootstrap(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Mean with a 95% percentile-bootstrap interval (resampling the values with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to estimate from")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Estimate(float(values.mean()), float(low), float(high))


def summarise(target: str, base: Sequence[float], tuned: Sequence[float],
              chance: Sequence[float]) -> ObjectShare:
    """Per-frame shares (same frames, same order for both models) → the target's measurement."""
    base, tuned = np.asarray(base, np.float64), np.asarray(tuned, np.float64)
    return ObjectShare(target=target, frames=len(base), chance=bootstrap(chance), base=bootstrap(base),
                       tuned=bootstrap(tuned), difference=bootstrap(tuned - base))


# -- report blocks -------------------------------------------------------------------------------
def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _with_interval(estimate: Estimate) -> str:
    return f"{_percent(estimate.mean)} [{_percent(estimate.low)}, {_percent(estimate.high)}]"


def _points(estimate: Estimate) -> str:
    # rounded before formatting, so a tiny negative prints +0.0, not -0.0
    low, mean, high = (round(100 * v, 1) + 0.0 for v in (estimate.low, estimate.mean, estimate.high))
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


def object_table(result: ObjectAttention) -> Table:
    rows = []
    for share in result.shares.values():
        rows.append([f"{share.target} tokens", cell(share.frames), _with_interval(share.base),
                     _with_interval(share.tuned), _points(share.difference), _percent(share.chance.mean)])
    return Table(["attention share on the task objects", "frames", "base", result.tuned_label,
                  "difference (points)", "chance"], rows)


def reading(share: ObjectShare, tuned_label: str = "fine-tuned") -> str:
    """One sentence: what the numbers say for one target."""
    difference = share.difference
    if difference.low > 0:
        verdict = "more than the base model (the interval of the difference is above zero)"
    elif difference.high < 0:
        verdict = "less than the base model (the interval of the difference is below zero)"
    else:
        verdict = "no clear change from the base model (the interval of the difference includes zero)"
    return (f"{share.target.capitalize()} tokens: the {tuned_label} model puts {_percent(share.tuned.mean)} "
            f"of its image attention on the task objects, {verdict}: base {_percent(share.base.mean)}, "
            f"chance {_percent(share.chance.mean)}, over {share.frames} frames.")


# -- shared by the report's sections ---------------------------------------------------------------
_MEMO: dict[tuple, Any] = {}


def _checkpoint_identity(run_dir: Path) -> tuple | None:
    from refine_core.training.checkpoint import RUN_INFO, latest_checkpoint

    checkpoint = latest_checkpoint(run_dir / "train")
    if checkpoint is None:
        return None
    stamp = (checkpoint / RUN_INFO).stat().st_mtime_ns if (checkpoint / RUN_INFO).is_file() else 0
    return str(checkpoint.resolve()), stamp


def report_attention(run_dir: str | Path, episodes: int = 3, registry: Any = None,
                     frames: int = MEASURE_FRAMES) -> Any:
    """The run's AttentionComparison (figure frames + object measurement), computed once per report
    build (memoised on the newest checkpoint) and its numbers written to OUT/report/attention_objects.json.
    None when the run has no checkpoint; errors propagate."""
    from refine_core.report.attention_compare import compare_attention

    run_dir = Path(run_dir)
    identity = _checkpoint_identity(run_dir)
    if identity is None:
        return None
    key = (*identity, episodes, frames)
    if key not in _MEMO:
        _MEMO.clear()  # one run at a time: the memo only saves the second section's recomputation
        _MEMO[key] = compare_attention(run_dir / "train", episodes=episodes, registry=registry,
                                       measure=frames)
    result, path = _MEMO[key].objects, run_dir / "report" / NUMBERS_FILE
    if result is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    else:  # numbers of an earlier build must not outlive the measurement
        path.unlink(missing_ok=True)
    return _MEMO[key]


def attention_object_numbers(run_dir: str | Path, registry: Any = None, episodes: int = 3) -> dict | None:
    """The attention share on the task objects as a plain dict (`ObjectAttention.to_dict()`: `shares`
    → {"action"/"reasoning": {frames, chance, base, tuned, difference: {mean, low, high}}}, fractions
    0..1), or None when it cannot be measured: no checkpoint, no `boxes` in the dataset's step
    metadata, or the computation failed (the Attention maps section says why). Pass the report's
    attention episodes so both sections share one computation."""
    try:
        comparison = report_attention(run_dir, episodes, registry)
    except Exception:  # the attention section reports the failure; a summary just has no number
        return None
    if comparison is None or comparison.objects is None:
        return None
    return comparison.objects.to_dict()
