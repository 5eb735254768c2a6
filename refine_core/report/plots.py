"""The report's figures as PNG files (matplotlib, Agg backend, imported only when drawing).

- `attention_figure`: rows = frames; columns = the frame, then one heatmap overlay per model.
- `training_curves`: loss, action loss, reasoning loss, action accuracy against the step
  (the paper's Figure 4), one 2×2 figure.
- `sweep_figure`: a metric against a swept config value (the paper's Figure 8).
- `closed_loop_figure`: closed-loop success per policy with its interval, and latency per action.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

TRAINING_PANELS = (
    ("loss", "total loss", "loss"),
    ("action_loss", "action loss", "cross-entropy"),
    ("reasoning_loss", "reasoning loss", "cross-entropy"),
    ("action_accuracy", "action token accuracy", "accuracy"),
)
HEAT_ALPHA = 0.7
MODEL_COLOUR, BASELINE_COLOUR = "tab:blue", "tab:gray"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _short_heads(heads: Sequence[tuple[int, int]], shown: int = 4) -> str:
    names = " ".join(f"L{layer}H{head}" for layer, head in heads[:shown])
    return names + (" …" if len(heads) > shown else "")


def attention_figure(comparison: Any, path: str | Path) -> Path:
    """Frames with each model's fused attention overlaid (jet: red = most attended patch)."""
    import numpy as np

    plt = _pyplot()
    labels = comparison.labels
    columns = 1 + len(labels)
    rows = len(comparison.rows)
    fig = plt.figure(figsize=(3.3 * columns + 0.8, 3.5 * rows + 0.6))
    # a narrow last column holds the colour bar, so every image panel keeps the same size
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[1.0] * columns + [0.05])
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(columns)] for r in range(rows)])
    image = None
    for r, row in enumerate(comparison.rows):
        frame = next(iter(row.maps.values())).frame
        axes[r, 0].imshow(frame)
        axes[r, 0].set_title("\n".join(textwrap.wrap(row.instruction, 38)[:2]) + f"\n{row.key}", fontsize=8)
        for c, label in enumerate(labels, start=1):
            amap = row.maps[label]
            axes[r, c].imshow(amap.frame)
            # opacity grows with attention, so unattended patches leave the frame visible
            image = axes[r, c].imshow(amap.heat, cmap="jet", vmin=0.0, vmax=1.0,
                                      alpha=np.clip(amap.heat, 0.0, 1.0) * HEAT_ALPHA)
            axes[r, c].set_title(f"{label}\nimage share {amap.image_share:.2f} · focus {amap.focus:.2f}\n"
                                 f"heads {_short_heads(amap.heads)}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    which = "held-out" if comparison.held_out else "training"
    fig.suptitle(f"Attention from {comparison.target} tokens to image patches, {which} frames "
                 f"(top-{comparison.top_k} heads, {comparison.fusion})", fontsize=10)
    if image is not None:
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[:, -1]))
        bar.set_label("attention (min-max normalised)")
    return _save(fig, path)


