"""Closed-loop evaluation through vla-eval: a policy acts in a simulator, episode after episode.

refine does not run simulators itself. For each policy to evaluate (the model in each reasoning
mode, and the baselines) it serves the policy in this process (`PolicyModelServer` on vla-eval's
protocol) and lets vla-eval's real orchestrator run the benchmark against it: in this process, or
in `shards` `vla-eval run` processes sharing vla-eval's work queue. vla-eval records every episode
in its SQLite recording; refine exports it (`vla_eval.results.export`), joins each episode with
the server's own record of it (latency, tokens, forced spans) and writes one record per episode.

Layout of OUT (the benchmark's output directory):
    <policy>/                 one per evaluated policy, e.g. model-every_k, do-nothing
        vla-eval.yaml         the vla-eval config that ran (its benchmark entry, local shards, and
                              `shard`: this machine's part i/n of a split evaluation, see shards.py)
        recording-<id>.sqlite vla-eval's recording: its work queue makes a killed run resumable
        policy_log.jsonl      the server's per-episode records (appended as episodes end)
        episodes.jsonl        the joined records, written once every episode is done

A killed evaluation is run again with the same OUT: finished policies are read back, an
unfinished one continues where vla-eval's queue stopped (its finished episodes are kept).

Where the benchmark side runs (`side`, see `run_policy`): by default in this interpreter. A
simulator with its own pinned environment (SimplerEnv: numpy<2, sapien 2.2.2) runs it in another
interpreter (`vla-eval run --no-docker` started with that python, the benchmark's sim-side module
put on its PYTHONPATH) or in vla-eval's Docker image (`vla-eval run` with a `docker:` section);
either way always as `vla-eval run` processes on the recording's work queue, talking to the policy
server in this process. refine's queue wrapper (shards.py) cannot run there, so such a benchmark
hands over only this machine's part of its episodes (`shard_split="entry"`).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from refine_core.benchmark import Benchmark, BenchmarkResult
from refine_core.files import atomic_write

Baseline = Literal["do-nothing", "random"]
# the Policy's reasoning modes, and VLM2VLA's hierarchical loop (refine_core.vlm2vla_policy)
ClosedLoopMode = Literal["every_step", "every_k", "never", "hierarchical"]
EPISODES_FILE, LOG_FILE = "episodes.jsonl", "policy_log.jsonl"


class ClosedLoopOptions(BaseModel):
    """Options every closed-loop benchmark takes (a plugin's options extend these)."""

    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(24, ge=1, description="Episodes per task for every evaluated policy.")
    modes: list[ClosedLoopMode] = Field(
        ["every_step", "every_k", "never"], description="Reasoning modes the model is evaluated in "
                                                        "(hierarchical: VLM2VLA's subtask loop).")
    verifier: Literal["auto", "model", "scripted"] = Field(
        "auto", description="hierarchical: who says a subtask is complete (scripted: the benchmark's "
                            "own verifier reading the simulator's state; model: the fine-tuned model on "
                            "the completion question; auto: scripted where the benchmark has one).")
    with_plan: bool | None = Field(None, description="hierarchical: ask for the motion plan before each "
                                                     "chunk (false: the NR ablation); unset: as the "
                                                     "checkpoint was trained (vlm2vla.with_plan).")
    every: int = Field(5, ge=1, description="K of the every_k mode.")
    max_reasoning_tokens: int = Field(256, ge=1)
    baselines: list[Baseline] = Field(["do-nothing", "random"],
                                      description="Baseline policies beside the model.")
    shards: int = Field(1, ge=1, description="vla-eval processes running episodes in parallel.")
    max_batch_size: int = Field(8, ge=1, description="Sessions the server batches into one generation.")
    seed: int = Field(0, description="Seed of the benchmark's episodes and of the random baseline.")


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); (0, 1) with no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def run_policy(policy: Any, entry: dict[str, Any], out: Path, shards: int = 1, max_batch_size: int = 8,
               protocol: dict[str, Any] | None = None, camera: str | None = None,
               shard: tuple[int, int] | None = None, rotation: str = "rpy",
               side: dict[str, Any] | None = None,
               shard_split: Literal["queue", "entry"] = "queue") -> list[dict[str, Any]]:
    """Every episode of the vla-eval benchmark `entry` with `policy` (only machine part `shard`
    (i, n) of them, see shards.py), as joined records (resumes from `out`; reads the records back
    when `out` already holds them all).

    `side`: where vla-eval's benchmark side runs, default this interpreter with `render: cpu`:
    `python` (an interpreter with vla-eval and the simulator), `pythonpath` (folders it imports the
    benchmark from), `docker` (vla-eval's `docker:` config section: image, volumes, env), `render`.
    `shard_split`: "queue" runs only part `shard` of the entry's episodes (refine's wrapper of
    vla-eval's queue, this interpreter only); "entry": the entry already holds only that part."""
    from refine_core.evaluate.shards import shard_label

    _check_same_part(out, shard_label(shard))
    done = out / EPISODES_FILE
    if done.is_file():
        return [json.loads(line) for line in done.read_text().splitlines() if line.strip()]
    from vla_eval.api import serve_background

    from refine_core.serve.model_server import PolicyModelServer

    side = side or {}
    foreign = bool(side.get("python") or side.get("docker"))
    machine = shard if shard_split == "queue" else None
    if foreign and machine is not None:
        from refine_core.errors import RefineError

        raise RefineError("a benchmark side in another interpreter or in Docker cannot run refine's queue "
                          "wrapper: split its episodes in the entry (shard_split='entry')")
    out.mkdir(parents=True, exist_ok=True)
    eval_id = re.sub(r"[^\w.-]", "_", out.name)
    config = {"benchmarks": [entry], "output_dir": str(out), "render": side.get("render", "cpu")}
    if side.get("docker"):
        config["docker"] = side["docker"]
    recorded = {**config, "shards": shards, "shard": shard_label(shard)}
    if side.get("python"):
        recorded["python"] = side["python"]
    atomic_write(out / "vla-eval.yaml", json.dumps(recorded, indent=2))
    server = PolicyModelServer(policy, max_batch_size=max_batch_size, camera=camera, log_path=out / LOG_FILE,
                               rotation=rotation)
    with serve_background(server) as handle:
        if shards == 1 and not foreign:
            from refine_core.evaluate.shards import run_orchestrator

            endpoint = {"url": handle.url, "timeout": 600}
            run_orchestrator({**config, "server": endpoint}, eval_id, 0, 1, machine)
        else:
            _run_shards(config, out, handle.url, eval_id, shards, machine, side)
    rows, finished = _export(out, eval_id)
    records = _join(rows, out / LOG_FILE, policy.describe(), protocol or {})
    if finished:  # vla-eval's queue says every episode (of this machine's part) is done
        atomic_write(done, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _check_same_part(out: Path, label: str | None) -> None:
    """Refuse to continue in `out` the recording of another part of a split evaluation."""
    recorded = out / "vla-eval.yaml"
    if not recorded.is_file():
        return
    held = json.loads(recorded.read_text()).get("shard")
    if held != label:
        from refine_core.errors import UsageError

        held, asked = (f"shard {text}" if text else "an unsharded evaluation" for text in (held, label))
        raise UsageError(f"{out} holds the episodes of {held}, not of {asked}: evaluate into another --out")


def _run_shards(config: dict[str, Any], out: Path, url: str, eval_id: str, shards: int,
                machine: tuple[int, int] | None = None, side: dict[str, Any] | None = None) -> None:
    """`shards` `vla-eval run` processes on one work queue, all talking to this process's server
    (for a machine's part of a split evaluation, refine's wrapper of vla-eval's orchestrator; with
    `side`, in another interpreter or in Docker: see run_policy)."""
    from refine_core.evaluate.shards import local_shard_command

    side = side or {}
    atomic_write(out / "vla-eval-run.yaml", json.dumps({**config, "server": {"url": url, "timeout": 600}}))
    # Docker: vla-eval itself (here) starts the container that runs the orchestrator; --yes: no pull prompt
    launch = ["--yes"] if side.get("docker") else ["--no-docker"]
    command = [side.get("python") or sys.executable, "-m", "vla_eval.cli.main", "run", *launch, "-c",
               str(out / "vla-eval-run.yaml"),
               "--eval-id", eval_id, "--output-dir", str(out), "--num-shards", str(shards)]
    commands = [[*command, "--shard-id", str(i)] if machine is None else
                local_shard_command(out / "vla-eval-run.yaml", eval_id, i, shards, machine)
                for i in range(shards)]
    env = None
    if side.get("pythonpath") and not side.get("docker"):  # the sim-side module, importable there
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [*side["pythonpath"], *filter(None, [os.environ.get("PYTHONPATH")])])}
    processes = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                 for argv in commands]
    failed = []
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            failed.append(err.strip().splitlines()[-1] if err.strip() else f"exit {process.returncode}")
    if failed:
        from refine_core.errors import RefineError

        raise RefineError(f"a vla-eval shard failed: {failed[0]}; run again to resume the unfinished "
                          "episodes")


