"""The retention question set: short multiple-choice questions about rendered demo scenes.

Every answer is read off the scene the image is drawn from, so it is right by construction:
- colour: "What colour is the {kind}?" for each kind that appears exactly once;
- count: "How many objects are on the table?" (the gripper is not on the table);
- position: "Is the {a} left or right of the {b}?" for the first pair of objects in different
  columns (+y is left in the world and on the image).

The gripper is parked, open and low, on the free cell farthest from every object, so it hides none
of them, and the camera shows the whole table (not the training frames' view that follows the
gripper, which can leave an object out). Scenes come from
`refine_plugins.demo.scene.generate_episodes(scenes, seed)`: the set depends only on (scenes, seed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COUNT_CANDIDATES = ("1", "2", "3", "4", "5")
SIDES = ("left", "right")


@dataclass(frozen=True)
class Question:
    key: str  # "<scene>/<kind>[/<n>]", stable across runs
    kind: str  # colour | count | position
    question: str
    answer: str
    candidates: tuple[str, ...]
    scene: int


def _parking_cell(objects) -> tuple[int, int]:
    """The grid cell farthest (Chebyshev) from every object; ties go to the first in row order."""
    from refine_plugins.demo.scene import GRID

    cells = [(x, y) for x in range(GRID) for y in range(GRID)]
    return max(cells, key=lambda c: min(max(abs(c[0] - o.cell[0]), abs(c[1] - o.cell[1])) for o in objects))


def scene_image(episode) -> np.ndarray:
    """uint8 [256, 256, 3]: the scene's objects where they start, the gripper parked out of the way."""
    from refine_plugins.demo.render import draw_state
    from refine_plugins.demo.scene import GRASP

    x, y = _parking_cell(episode.objects)
    return draw_state(episode.table_tint, episode.objects, {o.name: o.cell for o in episode.objects}, None,
                      (x, y, GRASP), True, follow_gripper=False)


def scene_questions(index: int, episode) -> list[Question]:
    from refine_plugins.demo.scene import COLOURS

    objects = episode.objects
    out = []
    kinds = [o.kind for o in objects]
    for kind in sorted(set(kinds)):
        if kinds.count(kind) == 1:
            colour = next(o.colour for o in objects if o.kind == kind)
            out.append(Question(f"{index}/colour/{kind}", "colour", f"What colour is the {kind}?", colour,
                                tuple(COLOURS), index))
    out.append(Question(f"{index}/count", "count", "How many objects are on the table?", str(len(objects)),
                        COUNT_CANDIDATES, index))
    for i, a in enumerate(objects):
        b = next((b for b in objects[i + 1:] if b.cell[1] != a.cell[1]), None)
        if b is not None:
            side = "left" if a.cell[1] > b.cell[1] else "right"
            question = f"Is the {a.name} left or right of the {b.name}?"
            out.append(Question(f"{index}/position", "position", question, side, SIDES, index))
            break
    return out


def build_question_set(scenes: int, seed: int) -> tuple[list[Question], dict[int, np.ndarray]]:
    """(questions, {scene index: image}) for `scenes` demo scenes of `seed`."""
    from refine_plugins.demo.scene import generate_episodes

    episodes = generate_episodes(scenes, seed)
    questions = [q for i, episode in enumerate(episodes) for q in scene_questions(i, episode)]
    return questions, {i: scene_image(episode) for i, episode in enumerate(episodes)}
