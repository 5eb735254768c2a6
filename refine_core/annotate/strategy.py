"""Which steps of an episode the teacher is asked about, and what the other steps receive.

- `every_step` (ReFineVLA): every step is asked.
- `every_k`: steps 0, k, 2k, … are asked.
- `keyframes`: the first step, every gripper change and every motion-phase change
  (`motion.keyframes`) are asked.

With `every_k` and `keyframes` every step still gets a record: a step that was not asked
reuses the reasoning of the latest asked step before it, with its sub-action replaced by the
step's own primitive move ("grasp: move down"), and its record names that step as `source`.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from refine_core.reasoning import Reasoning, TaskPlanning
from refine_core.annotate.motion import describe_move, keyframes, motion_phases, step_directions

Strategy = Literal["every_step", "every_k", "keyframes"]
STRATEGIES: tuple[str, ...] = ("every_step", "every_k", "keyframes")


def asked_steps(actions: np.ndarray, strategy: str, every: int = 1) -> list[int]:
    """Indices of the steps the teacher is asked about (sorted, step 0 always included)."""
    count = len(actions)
    if strategy == "every_step":
        return list(range(count))
    if strategy == "every_k":
        if every < 1:
            raise ValueError("every_k needs every >= 1")
        return list(range(0, count, every))
    if strategy == "keyframes":
        return keyframes(actions)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def sources(num_steps: int, asked: list[int]) -> list[int]:
    """For every step, the asked step whose reasoning it carries (itself when asked)."""
    out, current, asked_set = [], asked[0] if asked else 0, set(asked)
    for t in range(num_steps):
        if t in asked_set:
            current = t
        out.append(current)
    return out


def current_sub_actions(actions: np.ndarray) -> list[str]:
    """Each step's own sub-action: its phase and primitive move ("descend: move down forward")."""
    phases, moves = motion_phases(actions), step_directions(actions)
    return [f"{phase}: {describe_move(move)}" for phase, move in zip(phases, moves)]


def carry_over(reasoning: Reasoning, sub_action: str) -> Reasoning:
    """The asked step's reasoning with the current step's sub-action."""
    plan = TaskPlanning(logical_steps=list(reasoning.task_planning.logical_steps), sub_action=sub_action)
    return reasoning.model_copy(update={"task_planning": plan})
