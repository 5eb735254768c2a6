"""The scripted teacher's trajectory decomposition (VLM2VLA plan), by rules.

The log is split where the gripper opens or closes and where the motion phase changes
(`refine_core.motion_phases`); runs whose subtask reads the same are one step ("approach" and
"descend" before a grasp are both "reach the red block"). Subtask names use the step metadata's
`target` / `destination` when the dataset provides them, else the instruction. Each step's
actions are the log rows as the teacher was shown them, so the plan validates by construction.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refine_core import PlanStep, TrajectoryPlan, TrajectoryRequest, gripper_open, motion_phases

_AXIS_WORDS = (("forward", "back"), ("left", "right"), ("up", "down"))
_MOVING = 1e-4  # metres: a net displacement below this is no movement on that axis


def _subtask(phase: str, target: str, destination: str | None, reached_before: bool) -> str:
    if phase in ("approach", "descend"):
        if reached_before:  # the object was let go: the arm only clears the scene
            return f"move away from the {destination or target}"
        return f"reach the {target}"
    return {
        "grasp": f"grasp the {target}",
        "lift": "lift it",
        "move": f"move it above the {destination}" if destination else "move it",
        "place": f"lower it onto the {destination}" if destination else "lower it",
        "release": "release it",
    }[phase]


def _movement_words(moves: np.ndarray, is_open: np.ndarray, was_open: bool) -> str:
    """Net displacement of a segment in words, with its gripper events: "close the gripper; up 0.094 m".

    `moves` [n, 3] the segment's translations, `is_open` [n] its gripper commands, `was_open` the
    command before it."""
    net = moves.sum(axis=0)
    parts = [f"{pair[0 if v > 0 else 1]} {abs(v):.3f} m" for v, pair in zip(net, _AXIS_WORDS)
             if abs(v) >= _MOVING]
    events = ["open the gripper" if now else "close the gripper"
              for now, prev in zip(is_open, np.r_[was_open, is_open[:-1]]) if now != prev]
    text = "; ".join(events + ([", ".join(parts)] if parts else []))
    return text or "hold still"


def _positions(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    return {str(o["name"]): np.asarray(o["position"], np.float64)[:3] for o in meta.get("objects", [])
            if isinstance(o, dict) and o.get("name") and o.get("position") is not None}


def _where(name: str, meta: dict[str, Any]) -> str:
    """"0.094 m forward and 0.031 m left of the gripper", or "" when positions are unknown."""
    position, gripper = _positions(meta).get(name), meta.get("gripper_position")
    if position is None or gripper is None:
        return ""
    offset = position - np.asarray(gripper, np.float64)[:3]
    parts = [f"{abs(v):.3f} m {pair[0 if v > 0 else 1]}" for v, pair in zip(offset[:2], _AXIS_WORDS)
             if abs(v) >= 0.005]  # horizontal only: height is what the fingers are for
    return (" and ".join(parts) + " of the gripper") if parts else "right below the gripper"


def _reasoning(subtask: str, phase: str, target: str, destination: str | None, meta: dict) -> str:
    if subtask.startswith("move away"):
        return "The object has been let go; moving away leaves the scene clear and the task done."
    if phase in ("approach", "descend"):
        where = _where(target, meta)
        return (f"The gripper is open and empty; the {target} is "
                + (where if where else "not yet between the fingers")
                + ", so the fingers must get around it before they can close.")
    if phase == "grasp":
        return f"The fingers are around the {target}; closing them secures it."
    if phase == "lift":
        return f"Raising the {target} clears the table and the other objects before it is carried."
    if phase == "move":
        where = _where(destination, meta) if destination else ""
        return (f"The {target} is held; the {destination} is " + (where or "elsewhere on the table")
                + ", so it is carried there at a safe height." if destination
                else f"The {target} is held and carried.")
    if phase == "place":
        return (f"The {target} is above the {destination}; lowering it sets it down gently."
                if destination else f"Lowering the {target} sets it down.")
    return f"The {target} rests in place; opening the fingers lets go of it."


def decompose_trajectory(request: TrajectoryRequest, target: str, destination: str | None) -> TrajectoryPlan:
    """The deterministic plan of one episode (see the module docstring)."""
    actions = np.asarray(request.actions, dtype=np.float32)
    if len(actions) == 0:
        raise ValueError(f"episode {request.episode_id!r} has no actions to decompose")
    log = request.action_log()
    phases, is_open = motion_phases(actions), gripper_open(actions)
    # (start, stop, subtask, phase) of each segment: a new one wherever the subtask name changes
    segments: list[list[Any]] = []
    released = False
    for t, phase in enumerate(phases):
        if phase == "grasp":
            released = False
        name = _subtask(phase, target, destination, released)
        if phase == "release":
            released = True
        gripper_changed = t > 0 and is_open[t] != is_open[t - 1]
        if segments and segments[-1][2] == name and not gripper_changed:
            segments[-1][1] = t + 1
        else:
            segments.append([t, t + 1, name, phase])
    meta = request.step_metadata
    # words from the exact actions (the log the teacher copies is rounded)
    steps = [PlanStep(subtask=name,
                      main_movements=_movement_words(actions[start:stop, :3].astype(np.float64),
                                                     is_open[start:stop],
                                                     bool(is_open[start - 1]) if start else True),
                      reasoning=_reasoning(name, phase, target, destination,
                                           meta[start] if start < len(meta) else {}),
                      actions=log[start:stop].tolist())
             for start, stop, name, phase in segments]
    return TrajectoryPlan(steps=steps)
