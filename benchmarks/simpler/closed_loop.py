"""SimplerEnv benchmarks as refine closed-loop benchmarks: refine serves the policy here, vla-eval's
orchestrator runs `refine_simpler_sim.RefineSimplerBenchmark` (sim/) in SimplerEnv's interpreter or
in vla-eval's Docker image, one vla-eval task per episode of the upstream grid (grid.py)."""
from __future__ import annotations

import importlib.util
from abc import abstractmethod
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from refine_core import ClosedLoopBenchmark, UsageError

from .grid import (GOOGLE_CONTROL, GRIPPER, WIDOWX_CONTROL, expand, google_va_cells, google_vm_cells,
    widowx_cells)

SIM_DIR = Path(__file__).resolve().parent / "sim"  # put on the benchmark side's PYTHONPATH
SIM_MOUNT = "/opt/refine_simpler_sim"  # where it is mounted in vla-eval's image
VULKAN_ICDS = "/usr/share/vulkan/icd.d"  # the GPU Vulkan drivers vla-eval's SimplerEnv configs mount
PROBE = ("import importlib.util as u, importlib.metadata as m\n"
         "names = ('simpler_env', 'vla_eval', 'refine_simpler_sim')\n"
         "missing = [n for n in names if u.find_spec(n) is None]\n"
         "print('missing ' + ' '.join(missing) if missing else 'ok ' + m.version('vla-eval'))")


