"""SimplerEnv's paper tables from hand-made episode records (no simulator): cells with Wilson
intervals and pooled counts, upstream's mean-of-means averages (urdf versions, orientations, drawer
open / close, camera variants left out), published rows beside ours, the Markdown / CSV files, the
report rendering a benchmark's summary tables, and the averages the sweep reads for Figure 8.

Interval values are worked by hand: 15/24 → [42.7, 78.8] etc. (the same Wilson numbers as
test_report_closed_loop.py), and for a mean of unequal groups via Kish's effective trials (below)."""
from __future__ import annotations

import csv
import json
import math

from refine_benchmarks.simpler.published import PUBLISHED, published_rows
from refine_benchmarks.simpler.tables import (by_policy, extend_summary, policy_averages, summary_tables,
    write_tables)
from refine_core.evaluate.closed_loop import summarise
from refine_core.report import build_report

# WidowX task: (successes, grasps) of 24 episodes
WIDOWX = {"spoon_on_towel": (15, 20), "carrot_on_plate": (10, 16), "stack_cube": (2, 9),
          "put_eggplant_in_basket": (0, 5)}


def _episode(policy: str, success: bool, grasp: bool = False, **simpler) -> dict:
    info = {"robot": "google_robot", "setting": "vm", "family": "coke_can", "subtask": None,
            "drawer_level": None, "urdf_version": None, "variant": "base", "in_average": True, "repeat": 0,
            "robot_pose": None, **simpler}
    task = f"{info['robot']}_{info['family']}_{info['subtask']}_{info['drawer_level']}"
    return {"policy": policy, "mode": None, "task": task, "success": success, "grasp": grasp, "simpler": info}


def _episodes(policy: str, wins: int, trials: int, grasps: int = 0, **simpler) -> list[dict]:
    return [_episode(policy, i < wins, i < grasps, **simpler) for i in range(trials)]


def _widowx(policy: str = "model-every_step", tasks=WIDOWX) -> list[dict]:
    return [r for task, (wins, grasps) in tasks.items()
            for r in _episodes(policy, wins, 24, grasps, robot="widowx", family="widowx", subtask=task)]


def _google_vm(policy: str = "model-every_step") -> list[dict]:
    coke = {"family": "coke_can"}
    recolor = "recolor_tabletop_visual_matching_1"
    return [  # horizontal: two urdf versions of different sizes and rates, so the mean of means is not pooled
        *_episodes(policy, 9, 10, subtask="horizontal", urdf_version=None, **coke),
        *_episodes(policy, 2, 20, subtask="horizontal", urdf_version=recolor, **coke),
        *_episodes(policy, 5, 10, subtask="vertical", **coke),
        *_episodes(policy, 10, 10, subtask="standing", **coke),
        *_episodes(policy, 6, 10, family="move_near", urdf_version=None),
        *_episodes(policy, 4, 10, family="move_near", urdf_version="recolor_cabinet_visual_matching_1"),
        # drawer: open over two levels, close over one
        *_episodes(policy, 2, 4, family="drawer", subtask="open", drawer_level="top"),
        *_episodes(policy, 4, 4, family="drawer", subtask="open", drawer_level="middle"),
        *_episodes(policy, 1, 4, family="drawer", subtask="close", drawer_level="top"),
    ]


