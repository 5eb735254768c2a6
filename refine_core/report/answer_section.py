"""The report's first section, "Does it work?": the paper's three claims as three numbers, each with
its interval and one line saying what it means — the model writes its teacher's reasoning
(held-out, free-running), it acts better than the baselines (closed loop), and its attention moves
to the task objects (base vs fine-tuned). The sections below hold the details."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_core.report.blocks import Section, Table, Text, cell
from refine_core.report.closed_loop_section import policy_role, rate_with_interval

TITLE = "Does it work?"


def _reasoning_row(quality: dict[str, Any] | None) -> list[str]:
    claim = "learns the teacher's reasoning (held-out steps, free-running)"
    if not isinstance(quality, dict):
        return [claim, "—", "not measured: the offline evaluation had no annotated held-out steps with "
                            "reasoning (reasoning order act_then_reason, or no annotations)"]
    exact = rate_with_interval(quality.get("all_sections_exact"), quality.get("all_sections_exact_ci95"))
    phase = rate_with_interval(quality.get("phase_accuracy"), quality.get("phase_accuracy_ci95"))
    f1 = quality.get("mean_token_f1")
    readable = quality.get("parsed_rate") or 0.0
    if readable < 0.5:
        verdict = (f"no: only {readable:.0%} of its reasoning is readable as the four sections "
                   "(it loops or breaks the format)")
    elif (f1 or 0.0) >= 0.8:
        verdict = "yes: it writes its teacher's reasoning, most sections word for word"
    else:
        verdict = "partly: the sections are there, their words often differ from the teacher's"
    return [claim, f"all sections exact {exact}; token F1 {cell(f1, 3)}; phase right {phase}",
            f"{verdict} ({quality.get('steps')} steps)"]


def _closed_loop_rows(run_dir: Path) -> list[list[str]]:
    from refine_core.report.sections import _read_json

    rows = []
    eval_dir = run_dir / "eval"
    for directory in sorted(d for d in eval_dir.iterdir() if d.is_dir()) if eval_dir.is_dir() else []:
        summary = _read_json(directory / "summary.json")
        if not (isinstance(summary, dict) and isinstance(summary.get("policies"), dict)):
            continue
        policies = {n: s for n, s in summary["policies"].items() if isinstance(s, dict)}
        baselines = {n: s["success_ci95"] for n, s in policies.items()
                     if policy_role(s) == "baseline" and s.get("success_ci95")}
        for name, stats in policies.items():
            if policy_role(stats) != "model":
                continue
            ci = stats.get("success_ci95")
            trials = cell(stats.get("trials"))
            value = f"{rate_with_interval(stats.get('success_rate'), ci)} in {trials} trials"
            if not baselines or not ci:
                verdict = "not compared: no baseline ran"
            else:
                best = max(baselines, key=lambda n: baselines[n][1])
                above = all(ci[0] > high for _, high in baselines.values())
                verdict = (f"yes: its interval lies above every baseline's (best: {best}, "
                           f"{rate_with_interval(policies[best].get('success_rate'), baselines[best])})"
                           if above else
                           f"not shown: its interval overlaps or lies below {best}'s "
                           f"({rate_with_interval(policies[best].get('success_rate'), baselines[best])})")
            benchmark = summary.get("benchmark", directory.name)
            rows.append([f"acts better than the baselines: {name} on {benchmark}", value, verdict])
    if not rows:
        rows.append(["acts better than the baselines (closed loop)", "—",
                     "not measured: no closed-loop benchmark ran (closed_loop.name)"])
    return rows


def _attention_rows(numbers: dict[str, Any] | None) -> list[list[str]]:
    if not numbers or not numbers.get("shares"):
        return [["attention moves to the task objects", "—",
                 "not measured: no checkpoint, or the dataset's steps have no object boxes "
                 "(metadata 'boxes')"]]
    rows = []
    for target, share in numbers["shares"].items():
        base, tuned, diff, chance = share["base"], share["tuned"], share["difference"], share["chance"]
        value = (f"base {_pct(base)}, fine-tuned {_pct(tuned)}, difference {100 * diff['mean']:+.1f} points "
                 f"[{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]; chance {100 * chance['mean']:.1f}%")
        verdict = ("yes: more of it on the objects than before fine-tuning" if diff["low"] > 0 else
                   "no: less of it on the objects than before fine-tuning" if diff["high"] < 0 else
                   "not shown: the change from the base model is within its interval")
        rows.append([f"attention moves to the task objects ({target} tokens)", value,
                     f"{verdict} ({share['frames']} frames)"])
    return rows


def _retention_row(summary: dict[str, Any]) -> list[str]:
    """VLM2VLA's claim (knowledge kept through LoRA fine-tuning), when the retention benchmark ran."""
    base, tuned = summary.get("base") or {}, summary.get("fine_tuned") or {}
    drift = summary.get("drift") or {}
    value = (f"questions right: base {rate_with_interval(base.get('rate'), base.get('ci95'))}, fine-tuned "
             f"{rate_with_interval(tuned.get('rate'), tuned.get('ci95'))}; drift KL "
             f"{cell(drift.get('kl_mean'), 4)} nats/token")
    tuned_ci, base_ci = (tuned.get("ci95") or [0, 1]), (base.get("ci95") or [0, 1])
    verdict = ("no: it answers fewer questions than its base" if tuned_ci[1] < base_ci[0] else
               "yes: it answers the questions as well as its base (the intervals overlap or lie above)")
    return ["keeps its knowledge (retention questions, base vs fine-tuned)", value,
            f"{verdict} ({cell(tuned.get('trials'))} questions)"]


def _pct(estimate: dict[str, float]) -> str:
    return f"{100 * estimate['mean']:.1f}% [{100 * estimate['low']:.1f}, {100 * estimate['high']:.1f}]"


def answer_section(run_dir: Path, attention_numbers: dict[str, Any] | None) -> Section:
    """The three claims, read from OUT/eval (offline and closed-loop summaries) and the attention
    measurement (`attention_object_numbers`)."""
    from refine_core.report.sections import _read_json

    summary = _read_json(run_dir / "eval" / "summary.json")
    quality = summary.get("reasoning_quality") if isinstance(summary, dict) else None
    rows = [_reasoning_row(quality), *_closed_loop_rows(run_dir), *_attention_rows(attention_numbers)]
    if isinstance(summary, dict) and summary.get("benchmark") == "retention":
        rows.append(_retention_row(summary))
    return Section(TITLE, [
        Text("The method's three claims on this run, each with its 95% interval; the sections below hold "
             "the details."),
        Table(["claim", "measured", "reading"], rows),
    ])
