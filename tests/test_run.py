"""`refine run` end to end on a small real RLDS dataset: stages, skip when complete, resume after
a kill, refusal to mix runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_refine

STAGES = "annotate,train,eval"


@pytest.fixture(scope="module")
def bridge_dir(tmp_path_factory) -> Path:
    from refine_plugins.rlds.fixtures import write_bridge_dataset

    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(6):
        states = np.cumsum(rng.normal(0, 0.02, size=(8, 7)), 0).astype(np.float32)
        actions = rng.normal(0, 0.05, size=(8, 7)).astype(np.float32)
        actions[:, 6] = np.arange(8) < 4
        episodes.append({"actions": actions, "states": states,
                         "instruction": "put the red block on the blue plate"})
    root = tmp_path_factory.mktemp("rlds")
    write_bridge_dataset(root, episodes, image_size=(64, 64))
    return root


def small_run(bridge_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset",
        "bridge",
        "--set",
        f"dataset.data_dir={bridge_dir}",
        "--set",
        "data.val_fraction=0.3",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.log_every=1",
        "--set",
        "benchmark.free_running_steps=1",
        "--set",
        "benchmark.max_new_tokens=8",
        *extra,
    ]


def test_miniature_run_then_nothing_to_do(bridge_dir, tmp_path):
    out = tmp_path / "run"
    first = run_refine("run", "--out", str(out), "--stages", STAGES,
                       *small_run(bridge_dir, "--set", "train.max_steps=3", "--set",
                                  "train.reasoning_dropout=0"))
    assert first.returncode == 0, first.stderr
    for stage in ("annotate", "train", "eval"):
        assert f"[{stage}] done" in first.stdout
    manifest = json.loads((out / "annotations" / "manifest.json").read_text())
    assert manifest["counts"]["annotated"] == manifest["counts"]["planned"] > 0
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["reasoning_loss"] > 0 for m in metrics)  # the scripted reasoning is trained on
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["episodes"] >= 1 and 0 <= summary["action_token_accuracy"] <= 1
    config = (out / "config.yaml").read_text()
    assert "max_steps: 3" in config and str(bridge_dir) in config

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_refine("run", "--out", str(out), "--stages", STAGES)
    assert again.returncode == 0, again.stderr
    assert "Nothing to do" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing rewritten

    # `refine eval` alone: the run's dataset and benchmark come from the checkpoint, settings override
    alone = run_refine("eval", "--checkpoint", str(out / "train"), "--out", str(tmp_path / "eval2"), "--json",
                       "--set", "benchmark.free_running_steps=0")
    assert alone.returncode == 0, alone.stderr
    again_summary = json.loads(alone.stdout)
    assert again_summary["action_token_accuracy"] == pytest.approx(summary["action_token_accuracy"])
    assert again_summary["with_reasoning"]["predictions"] == 0
    assert (tmp_path / "eval2" / "results.jsonl").is_file()
    unknown = run_refine("eval", "--checkpoint", str(out / "train"), "--out", str(tmp_path / "x"),
                         "--benchmark", "nope")
    assert unknown.returncode == 2 and "Unknown benchmark 'nope'. Available:" in unknown.stderr
    missing = run_refine("eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "No refine checkpoint in" in missing.stderr


def test_a_different_run_in_the_same_directory_is_refused(bridge_dir, tmp_path):
    out = tmp_path / "run"
    assert run_refine("run", "--out", str(out), "--stages", "annotate",
                      *small_run(bridge_dir)).returncode == 0
    changed = run_refine("run", "--out", str(out), "--stages", "annotate", "--set", "loss.lambda_r=1.0")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds a different run (loss.lambda_r: 0.3 → 1.0); choose a new --out, or run "
        f"`refine run --out {out}` with no settings to continue it")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    stray = run_refine("run", "--out", str(tmp_path / "other"), "--stages", "annotate",
                       *small_run(bridge_dir))
    assert stray.returncode == 2 and "holds no refine run" in stray.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_bad_stage_name():
    result = run_refine("run", "--stages", "annotate,trian")
    assert result.returncode == 2
    assert "Unknown stage 'trian'. Available: annotate, train, eval, report" in result.stderr


def test_killed_during_training_resumes_from_the_last_checkpoint(bridge_dir, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--stages", "annotate,train",
            *small_run(bridge_dir, "--set", "train.max_steps=12", "--set", "train.save_every=3")]
    process = subprocess.Popen([sys.executable, "-c", "from refine_core.cli import main; main()", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
                               start_new_session=True)
    deadline = time.monotonic() + 240
    checkpoints = out / "train" / "checkpoints"
    while time.monotonic() < deadline and not list(checkpoints.glob("step-*")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = sorted(p.name for p in checkpoints.glob("step-*"))
    assert saved, "no checkpoint appeared before the deadline"
    resumed = run_refine(*args[:5])  # `refine run --out OUT --stages …` continues the same run
    assert resumed.returncode == 0, resumed.stderr
    assert "[train] resuming from" in resumed.stdout
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # every step once: nothing lost, nothing repeated


def test_the_readmes_main_job_runs_whole_with_its_defaults(tmp_path):
    """`refine run` as the README gives it — every default stage (annotate, train, eval with the
    closed loop, report) on the default demo dataset — scaled down through options only."""
    out = tmp_path / "run"
    scaled = ["--set", "dataset.episodes=6", "--set", f"dataset.cache_dir={tmp_path / 'cache'}",
              "--set", "data.val_fraction=0.34", "--set", "train.max_steps=4", "--set", "train.save_every=4",
              "--set", "benchmark.free_running_steps=1", "--set", "benchmark.max_new_tokens=12",
              "--set", "closed_loop.episodes=1", "--set", "closed_loop.modes=[every_step, never]",
              "--set", "closed_loop.max_reasoning_tokens=8"]
    first = run_refine("run", "--out", str(out), *scaled)
    assert first.returncode == 0, first.stderr
    for stage in ("annotate", "train", "eval", "report"):
        assert f"[{stage}] done" in first.stdout
    state = json.loads((out / "run_state.json").read_text())["stages"]
    assert [stage for stage, row in state.items() if row["status"] == "done"] == [
        "annotate", "train", "eval", "report"]
    closed = json.loads((out / "eval" / "demo-sim" / "summary.json").read_text())["policies"]
    assert set(closed) == {"model-every_step", "model-never", "do-nothing", "random", "expert"}
    assert closed["expert"]["success_rate"] == 1.0  # the sim the model acted in is solvable
    report = (out / "report" / "report.md").read_text()
    assert report.splitlines()[4] == "## Does it work?"  # the answer comes first
    assert "acts better than the baselines: model-never on demo-sim" in report
    assert (out / "report" / "report.html").is_file() and (out / "report" / "attention.png").is_file()
    # the report shows the model's own free-running reasoning beside the teacher's
    examples = report.split("## Example reasoning")[1]
    assert "**teacher (scripted/rules/scripted-compact-v1):**" in examples and "**model" in examples

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = run_refine("run", "--out", str(out))
    assert again.returncode == 0 and "Nothing to do" in again.stdout, again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
