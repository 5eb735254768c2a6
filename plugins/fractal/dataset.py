"""RT-1 ("fractal") data from the RLDS `fractal20220817_data` builder, converted as OpenVLA does.

Schema read (per step): `observation/image` (256×320 RGB), `observation/natural_language_instruction`,
`observation/base_pose_tool_reached` [7] + `observation/gripper_closed` [1] (the state, as
OpenVLA's `state_obs_keys`), and the action dict `world_vector` [3], `rotation_delta` [3],
`gripper_closedness_action` [1] (`terminate_episode` [3] int32 and the base displacement keys
are not part of the 7-D action).

Conversion — OpenVLA `prismatic/vla/datasets/rlds/oxe/transforms.py::rt1_dataset_transform` with
`.../rlds/utils/data_utils.py::rel2abs_gripper_actions`:
action = world_vector ++ rotation_delta ++ gripper, where the gripper is made absolute from the
relative closedness command c[t]:
- c > 0.1 means "close", c < −0.1 means "open", anything in between means "no change";
- the state before the first command is the opposite of that first command (upstream assumes the
  first command is not redundant); an episode without any command is open throughout;
- each step's gripper is the state after applying that step's command: 1 = open, 0 = closed.
Example: c = [0, 0, +1, 0, −1, 0] → [1, 1, 0, 0, 1, 1]. No step is dropped.
"""
from __future__ import annotations

from refine_plugins.rlds.fixtures import FRACTAL_NAME
from refine_plugins.rlds.layout import RldsLayout
from refine_plugins.rlds.reader import RldsDataset


class FractalDataset(RldsDataset):
    def __init__(self, options):
        layout = RldsLayout(
            builder=FRACTAL_NAME, image_keys=("observation/image",),
            instruction_key="observation/natural_language_instruction",
            action_keys=("action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"),
            gripper="closedness_relative", state_keys=("observation/base_pose_tool_reached",
                                                       "observation/gripper_closed"),
            robot="google_robot", control_frequency=3.0,
        )
        super().__init__(layout, options.data_dir, name="fractal", max_episodes=options.max_episodes,
                         strict=options.strict, skip_unlabeled=options.skip_unlabeled,
                         primary_camera_only=options.primary_camera_only)
