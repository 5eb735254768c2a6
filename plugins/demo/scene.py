"""The demo task: seeded table-top scenes and the scripted expert that solves them.

World frame (Bridge's and `refine_core.annotate.motion`'s): x forward, y left, z up, metres.
Everything lives on a grid of `CELL` metres: object and gripper positions are whole cells, and
every move is one cell per axis at most, so an action's translation is −CELL, 0 or +CELL per axis
(three values per dimension) and a reached state minus the previous one reproduces it exactly
(CELL = 1/32 is exact in float32, which the Bridge relabelling `state[t+1] − state[t]` needs).

Expert, for "put the T on the D": approach (above T at hover height, x and y each at most one cell
per step) → descend (to grasp height) → grasp (close, no motion) → lift (to hover height) → move
(above D) → place (down to grasp height) → release (open, no motion). "pick up the T" stops after
lift. The phase of a step is the phase of the action taken at it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CELL = 1.0 / 32.0  # metres per grid cell and per step on one axis
GRID = 5  # the workspace is GRID x GRID cells
HOVER, GRASP = 4, 1  # gripper heights in cells: travelling, and fingers around an object
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 205, 30), "purple": (150, 60, 190), "orange": (245, 130, 20),
}
GRASPABLE = ("block", "cup")
CONTAINERS = ("plate", "bowl")
PHASES = ("approach", "descend", "grasp", "lift", "move", "place", "release")


@dataclass
class SceneObject:
    colour: str
    kind: str
    cell: tuple[int, int]  # (x, y) grid cell on the table

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass
class DemoEpisode:
    """One solved task. `cells[t]` is the gripper (x, y, z) in cells before step t's action,
    `grip[t]` the commanded opening at step t (1 open, 0 closed); one more cell than steps
    (the state the last action reaches)."""

    instruction: str
    objects: list[SceneObject]
    target: str
    destination: str | None
    cells: np.ndarray  # [T + 1, 3] int
    grip: np.ndarray  # [T] float32
    phases: list[str]
    held: list[bool]  # [T + 1]: the target is in the gripper in the state before step t
    table_tint: tuple[int, int, int] = (0, 0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.grip)

    def actions(self) -> np.ndarray:
        """[T, 7] float32 in refine's convention (no rotation)."""
        moves = np.diff(self.cells, axis=0).astype(np.float32) * np.float32(CELL)
        out = np.zeros((self.num_steps, 7), dtype=np.float32)
        out[:, :3], out[:, 6] = moves, self.grip
        return out

    def gripper_opening(self) -> np.ndarray:
        """[T + 1] the opening the gripper has in the state before step t (open at the start)."""
        return np.concatenate([[1.0], self.grip]).astype(np.float32)

    def object_positions(self, t: int) -> list[dict[str, Any]]:
        """Every object's [x, y, z] (metres) in the state before step t; a held one moves with the gripper."""
        out = []
        for obj in self.objects:
            if obj.name == self.target and self.held[t]:
                x, y, z = self.cells[t]
                position = [x * CELL, y * CELL, (z - GRASP) * CELL]
            elif (
                obj.name == self.target
                and self.extra.get("placed_from") is not None
                and t >= self.extra["placed_from"]
            ):
                x, y = self.extra["placed_cell"]
                position = [x * CELL, y * CELL, 0.0]
            else:
                position = [obj.cell[0] * CELL, obj.cell[1] * CELL, 0.0]
            out.append({"name": obj.name, "position": [float(v) for v in position]})
        return out

    def metadata(self, t: int) -> dict[str, Any]:
        """Step metadata of the state before step t (see the plugin docstring for the keys)."""
        x, y, z = self.cells[t]
        return {
            "objects": self.object_positions(t),
            "gripper_position": [float(x * CELL), float(y * CELL), float(z * CELL)],
            "target": self.target, "destination": self.destination,
            "phase": self.phases[t] if t < self.num_steps else "done",
        }


