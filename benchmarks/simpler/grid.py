"""SimplerEnv's evaluation grid as upstream runs it (SimplerEnv `scripts/*.sh` @ 4ab7178, the RT-1
scripts for the Google Robot), one `SimplerEpisode` per episode.

WidowX (visual matching only): 4 tasks × 24 object layouts (`obj_episode_range 0 24`) × repeats
(upstream runs Octo with 3 seeds), through `simpler_env.make(task)`, whose prepackaged config is
exactly the script's (robot, 5 Hz / 500 Hz, scene, overlay, robot pose).
Google Robot, 3 Hz / 513 Hz, through `gym.make(env id, ...)` with the scripts' arguments (the
prepackaged configs draw the urdf version and the drawer pose at random):
- visual matching (VM), every cell × 4 urdf versions: coke can 3 orientations × 25 positions
  (x ∈ linspace(-0.35, -0.12, 5) outer, y ∈ linspace(-0.02, 0.42, 5) inner), 80 steps; move near
  60 layouts, 80 steps; drawers open/close × top/middle/bottom × 9 robot poses, each with its
  own overlay, ray-traced, 113 steps.
- variant aggregation (VA), no overlay: coke can 11 variants (the 2 camera variants are run but
  left out of upstream's average), move near 10 (2 camera variants likewise), drawers 7 × 9
  robot poses on a 3 × 3 grid.
(The Octo coke-can VM script says 501 Hz; the RT-1 scripts and every other Google script 513 Hz.)

Episode numbering is stable: within a task, cell c (a repeat, urdf version or variant, in the
order above) holds episodes c·L .. c·L+L-1 (L: the cell's full number of layouts), so episode k
names the same setup whether or not `episodes` asks for fewer layouts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

WIDOWX_CONTROL = "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos"
GOOGLE_CONTROL = ("arm_pd_ee_delta_pose_align_interpolate_by_planner_gripper_pd_joint_target_delta_pos_"
                  "interpolate_by_planner")
GRIPPER = {"binary": "1 open / 0 closed → +1 (open) if > 0.5 else -1, every step (upstream's WidowX)",
           "relative_sticky": "relative = previous open − open (0 at the first step); once |relative| > 0.5 "
                              "it is repeated for 15 steps (upstream's Google Robot, Octo/OpenVLA)"}
URDF_VERSIONS = (None, "recolor_tabletop_visual_matching_1", "recolor_tabletop_visual_matching_2",
                 "recolor_cabinet_visual_matching_1")
OVERLAY = "{ASSET_DIR}/real_inpainting/"  # ManiSkill2_real2sim's asset folder, filled in on the sim side

# simpler_env.make name: (gym id, short name, step limit, robot)
WIDOWX_TASKS = {
    "widowx_spoon_on_towel": ("PutSpoonOnTableClothInScene-v0", "spoon_on_towel", 60, "widowx"),
    "widowx_carrot_on_plate": ("PutCarrotOnPlateInScene-v0", "carrot_on_plate", 60, "widowx"),
    "widowx_stack_cube": ("StackGreenCubeOnYellowCubeBakedTexInScene-v0", "stack_cube", 60, "widowx"),
    "widowx_put_eggplant_in_basket": ("PutEggplantInBasketScene-v0", "put_eggplant_in_basket", 120,
                                      "widowx_sink_camera_setup"),
}
COKE_ORIENTATIONS = {"horizontal": "lr_switch", "vertical": "laid_vertically", "standing": "upright"}
DRAWER_LEVELS = ("top", "middle", "bottom")
# the VM drawer poses: name: (x, y, yaw), overlay open_drawer_<name>.png
DRAWER_POSES = {"a0": (0.644, -0.179, -0.03), "a1": (0.765, -0.182, -0.02), "a2": (0.889, -0.203, -0.06),
                "b0": (0.652, 0.009, 0.0), "b1": (0.752, 0.009, 0.0), "b2": (0.851, 0.035, 0.0),
                "c0": (0.665, 0.224, 0.0), "c1": (0.765, 0.222, -0.025), "c2": (0.865, 0.222, -0.025)}
# VA variants: name -> (gym id or None for the base one, scene or None for the base one, extra kwargs,
# in upstream's average)
COKE_VARIANTS = {
    "base": (None, None, {}, True),
    "table_texture_1": (None, "Baked_sc1_staging_objaverse_cabinet1_h870", {}, True),
    "table_texture_2": (None, "Baked_sc1_staging_objaverse_cabinet2_h870", {}, True),
    "distractor": ("GraspSingleOpenedCokeCanDistractorInScene-v0", None, {}, True),
    "distractor_more": ("GraspSingleOpenedCokeCanDistractorInScene-v0", None, {"distractor_config": "more"},
                        True),
    "background_1": (None, "google_pick_coke_can_1_v4_alt_background", {}, True),
    "background_2": (None, "google_pick_coke_can_1_v4_alt_background_2", {}, True),
    "darker": (None, None, {"slightly_darker_lighting": True}, True),
    "brighter": (None, None, {"slightly_brighter_lighting": True}, True),
    "camera_1": ("GraspSingleOpenedCokeCanAltGoogleCameraInScene-v0", None, {}, False),
    "camera_2": ("GraspSingleOpenedCokeCanAltGoogleCamera2InScene-v0", None, {}, False),
}
MOVE_NEAR_VARIANTS = {
    "base": (None, None, {}, True),
    "no_distractor": (None, None, {"no_distractor": True}, True),
    "background_1": (None, "google_pick_coke_can_1_v4_alt_background", {}, True),
    "background_2": (None, "google_pick_coke_can_1_v4_alt_background_2", {}, True),
    "darker": (None, None, {"slightly_darker_lighting": True}, True),
    "brighter": (None, None, {"slightly_brighter_lighting": True}, True),
    "table_texture_1": (None, "Baked_sc1_staging_objaverse_cabinet1_h870", {}, True),
    "table_texture_2": (None, "Baked_sc1_staging_objaverse_cabinet2_h870", {}, True),
    "camera_1": ("MoveNearAltGoogleCameraInScene-v0", None, {}, False),
    "camera_2": ("MoveNearAltGoogleCamera2InScene-v0", None, {}, False),
}
DRAWER_VARIANTS = {
    "base": (None, None, {}, True),
    "background_bedroom": (None, "modern_bedroom_no_roof", {}, True),
    "background_office": (None, "modern_office_no_roof", {}, True),
    "brighter": (None, None, {"light_mode": "brighter"}, True),
    "darker": (None, None, {"light_mode": "darker"}, True),
    "station_2": (None, None, {"station_name": "mk_station2"}, True),
    "station_3": (None, None, {"station_name": "mk_station3"}, True),
}


def robot_quat(yaw: float) -> list[float]:
    """The robot's initial orientation as upstream's argparse makes it (sapien wxyz):
    Pose(q=euler2quat(0, 0, yaw)) * Pose(q=[0, 0, 0, 1]), i.e. (-sin(yaw/2), 0, 0, cos(yaw/2))."""
    return [-math.sin(yaw / 2), 0.0, 0.0, math.cos(yaw / 2)]


@dataclass(frozen=True)
class SimplerEpisode:
    """One episode: what the sim side makes and resets, and what its record says."""

    task: str  # simpler_env.make name
    episode: int  # its number within the task (see the module docstring)
    simpler: dict[str, Any]  # the record's descriptor (see the package docstring)
    env_name: str  # the gym id
    prepackaged: bool  # True: simpler_env.make(task) (WidowX); False: gym.make(env_name, **make_kwargs)
    make_kwargs: dict[str, Any]
    reset_options: dict[str, Any]
    gripper: str  # a GRIPPER key
    max_episode_steps: int
    seed: int
    robot: str
    control_mode: str

    @property
    def name(self) -> str:
        """Its vla-eval task name (each vla-eval task is one episode)."""
        return f"{self.task}#{self.episode}"

    def vla_task(self) -> dict[str, Any]:
        """The task dict the sim side (refine_simpler_sim) runs."""
        return {"name": self.name, "task_name": self.task,
                "env_name": None if self.prepackaged else self.env_name, "make_kwargs": self.make_kwargs,
                "reset_options": self.reset_options, "gripper": self.gripper,
                "max_episode_steps": self.max_episode_steps, "seed": self.seed}

    def setup(self) -> dict[str, Any]:
        """How the episode was run, for its record."""
        return {"env_name": self.env_name, "robot": self.robot,
                "make": "simpler_env.make (prepackaged)" if self.prepackaged else "gym.make",
                "make_kwargs": self.make_kwargs, "reset_options": self.reset_options,
                "control_mode": self.control_mode, "gripper": GRIPPER[self.gripper],
                "max_episode_steps": self.max_episode_steps, "seed": self.seed}


Layout = tuple[dict[str, Any], dict[str, Any], "str | None"]  # (reset options, make kwargs, robot pose)


@dataclass
class _Cell:
    """Episodes sharing everything but their layout (object placement or robot pose)."""

    task: str
    simpler: dict[str, Any]
    env_name: str
    make_kwargs: dict[str, Any]
    layouts: list[Layout]
    max_steps: int
    prepackaged: bool = False
    gripper: str = "relative_sticky"
    robot: str = "google_robot_static"
    control_mode: str = GOOGLE_CONTROL


def _descriptor(robot: str, setting: str, family: str, subtask: str | None, **more: Any) -> dict[str, Any]:
    return {"robot": robot, "setting": setting, "family": family, "subtask": subtask, "drawer_level": None,
            "urdf_version": None, "variant": "base", "in_average": True, "repeat": 0, "robot_pose": None,
            "grasp_measured": family in ("widowx", "coke_can"), **more}


def _google_kwargs(scene: str, overlay: str | None, **extra: Any) -> dict[str, Any]:
    """gym.make's arguments as upstream's main_inference builds them (the step limit is the task's)."""
    kwargs = {"robot": "google_robot_static", "control_freq": 3, "sim_freq": 513,
              "control_mode": GOOGLE_CONTROL, "scene_name": scene, "camera_cfgs": {"add_segmentation": True}}
    if overlay is not None:  # visual matching: the real image behind the simulated robot and objects
        kwargs["rgb_overlay_path"] = OVERLAY + overlay
    if overlay is not None or extra.pop("overlay_per_pose", False):
        kwargs["rgb_overlay_cameras"] = ["overhead_camera"]
    return {**kwargs, **extra}


def _robot(x: float, y: float, yaw: float = 0.0) -> dict[str, Any]:
    return {"robot_init_options": {"init_xy": [x, y], "init_rot_quat": robot_quat(yaw)}}


def _coke_layouts() -> list[Layout]:
    xs, ys = np.linspace(-0.35, -0.12, 5).tolist(), np.linspace(-0.02, 0.42, 5).tolist()
    return [({**_robot(0.35, 0.20), "obj_init_options": {"init_xy": [x, y]}}, {}, None)
            for x in xs for y in ys]


def _move_near_layouts() -> list[Layout]:
    return [({**_robot(0.35, 0.21, -0.09), "obj_init_options": {"episode_id": i}}, {}, None)
            for i in range(60)]


def _drawer_vm_layouts() -> list[Layout]:
    return [({**_robot(x, y, yaw), "obj_init_options": {"init_xy": [0.0, 0.0]}},
             {"rgb_overlay_path": f"{OVERLAY}open_drawer_{pose}.png"}, pose)
            for pose, (x, y, yaw) in DRAWER_POSES.items()]


def _drawer_va_layouts() -> list[Layout]:
    xs, ys = np.linspace(0.65, 0.85, 3).tolist(), np.linspace(-0.2, 0.2, 3).tolist()
    return [({**_robot(x, y), "obj_init_options": {"init_xy": [0.0, 0.0]}}, {}, f"x{x:.2f}_y{y:+.2f}")
            for x in xs for y in ys]


def _drawer_tasks() -> list[tuple[str, str, str, str]]:
    """(make name, gym id, open|close, level) of the six drawer tasks."""
    return [(f"google_robot_{verb}_{level}_drawer", f"{verb.title()}{level.title()}DrawerCustomInScene-v0",
             verb, level) for verb in ("open", "close") for level in DRAWER_LEVELS]


def widowx_cells(repeats: int) -> list[_Cell]:
    cells = []
    for repeat in range(repeats):
        for task, (env_name, short, steps, robot) in WIDOWX_TASKS.items():
            layouts = [({"obj_init_options": {"episode_id": i}}, {}, None) for i in range(24)]
            cells.append(_Cell(task, _descriptor("widowx", "vm", "widowx", short, repeat=repeat), env_name,
                               {}, layouts, steps, prepackaged=True, gripper="binary", robot=robot,
                               control_mode=WIDOWX_CONTROL))
    return cells


def google_vm_cells() -> list[_Cell]:
    cells = []
    for urdf in URDF_VERSIONS:
        for orientation, flag in COKE_ORIENTATIONS.items():
            cells.append(_Cell(
                f"google_robot_pick_{orientation}_coke_can",
                _descriptor("google_robot", "vm", "coke_can", orientation, urdf_version=urdf),
                "GraspSingleOpenedCokeCanInScene-v0",
                _google_kwargs("google_pick_coke_can_1_v4", "google_coke_can_real_eval_1.png",
                               **{flag: True, "urdf_version": urdf}), _coke_layouts(), 80))
        cells.append(_Cell(
            "google_robot_move_near_v0",
            _descriptor("google_robot", "vm", "move_near", None, urdf_version=urdf),
            "MoveNearGoogleBakedTexInScene-v0",
            _google_kwargs("google_pick_coke_can_1_v4", "google_move_near_real_eval_1.png",
                           urdf_version=urdf), _move_near_layouts(), 80))
        for task, env_name, verb, level in _drawer_tasks():
            kwargs = _google_kwargs("dummy_drawer", None, overlay_per_pose=True, shader_dir="rt",
                                    station_name="mk_station_recolor", light_mode="simple",
                                    disable_bad_material=True, urdf_version=urdf)
            descriptor = _descriptor("google_robot", "vm", "drawer", verb, drawer_level=level,
                                     urdf_version=urdf)
            cells.append(_Cell(task, descriptor, env_name, kwargs, _drawer_vm_layouts(), 113))
    return cells


def _variant_cell(task: str, env_name: str, scene: str, steps: int, name: str, variant: tuple,
                  layouts: list[Layout], descriptor: dict[str, Any], **base_kwargs: Any) -> _Cell:
    other_env, other_scene, extra, in_average = variant
    return _Cell(task, {**descriptor, "variant": name, "in_average": in_average}, other_env or env_name,
                 _google_kwargs(other_scene or scene, None, **base_kwargs, **extra), layouts, steps)


def google_va_cells() -> list[_Cell]:
    cells = []
    for name, variant in COKE_VARIANTS.items():
        for orientation, flag in COKE_ORIENTATIONS.items():
            cells.append(_variant_cell(
                f"google_robot_pick_{orientation}_coke_can", "GraspSingleOpenedCokeCanInScene-v0",
                "google_pick_coke_can_1_v4", 80, name, variant, _coke_layouts(),
                _descriptor("google_robot", "va", "coke_can", orientation), **{flag: True}))
    for name, variant in MOVE_NEAR_VARIANTS.items():
        cells.append(_variant_cell(
            "google_robot_move_near_v0", "MoveNearGoogleInScene-v0", "google_pick_coke_can_1_v4", 80, name,
            variant, _move_near_layouts(), _descriptor("google_robot", "va", "move_near", None)))
    for name, variant in DRAWER_VARIANTS.items():
        for task, env_name, verb, level in _drawer_tasks():
            cells.append(_variant_cell(
                task, env_name, "frl_apartment_stage_simple", 113, name, variant, _drawer_va_layouts(),
                _descriptor("google_robot", "va", "drawer", verb, drawer_level=level), shader_dir="rt"))
    return cells


def expand(cells: list[_Cell], layouts: int | None = None, max_steps: int | None = None,
           seed: int = 0) -> list[SimplerEpisode]:
    """The cells' episodes (the first `layouts` of each cell; every step limit `max_steps` when given).
    Each env reset gets seed + episode number: reproducible, and different per episode where the env
    draws at random (the distractors' placement; upstream resets unseeded)."""
    ordinal: dict[str, int] = {}
    out = []
    for cell in cells:
        c = ordinal[cell.task] = ordinal.get(cell.task, -1) + 1
        for i, (options, layout_kwargs, pose) in enumerate(cell.layouts[:layouts]):
            number = c * len(cell.layouts) + i
            out.append(SimplerEpisode(
                task=cell.task, episode=number,
                simpler={**cell.simpler, "robot_pose": pose, "layout": i}, env_name=cell.env_name,
                prepackaged=cell.prepackaged, make_kwargs={**cell.make_kwargs, **layout_kwargs},
                reset_options=options, gripper=cell.gripper, max_episode_steps=max_steps or cell.max_steps,
                seed=seed + number, robot=cell.robot, control_mode=cell.control_mode))
    return out
