"""Report sections for closed-loop benchmarks: one per OUT/eval/<benchmark>/ whose summary.json has
a "policies" mapping (written by `ClosedLoopBenchmark.evaluate`): a table of success and grasp
rates with Wilson 95% intervals beside latency and tokens, a figure, one line on how the model's
modes compare with the baselines, any further tables the benchmark put in its summary (see
`extra_tables`), and up to two reasoning samples from the episodes."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from refine_core.report.blocks import Code, Figure, Section, Table, Text, cell, missing_section
from refine_core.report.sections import _read_json, _read_jsonl

COLUMNS = ["policy", "mode", "success % [95% CI]", "grasp % [95% CI]", "trials", "latency per action (ms)",
           "tokens per query", "forced rate", "errors"]
SAMPLES = 2


def _number(value: Any) -> float | None:
    """A finite number, else None (a summary may hold null, or anything if hand-edited)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _interval(stats: dict[str, Any], key: str) -> tuple[float, float] | None:
    ci = stats.get(key)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        low, high = _number(ci[0]), _number(ci[1])
        if low is not None and high is not None:
            return low, high
    return None


def rate_with_interval(rate: Any, ci: tuple[float, float] | None) -> str:
    """"41.7% [24.5, 61.2]": a rate and its interval in percent; "—" with no rate."""
    rate = _number(rate)
    if rate is None:
        return cell(None)
    text = f"{rate * 100:.1f}%"
    return text + (f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci is not None else "")


def _scaled(value: Any, factor: float = 1.0, suffix: str = "") -> str:
    value = _number(value)
    return cell(None) if value is None else f"{value * factor:.1f}{suffix}"


def _policies(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(name): stats for name, stats in summary["policies"].items() if isinstance(stats, dict)}


def _row(name: str, stats: dict[str, Any]) -> list[str]:
    errors = stats.get("errors")
    return [name, cell(stats.get("mode")),
            rate_with_interval(stats.get("success_rate"), _interval(stats, "success_ci95")),
            rate_with_interval(stats.get("grasp_rate"), _interval(stats, "grasp_ci95")),
            cell(stats.get("trials")), _scaled(stats.get("latency_per_action_s"), 1000.0),
            _scaled(stats.get("tokens_per_query")), _scaled(stats.get("forced_rate"), 100.0, "%"),
            cell(errors if isinstance(errors, int) else None)]


def _baselines_phrase(names: list[str], total: int) -> str:
    if len(names) == total == 2:
        return "both baselines' intervals"
    if len(names) == total > 2:
        return f"all {total} baselines' intervals"
    if len(names) == 1:
        return f"the {names[0]} baseline's interval"
    return f"the {', '.join(names[:-1])} and {names[-1]} baselines' intervals"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def policy_role(stats: dict[str, Any]) -> str:
    """A summary row's role (model, baseline, reference); rows written before roles existed:
    those with a reasoning mode are the model, mode-less ones baselines."""
    return stats.get("role") or ("model" if stats.get("mode") is not None else "baseline")


def interpretation(policies: dict[str, dict[str, Any]]) -> str:
    """What the numbers say: each model mode's success interval against each baseline's (above,
    overlapping, below: a conservative reading, no test beyond the intervals), and how much slower
    reasoning every step is than every K steps."""
    baselines = [(name, ci) for name, stats in policies.items() if policy_role(stats) == "baseline"
                 and _number(stats.get("success_rate")) is not None
                 and (ci := _interval(stats, "success_ci95")) is not None]
    sentences, overlapped = [], False
    for name, stats in policies.items():
        ci = _interval(stats, "success_ci95")
        rated = ci is not None and _number(stats.get("success_rate")) is not None
        if policy_role(stats) == "reference" and rated:
            sentences.append(f"{name} (a scripted reference that reads the scene's state): "
                             f"{rate_with_interval(stats['success_rate'], ci)}.")
        if policy_role(stats) != "model":
            continue
        ci = _interval(stats, "success_ci95")
        if _number(stats.get("success_rate")) is None or ci is None:
            sentences.append(f"{name}: no success rate (no trials).")
            continue
        head = f"{name}: {rate_with_interval(stats['success_rate'], ci)}"
        if not baselines:
            sentences.append(f"{head}; there is no baseline to compare it with.")
            continue
        groups: dict[str, list[str]] = {"is above": [], "overlaps": [], "is below": []}
        for baseline, (low, high) in baselines:
            relation = "is above" if ci[0] > high else "is below" if ci[1] < low else "overlaps"
            groups[relation].append(baseline)
        overlapped = overlapped or bool(groups["overlaps"])
        sentences.append(head + " " + _join([f"{verb} {_baselines_phrase(names, len(baselines))}"
                                             for verb, names in groups.items() if names]) + ".")
    if overlapped:
        sentences.append("Overlapping intervals do not establish a difference at this number of trials.")
    latency = {}
    for stats in policies.values():
        latency.setdefault(stats.get("mode"), _number(stats.get("latency_per_action_s")))
    step, k = latency.get("every_step"), latency.get("every_k")
    if step is not None and k:
        sentences.append(f"Latency per action: every_step is {step / k:.1f}× every_k "
                         f"({step * 1000:.1f} ms vs {k * 1000:.1f} ms).")
    return " ".join(sentences)