def _export(out: Path, eval_id: str) -> tuple[list[dict[str, Any]], bool]:
    """vla-eval's exported episodes, and whether its queue says every one is done."""
    from vla_eval.results.export import export_eval

    rows, bodies = [], export_eval(out, eval_id)
    for body in bodies:
        for task in body.get("tasks", []):
            for episode in task.get("episodes", []):
                rows.append({**episode, "task": task.get("task"),
                             "vla_eval_version": body.get("harness_version")})
    return rows, bool(bodies) and not any(body.get("partial") for body in bodies)


def _join(rows: list[dict[str, Any]], log: Path, description: dict[str, Any],
          protocol: dict[str, Any]) -> list[dict[str, Any]]:
    logged = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill: that episode is not in vla-eval's results either
            logged[(record["sid"], record["eid"])] = record
    from refine_core import __version__

    out = []
    for row in sorted(rows, key=lambda r: (str(r.get("task")), int(r.get("episode_id", 0)))):
        server = logged.get((row.get("sid"), row.get("eid")), {})
        metrics = row.get("metrics") or {}
        out.append({
            "task": row.get("task"), "episode": row.get("episode_id"), **{k: v for k, v in metrics.items()},
            "success": bool(metrics.get("success")), "grasp": bool(metrics.get("grasp")),
            "steps": row.get("steps"), "failure_reason": row.get("failure_reason"),
            "latency_per_action_s": server.get("latency_per_action_s"),
            "tokens_per_query": server.get("tokens_per_query"), "queries": server.get("queries"),
            "forced": server.get("forced"), "repetition_stopped": server.get("repetition_stopped"),
            "reasoning_sample": server.get("reasoning_sample"),
            "stage_latency_s": server.get("stage_latency_s"),  # the hierarchical policy's, per stage
            "decomposition": server.get("decomposition"),  # its subtask list
            "protocol": {**protocol, "policy": description, "refine_version": __version__,
                         "vla_eval_version": row.get("vla_eval_version")},
        })
    return out


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success and grasp rates with Wilson 95% intervals, trials, latency and tokens."""
    trials = len(records)
    wins, grasps = sum(r["success"] for r in records), sum(r["grasp"] for r in records)
    latencies = [r["latency_per_action_s"] for r in records if r.get("latency_per_action_s") is not None]
    tokens = [r["tokens_per_query"] for r in records if r.get("tokens_per_query") is not None]
    queries = sum(r.get("queries") or 0 for r in records)
    return {
        "trials": trials, "success_rate": wins / trials if trials else None,
        "success_ci95": list(wilson_interval(wins, trials)),
        "grasp_rate": grasps / trials if trials else None,
        "grasp_ci95": list(wilson_interval(grasps, trials)),
        "latency_per_action_s": sum(latencies) / len(latencies) if latencies else None,
        "tokens_per_query": sum(tokens) / len(tokens) if tokens else None,
        "forced_rate": sum(r.get("forced") or 0 for r in records) / queries if queries else None,
        "errors": sum(1 for r in records if r.get("failure_reason")),
    }


class ClosedLoopBenchmark(Benchmark):
    """A vla-eval benchmark as a refine benchmark: the trained model in each reasoning mode, and the
    baselines, each through the served-policy path above. A plugin subclasses it, naming the
    vla-eval benchmark class (`vla_benchmark`, an import string) and the params it takes."""

    name = "closed-loop"
    vla_benchmark = ""
    camera: str | None = None  # the observation image the policy sees (None: the first)
    rotation = "rpy"  # what the benchmark's controller reads: rpy deltas, or "axis_angle" (SimplerEnv)
    shard_split = "queue"  # "entry": entry() holds only this machine's part (see run_policy)

    def __init__(self, options: ClosedLoopOptions):
        self.options = options

    def params(self, policy: str) -> dict[str, Any]:
        """Constructor params of the vla-eval benchmark for the run of `policy` (a policy's name)."""
        return {"seed": self.options.seed}

    def entry(self, policy: str) -> dict[str, Any]:
        return {"benchmark": self.vla_benchmark, "name": self.name,
                "episodes_per_task": self.options.episodes, "params": self.params(policy)}

    def protocol(self, policy: str) -> dict[str, Any]:
        """What a result needs to say about how the episodes were run (beside the policy's own)."""
        return {"benchmark": self.name, "vla_benchmark": self.vla_benchmark, "params": self.params(policy),
                "episodes_per_task": self.options.episodes,
                "adapter": {"rotation": "roll/pitch/yaw deltas as predicted" if self.rotation == "rpy" else
                            "roll/pitch/yaw deltas → axis-angle (extrinsic xyz)",
                            "gripper": "1 open, 0 closed (the benchmark maps it to its robot's)"}}

    def side(self) -> dict[str, Any] | None:
        """Where vla-eval's benchmark side runs (None: in this interpreter; see run_policy)."""
        return None

    def verifier_name(self) -> str:
        """`options.verifier` with auto decided: scripted where this benchmark has one, else model."""
        from refine_core.errors import UsageError

        if self.options.verifier != "auto":
            return self.options.verifier
        try:
            self.verifier("scripted")
        except UsageError:
            return "model"
        return "scripted"

    def verifier(self, name: str) -> Any:
        """The hierarchical policy's subtask verifier `name` (None: the model's own, built by the
        policy); a benchmark with a scripted one overrides this."""
        if name == "model":
            return None
        from refine_core.errors import UsageError

        raise UsageError(f"benchmark {self.name} has no {name} verifier; use closed_loop.verifier=model")

    def finish_records(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A policy's joined records as the results hold them (a subclass adds what it knows)."""
        return rows

    def policies(self, context: Any) -> list[tuple[str, str | None, Any]]:
        """(name, reasoning mode or None, policy) for the model's modes and the baselines."""
        from refine_core.evaluate.baselines import DoNothingPolicy, RandomPolicy
        from refine_core.policy import Policy, PolicySettings

        options = self.options
        out: list[tuple[str, str | None, Any]] = []
        for mode in options.modes:
            if mode == "hierarchical":
                from refine_core.vlm2vla_policy import HierarchicalPolicy, HierarchicalPolicySettings

                with_plan = context.with_plan if options.with_plan is None else options.with_plan
                verifier = self.verifier_name()
                settings = HierarchicalPolicySettings(verifier=verifier, with_plan=with_plan,
                                                      seed=options.seed)
                out.append((f"model-{mode}", mode, HierarchicalPolicy(context.backbone, settings,
                                                                      self.verifier(verifier))))
                continue
            settings = PolicySettings(reasoning=mode, every=options.every, order=context.reasoning_order,
                                      max_reasoning_tokens=options.max_reasoning_tokens)
            out.append((f"model-{mode}", mode, Policy(context.backbone, settings,
                                                      reasoning_format=context.reasoning_format)))
        baselines = {"do-nothing": lambda: DoNothingPolicy(),
                     "random": lambda: RandomPolicy(context.backbone.codec.stats, seed=options.seed)}
        out += [(name, None, baselines[name]()) for name in options.baselines]
        return out

    def evaluate(self, context: Any) -> BenchmarkResult:
        records: list[dict[str, Any]] = []
        table: dict[str, Any] = {}
        for name, mode, policy in self.policies(context):
            rows = run_policy(policy, self.entry(name), Path(context.out_dir) / name,
                              shards=self.options.shards, max_batch_size=self.options.max_batch_size,
                              protocol=self.protocol(name), camera=self.camera,
                              shard=context.extra.get("shard"),  # a machine's part (refine eval --shard)
                              rotation=self.rotation, side=self.side(), shard_split=self.shard_split)
            rows = self.finish_records(rows)
            role = getattr(policy, "role", "model")  # model, baseline, or reference (a scripted expert)
            records += [{"policy": name, "mode": mode, "role": role, **row} for row in rows]
            table[name] = {"mode": mode, "role": role, **summarise(rows)}
            scored = [r for r in rows if r.get("decomposition") is not None and r.get("target")]
            if scored:  # the hierarchical policy's subtask lists, where the benchmark names the objects
                from refine_core.evaluate.decomposition import decomposition_score

                table[name]["decomposition"] = decomposition_score(
                    {**r, "episode_id": r.get("episode")} for r in scored).summary()
        summary = {"benchmark": self.name, "policies": table, "episodes": len(records)}
        files = self.aggregate(records, summary)
        return BenchmarkResult(records=records, summary=summary, files=files)
