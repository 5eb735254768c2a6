"""`refine sweep`: the same run at several values of config keys (the paper's Figure 8 ablations).

    refine sweep --grid loss.lambda_r=0,0.1,0.3,1.0 --out DIR [--grid freeze.first_n_layers=2,4] ...

- Grid: each `--grid key=v1,v2,…` is one axis (values parsed as YAML, like `--set`); several
  axes give their Cartesian product, first axis varying slowest.
- One run directory per point, named by its settings as typed: `DIR/loss.lambda_r=0.3/`
  (`,`-joined with several axes). Each point is one `refine run` (`run_pipeline`) with the base
  settings plus the point's, so every point is a complete, resumable run of its own.
- Resumable: a point whose run_state.json marks every requested stage done is skipped; an
  interrupted point continues where its run stopped (run_pipeline's own resume). A point whose
  directory holds a different config (the base settings changed) is refused by run_pipeline.
- Every point's config is resolved before the first one runs, so a typo fails at once.
- Result: `DIR/sweep.json` (one row per point: settings, metric, status) and
  `DIR/sweep-<metric>.png` (the metric from each point's eval/summary.json against the first
  axis, one line per combination of the other axes).
- Closed-loop metrics: a metric whose first part names a closed-loop benchmark the points ran
  (`demo-sim.policies.model-every_step.success_rate`) is read from `eval/<benchmark>/summary.json`;
  its interval (`success_ci95` beside `success_rate`) becomes error bars, and the baselines' rates
  of the same summary (role "baseline") dashed lines — the paper's Figure 8 with intervals.

The annotate stage runs in every point; with `annotate.cache` on (the default) identical
requests are answered from the content cache, so repeating it costs no teacher calls.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from refine_core.errors import RefineError, UsageError

SWEEP_FILE = "sweep.json"
DEFAULT_STAGES = ("annotate", "train", "eval")


@dataclass
class Axis:
    key: str
    texts: list[str]  # values as typed (directory names)
    values: list[Any]  # values as parsed (config and plot)


@dataclass
class Point:
    settings: list[tuple[str, str, Any]]  # (key, text, value) per axis
    directory: Path
    config: Any = None  # RunConfig
    status: str = "planned"  # planned | finished | ran | failed
    metric: float | None = None
    chance: float | None = None
    interval: tuple[float, float] | None = None  # the metric's 95% interval, when its summary has one
    baselines: dict[str, float] = field(default_factory=dict)  # baseline policy → rate (closed loop)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.directory.name

    def value(self, key: str) -> Any:
        return next(value for k, _, value in self.settings if k == key)


@dataclass
class SweepResult:
    axes: list[Axis]
    points: list[Point]
    metric: str
    figure: Path | None = None
    table: Path | None = None
    failed: list[Point] = field(default_factory=list)


def parse_grid(item: str) -> Axis:
    """`key=v1,v2,…` → Axis; values are YAML scalars (0.3 → float, null → None, true → bool)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    texts = [t.strip() for t in raw.split(",")]
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", key) or not all(texts):
        raise UsageError(f"Bad --grid '{item}': write it as dotted.key=v1,v2,..., "
                         f"e.g. --grid loss.lambda_r=0,0.1,0.3,1.0")
    if len(set(texts)) != len(texts):
        raise UsageError(f"--grid {key} repeats a value: {raw}")
    values = []
    for text in texts:
        try:
            values.append(yaml.safe_load(text))
        except yaml.YAMLError:
            values.append(text)
    return Axis(key=key, texts=texts, values=values)


def _directory_name(settings: Sequence[tuple[str, str, Any]]) -> str:
    # "/" would nest directories; everything else a user types in a value is kept readable
    return ",".join(f"{key}={text}" for key, text, _ in settings).replace("/", "_")


def plan_sweep(axes: Sequence[Axis], out: str | Path, resolve: Callable[[list[str]], Any]) -> list[Point]:
    """Every grid point with its directory and resolved config (`resolve(extra_sets) -> RunConfig`)."""
    if not axes:
        raise UsageError("Give at least one --grid key=v1,v2,...")
    keys = [axis.key for axis in axes]
    if len(set(keys)) != len(keys):
        raise UsageError(f"--grid names a key twice: {', '.join(keys)}")
    points = []
    for combination in itertools.product(*[list(zip(a.texts, a.values)) for a in axes]):
        settings = [(axis.key, text, value) for axis, (text, value) in zip(axes, combination)]
        point = Point(settings=settings, directory=Path(out) / _directory_name(settings))
        point.config = resolve([f"{key}={text}" for key, text, _ in settings])
        points.append(point)
    return points


def point_finished(directory: Path, stages: Sequence[str]) -> bool:
    """Every requested stage is marked done in the point's run_state.json."""
    try:
        state = json.loads((directory / "run_state.json").read_text())
    except (OSError, ValueError):
        return False
    done = state.get("stages", {})
    return all(done.get(stage, {}).get("status") == "done" for stage in stages)


def read_metric(directory: Path, metric: str) -> tuple[float | None, float | None]:
    """(metric, chance) from the point's eval/summary.json; `metric` may be dotted
    (with_reasoning.l1_mean), and may start with a closed-loop benchmark's name (see above)."""
    value, chance, _, _ = read_metric_details(directory, metric)
    return value, chance


