"""Stand-in for SimplerEnv's `mani_skill2_real2sim` in refine's tests (written here, no upstream
code): `ASSET_DIR` and small envs with SimplerEnv's names, cameras, image sizes, step limits, info
keys and `episode_stats`, and scripted outcomes the tests compute by hand:

- "even" layouts (obj `episode_id` even, or an object `init_xy` with y < 0): the source object is
  grasped at step 2 only and `success` holds at step 3 only (so the episode fails: success is the
  flag at the final step, and its grasp counts: grasped at any step);
- "odd" layouts: never grasped, `success` only at the final step (the step limit).
WidowX tasks report `is_src_obj_grasped` (per step and OR-ed in episode_stats), the coke can
`is_grasped` / episode_stats `grasped`; move near and drawers no grasp.

With $SIMPLER_STANDIN_LOG set, each closed env appends one JSON line: its id, make kwargs, reset
seed and options, instruction, and every action it received.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ASSET_DIR = Path(os.environ.get("MS2_REAL2SIM_ASSET_DIR", "/standin/ManiSkill2_real2sim/data"))
WIDOWX_CONTROL = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"
# gym id: (step limit, instruction, robot and control mode of its prepackaged config or None)
ENVS = {
    "PutSpoonOnTableClothInScene-v0": (60, "put the spoon on the towel", ("widowx", WIDOWX_CONTROL)),
    "PutCarrotOnPlateInScene-v0": (60, "put carrot on plate", ("widowx", WIDOWX_CONTROL)),
    "StackGreenCubeOnYellowCubeBakedTexInScene-v0": (60, "stack the green block on the yellow block",
                                                     ("widowx", WIDOWX_CONTROL)),
    "PutEggplantInBasketScene-v0": (120, "put eggplant into yellow basket",
                                    ("widowx_sink_camera_setup", WIDOWX_CONTROL)),
    "GraspSingleOpenedCokeCanInScene-v0": (80, "pick coke can", None),
    "MoveNearGoogleBakedTexInScene-v0": (80, "move blue plastic bottle near pepsi can", None),
    **{f"{verb}{level}DrawerCustomInScene-v0": (113, f"{verb.lower()} {level.lower()} drawer", None)
       for verb in ("Open", "Close") for level in ("Top", "Middle", "Bottom")},
}


class StandInEnv:
    def __init__(self, env_id: str, max_episode_steps: int | None = None, **kwargs):
        if env_id not in ENVS:
            raise KeyError(f"Env {env_id} not found in registry")
        limit, self.instruction, prepackaged = ENVS[env_id]
        self.env_id, self.kwargs = env_id, kwargs
        self.spec = SimpleNamespace(id=env_id, max_episode_steps=max_episode_steps or limit)
        robot, control = prepackaged if kwargs.get("prepackaged_config") else (kwargs["robot"],
                                                                              kwargs["control_mode"])
        self.robot_uid, self.control_mode = robot, control
        camera, shape = ("3rd_view_camera", (480, 640, 3)) if "widowx" in robot else ("overhead_camera",
                                                                                     (512, 640, 3))
        self._obs = {"image": {camera: {"rgb": np.zeros(shape, np.uint8)}}, "agent": {}, "extra": {}}
        self._log: dict | None = None

    @property
    def unwrapped(self) -> "StandInEnv":
        return self

    def get_language_instruction(self) -> str:
        return self.instruction

    def reset(self, seed=None, options=None):
        options = options or {}
        obj = options.get("obj_init_options", {})
        if "episode_id" in obj:
            self._odd = int(obj["episode_id"]) % 2 == 1
        else:
            self._odd = float(np.asarray(obj.get("init_xy", [0.0, 0.0]))[1]) > 0
        self._steps, self._grasped = 0, False
        self._log = {"env_id": self.env_id, "kwargs": _plain(self.kwargs), "seed": seed,
                     "options": _plain(options), "instruction": self.instruction, "actions": []}
        return self._obs, {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        assert action.shape == (7,), action.shape
        self._log["actions"].append(action.tolist())
        self._steps += 1
        grasped = not self._odd and self._steps == 2
        success = self._steps == self.spec.max_episode_steps if self._odd else self._steps == 3
        self._grasped = self._grasped or grasped
        info = {"elapsed_steps": self._steps, "success": success}
        if "widowx" in self.robot_uid:
            info["is_src_obj_grasped"] = grasped
            info["episode_stats"] = {"is_src_obj_grasped": self._grasped, "src_on_target": success}
        elif self.env_id.startswith("GraspSingle"):
            info["is_grasped"] = grasped
            info["episode_stats"] = {"grasped": self._grasped, "n_lift_significant": int(success)}
        else:
            info["episode_stats"] = {"qpos": f"{0.2 if success else 0.0:.3f}"}
        truncated = self._steps >= self.spec.max_episode_steps
        return self._obs, float(success), success, truncated, info

    def close(self) -> None:
        path = os.environ.get("SIMPLER_STANDIN_LOG")
        if path and self._log is not None:
            with open(path, "a") as handle:
                handle.write(json.dumps(self._log) + "\n")
        self._log = None


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