def extra_tables(summary: dict[str, Any]) -> list:
    """A benchmark's own tables, from its summary's "tables": a list of {"title": str, "columns":
    [header, ...], "rows": [[cell, ...], ...], "note": str (optional)}, rendered in order below the
    policy table (e.g. SimplerEnv's paper tables). Entries not of that shape are skipped; a row is
    cut or padded to the columns, cells shown as written (None as "—")."""
    tables = summary.get("tables")
    blocks: list = []
    for entry in tables if isinstance(tables, list) else []:
        columns, rows = (entry.get("columns"), entry.get("rows")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(columns, list) and columns and isinstance(rows, list)):
            continue
        width = len(columns)
        body = [[cell(v) for v in (row + [None] * width)[:width]] for row in rows if isinstance(row, list)]
        if isinstance(entry.get("title"), str):
            blocks.append(Text(entry["title"]))
        blocks.append(Table([cell(c) for c in columns], body))
        if isinstance(entry.get("note"), str) and entry["note"].strip():
            blocks.append(Text(entry["note"]))
    return blocks


def _samples(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Up to SAMPLES episodes with a reasoning sample: a success and a failure when both exist."""
    with_text = [r for r in records
                 if isinstance(r.get("reasoning_sample"), str) and r["reasoning_sample"].strip()]
    chosen = [r for r in (next((r for r in with_text if r.get("success")), None),
                          next((r for r in with_text if not r.get("success")), None)) if r is not None]
    chosen += [r for r in with_text if all(r is not c for c in chosen)]
    return chosen[:SAMPLES]


def _looks_closed_loop(directory: Path) -> bool:
    """A closed-loop benchmark whose summary is absent or damaged: its per-policy folders (the
    runner's per-episode logs), or per-episode records naming their policy, are there."""
    from refine_core.evaluate.closed_loop import EPISODES_FILE, LOG_FILE

    folders = [d for d in directory.iterdir() if d.is_dir()]
    if any((d / LOG_FILE).is_file() or (d / EPISODES_FILE).is_file() for d in folders):
        return True
    return any("policy" in r for r in _read_jsonl(directory / "results.jsonl")[:1])


def closed_loop_section(directory: Path, report_dir: Path) -> Section | None:
    """The section of one OUT/eval/<benchmark>/; None when the directory is not a closed-loop one."""
    from refine_core.report.plots import closed_loop_figure

    summary = _read_json(directory / "summary.json")
    if not (isinstance(summary, dict) and isinstance(summary.get("policies"), dict)):
        if isinstance(summary, dict) or not _looks_closed_loop(directory):
            return None  # another benchmark's output, or not a benchmark's at all
        return missing_section(f"Closed loop: {directory.name}",
                               f"no readable eval/{directory.name}/summary.json (the closed-loop evaluation "
                               "has not finished, or the file is damaged).")
    benchmark = str(summary.get("benchmark") or directory.name)
    policies = _policies(summary)
    if not policies:
        return missing_section(f"Closed loop: {benchmark}", f"eval/{directory.name}/summary.json lists no "
                                                            "policies.")
    slug = re.sub(r"[^\w.-]", "_", directory.name)
    figure = closed_loop_figure(benchmark, policies, report_dir / f"closed_loop-{slug}.png")
    blocks: list = [
        Table(COLUMNS, [_row(name, stats) for name, stats in policies.items()]),
        Figure(figure, "Success rate per policy with its 95% Wilson interval (the model's reasoning modes "
                       "in blue, baselines in grey), and the mean latency per action."),
        Text(interpretation(policies)),
        *extra_tables(summary),
    ]
    for name, stats in policies.items():  # the hierarchical policy's subtask lists, judged
        score = stats.get("decomposition")
        if isinstance(score, dict) and score.get("episodes"):
            rate = rate_with_interval(score.get("decomposition_score"), score.get("interval"))
            blocks.append(Text(f"Task decomposition, {name}: {rate} of {score['episodes']} episodes' subtask "
                               "lists name the object and, where the task has one, the destination "
                               "(VLM2VLA's rubric)."))
    for record in _samples(_read_jsonl(directory / "results.jsonl")):
        outcome = "success" if record.get("success") else "failure"
        where = f"task {cell(record.get('task'))}, episode {cell(record.get('episode'))}"
        blocks += [Text(f"Reasoning sample, {cell(record.get('policy'))} ({where}, {outcome}); instruction: "
                        f"{cell(record.get('instruction'))}"),
                   Code(record["reasoning_sample"].strip())]
    return Section(f"Closed loop: {benchmark}", blocks)


def closed_loop_sections(run_dir: Path, report_dir: Path) -> list[Section]:
    """One section per closed-loop benchmark under OUT/eval/, by directory name; none if none ran."""
    eval_dir = run_dir / "eval"
    if not eval_dir.is_dir():
        return []
    sections = [closed_loop_section(d, report_dir) for d in sorted(eval_dir.iterdir()) if d.is_dir()]
    return [s for s in sections if s is not None]
