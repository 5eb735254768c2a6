"""Closed-loop simulator of the demo task: the scene of one seeded episode, driven by any policy.

The state is the one the scripted expert's data shows (see `scene`): the gripper on the grid
(x, y in 0..GRID-1, z in GRASP..HOVER), its opening (1 open, 0 closed), the object it holds (if any)
and every object's cell. `step` takes refine's 7-D action [dx, dy, dz (metres), droll, dpitch, dyaw,
gripper (1 open, 0 closed)]: each translation is rounded to whole cells and clipped to one cell per
axis (a model outputs continuous values), rotation is ignored. The gripper moves first, then takes
the commanded opening: closing at grasp height over a graspable object grasps it, opening while
holding drops the object on the cell under the gripper. The expert's grasp and release steps have
no translation, so replaying its actions reproduces its states and frames exactly.

Seeding — simulated scenes are never training scenes: training episode i of seed s is drawn from
`np.random.default_rng([s, i])` (`scene.generate_episodes`), sim episode i of seed s from
`np.random.default_rng([s, i, SIM_STREAM])`. NumPy's SeedSequence reads such a list as 32-bit words,
zero-padded to four, and mixes them bijectively: for s, i < 2**32 a training stream starts from
(s, i, 0, 0) and a sim stream from (s, i, SIM_STREAM, 0), so no sim stream is any training stream of
any such seed (the sim checks its own seed and index are in range).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .render import draw_state
from .scene import CELL, GRASP, GRASPABLE, GRID, HOVER, DemoEpisode, generate_episode

SIM_STREAM = 0x5137  # nonzero third seed word: the simulator's streams, never a training episode's
STEP_LIMIT_FACTOR = 2.0  # a policy gets twice the expert's steps
# the longest expert episode: approach and move cross the grid diagonally (one cell per axis per step),
# descend, lift and place span HOVER - GRASP each, plus the grasp and the release
MAX_EXPERT_STEPS = 2 * (GRID - 1) + 3 * (HOVER - GRASP) + 2
MAX_STEP_LIMIT = math.ceil(STEP_LIMIT_FACTOR * MAX_EXPERT_STEPS)
WORKSPACE_LOW, WORKSPACE_HIGH = (0, 0, GRASP), (GRID - 1, GRID - 1, HOVER)  # gripper cells, inclusive
_WORD = 2**32


def sim_rng(seed: int, episode_index: int) -> np.random.Generator:
    """The random stream of sim episode `episode_index` of `seed` (disjoint from training: see above)."""
    if not (0 <= seed < _WORD and 0 <= episode_index < _WORD):
        raise ValueError(f"seed and episode index must be in [0, 2**32), got {seed} and {episode_index}")
    return np.random.default_rng([seed, episode_index, SIM_STREAM])


def sim_scene(seed: int, episode_index: int, pick_only_fraction: float = 0.25) -> DemoEpisode:
    """The scene (and the expert's solution) of sim episode `episode_index` of `seed`."""
    return generate_episode(sim_rng(seed, episode_index), pick_only_fraction)


def action_cells(action: np.ndarray) -> np.ndarray:
    """The grid move an action commands: each of dx, dy, dz rounded to cells and clipped to [-1, 1]."""
    moves = np.rint(np.asarray(action[:3], dtype=np.float64) / CELL)
    return np.clip(np.nan_to_num(moves), -1, 1).astype(np.int64)


class DemoSim:
    """One demo scene, stepped by a policy. `DemoSim(seed, i)` is sim episode i of seed;
    `DemoSim.from_scene(episode)` starts from any generated episode (e.g. a training one, in tests)."""

    def __init__(self, seed: int, episode_index: int, pick_only_fraction: float = 0.25):
        self.seed, self.episode_index = seed, episode_index
        self._start(sim_scene(seed, episode_index, pick_only_fraction))

    @classmethod
    def from_scene(cls, scene: DemoEpisode) -> DemoSim:
        sim = cls.__new__(cls)
        sim.seed = sim.episode_index = None
        sim._start(scene)
        return sim

    def _start(self, scene: DemoEpisode) -> None:
        self.scene = scene
        self.instruction = scene.instruction
        self.target, self.destination = scene.target, scene.destination
        self.expert_steps = scene.num_steps
        self.step_limit = math.ceil(STEP_LIMIT_FACTOR * self.expert_steps)
        self.gripper = tuple(int(v) for v in scene.cells[0])  # (x, y, z) cell
        self.opening = 1  # every episode starts open
        self.held: str | None = None
        self.object_cells = {obj.name: tuple(int(v) for v in obj.cell) for obj in scene.objects}
        self.steps = 0
        self.ever_grasped_target = False

    # -- dynamics --------------------------------------------------------------------------------

    def step(self, action: np.ndarray) -> None:
        """Apply one action (float[7], refine's convention): move, then open or close."""
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape[0] < 7:
            raise ValueError(f"expected a 7-D action, got shape {action.shape}")
        moved = np.clip(np.asarray(self.gripper) + action_cells(action), WORKSPACE_LOW, WORKSPACE_HIGH)
        self.gripper = tuple(int(v) for v in moved)
        if self.held is not None:  # the held object travels with the gripper
            self.object_cells[self.held] = self.gripper[:2]
        opening = 1 if action[6] >= 0.5 else 0  # NaN closes
        if self.opening == 1 and opening == 0 and self.held is None and self.gripper[2] == GRASP:
            self.held = self._graspable_under_gripper()
            self.ever_grasped_target |= self.held == self.target
        elif self.opening == 0 and opening == 1 and self.held is not None:
            self.held = None  # dropped on the cell under the gripper (its cell already follows the gripper)
        self.opening = opening
        self.steps += 1

    def _graspable_under_gripper(self) -> str | None:
        """The graspable object on the gripper's cell; of several (a policy stacked them), the one drawn
        on top, i.e. the last in drawing order."""
        under = [obj.name for obj in self.scene.objects
                 if obj.kind in GRASPABLE and self.object_cells[obj.name] == self.gripper[:2]]
        return under[-1] if under else None

    # -- outcome ---------------------------------------------------------------------------------

    @property
    def success(self) -> bool:
        """Put tasks: the target lies (released) on the destination's cell. Pick-up: the target is held
        at hover height."""
        if self.destination is None:
            return self.held == self.target and self.gripper[2] == HOVER
        cells = self.object_cells
        return self.held != self.target and cells[self.target] == cells[self.destination]

    @property
    def grasp(self) -> bool:
        """The target has been in the gripper at some point."""
        return self.ever_grasped_target

    @property
    def out_of_steps(self) -> bool:
        return self.steps >= self.step_limit

    @property
    def done(self) -> bool:
        return self.success or self.out_of_steps

    # -- views -----------------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """uint8 [256, 256, 3]: the frame the dataset draws for the same state."""
        return draw_state(self.scene.table_tint, self.scene.objects, self.object_cells, self.held,
                          self.gripper, self.opening == 1)

    def object_positions(self) -> list[dict[str, Any]]:
        """Every object's [x, y, z] in metres, in `DemoEpisode.object_positions`' format."""
        out = []
        for obj in self.scene.objects:
            x, y = self.object_cells[obj.name]
            z = (self.gripper[2] - GRASP) * CELL if obj.name == self.held else 0.0
            out.append({"name": obj.name, "position": [float(x * CELL), float(y * CELL), float(z)]})
        return out

    def privileged(self) -> dict[str, Any]:
        """The scene state a scripted expert acts from (plain JSON-able values)."""
        destination = None
        if self.destination is not None:
            destination = {"name": self.destination, "cell": list(self.object_cells[self.destination])}
        return {
            "task": "pick" if self.destination is None else "put",
            "gripper": list(self.gripper), "opening": self.opening, "held": self.held,
            "target": {"name": self.target, "cell": list(self.object_cells[self.target])},
            "destination": destination,
        }
