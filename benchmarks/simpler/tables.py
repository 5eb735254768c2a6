"""The paper's SimplerEnv tables from evaluated episodes: Table 1 (WidowX grasp and success per task,
average), Table 2 (Google Robot visual matching and variant aggregation: coke can, move near,
drawer, average) and Table 8 (coke can per orientation, drawer open / close), with the published
rows (published.py) beside ours; as Markdown and CSV files, as summary tables for the report,
and as per-policy averages the sweep reads (Figure 8).

Record contract (one dict per episode, as in OUT/eval/<benchmark>/episodes.jsonl):
    policy: str, success: bool, grasp: bool, task: SimplerEnv env name,
    simpler: {robot: "widowx"|"google_robot", setting: "vm"|"va",
              family: "widowx"|"coke_can"|"move_near"|"drawer",
              subtask: widowx task ("spoon_on_towel", "carrot_on_plate", "stack_cube",
                       "put_eggplant_in_basket") | coke orientation ("horizontal", "vertical",
                       "standing") | "open"|"close" (drawer) | None (move near),
              drawer_level, urdf_version, variant ("base" in VM), in_average: bool, repeat, robot_pose}
A record without a `simpler` dict is ignored; one with in_average false (upstream's camera
variants) is run and listed, but kept out of every averaged cell.

Aggregation, as upstream's tools/calc_metrics_evaluation_videos.py:
- a group is the episodes of one (task, drawer level, variant, urdf version); repeats and robot poses
  are episodes of their group;
- a cell is the mean of its groups' success rates (WidowX task; coke can orientation; move near;
  drawer open or close: over levels × urdf versions in VM, levels × variants in VA);
- coke can = mean of its 3 orientations, drawer = mean of open and close, Google average = mean of
  coke can, move near and drawer, WidowX average = mean of the 4 tasks. An average needs all its
  parts; with one missing it is "—" (a partial average is not comparable with published ones).
Each cell shows `rate [lo, hi] (k/n)`: the mean of means, its 95% interval, and the pooled counts.
The interval: for a common rate, a mean of group rates Σ w_i·p_i has the variance of k/n at Kish's
effective number of trials n_eff = 1 / Σ w_i²/n_i, so the cell gets the Wilson interval at
(rate·n_eff, n_eff). When the weights are proportional to the groups' sizes (equal n per group, the
upstream grid) the mean of means is k/n and this is exactly the Wilson interval of the pooled
counts; unlike a normal approximation it stays non-degenerate at 0% and 100%.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from refine_core import atomic_write, wilson_interval

from .published import published_rows

WIDOWX_TASKS = {"spoon_on_towel": "spoon on towel", "carrot_on_plate": "carrot on plate",
                "stack_cube": "stack block", "put_eggplant_in_basket": "eggplant in basket"}
ORIENTATIONS = ("horizontal", "vertical", "standing")
DRAWER_TASKS = ("open", "close")
SETTINGS = ("vm", "va")  # visual matching, variant aggregation
GOOGLE_PARTS = ("coke_can", "move_near", "drawer", "average")
DETAIL_KEYS = (*[f"coke_can/{o}" for o in ORIENTATIONS], "coke_can/average",
               *[f"drawer/{d}" for d in DRAWER_TASKS], "drawer/average")
CELL_NOTE = ("Cells: rate [95% interval] (successes/episodes). Averages are upstream's mean of per-group "
             "means (groups: urdf versions / variants), with the pooled counts and a Wilson interval at the "
             "effective number of trials; camera variants are left out. \"—\": not evaluated.")

Parts = list[tuple[float, int, int]]  # (weight, successes, trials) per group; the weights sum to 1


@dataclass(frozen=True)
class Rate:
    """One cell: the (mean-of-means) rate, its 95% interval and the pooled counts."""

    rate: float
    low: float
    high: float
    k: int
    n: int

    def text(self) -> str:
        return f"{self.rate * 100:.1f}% [{self.low * 100:.1f}, {self.high * 100:.1f}] ({self.k}/{self.n})"


def rate_of(parts: Parts | None) -> Rate | None:
    """The cell of weighted groups (see the module docstring for the interval)."""
    if not parts:
        return None
    k, n = sum(p[1] for p in parts), sum(p[2] for p in parts)
    if all(math.isclose(w, g / n, rel_tol=1e-9, abs_tol=1e-12) for w, _, g in parts):
        return Rate(k / n, *wilson_interval(k, n), k, n)  # a pooled rate: the plain Wilson interval
    rate = sum(w * s / g for w, s, g in parts)
    n_eff = 1.0 / sum(w * w / g for w, _, g in parts)
    return Rate(rate, *wilson_interval(rate * n_eff, n_eff), k, n)


def mean_of(parts_list: list[Parts | None]) -> Parts | None:
    """Equal-weight mean of cells; None when any is missing (an average needs all its parts)."""
    if not parts_list or any(not p for p in parts_list):
        return None
    scale = 1.0 / len(parts_list)
    return [(w * scale, s, g) for parts in parts_list for w, s, g in parts]  # type: ignore[union-attr]


def _info(record: Any) -> dict[str, Any] | None:
    info = record.get("simpler") if isinstance(record, dict) else None
    return info if isinstance(info, dict) else None


def _matches(info: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(info.get(key) == value for key, value in where.items())


def groups(records: Iterable[dict[str, Any]], metric: str = "success", **where: Any) -> Parts | None:
    """Equal-weight groups (task, drawer level, variant, urdf version) of the records in the averages
    whose `simpler` fields equal `where`; None when there are none."""
    counts: dict[tuple, list[int]] = {}
    for record in records:
        info = _info(record)
        if info is None or info.get("in_average", True) is False or not _matches(info, where):
            continue
        key = (record.get("task"), info.get("drawer_level"), info.get("variant"), info.get("urdf_version"))
        tally = counts.setdefault(key, [0, 0])
        tally[0] += bool(record.get(metric))
        tally[1] += 1
    return [(1.0 / len(counts), s, n) for s, n in counts.values()] if counts else None


def _has(records: list[dict[str, Any]], **where: Any) -> bool:
    """Some record in the averages matches `where` (a policy's row is shown only then)."""
    return any(_matches(info, where) for r in records
               if (info := _info(r)) is not None and info.get("in_average", True) is not False)


# -- the cells of one policy, by column key (the keys published.py uses) --------------------------------
def widowx_cells(records: list[dict[str, Any]]) -> dict[str, Parts | None]:
    cells: dict[str, Parts | None] = {}
    for task in WIDOWX_TASKS:
        for metric in ("grasp", "success"):
            cells[f"{task}/{metric}"] = groups(records, metric, robot="widowx", subtask=task)
    for metric in ("grasp", "success"):
        cells[f"average/{metric}"] = mean_of([cells[f"{task}/{metric}"] for task in WIDOWX_TASKS])
    return cells


def detail_cells(records: list[dict[str, Any]], setting: str) -> dict[str, Parts | None]:
    """Table 8's cells of one setting: coke can per orientation, drawer open / close, and their means."""
    google = {"robot": "google_robot", "setting": setting}
    cells = {f"coke_can/{o}": groups(records, family="coke_can", subtask=o, **google) for o in ORIENTATIONS}
    cells["coke_can/average"] = mean_of([cells[f"coke_can/{o}"] for o in ORIENTATIONS])
    cells.update({f"drawer/{d}": groups(records, family="drawer", subtask=d, **google) for d in DRAWER_TASKS})
    cells["drawer/average"] = mean_of([cells[f"drawer/{d}"] for d in DRAWER_TASKS])
    return cells


def google_cells(records: list[dict[str, Any]]) -> dict[str, Parts | None]:
    cells: dict[str, Parts | None] = {}
    for setting in SETTINGS:
        detail = detail_cells(records, setting)
        family = {"coke_can": detail["coke_can/average"],
                  "move_near": groups(records, robot="google_robot", setting=setting, family="move_near"),
                  "drawer": detail["drawer/average"]}
        cells.update({f"{setting}/{name}": parts for name, parts in family.items()})
        cells[f"{setting}/average"] = mean_of(list(family.values()))
    return cells


# -- tables -------------------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    values: dict[str, Any]  # column key -> Rate or None (ours), percent (published), or text
    source: str | None = None  # a published row's source


@dataclass
class PaperTable:
    name: str  # file stem
    title: str
    columns: list[tuple[str, str]]  # (column key, header); the first is the row label's
    rows: list[Row]
    note: str

    def text_rows(self) -> list[list[str]]:
        def text(value: Any) -> str:
            if isinstance(value, Rate):
                return value.text()
            if isinstance(value, (int, float)):
                return f"{value:.1f}%"
            return "—" if value is None else str(value)
        return [[row.label, *[text(row.values.get(key)) for key, _ in self.columns[1:]]] for row in self.rows]


WIDOWX_COLUMNS = [("policy", "policy"),
                  *[(f"{task}/{metric}", f"{label}: {metric}")
                    for task, label in WIDOWX_TASKS.items() for metric in ("grasp", "success")],
                  ("average/success", "average success")]
GOOGLE_COLUMNS = [("policy", "policy"), *[(f"{s}/{part}", f"{s.upper()} {part.replace('_', ' ')}")
                                          for s in SETTINGS for part in GOOGLE_PARTS]]
DETAIL_COLUMNS = [("policy", "policy (setting)"), *[(key, key.replace("/", " ").replace("_", " "))
                                                    for key in DETAIL_KEYS]]
EXCLUDED_COLUMNS = [(key, key) for key in ("policy", "family", "subtask", "variant", "success")]


def _ours(cells: dict[str, Parts | None]) -> dict[str, Rate | None]:
    return {key: rate_of(parts) for key, parts in cells.items()}


def _with_published(table: str, rows: list[Row], setting_suffix: bool = False) -> tuple[list[Row], str]:
    """Our rows, then the table's published ones; the note naming every published row's source."""
    published = published_rows(table)
    suffix = (lambda r: f" ({(r.setting or '').upper()})") if setting_suffix else (lambda r: "")
    rows = rows + [Row(r.label + suffix(r), r.values, r.source) for r in published]
    if not published:
        return rows, CELL_NOTE + " No published rows: no retrieved source gives this breakdown."
    by_source: dict[str, list[str]] = {}
    for r in published:
        by_source.setdefault(r.source, []).append(r.policy)
    sources = "; ".join(f"{', '.join(policies)}: {source}" for source, policies in by_source.items())
    caveat = "".join(f" {c}" for c in dict.fromkeys(r.caveat for r in published if r.caveat))
    return rows, (f"{CELL_NOTE} Published rows are as printed by their sources (which give no counts or "
                  f"intervals): {sources}.{caveat}")


def paper_tables(records_by_policy: dict[str, list[dict[str, Any]]]) -> list[PaperTable]:
    """The tables some policy has episodes for: our rows first, then the published ones."""
    tables = []
    widowx = {name: rs for name, rs in records_by_policy.items() if _has(rs, robot="widowx")}
    if widowx:
        ours = [Row(name, _ours(widowx_cells(rs))) for name, rs in widowx.items()]
        rows, note = _with_published("table1_widowx", ours)
        tables.append(PaperTable("table1_widowx", "Table 1: SimplerEnv WidowX (visual matching), grasp and "
                                 "success per task", WIDOWX_COLUMNS, rows, note))
    google = {name: rs for name, rs in records_by_policy.items() if _has(rs, robot="google_robot")}
    if google:
        ours = [Row(name, _ours(google_cells(rs))) for name, rs in google.items()]
        rows, note = _with_published("table2_google", ours)
        tables.append(PaperTable("table2_google", "Table 2: SimplerEnv Google Robot success, visual matching "
                                 "(VM) and variant aggregation (VA)", GOOGLE_COLUMNS, rows, note))
        ours = [Row(f"{name} ({s.upper()})", _ours(detail_cells(rs, s))) for name, rs in google.items()
                for s in SETTINGS if _has(rs, robot="google_robot", setting=s)]
        rows, note = _with_published("table8_details", ours, setting_suffix=True)
        tables.append(PaperTable("table8_details", "Table 8: SimplerEnv Google Robot details, coke can per "
                                 "orientation and drawer open / close", DETAIL_COLUMNS, rows, note))
    excluded = _excluded_rows(records_by_policy)
    if excluded:
        tables.append(PaperTable("excluded_variants", "Variants run but left out of the averages (camera "
                                 "variants, as upstream)", EXCLUDED_COLUMNS, excluded,
                                 "Cells: rate [95% Wilson interval] (successes/episodes)."))
    return tables


def _excluded_rows(records_by_policy: dict[str, list[dict[str, Any]]]) -> list[Row]:
    rows = []
    for name, records in records_by_policy.items():
        counts: dict[tuple[str, str, str], list[int]] = {}
        for record in records:
            info = _info(record)
            if info is not None and info.get("in_average", True) is False:
                key = (str(info.get("family")), str(info.get("subtask") or "—"), str(info.get("variant")))
                tally = counts.setdefault(key, [0, 0])
                tally[0] += bool(record.get("success"))
                tally[1] += 1
        for (family, subtask, variant), (wins, trials) in counts.items():
            rows.append(Row(name, {"family": family, "subtask": subtask, "variant": variant,
                                   "success": rate_of([(1.0, wins, trials)])}))
    return rows


# -- outputs ------------------------------------------------------------------------------------------
def by_policy(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by their `policy` name, in first-seen order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if isinstance(record, dict):
            grouped.setdefault(str(record.get("policy") or "(unnamed)"), []).append(record)
    return grouped


def summary_tables(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tables in the summary's generic form the report renders:
    [{"title", "columns": [header], "rows": [[text]], "note", "file": stem of the .md/.csv}]."""
    return [{"title": t.title, "columns": [header for _, header in t.columns], "rows": t.text_rows(),
             "note": t.note, "file": t.name} for t in paper_tables(by_policy(records))]


def markdown(table: PaperTable) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")
    lines = [f"## {table.title}", "", "| " + " | ".join(escape(h) for _, h in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in table.text_rows()]
    return "\n".join(lines + ["", table.note, ""])


def csv_text(table: PaperTable) -> str:
    """One row per table row: per column its rate (a fraction), interval and counts; published rows
    have the rate only, and their source."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [key for key, _ in table.columns[1:]]
    fields = ("rate", "ci_low", "ci_high", "k", "n")
    writer.writerow([table.columns[0][1], "published", "source",
                     *[f"{key} {field}" for key in keys for field in fields]])
    for row in table.rows:
        line: list[Any] = [row.label, "yes" if row.source else "no", row.source or ""]
        for key in keys:
            value = row.values.get(key)
            if isinstance(value, Rate):
                line += [f"{value.rate:.6f}", f"{value.low:.6f}", f"{value.high:.6f}", value.k, value.n]
            elif isinstance(value, (int, float)):
                line += [f"{value / 100:.6f}", "", "", "", ""]
            else:  # not evaluated, or a text column
                line += [value if isinstance(value, str) else "", "", "", "", ""]
        writer.writerow(line)
    return out.getvalue()


def table_files(records_by_policy: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """{<name>.md, <name>.csv: text} for each table there is data for."""
    return {f"{table.name}{suffix}": render(table) for table in paper_tables(records_by_policy)
            for suffix, render in ((".md", markdown), (".csv", csv_text))}


def write_tables(records_by_policy: dict[str, list[dict[str, Any]]], out_dir: str | Path) -> list[Path]:
    """The `table_files` written into `out_dir`; the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in table_files(records_by_policy).items():
        atomic_write(out_dir / name, text)
        written.append(out_dir / name)
    return written


AVERAGES: dict[str, Callable[[list[dict[str, Any]]], Parts | None]] = {
    "widowx_success": lambda rs: widowx_cells(rs)["average/success"],
    "widowx_grasp": lambda rs: widowx_cells(rs)["average/grasp"],
    "google_vm_success": lambda rs: google_cells(rs)["vm/average"],
    "google_va_success": lambda rs: google_cells(rs)["va/average"],
}


def policy_averages(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy, the tables' averages as summary keys the sweep reads (`widowx_success_rate` with
    its `widowx_success_ci95`, `widowx_success_trials`; likewise widowx_grasp, google_vm_success,
    google_va_success); an average with a part not evaluated is absent."""
    out: dict[str, dict[str, Any]] = {}
    for name, rs in by_policy(records).items():
        entry: dict[str, Any] = {}
        for key, cell in AVERAGES.items():
            rate = rate_of(cell(rs))
            if rate is not None:
                entry.update({f"{key}_rate": rate.rate, f"{key}_ci95": [rate.low, rate.high],
                              f"{key}_trials": rate.n})
        if entry:
            out[name] = entry
    return out


def extend_summary(summary: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, str]:
    """What a SimplerEnv benchmark adds to ClosedLoopBenchmark's summary (its `aggregate`): "tables"
    (rendered by the report) and each policy's averages merged into its "policies" entry (so the
    sweep reads e.g. `<benchmark>.policies.model-every_step.widowx_success_rate`, interval and
    baselines included); returns the tables as Markdown and CSV files (name → text)."""
    summary["tables"] = summary_tables(records)
    policies = summary.get("policies")
    if isinstance(policies, dict):
        for name, averages in policy_averages(records).items():
            if isinstance(policies.get(name), dict):
                policies[name].update(averages)
    return table_files(by_policy(records))