def training_curves(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """2×2 panels of metrics.jsonl against the step; a metric never logged says so in its panel."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(9.5, 6.5))
    for ax, (key, title, ylabel) in zip(axes.ravel(), TRAINING_PANELS):
        points = [(r["step"], r[key]) for r in records
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, linewidth=1.4)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "action_accuracy":
            ax.set_ylim(-0.02, 1.02)
    fig.suptitle("Training curves")
    fig.tight_layout()
    return _save(fig, path)


def sweep_figure(key: str, series: dict[str, Sequence[tuple[Any, float | None]]], metric: str,
                 path: str | Path, baseline: float | None = None,
                 intervals: dict[str, Sequence[tuple[Any, tuple[float, float]]]] | None = None,
                 references: dict[str, float] | None = None) -> Path:
    """`metric` against the swept `key`: one line per series label ("" for a single series).

    Numeric values sit on a numeric axis; anything else (None, strings) on evenly spaced ticks.
    A point with no metric (its run failed or has no evaluation) is an × on the x axis.
    `intervals` (per label: value → (low, high)) draws error bars; `references` (name → level,
    e.g. the closed-loop baselines) dashed horizontal lines.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    values = list(dict.fromkeys(v for points in series.values() for v, _ in points))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    where = {v: (v if numeric else i) for i, v in enumerate(values)}
    missing = False
    for label, points in series.items():
        present = sorted((where[v], m) for v, m in points if m is not None)
        absent = [where[v] for v, m in points if m is None]
        line = ax.plot(*zip(*present), marker="o", linewidth=1.6, label=label or None)[0] if present else None
        colour = line.get_color() if line is not None else "gray"
        for x, m in present:
            ax.annotate(f"{m:.3g}", (x, m), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8)
        for v, (low, high) in (intervals or {}).get(label, []):
            m = next(m for value, m in points if value == v)
            ax.errorbar([where[v]], [m], yerr=[[m - low], [high - m]], color=colour, capsize=4, linewidth=1)
        for x in absent:  # an × on the x axis, in the series' colour
            ax.plot([x], [0.03], marker="x", markersize=9, color=colour, transform=ax.get_xaxis_transform(),
                    clip_on=False)
        missing = missing or bool(absent)
    ax.margins(y=0.15)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label=f"chance ({baseline:.3g})")
    for (name, level), style in zip(sorted((references or {}).items()), ("--", ":", "-.") * 4):
        ax.axhline(level, color="dimgray", linestyle=style, linewidth=1, label=f"{name} ({level:.3g})")
    if baseline is not None or len(series) > 1 or references:
        ax.legend(loc="best", fontsize=8)
    if numeric:
        ax.set_xticks(values)
    else:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel(metric.replace("_", " "))
    title = f"{metric.replace('_', ' ')} vs {key}"
    ax.set_title(title + (" (×: no result)" if missing else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _finite(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def closed_loop_figure(benchmark: str, policies: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Two panels over the policies of a closed-loop summary: success rate (%) as bars with the
    95% interval as error bars, and mean latency per action (ms). Model modes are coloured,
    baselines (mode None) grey; a value that is missing is written "n/a" where its bar would be."""
    plt = _pyplot()
    names = list(policies)
    colours = [BASELINE_COLOUR if policies[n].get("mode") is None else MODEL_COLOUR for n in names]
    fig, (success_ax, latency_ax) = plt.subplots(1, 2, figsize=(max(8.0, 1.9 * len(names) + 3), 4.2))
    for x, name in enumerate(names):
        stats = policies[name]
        rate = _finite(stats.get("success_rate"))
        if rate is None:
            success_ax.text(x, 2, "n/a", ha="center", color="gray", fontsize=8)
            continue
        ci = stats.get("success_ci95")
        low, high = (_finite(ci[0]), _finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 \
            else (None, None)
        # matplotlib wants distances from the bar's top, never negative
        error = ([[max(0.0, rate - low) * 100], [max(0.0, high - rate) * 100]]
                 if low is not None and high is not None else None)
        success_ax.bar(x, rate * 100, color=colours[x], yerr=error, capsize=5, ecolor="black")
        success_ax.annotate(f"{rate * 100:.0f}%", (x, rate * 100), textcoords="offset points", xytext=(8, 2),
                            fontsize=8)
    success_ax.set_ylim(0, 105)
    success_ax.set_ylabel("success rate (%)")
    success_ax.set_title("success, 95% Wilson interval")
    for x, name in enumerate(names):
        latency = _finite(policies[name].get("latency_per_action_s"))
        if latency is None:
            latency_ax.text(x, 0, "n/a", ha="center", va="bottom", color="gray", fontsize=8)
        else:
            latency_ax.bar(x, latency * 1000, color=colours[x])
            # baselines answer in about a millisecond: their bars vanish beside the model's, the value not
            latency_ax.annotate(f"{latency * 1000:.3g}", (x, latency * 1000), textcoords="offset points",
                                xytext=(0, 2), ha="center", fontsize=8)
    latency_ax.set_ylabel("ms")
    latency_ax.set_title("latency per action")
    for ax in (success_ax, latency_ax):
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    trials = sorted({t for t in (policies[n].get("trials") for n in names) if isinstance(t, int)})
    counted = (f"{trials[0]} trials per policy" if len(trials) == 1
               else f"{trials[0]}–{trials[-1]} trials per policy" if trials else "trials unknown")
    fig.suptitle(f"Closed loop: {benchmark} ({counted})")
    fig.tight_layout()
    return _save(fig, path)
