"""The report's closed-loop section, from a hand-made run directory (no model, no simulator): the
table's rates and Wilson intervals, the line that reads them against the baselines, the figure in
the Markdown and embedded in the HTML, and runs without (or with a broken) closed-loop output."""
from __future__ import annotations

import base64
import json
import re

from refine_core.evaluate.closed_loop import summarise
from refine_core.report import build_report
from refine_core.report.closed_loop_section import interpretation

TRIALS = 24
# policy: (mode, successes, grasps, seconds per action, tokens per query, forced spans, failures)
POLICIES = {
    "model-every_step": ("every_step", 15, 20, 0.4, 120.0, 6, 0),
    "model-every_k": ("every_k", 10, 16, 0.125, 30.0, 1, 0),
    "model-never": ("never", 2, 9, 0.05, 8.0, 0, 1),
    "do-nothing": (None, 0, 0, 0.001, None, 0, 0),
    "random": (None, 2, 5, 0.001, None, 0, 0),
}
SAMPLES = {("model-every_step", 0): "the red block is left of the gripper, so move left",
           ("model-every_step", 23): "the gripper is closed\nlift"}


def _records(name: str) -> list[dict]:
    mode, wins, grasps, latency, tokens, forced, failed = POLICIES[name]
    return [{"policy": name, "mode": mode, "task": "demo", "episode": i,
             "instruction": f"put the block {i} on the plate", "success": i < wins, "grasp": i < grasps,
             "steps": 40, "step_limit": 40, "expert_steps": 12, "latency_per_action_s": latency,
             "tokens_per_query": tokens, "queries": 10, "forced": forced if i == 0 else 0,
             "failure_reason": "server error" if i < failed else None,
             "reasoning_sample": SAMPLES.get((name, i), "" if mode else None),
             "protocol": {"benchmark": "demo-sim", "adapter": "identity"}} for i in range(TRIALS)]


