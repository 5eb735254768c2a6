"""Motion phases and primitive moves read from an episode's actions (refine's conventions:
`[dx, dy, dz, droll, dpitch, dyaw, gripper]`, gripper 1 = open, 0 = closed; x forward, y left,
z up, as in Bridge and Embodied-CoT's primitive moves).

A *primitive move* is the sign of each translation axis that matters in a step ("move forward
down"). A *phase* places the step in a pick-and-place: approach, descend, grasp, lift, move,
place, release. Used by the keyframes strategy (a keyframe is a gripper or phase change) and by
the scripted teacher.
"""
from __future__ import annotations

import numpy as np

from refine_core.episode import GRIPPER

PHASES = ("approach", "descend", "grasp", "lift", "move", "place", "release")
_AXES = (("forward", "backward"), ("left", "right"), ("up", "down"))
# An axis counts when it is at least this share of the step's largest translation component.
_DOMINANT_SHARE = 0.5
# A step is "still" when its translation is below this share of the episode's typical step.
_STILL_SHARE = 0.2


def gripper_open(actions: np.ndarray) -> np.ndarray:
    """[T] bool: the commanded gripper is open (values above 0.5 count as open)."""
    return np.asarray(actions, dtype=np.float32)[:, GRIPPER] > 0.5


def _still_threshold(actions: np.ndarray) -> float:
    norms = np.linalg.norm(np.asarray(actions, dtype=np.float32)[:, :3], axis=1)
    moving = norms[norms > 0]
    return _STILL_SHARE * float(np.median(moving)) if moving.size else 0.0


def step_directions(actions: np.ndarray) -> list[tuple[str, ...]]:
    """Per step, the translation directions that dominate it ("forward", "down", …); () = still."""
    actions = np.asarray(actions, dtype=np.float32)
    still = _still_threshold(actions)
    out: list[tuple[str, ...]] = []
    for delta in actions[:, :3]:
        size = float(np.abs(delta).max(initial=0.0))
        if size == 0.0 or np.linalg.norm(delta) <= still:
            out.append(())
            continue
        out.append(tuple(_AXES[i][0 if delta[i] > 0 else 1]
                         for i in range(3) if abs(delta[i]) >= _DOMINANT_SHARE * size))
    return out


def describe_move(directions: tuple[str, ...]) -> str:
    return "move " + " ".join(directions) if directions else "hold position"


def motion_phases(actions: np.ndarray) -> list[str]:
    """The phase of every step (one of `PHASES`).

    Gripper closing at a step → grasp, opening → release. Otherwise, open: descend when moving
    mostly down, else approach; closed: lift when moving mostly up, place when moving mostly
    down, else move. A one-step blip between two equal phases takes their phase, so sensor noise
    does not make a keyframe of every step.
    """
    actions = np.asarray(actions, dtype=np.float32)
    if len(actions) == 0:
        return []
    is_open = gripper_open(actions)
    directions = step_directions(actions)
    phases: list[str] = []
    for t in range(len(actions)):
        before = is_open[t - 1] if t > 0 else is_open[t]
        down, up = "down" in directions[t], "up" in directions[t]
        if before and not is_open[t]:
            phases.append("grasp")
        elif not before and is_open[t]:
            phases.append("release")
        elif is_open[t]:
            phases.append("descend" if down and len(directions[t]) == 1 else "approach")
        else:
            phases.append("lift" if up and len(directions[t]) == 1 else
                          "place" if down and len(directions[t]) == 1 else "move")
    events = ("grasp", "release")
    for t in range(1, len(phases) - 1):
        if (
            phases[t] not in events
            and phases[t - 1] == phases[t + 1] != phases[t]
            and phases[t - 1] not in events
        ):
            phases[t] = phases[t - 1]
    return phases


def keyframes(actions: np.ndarray) -> list[int]:
    """Steps where a new phase starts (the first step, every gripper change, every phase change)."""
    phases = motion_phases(actions)
    is_open = gripper_open(actions) if len(phases) else np.zeros(0, bool)
    return [t for t in range(len(phases))
            if t == 0 or phases[t] != phases[t - 1] or is_open[t] != is_open[t - 1]]
