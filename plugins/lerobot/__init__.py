"""`lerobot`: a LeRobotDataset v3 folder on disk (parquet data; images in the parquet or mp4 videos).

Registration only; the reader (`plugins.lerobot.reader`, pyarrow) and the video decoder
(`plugins.lerobot.video`, PyAV from the `lerobot` extra) load when the dataset is built.
`plugins.lerobot.fixtures` writes small v3 folders (tests, plugin authors).

Action mapping onto refine's 7-D `[dx, dy, dz, droll, dpitch, dyaw, gripper]` (gripper 1 = open):
`movement_dims` pick the entries of `action_key` that become dx, dy, … in order (fewer than six:
the rest are 0); `gripper_dim` picks the gripper entry, which is rescaled from `gripper_range`
to [0, 1] (clipped) and flipped when `gripper_open_at` is "low". Defaults suit a 7-D
delta-end-effector action with gripper 1 = open; LIBERO-style (−1 open, +1 closed) is
`gripper_range=[-1, 1]`, `gripper_open_at=low`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from refine_core import DatasetSpec, hookimpl


class LeRobotOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str | None = Field(None, description="The dataset folder (holds meta/info.json).")
    image_keys: list[str] | None = Field(None, description="Camera features, primary first "
                                                           "(default: every observation.images.*).")
    primary_camera: str | None = Field(None,
                                       description="Camera feature to put first (default: the first image "
                                                   "key).")
    action_key: str = "action"
    movement_dims: list[int] = Field([0, 1, 2, 3, 4, 5], max_length=6,
                                     description="Entries of the action that become dx, dy, dz, droll, "
                                                 "dpitch, dyaw.")
    gripper_dim: int = Field(-1, description="Entry of the action holding the gripper command.")
    gripper_range: tuple[float, float] = Field((0.0, 1.0), description="Gripper values mapped to 0 and 1.")
    gripper_open_at: Literal["high", "low"] = Field("high", description="Which end of gripper_range is open.")
    binarize_gripper: bool = Field(False, description="Round the converted gripper to 0/1 at 0.5.")
    state_key: str | None = Field("observation.state",
                                  description="State feature (ignored when absent); '' for none.")
    max_episodes: int | None = Field(None, ge=1, description="Stop after this many episodes.")
    video_tolerance_s: float = Field(0.02, gt=0,
                                     description="Largest gap between a frame's timestamp and the decoded "
                                                 "frame.")

    @field_validator("image_keys", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value


@hookimpl
def refine_datasets():
    yield DatasetSpec(
        name="lerobot",
        summary="A LeRobotDataset v3 folder (parquet data, embedded images or mp4 videos)",
        factory="refine_plugins.lerobot.reader:LeRobotDataset",
        options=LeRobotOptions,
    )