def _place_objects(rng: np.random.Generator, kinds: list[str]) -> list[SceneObject]:
    """Objects on distinct cells at least two cells apart (drawings never overlap), distinct colours."""
    colours = rng.permutation(list(COLOURS))[: len(kinds)]
    cells: list[tuple[int, int]] = []
    while len(cells) < len(kinds):
        cell = (int(rng.integers(0, GRID)), int(rng.integers(0, GRID)))
        if all(max(abs(cell[0] - c[0]), abs(cell[1] - c[1])) >= 2 for c in cells):
            cells.append(cell)
    return [SceneObject(str(colour), kind, cell) for colour, kind, cell in zip(colours, kinds, cells)]


def _travel(path: list[np.ndarray], goal: tuple[int, int, int]) -> None:
    """Append the cells that reach `goal` moving at most one cell per axis per step."""
    here = path[-1]
    while not np.array_equal(here, goal):
        here = here + np.clip(np.asarray(goal) - here, -1, 1)
        path.append(here)


def generate_episode(rng: np.random.Generator, pick_only_fraction: float = 0.25) -> DemoEpisode:
    """A random scene, instruction and the expert's solution."""
    pick_only = bool(rng.random() < pick_only_fraction)
    graspables = list(rng.choice(GRASPABLE, size=int(rng.integers(1, 3))))
    containers = list(rng.choice(CONTAINERS, size=int(rng.integers(1, 3))))
    objects = _place_objects(rng, graspables + containers)
    target_obj = objects[int(rng.integers(0, len(graspables)))]
    dest_obj = None if pick_only else objects[len(graspables) + int(rng.integers(0, len(containers)))]
    if dest_obj is None:
        instruction = f"pick up the {target_obj.name}"
    else:
        instruction = (
            f"put the {target_obj.name} {'on' if dest_obj.kind == 'plate' else 'in'} the {dest_obj.name}"
        )

    while True:  # start somewhere that needs a real approach
        start = np.array([rng.integers(0, GRID), rng.integers(0, GRID), HOVER])
        if max(abs(start[0] - target_obj.cell[0]), abs(start[1] - target_obj.cell[1])) >= 2:
            break
    cells = [start]
    phases: list[str] = []
    grip: list[float] = []

    def leg(goal: tuple[int, int, int], phase: str, opening: float) -> None:
        before = len(cells)
        _travel(cells, goal)
        phases.extend([phase] * (len(cells) - before))
        grip.extend([opening] * (len(cells) - before))

    def still(phase: str, opening: float) -> None:
        cells.append(cells[-1].copy())
        phases.append(phase)
        grip.append(opening)

    tx, ty = target_obj.cell
    leg((tx, ty, HOVER), "approach", 1.0)
    leg((tx, ty, GRASP), "descend", 1.0)
    still("grasp", 0.0)
    grasped = len(cells) - 1  # the state after the grasp step holds the object
    leg((tx, ty, HOVER), "lift", 0.0)
    extra: dict[str, Any] = {"placed_from": None, "placed_cell": None}
    if dest_obj is not None:
        dx, dy = dest_obj.cell
        leg((dx, dy, HOVER), "move", 0.0)
        leg((dx, dy, GRASP), "place", 0.0)
        still("release", 1.0)
        extra = {"placed_from": len(cells) - 1, "placed_cell": (dx, dy)}
    released = extra["placed_from"] if extra["placed_from"] is not None else len(cells)
    held = [grasped <= t < released for t in range(len(cells))]
    tint = tuple(int(v) for v in rng.integers(-12, 13, size=3))
    return DemoEpisode(instruction=instruction, objects=objects, target=target_obj.name,
                       destination=dest_obj.name if dest_obj else None,
                       cells=np.stack(cells).astype(np.int64),
                       grip=np.asarray(grip, dtype=np.float32), phases=phases, held=held, table_tint=tint,
                       extra=extra)


def generate_episodes(count: int, seed: int, pick_only_fraction: float = 0.25) -> list[DemoEpisode]:
    """`count` episodes; episode i depends only on (seed, i), so a larger count extends a smaller one."""
    return [generate_episode(np.random.default_rng([seed, i]), pick_only_fraction) for i in range(count)]
