"""Report section for knowledge-retention results: any eval/summary.json or eval/<name>/summary.json
whose "benchmark" is "retention" (written by the built-in `retention` benchmark): question accuracy
of the base and the fine-tuned model with Wilson 95% intervals, their agreement, and the drift."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from refine_core.report.blocks import Section, Table, Text, cell
from refine_core.report.closed_loop_section import rate_with_interval
from refine_core.report.sections import _read_json

KINDS = ("colour", "count", "position")


def _rate(stats: Any) -> str:
    if not isinstance(stats, dict):
        return "—"
    return rate_with_interval(stats.get("rate"), stats.get("ci95"))


def retention_section(summary: dict[str, Any], where: str) -> Section:
    rows = []
    for label, key in (("base", "base"), ("fine-tuned", "fine_tuned")):
        stats = summary.get(key)
        by_kind = stats.get("by_kind", {}) if isinstance(stats, dict) else {}
        rows.append([label, _rate(stats)] + [_rate(by_kind.get(kind)) for kind in KINDS])
    blocks: list = [
        Text(f"{cell(summary.get('questions'))} questions about {cell(summary.get('scenes'))} rendered demo "
             f"scenes ({where}); answered by {cell(summary.get('scoring'))}; chance "
             f"{cell(summary.get('chance_accuracy'), 3)}."),
        Table(["model", "accuracy % [95% CI]"] + [f"{kind} % [95% CI]" for kind in KINDS], rows),
    ]
    if isinstance(summary.get("agreement"), dict):
        blocks.append(Text(f"Fine-tuned picks the base's answer on {_rate(summary['agreement'])} of the "
                           "questions."))
    drift = summary.get("drift")
    if isinstance(drift, dict):
        low, high = (drift.get("ci95") or [None, None])[:2]
        blocks.append(Table(["drift on held-out general text", "value"], [
            [cell(drift.get("direction")) + ", mean nats/token", cell(drift.get("kl_mean"), 4)],
            ["95% bootstrap interval over prompts", f"{cell(low, 4)} – {cell(high, 4)}"],
            ["per-prompt std / max", f"{cell(drift.get('per_prompt_std'), 4)} / {cell(drift.get('max'), 4)}"],
            ["prompts", cell(drift.get("prompts"))]]))
        blocks.append(Text(f"Drift: {drift.get('meaning', '')}."))
    blocks += [Text(str(note)) for note in summary.get("notes") or []]
    return Section("Knowledge retention", blocks)


def retention_sections(run_dir: Path) -> list[Section]:
    """One section per retention result under OUT/eval/ (the stage's own or a named benchmark's)."""
    eval_dir = Path(run_dir) / "eval"
    if not eval_dir.is_dir():
        return []
    folders = [eval_dir] + sorted(d for d in eval_dir.iterdir() if d.is_dir())
    sections = []
    for folder in folders:
        summary = _read_json(folder / "summary.json")
        if isinstance(summary, dict) and summary.get("benchmark") == "retention":
            sections.append(retention_section(summary, str(folder.relative_to(run_dir) / "summary.json")))
    return sections