class SimplerClosedLoop(ClosedLoopBenchmark):
    vla_benchmark = "refine_simpler_sim:RefineSimplerBenchmark"
    camera = "primary"  # vla-eval's name for the env's camera: 3rd_view_camera (WidowX), overhead_camera
    rotation = "axis_angle"  # SimplerEnv's controllers read a rotation vector
    shard_split = "entry"  # refine's queue wrapper cannot run in SimplerEnv's interpreter

    def __init__(self, options: Any):
        super().__init__(options)
        episodes = expand(self.cells(), options.episodes, options.max_steps, options.seed)
        if options.tasks is not None:
            known = list(dict.fromkeys(e.task for e in episodes))
            unknown = [t for t in options.tasks if t not in known]
            if unknown:
                raise UsageError(f"Unknown task '{unknown[0]}' of {self.name}. Available: {', '.join(known)}")
            episodes = [e for e in episodes if e.task in options.tasks]
        self.episodes = episodes
        self._by_name = {e.name: e for e in episodes}
        self._python: str | None = None  # the interpreter preflight() found
        self._shard: tuple[int, int] | None = None
        self._unnorm: dict[str, Any] | None = None

    @abstractmethod
    def cells(self) -> list[Any]:
        """The benchmark's grid cells (grid.py), before `episodes`/`tasks` narrow them."""

    # -- where SimplerEnv runs ---------------------------------------------------------------
    def preflight(self) -> None:
        if self._python is not None:
            return
        options = self.options
        if options.docker:
            if options.python:
                raise UsageError("benchmark.python and benchmark.docker=true are two ways to run SimplerEnv: "
                                 "set one")
            if shutil.which("docker") is None:
                raise UsageError("benchmark.docker=true needs Docker: the `docker` command is not on PATH")
            if Path("/.dockerenv").exists():  # vla-eval then runs the benchmark side here, not in its image
                raise UsageError("benchmark.docker=true cannot start vla-eval's image from inside a "
                                 "container (vla-eval runs the benchmark side in place there): run refine on "
                                 "the host, or use benchmark.python")
            self._python = "docker"
            return
        python = options.python or (sys.executable if importlib.util.find_spec("simpler_env") else None)
        if python is None:
            raise UsageError(
                f"{self.name} runs in SimplerEnv, which this Python cannot import: build SimplerEnv (with "
                "vla-eval) in its own Python 3.10 environment and pass --set benchmark.python=/path/to/its/"
                "bin/python, or run vla-eval's SimplerEnv image with --set benchmark.docker=true (README: "
                "'Evaluating in SimplerEnv')")
        self._python = _probe(python)

    def side(self) -> dict[str, Any]:
        self.preflight()
        options = self.options
        if options.docker:  # vla-eval starts the image; the sim-side module is mounted into it
            volumes = [f"{SIM_DIR}:{SIM_MOUNT}:ro"] + ([f"{VULKAN_ICDS}:{VULKAN_ICDS}:ro"]
                                                     if Path(VULKAN_ICDS).is_dir() else [])
            return {"docker": {"image": options.docker_image, "volumes": volumes,
                               "env": ["NVIDIA_DRIVER_CAPABILITIES=all", f"PYTHONPATH={SIM_MOUNT}"]},
                    "render": options.render}
        return {"python": self._python, "pythonpath": [str(SIM_DIR)], "render": options.render}

    # -- the vla-eval entry and the records ----------------------------------------------------
    def _part(self) -> list[Any]:
        """This machine's episodes (`refine eval --shard i/n`: every n-th, fixed and disjoint)."""
        if self._shard is None:
            return self.episodes
        index, count = self._shard
        return self.episodes[index::count]

    def entry(self, policy: str) -> dict[str, Any]:
        part = self._part()
        return {"benchmark": self.vla_benchmark, "name": self.name, "episodes_per_task": 1,
                "max_steps": max((e.max_episode_steps for e in part), default=1),  # the env truncates first
                "params": {"episodes": [e.vla_task() for e in part], "seed": self.options.seed}}

    def protocol(self, policy: str) -> dict[str, Any]:
        """What every episode of a policy shares (the episode's own setup is its record's `setup`)."""
        options = self.options
        robots = sorted({e.simpler["robot"] for e in self.episodes})
        grippers = {e.simpler["robot"]: GRIPPER[e.gripper] for e in self.episodes}
        return {"benchmark": self.name, "vla_benchmark": self.vla_benchmark,
                "grid": {"source": "SimplerEnv scripts/*.sh @ 4ab7178 (Google Robot: the RT-1 scripts)",
                         "episodes": len(self.episodes), "tasks": options.tasks,
                         "layouts_per_cell": options.episodes, "max_steps": options.max_steps,
                         "repeats": getattr(options, "repeats", 1)},
                "success": "info['success'] (terminated) at the final step; episodes run to the step limit",
                "grasp": "WidowX: episode_stats['is_src_obj_grasped'] (grasped at any step); coke can: "
                         "episode_stats['grasped']; move near and drawers: not measured (False)",
                "adapter": {"rotation": "roll/pitch/yaw deltas → axis-angle (extrinsic xyz)",
                            "gripper": {robot: grippers[robot] for robot in robots},
                            "camera": "primary (3rd_view_camera 480×640 on WidowX, overhead_camera 512×640 "
                                      "on the Google Robot)"},
                "control_mode": {robot: WIDOWX_CONTROL if robot == "widowx" else GOOGLE_CONTROL
                                 for robot in robots},
                "render": options.render, "seed": options.seed, "unnorm": self._unnorm}

    def finish_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each record named by its SimplerEnv task and episode, with its descriptor and setup (the
        vla-eval task name is `<task>#<episode>`; a failed episode gets them too)."""
        out = []
        for row in rows:
            episode = self._by_name.get(row.get("task"))
            if episode is None:
                out.append(row)
                continue
            applied = row.pop("sim", None)  # what the sim side reports the env ran with
            out.append({**row, "task": episode.task, "episode": episode.episode, "simpler": episode.simpler,
                        "setup": {**episode.setup(), "applied": applied}})
        return sorted(out, key=lambda r: (str(r.get("task")), int(r.get("episode") or 0)))

    def evaluate(self, context: Any) -> Any:
        self.preflight()
        self._shard = context.extra.get("shard")
        codec = getattr(context.backbone, "codec", None)
        stats = getattr(codec, "stats", None)
        if stats is not None:  # the training data's q01/q99 the actions are un-normalised with
            mask = None if stats.mask is None else stats.mask.tolist()
            self._unnorm = {"dataset": getattr(context.dataset, "name", None), "q01": stats.q01.tolist(),
                            "q99": stats.q99.tolist(), "normalised": mask}
        return super().evaluate(context)

    def aggregate(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
        """The paper's Tables 1, 2 and 8 (tables.py): in the summary for the report, as per-policy
        averages for the sweep, and as Markdown and CSV files."""
        from .tables import extend_summary

        return extend_summary(summary, records)


class SimplerWidowX(SimplerClosedLoop):
    name = "simpler-widowx"

    def cells(self) -> list[Any]:
        return widowx_cells(self.options.repeats)


class SimplerGoogleVM(SimplerClosedLoop):
    name = "simpler-google-vm"

    def cells(self) -> list[Any]:
        return google_vm_cells()


class SimplerGoogleVA(SimplerClosedLoop):
    name = "simpler-google-va"

    def cells(self) -> list[Any]:
        return google_va_cells()


def _probe(python: str) -> str:
    """`python`, once it imports SimplerEnv, vla-eval (this one's minor version) and the sim side."""
    import vla_eval

    path = os.pathsep.join(filter(None, [str(SIM_DIR), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        answer = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    except OSError as exc:
        raise UsageError(f"benchmark.python={python} does not run: {exc.strerror or exc}") from None
    words = answer.stdout.split()
    if answer.returncode != 0 or not words:
        last = (answer.stderr.strip().splitlines() or [f"exit {answer.returncode}"])[-1]
        raise UsageError(f"benchmark.python={python} does not run: {last}")
    if words[0] == "missing":
        raise UsageError(f"benchmark.python={python} cannot import {', '.join(words[1:])}: install "
                         f"SimplerEnv and vla-eval {vla_eval.__version__} there")
    theirs, ours = words[1].split(".")[:2], vla_eval.__version__.split(".")[:2]
    if theirs != ours:
        raise UsageError(f"benchmark.python={python} has vla-eval {words[1]}; refine speaks vla-eval "
                         f"{vla_eval.__version__}: pip install 'vla-eval=={vla_eval.__version__}' there")
    return python