def _wilson(p: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The textbook Wilson score interval at rate p over n (possibly effective) trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(rate: float, n_eff: float, k: int, n: int) -> str:
    low, high = _wilson(rate, n_eff)
    return f"{rate * 100:.1f}% [{low * 100:.1f}, {high * 100:.1f}] ({k}/{n})"


def _table(tables: list[dict], file: str) -> dict:
    return next(t for t in tables if t["file"] == file)


def _row(table: dict, label: str) -> dict[str, str]:
    return dict(zip(table["columns"], next(r for r in table["rows"] if r[0] == label)))


def test_widowx_table_has_grasp_and_success_per_task_and_the_task_average():
    row = _row(_table(summary_tables(_widowx()), "table1_widowx"), "model-every_step")
    assert row["spoon on towel: grasp"] == "83.3% [64.1, 93.3] (20/24)"
    assert row["spoon on towel: success"] == "62.5% [42.7, 78.8] (15/24)"
    assert row["carrot on plate: success"] == "41.7% [24.5, 61.2] (10/24)"
    assert row["stack block: grasp"] == "37.5% [21.2, 57.3] (9/24)"
    assert row["eggplant in basket: success"] == "0.0% [0.0, 13.8] (0/24)"
    # equal n per task: the mean of task rates (62.5+41.7+8.3+0)/4 = 28.1% is the pooled 27/96, Wilson on it
    assert row["average success"] == "28.1% [20.1, 37.8] (27/96)"


def test_google_averages_are_means_of_group_means_not_pooled_counts():
    tables = summary_tables(_google_vm())
    detail = _row(_table(tables, "table8_details"), "model-every_step (VM)")
    # horizontal: urdf means 0.9 and 0.1 → 0.5 (pooled would be 11/30 = 36.7%);
    # n_eff = 1 / (0.5²/10 + 0.5²/20) = 26.67
    assert detail["coke can horizontal"] == _cell(0.5, 1 / (0.25 / 10 + 0.25 / 20), 11, 30)
    assert detail["coke can horizontal"] == "50.0% [32.3, 67.7] (11/30)"
    assert detail["coke can standing"] == "100.0% [72.2, 100.0] (10/10)"  # a one-group cell: plain Wilson
    # coke can = mean over orientations (0.5, 0.5, 1.0); weights 1/6, 1/6 (horizontal), 1/3, 1/3
    coke_n_eff = 1 / ((1 / 36) / 10 + (1 / 36) / 20 + (1 / 9) / 10 + (1 / 9) / 10)
    assert detail["coke can average"] == _cell(2 / 3, coke_n_eff, 26, 50) == "66.7% [50.7, 79.5] (26/50)"
    # drawer: open = mean(2/4, 4/4) = 0.75 (equal n: pooled 6/8), close 1/4, drawer = mean(0.75, 0.25)
    assert detail["drawer open"] == _cell(0.75, 8, 6, 8)
    assert detail["drawer close"] == _cell(0.25, 4, 1, 4)
    assert detail["drawer average"] == _cell(0.5, 1 / (0.25**2 / 4 * 2 + 0.5**2 / 4), 7, 12)

    google = _row(_table(tables, "table2_google"), "model-every_step")
    assert google["VM coke can"] == detail["coke can average"]
    assert google["VM move near"] == "50.0% [29.9, 70.1] (10/20)"  # two urdf versions, equal n: pooled
    assert google["VM drawer"] == detail["drawer average"]
    # VM average = mean(2/3, 1/2, 1/2) = 5/9, each family's groups weighted by a third of its weights
    groups = [(1 / 18, 10), (1 / 18, 20), (1 / 9, 10), (1 / 9, 10), (1 / 6, 10), (1 / 6, 10),
              (1 / 12, 4), (1 / 12, 4), (1 / 6, 4)]
    assert math.isclose(sum(w for w, _ in groups), 1.0)
    assert google["VM average"] == _cell(5 / 9, 1 / sum(w * w / n for w, n in groups), 43, 82)
    assert all(google[c] == "—" for c in ("VA coke can", "VA move near", "VA drawer", "VA average"))


def test_camera_variants_run_but_stay_out_of_the_variant_aggregation_average():
    va = {"setting": "va", "family": "coke_can", "subtask": "horizontal"}
    records = [*_episodes("model-every_step", 8, 10, variant="base", **va),
               *_episodes("model-every_step", 6, 10, variant="darker_lighting", **va),
               *_episodes("model-every_step", 0, 10, variant="alt_google_camera", in_average=False, **va)]
    tables = summary_tables(records)
    detail = _row(_table(tables, "table8_details"), "model-every_step (VA)")
    assert detail["coke can horizontal"] == _cell(0.7, 20, 14, 20)  # not 14/30
    assert detail["coke can average"] == "—"  # vertical and standing were not run
    excluded = _row(_table(tables, "excluded_variants"), "model-every_step")
    assert (excluded["variant"], excluded["subtask"], excluded["success"]) == (
        "alt_google_camera", "horizontal", "0.0% [0.0, 27.8] (0/10)")
    assert [r[0] for r in _table(tables, "table8_details")["rows"]] == ["model-every_step (VA)"]  # no VM row


def test_missing_parts_render_as_dashes_and_records_without_simpler_are_ignored():
    partial = {task: WIDOWX[task] for task in ("spoon_on_towel", "carrot_on_plate")}
    records = _widowx(tasks=partial) + [{"policy": "model-every_step", "task": "x", "success": True},
                                        {"policy": "model-every_step", "simpler": None}, "not a record",
                                        {"policy": "random", "task": "y", "success": True}]
    tables = summary_tables(records)
    assert [t["file"] for t in tables] == ["table1_widowx"]  # no Google Robot episodes: no Google tables
    row = _row(tables[0], "model-every_step")
    assert row["spoon on towel: success"] == "62.5% [42.7, 78.8] (15/24)"
    assert row["stack block: success"] == row["eggplant in basket: grasp"] == "—"
    assert row["average success"] == "—"  # a partial average is not comparable with the paper's
    assert "random" not in [r[0] for r in tables[0]["rows"]]  # no SimplerEnv episodes, no row
    assert summary_tables([]) == [] and policy_averages([{"policy": "p"}]) == {}


def test_published_rows_sit_beside_ours_labelled_and_sourced():
    table = _table(summary_tables(_widowx() + _google_vm()), "table1_widowx")
    labels = [r[0] for r in table["rows"]]
    assert labels == ["model-every_step", "SpatialVLA zero-shot (published)",
                      "SpatialVLA fine-tuned (published)", "OpenVLA (published)", "ReFineVLA (published)"]
    spatial = _row(table, "SpatialVLA zero-shot (published)")
    assert (spatial["spoon on towel: grasp"], spatial["eggplant in basket: success"],
            spatial["average success"]) == ("25.0%", "70.8%", "34.4%")
    refine = _row(table, "ReFineVLA (published)")
    assert refine["average success"] == "47.7%" and refine["spoon on towel: success"] == "—"
    assert "github.com/SpatialVLA/SpatialVLA README.md" in table["note"]
    assert "openreview.net/forum?id=DuufClRdBm" in table["note"]
    google = _table(summary_tables(_google_vm()), "table2_google")
    assert _row(google, "OpenVLA (published)")["VA move near"] == "47.7%"
    assert google["note"].count("github.com/SpatialVLA/SpatialVLA README.md") == 1  # one source, named once
    assert "averages are not the mean of its three task columns" in google["note"]  # unlike ours
    assert "No published rows" in _table(summary_tables(_google_vm()), "table8_details")["note"]


def test_published_widowx_averages_are_the_mean_of_their_success_columns():
    # guards the transcription: the source's average is the mean of its four success columns (to 0.1)
    for row in published_rows("table1_widowx"):
        successes = [v for k, v in row.values.items() if k.endswith("/success") and k != "average/success"]
        if len(successes) == 4:
            assert abs(sum(successes) / 4 - row.values["average/success"]) <= 0.05 + 1e-9, row.policy
    assert all(row.source and 0 <= v <= 100 for row in PUBLISHED for v in row.values.values())


def test_markdown_and_csv_files(tmp_path):
    records = _widowx() + _widowx("model-never", {t: (1, 2) for t in WIDOWX}) + _google_vm()
    written = write_tables(by_policy(records), tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{name}.{ext}" for name in (
        "table1_widowx", "table2_google", "table8_details") for ext in ("md", "csv"))
    md = (tmp_path / "table1_widowx.md").read_text()
    assert md.startswith("## Table 1: SimplerEnv WidowX")
    assert ("| model-never | 8.3% [2.3, 25.8] (2/24) | 4.2% [0.7, 20.2] (1/24) |" in md)
    assert "| ReFineVLA (published) | — |" in md and "Published rows are as printed" in md
    with (tmp_path / "table1_widowx.csv").open() as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    ours = rows["model-every_step"]
    assert (ours["spoon_on_towel/success rate"], ours["spoon_on_towel/success k"],
            ours["spoon_on_towel/success n"], ours["published"]) == ("0.625000", "15", "24", "no")
    average = [ours[f"average/success {field}"] for field in ("rate", "ci_low", "ci_high", "k", "n")]
    assert average == ["0.281250", "0.201074", "0.378259", "27", "96"]
    published = rows["SpatialVLA fine-tuned (published)"]
    assert (published["published"], published["put_eggplant_in_basket/success rate"],
            published["put_eggplant_in_basket/success k"]) == ("yes", "1.000000", "")
    assert "SpatialVLA" in published["source"]
    assert rows["ReFineVLA (published)"]["spoon_on_towel/grasp rate"] == ""