def _write_closed_loop(run_dir) -> None:
    bench = run_dir / "eval" / "demo-sim"
    bench.mkdir(parents=True)
    records, table = [], {}
    for name, (mode, *_) in POLICIES.items():
        rows = _records(name)
        records += rows
        table[name] = {"mode": mode, **summarise(rows)}
    summary = {"benchmark": "demo-sim", "episodes": TRIALS, "policies": table}
    (bench / "summary.json").write_text(json.dumps(summary, indent=2))
    (bench / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("dataset:\n  name: demo\n")
    return run_dir


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_closed_loop_section_reports_rates_intervals_and_what_they_show(tmp_path):
    run_dir = _run_dir(tmp_path)
    _write_closed_loop(run_dir)
    html_path = build_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings[headings.index("Evaluation") + 1] == "Closed loop: demo-sim"  # the other stages: missing
    section = _section(markdown, "Closed loop: demo-sim")
    for row in (
        "| model-every_step | every_step | 62.5% [42.7, 78.8] | 83.3% [64.1, 93.3] | 24 | 400.0 | 120.0 "
        "| 2.5% | 0 |",
        "| model-every_k | every_k | 41.7% [24.5, 61.2] | 66.7% [46.7, 82.0] | 24 | 125.0 | 30.0 | 0.4% "
        "| 0 |",
        "| model-never | never | 8.3% [2.3, 25.8] | 37.5% [21.2, 57.3] | 24 | 50.0 | 8.0 | 0.0% | 1 |",
        "| do-nothing | — | 0.0% [0.0, 13.8] | 0.0% [0.0, 13.8] | 24 | 1.0 | — | 0.0% | 0 |",
        "| random | — | 8.3% [2.3, 25.8] | 20.8% [9.2, 40.5] | 24 | 1.0 | — | 0.0% | 0 |",
    ):
        assert row in section
    line = next(text for text in section.splitlines() if text.startswith("model-every_step: "))
    assert line == (
        "model-every_step: 62.5% [42.7, 78.8] is above both baselines' intervals. "
        "model-every_k: 41.7% [24.5, 61.2] is above the do-nothing baseline's interval and overlaps the "
        "random baseline's interval. "
        "model-never: 8.3% [2.3, 25.8] overlaps both baselines' intervals. "
        "Overlapping intervals do not establish a difference at this number of trials. "
        "Latency per action: every_step is 3.2× every_k (400.0 ms vs 125.0 ms).")
    # the two reasoning samples: a success and a failure, only non-empty ones
    assert section.count("Reasoning sample, ") == 2
    assert ("model-every_step (task demo, episode 0, success); instruction: put the block 0 on the plate"
            in section)
    assert "model-every_step (task demo, episode 23, failure)" in section
    assert "```yaml\nthe gripper is closed\nlift\n```" in section

    figure = run_dir / "report" / "closed_loop-demo-sim.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](closed_loop-demo-sim.png)" in section
    page = html_path.read_text()
    embedded = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="closed_loop-demo-sim">', page)
    assert embedded and base64.b64decode(embedded.group(1)) == figure.read_bytes()
    assert "<h2>Closed loop: demo-sim</h2>" in page


def test_interpretation_follows_the_numbers():
    def policy(mode, rate, low, high, latency=None):
        return {"mode": mode, "success_rate": rate, "success_ci95": [low, high],
                "latency_per_action_s": latency}

    below = {"model-never": policy("never", 0.05, 0.01, 0.2),
             "scripted": policy(None, 0.9, 0.75, 0.97), "random": policy(None, 0.1, 0.03, 0.25)}
    assert interpretation(below) == (
        "model-never: 5.0% [1.0, 20.0] overlaps the random baseline's interval and is below the scripted "
        "baseline's interval. Overlapping intervals do not establish a difference at this number of trials.")
    alone = {"model-every_k": policy("every_k", 0.5, 0.3, 0.7, 0.2),
             "model-every_step": policy("every_step", None, 0.0, 1.0, 0.5)}
    assert interpretation(alone) == (
        "model-every_k: 50.0% [30.0, 70.0]; there is no baseline to compare it with. "
        "model-every_step: no success rate (no trials). "
        "Latency per action: every_step is 2.5× every_k (500.0 ms vs 200.0 ms).")
    # a scripted reference (the demo's expert) is reported as what solving the task scores, not a floor
    with_reference = {"model-never": policy("never", 0.05, 0.01, 0.2),
                      "random": policy(None, 0.1, 0.03, 0.25),
                      "expert": {**policy(None, 1.0, 0.86, 1.0), "role": "reference"}}
    assert interpretation(with_reference) == (
        "model-never: 5.0% [1.0, 20.0] overlaps the random baseline's interval. "
        "expert (a scripted reference that reads the scene's state): 100.0% [86.0, 100.0]. "
        "Overlapping intervals do not establish a difference at this number of trials.")


def test_no_closed_loop_output_means_no_section(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / "eval" / "other").mkdir(parents=True)  # an offline benchmark's summaries: no "policies"
    offline = {"episodes": 1, "steps": 4, "action_token_accuracy": 0.5, "action_token_chance": 1 / 256}
    (run_dir / "eval" / "summary.json").write_text(json.dumps(offline))
    (run_dir / "eval" / "other" / "summary.json").write_text(json.dumps(offline))
    build_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "Closed loop" not in markdown
    assert "| action token accuracy | 0.5 | 0.0039 |" in markdown  # the Evaluation section as before
    assert not list((run_dir / "report").glob("closed_loop-*.png"))


def test_unfinished_closed_loop_benchmark_says_so_and_its_old_figure_goes(tmp_path):
    run_dir = _run_dir(tmp_path)
    _write_closed_loop(run_dir)
    build_report(run_dir)
    (run_dir / "eval" / "demo-sim" / "summary.json").write_text('{"benchmark": "demo-')  # cut by a crash
    html_path = build_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    assert _section(markdown, "Closed loop: demo-sim").strip() == (
        "*Missing: no readable eval/demo-sim/summary.json (the closed-loop evaluation has not finished, "
        "or the file is damaged).*")
    assert not (run_dir / "report" / "closed_loop-demo-sim.png").exists()
    assert "Missing: no readable eval/demo-sim/summary.json" in html_path.read_text()


def test_closed_loop_benchmark_still_running_is_reported_missing(tmp_path):
    run_dir = _run_dir(tmp_path)
    policy_dir = run_dir / "eval" / "demo-sim" / "model-every_step"  # the runner's per-policy folder
    policy_dir.mkdir(parents=True)
    (policy_dir / "policy_log.jsonl").write_text(json.dumps({"sid": 0, "eid": 0}) + "\n")
    build_report(run_dir)
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "*Missing: no readable eval/demo-sim/summary.json" in _section(markdown, "Closed loop: demo-sim")
