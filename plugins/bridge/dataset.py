"""BridgeData V2 from the RLDS `bridge_dataset` builder, converted as OpenVLA converts it.

Schema read (per step): `observation/image_0..image_3` (256×256 RGB), `observation/state` [7]
(xyz, roll/pitch/yaw, gripper), `action` [7] (same layout, gripper 1 = open, continuous), step-level
`language_instruction`; `episode_metadata/file_path`, `episode_id`, `has_image_0..3`.

Conversion — OpenVLA `prismatic/vla/datasets/rlds/oxe/transforms.py::bridge_orig_dataset_transform`
(used for `bridge_dataset`/`bridge_orig`), with the helpers of `.../rlds/utils/data_utils.py`:
1. The first step of every episode is dropped, unconditionally (upstream: "the first timestep
   has an all-zero action, so we remove it"; it does not test for zeros).
2. The gripper (action[6]) is binarised with `binarize_gripper_actions`: > 0.95 → 1 (open),
   < 0.05 → 0 (closed), values in between take the label of the next open/closed value; a
   trailing run of in-between values keeps the last raw value.
3. `relabel_bridge_actions`: action[:6] becomes state[t+1, :6] − state[t, :6] (the movement the
   robot actually made) and the last step, which has no next state, is dropped; the gripper
   stays the binarised recorded one. So an episode of T recorded steps yields T − 2 steps, and
   yielded step k is recorded step k + 1. `relabel_actions: false` keeps the recorded action[:6]
   (and the last step).
Gripper convention is already refine's (1 = open). Cameras: `image_0` is primary (OpenVLA's
`image_obs_keys` primary); image_1..3 are kept when the episode has them — Bridge pads absent
views with all-zero frames and `has_image_N = False`, and those are left out. Step metadata
carries `file_path`, `episode_id` and the other episode_metadata fields, plus `source_step`.
"""
from __future__ import annotations

from refine_plugins.rlds.fixtures import BRIDGE_CAMERAS, BRIDGE_NAME
from refine_plugins.rlds.layout import RldsLayout
from refine_plugins.rlds.reader import RldsDataset


class BridgeDataset(RldsDataset):
    def __init__(self, options):
        layout = RldsLayout(
            builder=BRIDGE_NAME, image_keys=tuple(f"observation/{c}" for c in BRIDGE_CAMERAS),
            instruction_key="language_instruction", action_keys=("action",), gripper="open_is_1",
            binarize_gripper=True, drop_first_step=True, relabel_from_state=options.relabel_actions,
            state_keys=("observation/state",), robot="widowx", control_frequency=5.0,
            drop_blank_cameras=options.drop_blank_cameras,
        )
        super().__init__(layout, options.data_dir, name="bridge", max_episodes=options.max_episodes,
                         strict=options.strict, skip_unlabeled=options.skip_unlabeled,
                         primary_camera_only=options.primary_camera_only)
