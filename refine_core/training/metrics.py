"""Training metrics: teacher-forced action error, the collapse detector, and `metrics.jsonl`.

`action_l1` is measured under teacher forcing: for each sample of the batch, the argmax ids at
the positions that predict its action tokens (eos excluded) are decoded with the codec and
compared with the sample's true continuous action chunk: mean |decoded − true| over every
element of the chunk (all 7 dimensions, gripper included), averaged over the samples whose
argmax ids decode. `action_decoded` is the fraction that decoded (the others are ill-formed
spans, e.g. a non-bin id where a bin must be). Because the truth is the recorded action, a
perfect token accuracy still leaves the codec's quantisation error (≤ half a bin).

Collapse: a model that stops looking at its input writes the same action tokens for every
observation. At each logged step the detector checks whether all rows of the batch predict
identical action ids while their targets differ; once predictions have differed at least once,
`collapse_window` such steps in a row raise one warning (again only after the streak breaks and
re-forms).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refine_core.action_codec import ActionCodec, ActionDecodeError
from refine_core.loss import IGNORE_INDEX

METRIC_KEYS = ("step", "loss", "action_loss", "reasoning_loss", "action_accuracy", "reasoning_accuracy",
               "action_l1", "lr", "grad_norm", "samples_per_s")


def shifted_targets(labels: torch.Tensor, action_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, is_action) aligned with the logits: position t predicts label t+1."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    is_action = torch.zeros_like(action_mask, dtype=torch.bool)
    is_action[:, :-1] = action_mask[:, 1:].bool()
    return targets, is_action & (targets != IGNORE_INDEX)


def token_counts(batch: dict[str, Any]) -> tuple[int, int]:
    """(action, reasoning) supervised positions of a batch, as the loss counts them."""
    targets, is_action = shifted_targets(batch["labels"], batch["action_mask"])
    supervised = int((targets != IGNORE_INDEX).sum())
    action = int(is_action.sum())
    return action, supervised - action


def action_predictions(logits: torch.Tensor, batch: dict[str, Any],
                       eos_id: int) -> list[tuple[list[int], list[int]]]:
    """Per row: (argmax ids, target ids) at the positions that predict action tokens, eos excluded."""
    targets, is_action = shifted_targets(batch["labels"].to(logits.device),
                                         batch["action_mask"].to(logits.device))
    is_action &= targets != eos_id
    rows = []
    with torch.no_grad():
        for row in range(logits.shape[0]):
            positions = is_action[row].nonzero().flatten()
            predicted = logits[row, positions].argmax(-1) if len(positions) else positions
            rows.append((predicted.tolist(), targets[row, positions].tolist()))
    return rows


def action_l1(codec: ActionCodec, predicted: Sequence[Sequence[int]],
              truths: Sequence[np.ndarray]) -> tuple[float, int]:
    """(sum over decodable rows of mean |decoded − true|, number of decodable rows)."""
    total, decoded = 0.0, 0
    for ids, truth in zip(predicted, truths):
        try:
            actions = codec.decode(ids)
        except ActionDecodeError:
            continue
        truth = np.asarray(truth, dtype=np.float64).reshape(actions.shape)
        total += float(np.abs(actions.astype(np.float64) - truth).mean())
        decoded += 1
    return total, decoded


def rows_collapsed(rows: Sequence[tuple[list[int], list[int]]]) -> bool | None:
    """True if every row predicts the same action ids while the targets differ; None if it cannot tell
    (one row, or all targets equal)."""
    if len(rows) < 2 or len({tuple(t) for _, t in rows}) < 2:
        return None
    return len({tuple(p) for p, _ in rows}) == 1


@dataclass
class CollapseDetector:
    """Counts logged steps whose action predictions ignore the input.

    It arms once predictions have differed across rows: a randomly initialised model writes the
    same tokens for everything before it has learnt anything, which is not a collapse.
    """

    window: int = 3
    streak: int = 0
    warned: bool = False
    armed: bool = False

    def update(self, collapsed: bool | None) -> str | None:
        """Feed one logged step's verdict (None: cannot tell); returns a warning when a streak
        first reaches the window."""
        if collapsed is None:
            return None
        if not collapsed:
            self.streak, self.warned, self.armed = 0, False, True
            return None
        if not self.armed:
            return None
        self.streak += 1
        if self.streak >= self.window and not self.warned:
            self.warned = True
            return (f"action collapse: every sample of the batch has predicted the same action tokens for "
                    f"{self.streak} logged steps while the targets differ; the policy is ignoring its input "
                    f"(lower train.lr, check grad clipping and the action statistics)")
        return None

    @property
    def collapsed(self) -> bool:
        return self.streak >= self.window

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window, self.streak = int(state["window"]), int(state["streak"])
        self.warned, self.armed = bool(state["warned"]), bool(state["armed"])


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsFile:
    """Appends one JSON object per logged step to `metrics.jsonl`."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run re-logs the steps after its checkpoint)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({k: _json_number(v) for k, v in record.items()}) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
