"""`refine sweep`: grid parsing and planning, resuming (finished points skipped), failures kept
apart, the metric table and plot; and one real two-point sweep through `refine run`'s pipeline."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refine_core.cli import main
from refine_core.config import resolve_config
from refine_core.errors import RefineError, UsageError
from refine_core.run.sweep import parse_grid, plan_sweep, point_finished, read_metric, run_sweep

STAGES = ("train", "eval")


def test_grid_values_are_parsed_like_set_and_keep_their_text():
    axis = parse_grid("loss.lambda_r=0, 0.1,0.3,1.0")
    assert axis.key == "loss.lambda_r"
    assert axis.texts == ["0", "0.1", "0.3", "1.0"]
    assert axis.values == [0, 0.1, 0.3, 1.0]
    assert parse_grid("freeze.first_n_layers=null,2").values == [None, 2]
    for bad in ("loss.lambda_r", "lambda_r=0,1", "loss.lambda_r=0,,1", "loss.lambda_r=0,0", "=1,2"):
        with pytest.raises(UsageError):
            parse_grid(bad)


def _resolve(*base: str):
    return lambda extra: resolve_config(sets=[*base, *extra])


def test_plan_is_the_cartesian_product_with_one_directory_per_point(tmp_path):
    axes = [parse_grid("loss.lambda_r=0,0.3"), parse_grid("freeze.first_n_layers=2,4")]
    points = plan_sweep(axes, tmp_path, _resolve("train.max_steps=7", "loss.lambda_r=5"))
    assert [p.name for p in points] == [
        "loss.lambda_r=0,freeze.first_n_layers=2", "loss.lambda_r=0,freeze.first_n_layers=4",
        "loss.lambda_r=0.3,freeze.first_n_layers=2", "loss.lambda_r=0.3,freeze.first_n_layers=4"]
    assert [(p.config.loss.lambda_r, p.config.freeze.first_n_layers) for p in points] == [
        (0, 2), (0, 4), (0.3, 2), (0.3, 4)]  # the grid overrides a base --set of the same key
    assert all(p.config.train.max_steps == 7 for p in points)
    assert all(p.directory.parent == tmp_path for p in points)


def test_a_bad_grid_key_fails_before_anything_runs(tmp_path):
    with pytest.raises(UsageError, match="lamda_r"):
        plan_sweep([parse_grid("loss.lamda_r=0,1")], tmp_path / "sweep", _resolve())
    with pytest.raises(UsageError, match="twice"):
        plan_sweep([parse_grid("loss.lambda_r=0,1"), parse_grid("loss.lambda_r=2")], tmp_path, _resolve())
    assert not (tmp_path / "sweep").exists()


class FakeRuns:
    """Stands in for run_pipeline: writes what a finished run leaves (run_state, eval summary)."""

    def __init__(self, fail_at: float | None = None, usage_error: bool = False):
        self.calls, self.fail_at, self.usage_error = [], fail_at, usage_error

    def __call__(self, config, directory, stages, log):
        lam = config.loss.lambda_r
        self.calls.append(lam)
        if self.usage_error:
            raise UsageError("holds a different run")
        if lam == self.fail_at:
            raise RefineError(f"Non-finite loss at step 3 (lambda {lam})")
        (directory / "eval").mkdir(parents=True, exist_ok=True)
        (directory / "eval" / "summary.json").write_text(json.dumps({
            "action_token_accuracy": 0.5 + lam / 4, "action_token_chance": 1 / 256,
            "with_reasoning": {"l1_mean": 0.1 * (1 + lam)}}))
        (directory / "run_state.json").write_text(json.dumps(
            {"stages": {s: {"status": "done", "summary": "ok"} for s in stages}}))


def test_sweep_collects_the_metric_and_skips_finished_points(tmp_path):
    axes = [parse_grid("loss.lambda_r=0,0.1,0.3,1.0")]
    runs = FakeRuns()
    result = run_sweep(plan_sweep(axes, tmp_path, _resolve()), axes, tmp_path, "action_token_accuracy",
                       STAGES, log=lambda line: None, runner=runs)
    assert runs.calls == [0, 0.1, 0.3, 1.0]
    assert [p.metric for p in result.points] == pytest.approx([0.5, 0.525, 0.575, 0.75])
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert table["grid"] == {"loss.lambda_r": [0, 0.1, 0.3, 1.0]}
    assert [row["status"] for row in table["points"]] == ["ran"] * 4
    assert table["points"][2] == {"loss.lambda_r": 0.3, "action_token_accuracy": 0.575, "status": "ran",
                                  "directory": "loss.lambda_r=0.3"}
    assert result.figure == tmp_path / "sweep-action_token_accuracy.png"
    assert result.figure.read_bytes()[:4] == b"\x89PNG"

    again = FakeRuns()
    lines = []
    result = run_sweep(plan_sweep(axes, tmp_path, _resolve()), axes, tmp_path, "with_reasoning.l1_mean",
                       STAGES, log=lines.append, runner=again)
    assert again.calls == [] and all("skipped" in line for line in lines)
    assert [p.status for p in result.points] == ["finished"] * 4
    assert [p.metric for p in result.points] == pytest.approx([0.1, 0.11, 0.13, 0.2])
    assert (tmp_path / "sweep-with_reasoning.l1_mean.png").is_file()


def test_a_failed_point_is_recorded_and_the_others_still_run(tmp_path):
    axes = [parse_grid("loss.lambda_r=0,0.3,1.0")]
    runs = FakeRuns(fail_at=0.3)
    result = run_sweep(plan_sweep(axes, tmp_path, _resolve()), axes, tmp_path, "action_token_accuracy",
                       STAGES, log=lambda line: None, runner=runs)
    assert runs.calls == [0, 0.3, 1.0]
    assert [p.status for p in result.points] == ["ran", "failed", "ran"]
    assert result.points[1].metric is None and "Non-finite loss" in result.points[1].error
    assert [p.name for p in result.failed] == ["loss.lambda_r=0.3"]
    assert not point_finished(result.points[1].directory, STAGES)
    assert result.figure.is_file()
    with pytest.raises(UsageError):  # bad usage would stop every point: the sweep stops
        run_sweep(plan_sweep(axes, tmp_path / "other", _resolve()), axes, tmp_path / "other", "x", STAGES,
                  log=lambda line: None, runner=FakeRuns(usage_error=True))


def test_read_metric_takes_dotted_keys_and_reports_absence(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(
        {"action_token_accuracy": 0.25, "action_token_chance": 0.004, "with_reasoning": {"l1_mean": None}}))
    assert read_metric(tmp_path, "action_token_accuracy") == (0.25, 0.004)
    assert read_metric(tmp_path, "with_reasoning.l1_mean") == (None, None)
    assert read_metric(tmp_path, "nope.deeper") == (None, None)
    assert read_metric(tmp_path / "missing", "action_token_accuracy") == (None, None)


def test_closed_loop_success_is_read_with_its_interval_and_the_baselines(tmp_path):
    """The paper's Figure 8 with intervals: a point's closed-loop success, its Wilson interval as
    error bars, and the baselines of the same summary as reference lines."""
    axes = [parse_grid("loss.lambda_r=0,1.0")]
    points = plan_sweep(axes, tmp_path, _resolve())
    for point, wins in zip(points, (3, 9)):
        folder = point.directory / "eval" / "demo-sim"
        folder.mkdir(parents=True)
        folder.joinpath("summary.json").write_text(json.dumps({"benchmark": "demo-sim", "policies": {
            "model-never": {"mode": "never", "role": "model", "success_rate": wins / 12,
                            "success_ci95": [wins / 24, wins / 12 + 0.1]},
            "random": {"mode": None, "role": "baseline", "success_rate": 1 / 12, "success_ci95": [0.0, 0.3]},
            "expert": {"mode": None, "role": "reference", "success_rate": 1.0, "success_ci95": [0.8, 1.0]}}}))
        (point.directory / "eval" / "summary.json").write_text(json.dumps({"action_token_accuracy": 0.5}))
    metric = "demo-sim.policies.model-never.success_rate"
    result = run_sweep(points, axes, tmp_path, metric, STAGES, log=lambda line: None,
                       runner=lambda *args: None)
    assert [p.metric for p in result.points] == pytest.approx([0.25, 0.75])
    assert [p.interval for p in result.points] == [pytest.approx((0.125, 0.35)), pytest.approx((0.375, 0.85))]
    assert result.points[0].baselines == {"random": pytest.approx(1 / 12)}  # the reference is no baseline
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert table["points"][1]["ci95"] == pytest.approx([0.375, 0.85])
    assert result.figure.is_file()
    # the offline summary is still read when the first part names no closed-loop benchmark
    assert read_metric(points[0].directory, "action_token_accuracy") == (0.5, None)


def test_the_ablation_example_plans_the_papers_grid(tmp_path):
    """examples/ablation.yaml and the command in its comments plan the six documented points."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "ablation.yaml"
    command = " ".join(line.strip("# \\\n") for line in example.read_text().splitlines()
                       if line.startswith("#   ") or line.startswith("#     "))
    grids = [item.split()[0] for item in command.split("--grid ")[1:]]
    assert grids == ["loss.lambda_r=0,0.3,1.0", "freeze.first_n_layers=0,2"]
    axes = [parse_grid(g) for g in grids]
    points = plan_sweep(axes, tmp_path, lambda extra: resolve_config(config_file=example, sets=extra))
    assert [p.name for p in points][:2] == ["loss.lambda_r=0,freeze.first_n_layers=0",
                                            "loss.lambda_r=0,freeze.first_n_layers=2"] and len(points) == 6
    assert all(p.config.closed_loop.name == "demo-sim" and p.config.closed_loop.options["modes"]
               == ["every_step", "never"] for p in points)
    assert "--metric demo-sim.policies.model-every_step.success_rate" in command


