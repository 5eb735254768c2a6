"""`rlds`: any RLDS (tfds) dataset on disk, mapped onto refine Episodes by options.

Registration only; the reader (TensorFlow) lives in `plugins.rlds.reader` and loads when the
dataset is built. `plugins.rlds.fixtures` writes small datasets in the Bridge and Fractal schemas.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from refine_core import DatasetSpec, hookimpl


class RldsCommonOptions(BaseModel):
    """Options every RLDS-backed dataset takes."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str | None = Field(None,
                                 description="The <builder>/<version> folder, the builder folder, or its "
                                             "parent.")
    max_episodes: int | None = Field(None, ge=1, description="Stop after this many episodes.")
    strict: bool = Field(False, description="Fail on a NaN/inf action instead of skipping the step.")
    skip_unlabeled: bool = Field(True,
                                 description="Skip episodes with no instruction (OpenVLA's skip_unlabeled).")
    primary_camera_only: bool = Field(
        False, description="Decode and return only the primary camera (the first): every built-in backbone "
                           "feeds the model that one alone, so training loses nothing and reads faster. Keep "
                           "it off for annotating with a teacher that looks at every view.")


class RldsOptions(RldsCommonOptions):
    """How a generic RLDS dataset maps onto refine's Episode. Keys are step paths
    (`observation/image`); a bare name is looked up at step level, then in `observation`."""

    builder: str | None = Field(None, description="Builder folder name to look for under data_dir.")
    image_keys: list[str] = Field(["image"], min_length=1, description="Camera keys, primary first.")
    instruction_key: str = "language_instruction"
    action_keys: list[str] = Field(["action"], min_length=1,
                                   description="Keys concatenated into the 7-D action; slices allowed: "
                                               "action[0:6].")
    gripper: Literal["open_is_1", "closed_is_1", "closedness_relative"] = "open_is_1"
    binarize_gripper: bool = False
    drop_first_step: bool = False
    relabel_from_state: bool = Field(False,
                                     description="Movement = state[t+1,:6] - state[t,:6] (Bridge); drops the "
                                                 "last step.")
    state_keys: list[str] = Field([], description="Keys concatenated into the state vector.")
    drop_blank_cameras: bool = Field(True,
                                     description="Leave out non-primary cameras that are all-zero padding.")
    robot: str = "unknown"
    control_frequency: float = Field(0.0, ge=0)

    @field_validator("image_keys", "action_keys", "state_keys", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value


@hookimpl
def refine_datasets():
    yield DatasetSpec(
        name="rlds",
        summary="Any RLDS/tfds dataset on disk (image, instruction, action keys and gripper convention as "
                "options)",
        factory="refine_plugins.rlds.reader:build_rlds_dataset",
        options=RldsOptions,
    )
