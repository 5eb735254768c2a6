"""SimplerEnv through vla-eval: `simpler-widowx` (visual matching, 4 tasks × 24 layouts × 3 repeats),
`simpler-google-vm` (coke can, move near, drawers in visual matching, × 4 urdf versions) and
`simpler-google-va` (their variant aggregation), on upstream's grid (grid.py, from SimplerEnv's
scripts). vla-eval's orchestrator runs the sim side (sim/refine_simpler_sim.py, a subclass of
vla-eval's SimplerEnvBenchmark) in SimplerEnv's own interpreter (`benchmark.python`) or in
vla-eval's Docker image (`benchmark.docker=true`); refine's policy server runs here.

Record contract: each episode record (OUT/<policy>/episodes.jsonl, results.jsonl) has
    task: the simpler_env.make name (e.g. widowx_carrot_on_plate, google_robot_pick_horizontal_coke_can,
          google_robot_move_near_v0, google_robot_open_top_drawer). Variant aggregation runs its
          variants of that task through gym.make; the gym id is in setup.env_name.
    episode: int, unique within the task over the benchmark's grid (grid.py: cell-major, stable)
    success: bool, info["success"] at the final step (episodes run to the step limit)
    grasp: bool, WidowX: episode_stats["is_src_obj_grasped"] (grasped at ANY step); coke can:
           episode_stats["grasped"] (likewise); move near and drawers: False (not measured)
    simpler: {robot: "widowx"|"google_robot", setting: "vm"|"va",
              family: "widowx"|"coke_can"|"move_near"|"drawer",
              subtask: WidowX task short name (spoon_on_towel, carrot_on_plate, stack_cube,
                       put_eggplant_in_basket) | coke orientation (horizontal, vertical, standing) |
                       "open"|"close" (drawer) | None (move near),
              drawer_level: "top"|"middle"|"bottom"|None, urdf_version: str|None (None: the default robot),
              variant: "base" (VM) or the VA variant's name (grid.py *_VARIANTS),
              in_average: bool (False: upstream's camera variants, run but left out of its average),
              repeat: int (WidowX repeat 0..2, else 0), robot_pose: str|None (drawer poses: a0..c2 in VM,
              x<x>_y<y> in VA), layout: int (object layout or pose index within its cell),
              grasp_measured: bool (True for widowx and coke_can)}
    setup: the episode's env_name, robot, make kwargs, reset options, control mode, gripper mapping,
           step limit and seed, and `applied`: what the sim side reports (SimplerEnv version/commit,
           robot, control mode and step limit the env ran with; None for an episode that errored)
    episode_stats: the env's episode_stats at the final step (e.g. the drawer's qpos; absent if it errored)
    protocol: what all of a policy's episodes share: grid, success and grasp definitions, rotation
              conversion (rpy → axis-angle), gripper mapping per robot (WidowX binarised absolute,
              Google Robot relative + sticky 15), control modes, render, seed, unnorm statistics,
              the policy's description (actions per query ...), refine and vla-eval versions
plus the closed-loop fields every benchmark records (steps, failure_reason, latency, tokens ...).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from refine_core import BenchmarkSpec, ClosedLoopOptions, hookimpl

DOCKER_IMAGE = "ghcr.io/allenai/vla-evaluation-harness/simpler:latest"  # vla-eval's SimplerEnv configs'


class SimplerOptions(ClosedLoopOptions):
    episodes: int | None = Field(None, ge=1, description=(
        "Layouts per grid cell, for a quick check: the first N (default: upstream's: 24 WidowX object "
        "layouts, 25 coke-can positions, 60 move-near layouts, 9 drawer robot poses)."))
    tasks: list[str] | None = Field(None, description="Only these tasks (simpler_env.make names), e.g. "
                                                      "[widowx_carrot_on_plate] (default: all).")
    max_steps: int | None = Field(None, ge=1, description=(
        "Step limit of every episode, for a quick check (default: upstream's: WidowX 60, eggplant 120, "
        "coke can and move near 80, drawers 113)."))
    baselines: list[Literal["do-nothing", "random"]] = Field(
        [], description="Baseline policies beside the model (off: both score about 0 in SimplerEnv).")
    python: str | None = Field(None, description=(
        "The Python of a SimplerEnv environment with vla-eval installed: vla-eval's benchmark side runs "
        "there (default: this one, when it can import simpler_env)."))
    docker: bool = Field(False, description="Run the benchmark side in vla-eval's SimplerEnv Docker image.")
    docker_image: str = Field(DOCKER_IMAGE, description="The image benchmark.docker=true runs.")
    render: Literal["gpu", "cpu"] = Field("gpu", description=(
        "SAPIEN's renderer: gpu, or cpu (lavapipe; vla-eval reads its ICD from $SIMPLER_LAVAPIPE_ICD). The "
        "drawers' ray tracing is impractical on cpu."))


class WidowXOptions(SimplerOptions):
    repeats: int = Field(3, ge=1, description=(
        "Runs of the 24 layouts of each task (upstream runs Octo with 3 seeds). They differ where the policy "
        "samples (and in the env reset seed, seed + episode number)."))


@hookimpl
def refine_benchmarks():
    yield BenchmarkSpec(
        name="simpler-widowx",
        summary="SimplerEnv WidowX (visual matching): 4 tasks × 24 layouts × 3 repeats, success and grasp, "
                "through vla-eval",
        factory="refine_benchmarks.simpler.closed_loop:SimplerWidowX",
        options=WidowXOptions,
    )
    yield BenchmarkSpec(
        name="simpler-google-vm",
        summary="SimplerEnv Google Robot visual matching: coke can, move near, drawers × 4 urdf versions, "
                "through vla-eval",
        factory="refine_benchmarks.simpler.closed_loop:SimplerGoogleVM",
        options=SimplerOptions,
    )
    yield BenchmarkSpec(
        name="simpler-google-va",
        summary="SimplerEnv Google Robot variant aggregation: coke can, move near, drawers over upstream's "
                "variants, through vla-eval",
        factory="refine_benchmarks.simpler.closed_loop:SimplerGoogleVA",
        options=SimplerOptions,
    )
