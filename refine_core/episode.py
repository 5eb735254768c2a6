"""Episode / Step: the one shape every dataset yields and every stage consumes.

Conventions (datasets convert their own into these):
- images: uint8 HWC RGB arrays keyed by camera name; `primary_camera` names the main one;
- action: float32[7] = [dx, dy, dz, droll, dpitch, dyaw, gripper] with gripper 1 = open, 0 = closed;
- state: optional float32 vector; metadata: free-form (object names and positions, file path…).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

ACTION_DIM = 7
GRIPPER = 6  # index of the gripper in the action vector


@dataclass
class Step:
    images: dict[str, np.ndarray]
    instruction: str
    action: np.ndarray
    primary_camera: str
    episode_id: str = ""
    step_index: int = 0
    state: np.ndarray | None = None
    is_first: bool = False
    is_last: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"episode {self.episode_id!r} step {self.step_index}"
        action = np.asarray(self.action, dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"{where}: action has shape {action.shape}, expected ({ACTION_DIM},)")
        self.action = action
        if self.primary_camera not in self.images:
            raise ValueError(
                f"{where}: primary camera {self.primary_camera!r} not among images {sorted(self.images)}"
            )
        for name, image in self.images.items():
            if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
                shape = getattr(image, "shape", type(image).__name__)
                raise ValueError(f"{where}: image {name!r} has shape {shape}, expected (H, W, 3)")
            if image.dtype != np.uint8:
                raise ValueError(f"{where}: image {name!r} has dtype {image.dtype}, expected uint8")
        if self.state is not None:
            self.state = np.asarray(self.state, dtype=np.float32)

    @property
    def image(self) -> np.ndarray:
        """The primary camera's frame."""
        return self.images[self.primary_camera]


@dataclass
class Episode:
    episode_id: str
    steps: list[Step]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    @property
    def instruction(self) -> str:
        return self.steps[0].instruction if self.steps else ""

    def actions(self) -> np.ndarray:
        """All actions stacked, [T, 7] float32."""
        if not self.steps:
            return np.zeros((0, ACTION_DIM), dtype=np.float32)
        return np.stack([s.action for s in self.steps])