def test_report_renders_the_tables_a_benchmark_puts_in_its_summary(tmp_path):
    run_dir = tmp_path / "run"
    bench = run_dir / "eval" / "simpler-widowx"
    bench.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("dataset:\n  name: demo\n")
    records = _widowx() + [{**r, "policy": "random", "role": "baseline"} for r in _widowx(tasks={
        t: (0, 1) for t in WIDOWX})]
    summary = {"benchmark": "simpler-widowx", "episodes": len(records),
               "policies": {name: {"mode": None, **summarise(rs)} for name, rs in by_policy(records).items()}}
    for name, text in extend_summary(summary, records).items():
        (bench / name).write_text(text)
    summary["tables"].append({"title": "broken", "rows": "not a list"})  # skipped, nothing crashes
    (bench / "summary.json").write_text(json.dumps(summary))
    (bench / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    html_path = build_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    section = markdown.split("## Closed loop: simpler-widowx\n", 1)[1].split("\n## ", 1)[0]
    assert "Table 1: SimplerEnv WidowX (visual matching), grasp and success per task" in section
    assert "| model-every_step | 83.3% [64.1, 93.3] (20/24) | 62.5% [42.7, 78.8] (15/24) |" in section
    assert "| SpatialVLA zero-shot (published) | 25.0% |" in section
    assert section.index("| policy | mode |") < section.index("Table 1:")  # below the policy table
    assert "broken" not in section
    assert "SpatialVLA zero-shot (published)" in html_path.read_text()
    assert (bench / "table1_widowx.md").is_file() and (bench / "table1_widowx.csv").is_file()


def test_sweep_reads_a_table_average_with_its_interval_and_the_baselines(tmp_path):
    from refine_core.run.sweep import read_metric_details

    records = _widowx() + [{**r, "policy": "random"} for r in _widowx(tasks={t: (1, 1) for t in WIDOWX})]
    summary = {"benchmark": "simpler-widowx",
               "policies": {"model-every_step": {"mode": "every_step", "role": "model"},
                            "random": {"mode": None, "role": "baseline"}}}
    extend_summary(summary, records)
    averages = policy_averages(records)["model-every_step"]
    assert averages["widowx_success_rate"] == 27 / 96 and averages["widowx_success_trials"] == 96
    bench = tmp_path / "point" / "eval" / "simpler-widowx"
    bench.mkdir(parents=True)
    (bench / "summary.json").write_text(json.dumps(summary))
    value, _, interval, baselines = read_metric_details(
        tmp_path / "point", "simpler-widowx.policies.model-every_step.widowx_success_rate")
    assert value == 27 / 96
    assert interval is not None and abs(interval[0] - 0.2011) < 1e-4 and abs(interval[1] - 0.3783) < 1e-4
    assert baselines == {"random": 4 / 96}
    # Google averages appear only once every family was evaluated in that setting
    assert "google_vm_success_rate" in policy_averages(_google_vm())["model-every_step"]
    assert "google_va_success_rate" not in policy_averages(_google_vm())["model-every_step"]


def test_refine_eval_names_the_tables_and_their_files_instead_of_dumping_them(tmp_path, capsys):
    from refine_core.cli.eval_cmds import _show

    records = _widowx()
    summary = {"benchmark": "simpler-widowx", "episodes": len(records),
               "policies": {"model-every_step": {"mode": "every_step", **summarise(records)}}}
    extend_summary(summary, records)
    _show(summary, False, "simpler-widowx", tmp_path)
    printed = capsys.readouterr().out
    assert f"Table 1: SimplerEnv WidowX (visual matching), grasp and success per task → {tmp_path}" in printed
    assert "widowx_success_rate" in printed and "'columns'" not in printed
