"""refine's SimplerEnv benchmark side: vla-eval's SimplerEnvBenchmark, one vla-eval task per episode.

It runs in SimplerEnv's own interpreter (numpy<2, sapien 2.2.2, gymnasium<1) and imports only
numpy, vla_eval and SimplerEnv (simpler_env, and the gymnasium and mani_skill2_real2sim it brings).
What it adds to vla-eval's benchmark, because the paper's tables need it:
- any upstream grid cell: each task is one episode as refine's grid describes it (make name or
  gym id with upstream's arguments, reset options, step limit, seed, gripper mapping), so urdf
  versions, variants and the drawer poses' own overlays all run through one benchmark entry;
- the gripper as upstream's policies map it from refine's [0, 1] (1 = open): WidowX binarised,
  Google Robot relative with the 15-step sticky repeat (vla-eval's "sticky" mode differs:
  it takes −(2·open − 1) every step instead of the change, so an open command sticks from the
  first step and a close is only taken at steps 16, 31, ...);
- per-episode metrics: `grasp` (the source object grasped at ANY step: the per-step flag or
  episode_stats' OR, `is_src_obj_grasped` for WidowX, `is_grasped`/`grasped` for the coke can),
  `episode_stats` at the final step, and `sim` (SimplerEnv's version and the robot, control mode
  and step limit the env applied). Success stays vla-eval's truncation mode: `info["success"]`
  (`terminated`) at the final step; episodes run to the step limit.
Rotation passes straight through: refine's server already sends axis-angle deltas.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from vla_eval.benchmarks.base import StepResult
from vla_eval.benchmarks.simpler.benchmark import SimplerEnvBenchmark
from vla_eval.types import Action, EpisodeResult, Task

STICKY_REPEAT = 15  # steps a Google Robot gripper change is held (upstream's Octo/OpenVLA wrappers)
GRASP_FLAGS = ("is_src_obj_grasped", "is_grasped")  # per step: bridge tasks, coke can
GRASP_STATS = ("is_src_obj_grasped", "grasped")  # OR over the episode, in episode_stats


class Gripper:
    """refine's gripper command (1 open, 0 closed) as the robot's controller reads it."""

    def __init__(self, mode: str):
        if mode not in ("binary", "relative_sticky"):
            raise ValueError(f"unknown gripper mapping {mode!r}: binary or relative_sticky")
        self.mode = mode
        self.previous: float | None = None
        self.held, self.sticky, self.repeat = False, 0.0, 0  # a change being repeated, and for how long

    def __call__(self, open_value: float) -> float:
        if self.mode == "binary":  # WidowX: absolute, +1 open / -1 closed
            return 1.0 if open_value > 0.5 else -1.0
        # Google Robot: the change of the open value (+1 = close), held 15 steps once it is large
        relative = 0.0 if self.previous is None else self.previous - open_value
        self.previous = open_value
        if abs(relative) > 0.5 and not self.held:
            self.held, self.sticky = True, relative
        if self.held:
            self.repeat += 1
            relative = self.sticky
            if self.repeat == STICKY_REPEAT:
                self.held, self.sticky, self.repeat = False, 0.0, 0
        return float(relative)


class RefineSimplerBenchmark(SimplerEnvBenchmark):
    """`episodes`: one task dict per episode (refine_benchmarks.simpler.grid.SimplerEpisode.vla_task)."""

    def __init__(self, episodes: list[dict[str, Any]], seed: int | None = None,
                 success_mode: str = "truncation", send_state: bool = False) -> None:
        first = episodes[0]["task_name"] if episodes else "widowx_carrot_on_plate"
        super().__init__(task_name=first, seed=seed, success_mode=success_mode, send_state=send_state)
        self.episodes = episodes
        self._gripper = Gripper("binary")
        self._grasped = False
        self._last_info: dict[str, Any] = {}

    def get_tasks(self) -> list[Task]:
        return [dict(episode) for episode in self.episodes]

    def get_metric_keys(self) -> dict[str, str]:
        return {"success": "mean", "grasp": "mean"}

    def reset(self, task: Task) -> Any:
        # the episode's own settings, read by vla-eval's reset / _common_make_kwargs / make_obs
        self.task_name, self.seed = task["task_name"], task.get("seed")
        self.max_episode_steps, self.control_mode = task.get("max_episode_steps"), None
        self._gripper = Gripper(task.get("gripper", "binary"))
        self._grasped, self._last_info = False, {}
        return super().reset(task)

    def _make_vm_env(self, task: Task) -> tuple[Any, dict[str, Any]]:
        """The episode's env (vla-eval's reset calls this; it makes a new env per episode)."""
        common = self._common_make_kwargs()
        if task.get("env_name") is None:  # prepackaged visual matching: upstream's config for this task
            import simpler_env

            env = simpler_env.make(task["task_name"], **{**task.get("make_kwargs", {}), **common})
        else:
            import gymnasium as gym
            import simpler_env  # noqa: F401 -- registers SimplerEnv's gym ids

            kwargs = {"obs_mode": "rgbd", **_with_assets(task.get("make_kwargs", {})), **common}
            env = gym.make(task["env_name"], **kwargs)
        return env, {"options": _arrays(task.get("reset_options", {}))}

    def step(self, action: Action) -> StepResult:
        raw = np.asarray(action.get("actions", action.get("action")), dtype=np.float64).reshape(-1)
        if raw.shape != (7,):
            raise ValueError(f"expected 7 values [Δxyz, Δaxis-angle, gripper], got {raw.shape[0]}")
        env_action = np.concatenate([raw[:6], [self._gripper(float(raw[6]))]])
        assert self._env is not None
        obs, reward, done, truncated, info = self._env.step(env_action)
        info["truncated"] = truncated
        self._success_seen = self._success_seen or bool(done)
        self._grasped = self._grasped or any(bool(info.get(flag)) for flag in GRASP_FLAGS)
        self._last_info = info
        self._recorder.record_video(self._extract_frame(obs))
        self._recorder.record_step(reward=float(reward), done=bool(done), terminated=bool(done),
                                   truncated=bool(truncated), success=bool(done))
        return StepResult(obs=obs, reward=reward, done=done, info=info)

    def get_step_result(self, step_result: StepResult) -> EpisodeResult:
        result = dict(super().get_step_result(step_result))  # truncation: success at the final step
        stats = _plain(self._last_info.get("episode_stats") or {})
        grasp = self._grasped or any(bool(stats.get(key)) for key in GRASP_STATS)
        return {**result, "success": bool(result["success"]), "grasp": bool(grasp), "episode_stats": stats,
                "sim": self._applied()}

    def _applied(self) -> dict[str, Any]:
        """What the env actually ran with, and SimplerEnv's version."""
        env = self._env
        inner = getattr(env, "unwrapped", env)
        spec = getattr(env, "spec", None)
        return {"simpler_env": _simpler_version(), "robot": getattr(inner, "robot_uid", None),
                "control_mode": _plain(getattr(inner, "control_mode", None)),
                "max_episode_steps": getattr(spec, "max_episode_steps", None)}


