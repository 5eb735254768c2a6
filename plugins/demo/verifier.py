"""The demo's scripted subtask verifier for the hierarchical policy (`closed_loop.verifier=scripted`):
whether a subtask of the scripted teacher's decomposition (`refine_teachers.scripted.decompose`) is
complete, read off the simulator's state (`DemoSim.privileged()`, sent by demo-sim with
`send_privileged`). It judges the state after the chunk only; the frames are not looked at.

Subtask → complete when (cells, see `scene`):
- "reach the T": the gripper is open and empty, over T's cell at grasp height;
- "grasp the T": T is held;
- "lift it": T is held at hover height;
- "move away from …": always (the object was let go; nothing is left to check);
- "move it above the D": the gripper is over D's cell;
- "lower it onto the D": T is held at grasp height over D's cell;
- "release it": T is not held and lies on D's cell.
Any other text (a model may write one) is never confirmed: the policy moves on after its attempts.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .scene import GRASP, HOVER


class DemoSubtaskVerifier:
    """`verify(instruction, subtask, before, after, observation)` of the hierarchical policy."""

    def verify(self, instruction: str, subtask: str, before: np.ndarray, after: np.ndarray,
               observation: Any) -> bool:
        state = observation.get("privileged") if isinstance(observation, dict) else None
        if not isinstance(state, dict):
            raise ValueError("the scripted verifier needs the scene state: run demo-sim with send_privileged")
        return subtask_complete(subtask, state)


def subtask_complete(subtask: str, state: dict[str, Any]) -> bool:
    """The rule of the module docstring for one subtask and one `DemoSim.privileged()` state."""
    text = " ".join(subtask.lower().split())
    x, y, z = state["gripper"]
    target, destination = state["target"], state["destination"]
    holding = state["held"] == target["name"]
    over_target = [x, y] == list(target["cell"])
    over_destination = destination is not None and [x, y] == list(destination["cell"])
    if text.startswith("reach"):
        return over_target and z == GRASP and state["opening"] == 1 and state["held"] is None
    if text.startswith("grasp"):
        return holding
    if text.startswith("lift"):
        return holding and z == HOVER
    if text.startswith("move away"):
        return True
    if text.startswith("move"):
        return over_destination
    if text.startswith("lower"):
        return holding and z == GRASP and over_destination
    if text.startswith("release"):
        return (not holding and destination is not None
                and list(target["cell"]) == list(destination["cell"]))
    return False
