"""`refine data stats` and `refine data show`: look at a dataset before training on it.

Model-agnostic: the dataset named in the resolved config (`--dataset`, `--set dataset.key=…`,
`--config`) is built through the registry, whatever plugin provides it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from refine_core.dataset import RobotDataset
from refine_core.episode import Episode
from refine_core.errors import MissingExtra, UsageError
from refine_core.registry import get_registry
from refine_core.cli.options import ConfigOpt, DatasetOpt, JsonOpt, SetOpt, load_config
from refine_core.cli.output import console, display_table

data_app = typer.Typer(help="Inspect robot datasets: statistics and episode contact sheets.",
                       no_args_is_help=True)

ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


def _dataset(config: Path | None, sets: list[str] | None, dataset: str | None) -> RobotDataset:
    cfg = load_config(config, sets, dataset=dataset)
    return get_registry().build("dataset", cfg.dataset.name, cfg.dataset.options)


def _rows(kind: str, stats: dict[str, Any]) -> list[dict[str, Any]]:
    dims = len(stats["mean"])
    names = (
        ACTION_NAMES
        if kind == "action" and dims == len(ACTION_NAMES)
        else [f"{kind[0]}{i}" for i in range(dims)]
    )
    mask = stats.get("mask") or [True] * dims
    return [
        {"array": kind, "dim": names[i], **{k: f"{stats[k][i]:.4g}" for k in ("mean", "std", "min", "max",
                                                                              "q01", "q99")},
         "normalised": "yes" if mask[i] else "no"}
        for i in range(dims)
    ]


@data_app.command("stats")
def stats(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dataset: DatasetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Episodes, steps, instructions and per-dimension action/state statistics (cached)."""
    ds = _dataset(config, set_, dataset)
    result = ds.statistics()
    cache = getattr(ds, "statistics_path", None)
    payload = {
        "dataset": ds.name, "identity": ds.identity, "robot": ds.robot,
        "control_frequency": ds.control_frequency, "cameras": list(ds.cameras),
        **result.to_dict(), "cache": str(cache) if cache else None,
    }
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
        return
    console.print(
        f"[bold]{ds.name}[/] ({ds.robot}, {ds.control_frequency:g} Hz, cameras {', '.join(ds.cameras)}): "
        f"{result.num_episodes} episodes, {result.num_steps} steps, {result.num_instructions} distinct "
        "instructions",
        highlight=False,
    )
    skipped = {k: v for k, v in result.extra.items() if k.startswith("skipped_") and v}
    if skipped:
        console.print("skipped: " + ", ".join(f"{k[len('skipped_'):]} {v}" for k, v in skipped.items()),
                      highlight=False)
    rows = _rows("action", payload["action"]) + (_rows("state", payload["state"]) if payload["state"] else [])
    display_table(rows, ["array", "dim", "mean", "std", "min", "max", "q01", "q99", "normalised"], False,
                  title=f"{ds.name} statistics")
    if cache:
        console.print(f"cached in {cache}", highlight=False)


def _find_episode(ds: RobotDataset, split: str, index: int) -> Episode:
    count = 0
    for count, episode in enumerate(ds.episodes(split), start=1):
        if count - 1 == index:
            return episode
    raise UsageError(f"Episode {index} not found: the {split} split of {ds.name} has {count} episodes (use "
                     f"--episode 0..{max(count - 1, 0)})")


def _contact_sheet(ds: RobotDataset, episode: Episode, out: Path, max_frames: int) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise MissingExtra("matplotlib", "plots", "refine data show") from None
    steps = episode.steps
    picks = sorted(set(np.linspace(0, len(steps) - 1, min(max_frames,
                                                          len(steps))).round().astype(int).tolist()))
    cols = min(4, len(picks))
    rows = math.ceil(len(picks) / cols)
    fig = Figure(figsize=(3.4 * cols, 3.3 * rows + 3.0), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.3] * rows + [2.6], hspace=0.45, wspace=0.08)
    for k, t in enumerate(picks):
        step = steps[t]
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(step.image)
        ax.set_xticks([]), ax.set_yticks([])
        a = step.action
        ax.set_title(f"step {t}", fontsize=10)
        ax.set_xlabel(f"xyz {a[0]:+.3f} {a[1]:+.3f} {a[2]:+.3f}\nrpy {a[3]:+.3f} {a[4]:+.3f} {a[5]:+.3f}  "
                      f"grip {a[6]:.2f}", fontsize=8, family="monospace")
    actions = episode.actions()
    ax = fig.add_subplot(grid[rows, :])
    for i, name in enumerate(ACTION_NAMES[:6]):
        ax.plot(actions[:, i], label=name, linewidth=1.2)
    ax.set_xlabel("step"), ax.set_ylabel("delta")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    twin = ax.twinx()
    twin.step(range(len(actions)), actions[:, 6], where="mid", color="black", linestyle="--",
              label="gripper (1 = open)")
    twin.set_ylim(-0.1, 1.1), twin.set_ylabel("gripper")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, 1.25),
              frameon=False)
    cameras = ", ".join(steps[0].images)
    fig.suptitle(f"{ds.name} · {episode.episode_id} · {len(steps)} steps · cameras: {cameras} (frames: "
                 f"{steps[0].primary_camera})\n"
                 f"“{episode.instruction}”", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")


@data_app.command("show")
def show(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dataset: DatasetOpt = None,
    episode: Annotated[int, typer.Option("--episode", "-e", min=0, help="Episode index in the split.")] = 0,
    split: Annotated[str, typer.Option("--split", help="Dataset split.")] = "train",
    frames: Annotated[int, typer.Option("--frames", min=1, max=64, help="Frames on the sheet.")] = 8,
) -> None:
    """Write a PNG contact sheet of one episode: frames, instruction and per-step actions."""
    ds = _dataset(config, set_, dataset)
    chosen = _find_episode(ds, split, episode)
    if not chosen.steps:
        raise UsageError(f"Episode {episode} of {ds.name} has no steps")
    _contact_sheet(ds, chosen, out, frames)
    typer.echo(f"wrote {out} ({ds.name} episode {episode}, {len(chosen)} steps)")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
