"""The scripted expert as a closed-loop policy: the action `scene.generate_episode` takes, read off
the simulator's privileged state (`DemoSim.privileged()`), so it also recovers from states its own
data never shows (a policy's mistakes before it took over, an object dropped off target).

Phases, as in the generated data: approach (above the target at hover height, x and y at most one
cell per step) → descend → grasp (close, no motion) → lift (straight up) → move (above the
destination) → place (down) → release (open, no motion). Pick-only tasks hold still, closed, after
the lift.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refine_core import ScriptedPolicy

from .scene import CELL, GRASP, HOVER


def _toward(here: np.ndarray, goal: tuple[int, int, int]) -> np.ndarray:
    return np.clip(np.asarray(goal) - here, -1, 1)


def expert_action(privileged: dict[str, Any]) -> np.ndarray:
    """float32[7] in refine's convention: [dx, dy, dz (metres), 0, 0, 0, gripper (1 open, 0 closed)]."""
    here = np.asarray(privileged["gripper"], dtype=np.int64)
    target, destination = privileged["target"], privileged["destination"]
    held = privileged["held"]
    move, opening = np.zeros(3, np.int64), 1.0
    if held is not None and held != target["name"]:
        pass  # the wrong object: let go of it where it is
    elif held is None:
        tx, ty = target["cell"]
        if privileged["opening"] == 0:
            pass  # closed on nothing: open first
        elif (here[0], here[1]) != (tx, ty):
            move = _toward(here, (tx, ty, HOVER))  # approach
        elif here[2] > GRASP:
            move = _toward(here, (tx, ty, GRASP))  # descend
        else:
            opening = 0.0  # grasp
    else:
        opening = 0.0
        goal = target["cell"] if destination is None else destination["cell"]
        if (here[0], here[1]) != tuple(goal) or destination is None:
            # lift straight up first, then travel at hover height; pick-only tasks end up holding still
            lifted = here[2] == HOVER
            move = _toward(here, (*goal, HOVER)) if lifted else _toward(here, (here[0], here[1], HOVER))
        elif here[2] > GRASP:
            move = _toward(here, (*goal, GRASP))  # place
        else:
            opening = 1.0  # release
    action = np.zeros(7, dtype=np.float32)
    action[:3] = move.astype(np.float32) * np.float32(CELL)
    action[6] = opening
    return action


class DemoExpertPolicy(ScriptedPolicy):
    """The expert behind refine's policy server: it reads `observation["privileged"]`, which the
    benchmark sends when `send_privileged` is on."""

    name = "expert"
    role = "reference"

    def action(self, session: Any, observation: Any) -> np.ndarray:
        if not isinstance(observation, dict) or "privileged" not in observation:
            raise ValueError("the expert needs the scene state: run demo-sim with send_privileged")
        return expert_action(observation["privileged"])