def _number(node: Any) -> float | None:
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def read_metric_details(directory: Path, metric: str
                        ) -> tuple[float | None, float | None, tuple[float, float] | None, dict[str, float]]:
    """(metric, chance, its 95% interval, baseline rates) of one point (see the module docstring)."""
    parts = metric.split(".")
    summary_file = directory / "eval" / "summary.json"
    if len(parts) > 1 and (directory / "eval" / parts[0] / "summary.json").is_file():
        summary_file, parts = directory / "eval" / parts[0] / "summary.json", parts[1:]
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        return None, None, None, {}
    parent: Any = None
    node: Any = summary
    for part in parts:
        parent, node = node, node.get(part) if isinstance(node, dict) else None
    value = _number(node)
    chance = summary.get("action_token_chance") if metric == "action_token_accuracy" else None
    interval = None
    if value is not None and isinstance(parent, dict):
        leaf = parts[-1]
        for key in (leaf + "_ci95", leaf[: -len("_rate")] + "_ci95" if leaf.endswith("_rate") else None):
            ci = parent.get(key) if key else None
            if isinstance(ci, list) and len(ci) == 2 and all(_number(v) is not None for v in ci):
                interval = (float(ci[0]), float(ci[1]))
                break
    from refine_core.report.closed_loop_section import policy_role

    baselines: dict[str, float] = {}
    policies = summary.get("policies")
    if value is not None and isinstance(policies, dict) and parts[0] == "policies" and len(parts) == 3:
        for name, stats in policies.items():
            if not isinstance(stats, dict):
                continue
            rate = _number(stats.get(parts[2]))
            if rate is not None and policy_role(stats) == "baseline":
                baselines[name] = rate
    return value, chance, interval, baselines


def run_point(config: Any, directory: Path, stages: Sequence[str], log: Callable[[str], None]) -> None:
    """One grid point: a complete `refine run` in its own directory."""
    from refine_core.run.stages import run_pipeline

    run_pipeline(config, directory, tuple(stages), log=log)


def run_sweep(points: Sequence[Point], axes: Sequence[Axis], out: str | Path, metric: str,
              stages: Sequence[str] = DEFAULT_STAGES, log: Callable[[str], None] = print,
              runner: Callable[..., None] = run_point) -> SweepResult:
    """Run the points not finished yet, then collect the metric, write sweep.json and the plot.

    A point that fails while working is recorded and the others still run; bad usage (a config
    the run refuses) stops the sweep, since it would stop every point.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult(axes=list(axes), points=list(points), metric=metric)
    for index, point in enumerate(points, start=1):
        if point_finished(point.directory, stages):
            point.status = "finished"
            log(f"[{index}/{len(points)}] {point.name}: finished before, skipped")
        else:
            log(f"[{index}/{len(points)}] {point.name}: running {','.join(stages)}")
            try:
                runner(point.config, point.directory, stages, lambda line,
                       name=point.name: log(f"  {name} {line}"))
                point.status = "ran"
            except UsageError:
                raise
            except RefineError as exc:
                point.status, point.error = (
                    "failed",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                result.failed.append(point)
                log(f"  {point.name} failed: {point.error}")
        point.metric, point.chance, point.interval, point.baselines = read_metric_details(point.directory,
                                                                                          metric)
    result.table = write_table(result, out)
    result.figure = plot_sweep(result, out)
    return result


def rows(result: SweepResult) -> list[dict[str, Any]]:
    return [{**{key: value for key, _, value in p.settings}, result.metric: p.metric,
             **({"ci95": list(p.interval)} if p.interval else {}),
             **({"baselines": p.baselines} if p.baselines else {}), "status": p.status,
             "directory": p.name, **({"error": p.error} if p.error else {})} for p in result.points]


def write_table(result: SweepResult, out: Path) -> Path:
    path = out / SWEEP_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"grid": {a.key: a.values for a in result.axes}, "metric": result.metric,
                               "points": rows(result)}, indent=2) + "\n")
    tmp.replace(path)
    return path


def plot_sweep(result: SweepResult, out: Path) -> Path:
    """The metric against the first axis; one line per combination of the other axes."""
    from refine_core.report.plots import sweep_figure

    first, others = result.axes[0], result.axes[1:]
    series: dict[str, list[tuple[Any, float | None]]] = {}
    intervals: dict[str, list[tuple[Any, tuple[float, float]]]] = {}
    for point in result.points:
        label = ", ".join(f"{a.key}={text}" for a in others for k, text, _ in point.settings if k == a.key)
        series.setdefault(label, []).append((point.value(first.key), point.metric))
        if point.interval is not None:
            intervals.setdefault(label, []).append((point.value(first.key), point.interval))
    chance = next((p.chance for p in result.points if p.chance is not None), None)
    # a baseline does not depend on the swept settings: the first point that ran it speaks for all
    baselines = next((p.baselines for p in result.points if p.baselines), {})
    name = re.sub(r"[^\w.-]+", "_", result.metric)
    return sweep_figure(first.key, series, result.metric, out / f"sweep-{name}.png", baseline=chance,
                        intervals=intervals, references=baselines)