def test_sweep_command_runs_each_point_through_the_pipeline(tmp_path, capsys):
    from refine_plugins.rlds.fixtures import write_bridge_dataset

    rng = np.random.default_rng(0)
    episodes = [{"actions": np.c_[rng.normal(0, 0.05, (5, 6)), (np.arange(5) < 2).astype(float)],
                 "instruction": f"put the {c} block on the plate"} for c in ("red", "blue", "green", "white")]
    data = write_bridge_dataset(tmp_path / "data", episodes, image_size=(32, 32))
    out = tmp_path / "sweep"
    capsys.readouterr()  # the fixture writer's messages
    args = ["sweep", "--grid", "loss.lambda_r=0,1.0", "--out", str(out), "--stages", "train,eval",
            "--dataset", "bridge", "--set", f"dataset.data_dir={data}", "--set", "data.val_fraction=0.3",
            "--set", "train.max_steps=1", "--set", "train.batch_size=2", "--set",
            "benchmark.free_running_steps=0",
            "--json"]
    main(args)
    table = json.loads(capsys.readouterr().out)
    assert [row["directory"] for row in table] == ["loss.lambda_r=0", "loss.lambda_r=1.0"]
    assert all(row["status"] == "ran" and 0 <= row["action_token_accuracy"] <= 1 for row in table)
    for row in table:
        summary = json.loads((out / row["directory"] / "eval" / "summary.json").read_text())
        assert row["action_token_accuracy"] == summary["action_token_accuracy"]
        assert (out / row["directory"] / "train" / "checkpoints" / "step-0000001").is_dir()
    assert (out / "sweep-action_token_accuracy.png").is_file()
    main(args)  # everything finished: nothing runs again
    assert [row["status"] for row in json.loads(capsys.readouterr().out)] == ["finished", "finished"]


def test_sweep_command_bad_grid_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--grid", "loss.lambda_r", "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