def _with_assets(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`{ASSET_DIR}` in a path (an overlay image) as ManiSkill2_real2sim's asset folder here."""
    out = dict(kwargs)
    for key, value in kwargs.items():
        if isinstance(value, str) and "{ASSET_DIR}" in value:
            from mani_skill2_real2sim import ASSET_DIR

            out[key] = value.replace("{ASSET_DIR}", str(ASSET_DIR))
    return out


def _arrays(value: Any) -> Any:
    """Reset options as upstream passes them: number lists (positions, quaternions) as arrays."""
    if isinstance(value, dict):
        return {key: _arrays(item) for key, item in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value, dtype=np.float64)
    return value


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


_VERSION: dict[str, Any] | None = None


def _simpler_version() -> dict[str, Any]:
    """SimplerEnv's package version and, for a git checkout, its commit (upstream's version is 0.0.1)."""
    global _VERSION
    if _VERSION is None:
        import simpler_env

        try:
            version = importlib.metadata.version("simpler_env")
        except importlib.metadata.PackageNotFoundError:
            version = None
        checkout = Path(simpler_env.__file__).resolve().parent.parent  # SimplerEnv/simpler_env/__init__.py
        _VERSION = {"version": version, "commit": _git_commit(checkout)}
    return _VERSION


def _git_commit(checkout: Path) -> str | None:
    """The commit of a SimplerEnv git checkout (only its root: never a repository further up)."""
    git = checkout / ".git"
    if git.is_file():  # a submodule or worktree: "gitdir: <path>"
        git = (checkout / git.read_text().split(":", 1)[1].strip()).resolve()
    if not git.is_dir():
        return None
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[5:]
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = git / "packed-refs"
    for line in packed.read_text().splitlines() if packed.is_file() else []:
        if line.endswith(" " + ref):
            return line.split()[0]
    return None
