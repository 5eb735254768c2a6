"""`demo-sim`: the demo task's closed-loop simulator (`sim.DemoSim`) as a vla-eval benchmark.

vla-eval's orchestrator imports it by `refine_plugins.demo.vla_benchmark:DemoSimBenchmark`; episode
`episode_idx` of the one task is sim scene `episode_idx` of `seed` (never a training scene, see
`sim`). Observations: the 256x256 frame as `images["image_0"]` (the dataset's only camera) and the
instruction; with `send_privileged`, also the scene state a scripted policy acts from
(`expert.expert_action`). Actions: refine's [dx, dy, dz (metres), droll, dpitch, dyaw, gripper
(1 open, 0 closed)]. An episode ends on success or after twice the expert's steps.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from vla_eval.benchmarks.base import StepBenchmark, StepResult
from vla_eval.specs import IMAGE_RGB, LANGUAGE, DimSpec
from vla_eval.types import Action, EpisodeResult, Observation, Task

from .scene import CELL
from .sim import MAX_STEP_LIMIT, DemoSim

# refine's action convention, shared with the model server that serves a refine policy
POSITION = DimSpec("position", 3, "delta_xyz", (-CELL, CELL),
                   description="metres; rounded to grid cells of 1/32 m, at most one per axis per step")
ROTATION = DimSpec("rotation", 3, "delta_rpy",
                   accepts=frozenset({"delta_rpy", "delta_euler_xyz", "euler_xyz", "axis_angle"}),
                   description="ignored by the demo simulator, so any rotation format will do")
GRIPPER = DimSpec("gripper", 1, "binary_open_01", (0, 1), description="1 open, 0 closed; below 0.5 closes")
PRIVILEGED = DimSpec("privileged", 0, "demo_scene_state",
                     description="gripper cell, opening, held object, target and destination cells")


class DemoSimBenchmark(StepBenchmark):
    """The demo task, simulated: one task ("demo"), one seeded scene per episode index."""

    # Frames are drawn with NumPy, so either render mode runs on the CPU alone; "gpu" stays declared
    # because it is vla-eval's default mode and a run with no `render:` key must work too.
    render_backends: ClassVar[frozenset[str]] = frozenset({"gpu", "cpu"})

    @classmethod
    def configure_render(cls, mode: str) -> dict[str, str]:
        if mode not in cls.render_backends:
            raise NotImplementedError(f"{cls.__name__} has no render backend {mode!r}")
        return {}  # no simulator library to point at a renderer

    def __init__(self, seed: int = 0, pick_only_fraction: float = 0.25, send_privileged: bool = False):
        super().__init__()
        self.seed = int(seed)
        self.pick_only_fraction = float(pick_only_fraction)
        self.send_privileged = bool(send_privileged)
        self.sim: DemoSim | None = None

    def get_tasks(self) -> list[Task]:
        return [{"name": "demo"}]

    def reset(self, task: Task) -> Any:
        self.sim = DemoSim(self.seed, int(task.get("episode_idx", 0)), self.pick_only_fraction)
        return self._observe()

    def _observe(self) -> dict[str, Any]:
        assert self.sim is not None
        privileged = self.sim.privileged() if self.send_privileged else None
        return {"image": self.sim.render(), "privileged": privileged}

    def step(self, action: Action) -> StepResult:
        assert self.sim is not None, "step() before reset()"
        commanded = np.asarray(action["actions"], dtype=np.float32)
        if commanded.ndim == 2:  # an action chunk: this step takes its first action
            commanded = commanded[0]
        self.sim.step(commanded)
        return StepResult(obs=self._observe(), reward=float(self.sim.success), done=self.sim.done, info={})

    def make_obs(self, raw_obs: Any, task: Task) -> Observation:
        assert self.sim is not None
        obs: dict[str, Any] = {"images": {"image_0": raw_obs["image"]},
                               "task_description": self.sim.instruction}
        if raw_obs["privileged"] is not None:
            obs["privileged"] = raw_obs["privileged"]
        return obs

    def check_done(self, step_result: StepResult) -> bool:
        return self.sim is not None and self.sim.done

    def get_step_result(self, step_result: StepResult) -> EpisodeResult:
        sim = self.sim
        assert sim is not None
        return {
            "success": sim.success, "grasp": sim.grasp, "steps": sim.steps, "expert_steps": sim.expert_steps,
            "step_limit": sim.step_limit, "instruction": sim.instruction, "seed": self.seed,
            "target": sim.target, "destination": sim.destination,
            "episode_index": sim.episode_index,
        }

    def get_metric_keys(self) -> dict[str, str]:
        return {"success": "mean", "grasp": "mean"}

    def get_metadata(self) -> dict[str, Any]:
        # above every episode's own limit, so the simulator's limit is the one that ends episodes
        return {"max_steps": MAX_STEP_LIMIT + 1}

    def get_action_spec(self) -> dict[str, DimSpec]:
        return {"position": POSITION, "rotation": ROTATION, "gripper": GRIPPER}

    def get_observation_spec(self) -> dict[str, DimSpec]:
        spec = {"image_0": IMAGE_RGB, "language": LANGUAGE}
        if self.send_privileged:
            spec["privileged"] = PRIVILEGED
        return spec

    def get_hold_action(self, last_action: Action | None) -> Action:
        """Delta control: stay put, keeping the gripper as it is (live mode's stale ticks)."""
        hold = np.zeros(7, dtype=np.float32)
        hold[6] = 1.0 if self.sim is None else float(self.sim.opening)
        return {"actions": hold}

    def render(self) -> np.ndarray | None:
        return None if self.sim is None else self.sim.render()
