"""The VLM2VLA plan: a whole trajectory decomposed into subtasks, each with its share of the actions.

A teacher receives a `TrajectoryRequest` (key frames in order, the instruction, the action log
written as `[dx, dy, dz, g]` rows in metres with the robot's axes stated) and answers a
`TrajectoryPlan`:

    {"steps": [{"subtask": "reach the red block", "reasoning": "…", "main_movements": "…",
                "actions": [[0.031, 0.0, 0.0, 1.0], …]}, …]}

`validate_plan` holds the answer to the log: the steps' actions, concatenated in order, must be the
log row for row, within the rounding the log was written with (see `log_tolerance`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from refine_core.episode import GRIPPER, Episode

AXIS_CONVENTIONS = ("x forward, y left, z up, in metres per step; g is the gripper command, "
                    "1 = open, 0 = closed")
LOG_DECIMALS = 4  # digits of the action log shown to a teacher: 0.1 mm, below any robot's repeatability


def log_tolerance(decimals: int = LOG_DECIMALS) -> float:
    """How far a plan's number may be from the log's and still count as the same.

    The teacher sees the log rounded to `decimals` digits and copies those numbers, so a copied
    value differs from the true one by at most half a unit in the last digit; 1e-9 more absorbs
    float32 → decimal conversion.
    """
    return 0.5 * 10.0 ** -decimals + 1e-9


def action_log_rows(actions: np.ndarray) -> np.ndarray:
    """[T, 7] refine actions → [T, 4] `[dx, dy, dz, g]` (float64; g is 1.0 open / 0.0 closed)."""
    actions = np.asarray(actions, dtype=np.float64)
    rows = np.zeros((len(actions), 4), dtype=np.float64)
    if len(actions):
        rows[:, :3] = actions[:, :3]
        rows[:, 3] = (actions[:, GRIPPER] > 0.5).astype(np.float64)
    return rows


def _clean(text: str) -> str:
    return " ".join(str(text).split())


class PlanStep(BaseModel):
    model_config = ConfigDict(frozen=True)

    subtask: str
    reasoning: str
    main_movements: str
    actions: list[list[float]]  # [[dx, dy, dz, g], …]

    @field_validator("subtask", "reasoning", "main_movements")
    @classmethod
    def _text(cls, text: str, info) -> str:
        cleaned = _clean(text)
        if not cleaned:
            raise ValueError(f"plan step {info.field_name} is empty")
        return cleaned

    @field_validator("actions")
    @classmethod
    def _actions(cls, actions: list[list[float]]) -> list[list[float]]:
        if not actions:
            raise ValueError("a plan step needs at least one action")
        for row in actions:
            if len(row) != 4:
                raise ValueError(f"a plan action is [dx, dy, dz, g], got {len(row)} numbers: {row}")
        return [[float(v) for v in row] for row in actions]


class TrajectoryPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    steps: list[PlanStep]

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[PlanStep]) -> list[PlanStep]:
        if not steps:
            raise ValueError("a trajectory plan needs at least one step")
        return steps

    def render(self) -> str:
        """Compact JSON text (one line); `parse(render(p)) == p`."""
        return json.dumps(self.model_dump(), separators=(", ", ": "))

    @classmethod
    def parse(cls, text: str) -> "TrajectoryPlan":
        """JSON text → plan. Accepts a bare list of steps and a ```json fence around either form;
        raises ValueError saying what is wrong."""
        body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip())
        try:
            data: Any = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan text is not JSON: {exc}") from None
        if isinstance(data, list):
            data = {"steps": data}
        return cls.model_validate(data)

    def actions(self) -> np.ndarray:
        """Every step's actions concatenated, [N, 4]."""
        return np.asarray([row for step in self.steps for row in step.actions], dtype=np.float64)

    def subtasks(self) -> list[str]:
        return [step.subtask for step in self.steps]

    def boundaries(self) -> list[tuple[int, int]]:
        """(first action, one past the last) of each step in the concatenated actions."""
        out, start = [], 0
        for step in self.steps:
            out.append((start, start + len(step.actions)))
            start += len(step.actions)
        return out


@dataclass(frozen=True)
class PlanMismatch:
    """The first place a plan disagrees with the action log."""

    index: int  # position in the concatenated actions (= the log's step)
    step: int | None  # the plan step holding it (None: past the plan's end)
    subtask: str
    expected: list[float] | None  # the log's row (None: past the log's end)
    got: list[float] | None
    reason: str

    def __str__(self) -> str:
        where = f"action {self.index}" + (f" (plan step {self.step}, {self.subtask!r})"
                                          if self.step is not None else "")
        return f"{where}: {self.reason}"


def _row(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


def validate_plan(plan: TrajectoryPlan, action_log: np.ndarray,
                  tolerance: float | None = None) -> PlanMismatch | None:
    """None when the plan's concatenated actions equal the log; else the first mismatch.

    `action_log`: [T, 4] rows (`action_log_rows`) or [T, 7] refine actions. Translations must agree
    within `tolerance` metres (default `log_tolerance()`: the rounding of the log the teacher saw);
    the gripper must agree as open/closed (above 0.5 is open).
    """
    tolerance = log_tolerance() if tolerance is None else tolerance
    log = np.asarray(action_log, dtype=np.float64)
    log = action_log_rows(log) if log.ndim == 2 and log.shape[1] == 7 else log
    got = plan.actions()
    owner = [(k, step.subtask) for k, step in enumerate(plan.steps) for _ in step.actions]
    for i in range(max(len(got), len(log))):
        step, subtask = owner[i] if i < len(owner) else (None, "")
        if i >= len(log):
            return PlanMismatch(i, step, subtask, None, _row(got[i]),
                                f"the plan has {len(got)} actions, the log only {len(log)}")
        if i >= len(got):
            return PlanMismatch(i, None, "", _row(log[i]), None,
                                f"the plan ends after {len(got)} actions, the log has {len(log)}")
        error = float(np.abs(got[i, :3] - log[i, :3]).max())
        if error > tolerance:
            return PlanMismatch(i, step, subtask, _row(log[i]), _row(got[i]),
                                f"expected {_row(log[i])}, got {_row(got[i])} "
                                f"(off by {error:.6f} m, tolerance {tolerance:.6f} m)")
        if (got[i, 3] > 0.5) != (log[i, 3] > 0.5):
            return PlanMismatch(i, step, subtask, _row(log[i]), _row(got[i]),
                                f"gripper should be {'open' if log[i, 3] > 0.5 else 'closed'}")
    return None


def format_action_log(rows: np.ndarray, decimals: int = LOG_DECIMALS) -> str:
    """The log as a teacher reads it: one numbered `[dx, dy, dz, g]` row per line."""
    lines = []
    for t, row in enumerate(np.asarray(rows, dtype=np.float64)):
        numbers = [f"{v:.{decimals}f}" for v in row[:3]] + ["1" if row[3] > 0.5 else "0"]
        lines.append(f"{t}: [" + ", ".join(n.lstrip("-") if float(n) == 0 else n for n in numbers) + "]")
    return "\n".join(lines)


@dataclass
class TrajectoryRequest:
    """One episode to decompose: what a teacher may look at."""

    instruction: str
    actions: np.ndarray  # [T, 7] refine actions
    key_frames: list[np.ndarray] = field(default_factory=list)  # primary-camera frames, in order
    key_steps: list[int] = field(default_factory=list)  # the step each key frame shows
    episode_id: str = ""
    step_metadata: list[dict[str, Any]] = field(default_factory=list)  # per step, when the dataset has it
    decimals: int = LOG_DECIMALS

    @classmethod
    def from_episode(cls, episode: Episode, key_steps: list[int] | None = None) -> "TrajectoryRequest":
        """Key frames at `key_steps` (default: the first and last step and every gripper change)."""
        actions = episode.actions()
        if key_steps is None:
            is_open = actions[:, GRIPPER] > 0.5 if len(actions) else np.zeros(0, bool)
            changes = [t for t in range(1, len(actions)) if is_open[t] != is_open[t - 1]]
            key_steps = sorted({0, *changes, max(len(actions) - 1, 0)}) if len(actions) else []
        return cls(instruction=episode.instruction, actions=actions,
                   key_frames=[episode.steps[t].image for t in key_steps], key_steps=list(key_steps),
                   episode_id=episode.episode_id, step_metadata=[dict(s.metadata) for s in episode.steps])

    def action_log(self) -> np.ndarray:
        """[T, 4] rows rounded as the teacher sees them (`format_action_log`)."""
        return np.round(action_log_rows(self.actions), self.decimals)

    def log_text(self) -> str:
        return format_action_log(action_log_rows(self.actions), self.decimals)
