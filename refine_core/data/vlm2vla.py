"""VLM2VLA training texts from an episode and its validated plan (`refine_core.plan`).

Five kinds of prompt → answer pairs, each with the primary frame it asks about:
- `subtasks`   first frame + instruction → the numbered subtask list (one per episode);
- `motion`     a subtask's first frame + subtask → its directional plan (`main_movements`);
- `actions`    a chunk's first frame + subtask + plan → `[[dx, dy, dz, g], …]` as text, after the
               chunk post-processing below;
- `direction`  a frame + subtask → which way the gripper moves over the next `DIRECTION_THRESHOLD`
               (the auxiliary task; only frames from which the subtask still moves that far);
- `completion` a frame + subtask → "yes"/"no": "no" at the subtask's first frame, "yes" at the
               first frame after it (none for the last subtask when no frame follows it).

Chunk post-processing (the rule of refine's issue 17, which states the paper's; the paper's own
text could not be read here to confirm it): consecutive steps that move along one and the same axis
(every other axis below `STILL` metres), with the same sign and the same gripper command, merge
into one action until the merged move along that axis reaches `MERGE_THRESHOLD` (2.5 cm); every
translation value is then capped at ±`CAP` (5 cm). A merged action is the sum of its steps, so
only the cap changes how far the arm goes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

from refine_core.episode import Episode
from refine_core.plan import AXIS_CONVENTIONS, TrajectoryPlan, action_log_rows, validate_plan

MERGE_THRESHOLD = 0.025  # metres
CAP = 0.05  # metres, per translation value
DIRECTION_THRESHOLD = 0.025  # metres
STILL = 1e-3  # metres: a smaller component is no motion on that axis
ACTION_DECIMALS = 3  # millimetres in the answer text
_EPS = 1e-9  # float sums such as 0.0125 + 0.0125 must count as reaching 0.025
_WORDS = (("forward", "back"), ("left", "right"), ("up", "down"))
KINDS = ("subtasks", "motion", "actions", "direction", "completion")


@dataclass
class MergedMove:
    start: int  # first merged row
    stop: int  # one past the last
    values: np.ndarray  # [4] dx, dy, dz (capped), g


def _single_axis(row: np.ndarray, still: float) -> int | None:
    moving = [i for i in range(3) if abs(row[i]) >= still]
    return moving[0] if len(moving) == 1 else None


def merge_moves(rows: np.ndarray, threshold: float = MERGE_THRESHOLD, cap: float = CAP,
                still: float = STILL) -> list[MergedMove]:
    """[N, 4] `[dx, dy, dz, g]` rows → merged and capped moves (the rule in the module docstring)."""
    rows = np.asarray(rows, dtype=np.float64)
    moves: list[MergedMove] = []
    axes: list[int | None] = []
    for i, row in enumerate(rows):
        axis = _single_axis(row, still)
        if moves and axis is not None and axes[-1] == axis:
            last = moves[-1]
            same_way = np.sign(row[axis]) == np.sign(last.values[axis])
            same_grip = (row[3] > 0.5) == (last.values[3] > 0.5)
            if same_way and same_grip and abs(last.values[axis]) < threshold - _EPS:
                last.values[:3] += row[:3]
                last.stop = i + 1
                continue
        moves.append(MergedMove(i, i + 1, row.copy()))
        axes.append(axis)
    for move in moves:
        move.values[:3] = np.clip(move.values[:3], -cap, cap)
    return moves


def direction_words(delta: np.ndarray) -> str:
    """"forward left": every axis carrying at least half of the largest component (x, y, z order)."""
    size = float(np.abs(delta[:3]).max(initial=0.0))
    return " ".join(pair[0 if v > 0 else 1] for v, pair in zip(delta[:3], _WORDS)
                    if size > 0 and abs(v) >= 0.5 * size)


def direction_label(rows: np.ndarray, start: int, threshold: float = DIRECTION_THRESHOLD) -> str | None:
    """Which way the motion from row `start` goes once one axis has moved `threshold` metres;
    None when the rows end first."""
    total = np.zeros(3)
    for row in np.asarray(rows, dtype=np.float64)[start:]:
        total += row[:3]
        if np.abs(total).max() >= threshold - _EPS:
            return direction_words(total)
    return None


def format_actions(values: np.ndarray, decimals: int = ACTION_DECIMALS) -> str:
    """[[dx, dy, dz, g], …] with `decimals` digits and the gripper as 1.0 / 0.0."""
    def number(v: float) -> str:
        text = f"{v:.{decimals}f}"
        return text.lstrip("-") if float(text) == 0.0 else text  # "-0.000" reads as a direction

    rows = ["[" + ", ".join([number(v) for v in row[:3]] + ["1.0" if row[3] > 0.5 else "0.0"]) + "]"
            for row in np.asarray(values, dtype=np.float64)]
    return "[" + ", ".join(rows) + "]"


@dataclass
class VLM2VLASample:
    """One prompt → answer pair about one frame."""

    kind: str  # one of KINDS
    prompt: str
    answer: str
    images: dict[str, np.ndarray] = field(repr=False)
    primary_camera: str
    key: str  # "<episode_id>/<step>/<kind>"

    @property
    def image(self) -> np.ndarray:
        return self.images[self.primary_camera]


def _context(instruction: str, subtask: str | None = None, plan: str | None = None) -> str:
    lines = [f"Instruction: {' '.join(instruction.split())}"]
    lines += [f"Subtask: {subtask}"] if subtask else []
    lines += [f"Plan: {plan}"] if plan else []
    return "\n".join(lines)


# The prompts of the five kinds: training builds its samples with them and the hierarchical policy
# (refine_core.vlm2vla_policy) asks the trained model the same questions.
def subtasks_prompt(instruction: str) -> str:
    return _context(instruction) + "\nList the subtasks that complete the instruction, in order."


def motion_prompt(instruction: str, subtask: str) -> str:
    return _context(instruction, subtask) + "\nDescribe the movements that complete the subtask."


def actions_prompt(instruction: str, subtask: str, plan: str | None) -> str:
    """`plan` None: the no-reasoning variant (NR), the chunk straight from the subtask."""
    return (_context(instruction, subtask, plan)
            + f"\nWrite the next actions as [[dx, dy, dz, g], ...] ({AXIS_CONVENTIONS}).")


def direction_prompt(instruction: str, subtask: str) -> str:
    return _context(instruction, subtask) + "\nWhich way should the gripper move next?"


def completion_prompt(instruction: str, subtask: str) -> str:
    return _context(instruction, subtask) + "\nIs the subtask complete?"


def format_subtasks(subtasks: list[str]) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(subtasks, 1))


def parse_subtasks(text: str) -> list[str]:
    """The subtasks of a numbered list answer ("1. reach the red block\n2. …"); [] when none parse."""
    found = re.findall(r"(?:^|\n)\s*\d+\.\s*([^\n]+)", text)
    return [" ".join(item.split()) for item in found if item.strip()]


def parse_actions(text: str) -> np.ndarray:
    """`[[dx, dy, dz, g], …]` answer text → [n, 4] float64, or ValueError saying what is wrong."""
    body = text.strip()
    try:
        rows = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the action text is not a JSON list: {exc.msg}") from None
    if not isinstance(rows, list) or not rows or any(
            not isinstance(row, list) or len(row) != 4 or not all(isinstance(v, (int, float)) for v in row)
            for row in rows):
        raise ValueError("the action text is not a non-empty list of [dx, dy, dz, g] number rows")
    values = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the action text holds a non-finite number")
    return values


def vlm2vla_samples(episode: Episode, plan: TrajectoryPlan, chunk_size: int = 5,
                    kinds: tuple[str, ...] = KINDS, with_plan: bool = True) -> list[VLM2VLASample]:
    """Every sample of `kinds` for one episode. The plan must match the episode's actions
    (`validate_plan`), else ValueError; the action text is cut from the episode's exact actions at
    the plan's subtask boundaries. `with_plan` False: action prompts leave the motion plan out (the
    paper's no-reasoning ablation, NR)."""
    unknown = set(kinds) - set(KINDS)
    if unknown or chunk_size < 1:
        raise ValueError(f"kinds must be among {KINDS} and chunk_size >= 1; "
                         f"got {sorted(unknown)}, {chunk_size}")
    log = action_log_rows(episode.actions())
    mismatch = validate_plan(plan, log)
    if mismatch is not None:
        raise ValueError(f"episode {episode.episode_id!r}: the plan does not match its actions: {mismatch}")
    instruction = episode.instruction
    out: list[VLM2VLASample] = []

    def add(kind: str, t: int, prompt: str, answer: str) -> None:
        if kind in kinds:
            step = episode.steps[t]
            out.append(VLM2VLASample(kind, prompt, answer, step.images, step.primary_camera,
                                     f"{episode.episode_id}/{t}/{kind}"))

    add("subtasks", 0, subtasks_prompt(instruction), format_subtasks(plan.subtasks()))
    for step, (start, stop) in zip(plan.steps, plan.boundaries()):
        add("motion", start, motion_prompt(instruction, step.subtask), step.main_movements)
        moves = merge_moves(log[start:stop])
        for first in range(0, len(moves), chunk_size):
            chunk = moves[first:first + chunk_size]
            add("actions", start + chunk[0].start,
                actions_prompt(instruction, step.subtask, step.main_movements if with_plan else None),
                format_actions(np.stack([m.values for m in chunk])))
        for t in range(start, stop):
            label = direction_label(log[start:stop], t - start)
            if label:
                add("direction", t, direction_prompt(instruction, step.subtask), label)
        question = completion_prompt(instruction, step.subtask)
        add("completion", start, question, "no")
        if stop < len(episode.steps):
            add("completion", stop, question, "yes")
    return out
