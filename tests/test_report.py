"""The run report and `refine attention` on a real miniature run: a Bridge-format dataset on disk,
scripted annotations, the tiny backbone trained a few steps, the offline benchmark; then the
report must hold every section with embedded figures, and a run missing stages must say so."""
from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from refine_core.cli import main
from refine_core.config import resolve_config
from refine_core.report import build_report

SECTIONS = ("Does it work?", "Configuration", "Dataset and annotations", "Training", "Evaluation",
            "Attention maps", "Example reasoning")
COLOURS = ("red", "blue", "green", "yellow", "white", "orange")


def _episodes() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"actions": np.c_[rng.normal(0, 0.05, (6, 6)), (np.arange(6) < 3).astype(float)],
             "states": np.cumsum(rng.normal(0, 0.02, (6, 7)), axis=0),
             "instruction": f"put the {colour} block on the plate"} for colour in COLOURS]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from refine_plugins.rlds.fixtures import write_bridge_dataset
    from refine_core.run.stages import run_pipeline

    root = tmp_path_factory.mktemp("report-run")
    data = write_bridge_dataset(root / "data", _episodes(), image_size=(96, 96))
    # 6 episodes of 4 steps; data.val_fraction 0.2 holds out episode train-000002
    config = resolve_config(sets=[
        "dataset.name=bridge", f"dataset.data_dir={data}", "data.val_fraction=0.2", "data.shuffle_buffer=16",
        "train.max_steps=4", "train.batch_size=2", "train.log_every=1", "train.save_every=4", "train.lr=3e-3",
        "benchmark.free_running_steps=1", "benchmark.max_new_tokens=16"])
    out = root / "run"
    run_pipeline(config, out, stages=("annotate", "train", "eval"), log=lambda line: None)
    return out


def _images(report_dir) -> set[str]:
    return {p.name for p in report_dir.glob("*.png")}


def test_report_of_a_full_run_has_every_section_with_embedded_figures(run_dir):
    main(["report", "--out", str(run_dir), "--attention-episodes", "1"])
    report = run_dir / "report"
    markdown = (report / "report.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, flags=re.M)
    assert headings == list(SECTIONS)
    assert "Missing:" not in markdown and "could not" not in markdown
    # the answer leads: each claim with what measured it, or why nothing could
    answer = markdown.split("## Does it work?")[1].split("## ")[0]
    quality = json.loads((run_dir / "eval" / "summary.json").read_text())["reasoning_quality"]
    assert quality["steps"] == 1  # one held-out episode, one free-running step
    assert "learns the teacher's reasoning" in answer and f"({quality['steps']} steps)" in answer
    assert "not measured: no closed-loop benchmark ran" in answer  # bridge has no simulator
    assert "not measured: no checkpoint, or the dataset's steps have no object boxes" in answer
    assert "reasoning the run's format could read" in markdown  # the Evaluation section's table
    # every figure the Markdown references is beside it, and is a PNG
    referenced = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown))
    assert {"training_curves.png", "attention.png", "example-1.png"} <= referenced
    assert referenced == _images(report)
    # the evaluation table holds the benchmark's numbers, with chance beside the accuracy
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert "action token accuracy" in markdown and "0.0039" in markdown  # chance 1/256
    assert "with reasoning" in markdown and "without reasoning" in markdown
    assert summary["episodes"] == 1
    # annotation counts come from the manifest; the examples show the teacher's text
    manifest = json.loads((run_dir / "annotations" / "manifest.json").read_text())
    assert f"| steps annotated | {manifest['counts']['annotated']} |" in markdown
    assert "teacher (scripted" in markdown

    page = (report / "report.html").read_text()
    assert [h for h in re.findall(r"<h2>(.+?)</h2>", page)] == list(SECTIONS)
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == len(referenced) and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(href=|https?://|<link|<script)", page)


def test_report_says_which_stages_are_missing(run_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "config.yaml", partial / "config.yaml")
    (partial / "report").mkdir()
    (partial / "report" / "attention.png").write_bytes(b"stale")  # from an older build: must go
    html_path = build_report(partial)
    markdown = (partial / "report" / "report.md").read_text()
    assert re.findall(r"^## (.+)$", markdown, flags=re.M) == list(SECTIONS)
    for missing in ("annotations have not been made", "training has not run", "evaluation has not run",
                    "no trained checkpoint", "no reasoning texts"):
        assert f"Missing: {missing}" in markdown
    assert "bridge" in markdown  # the config and dataset parts still render
    assert html_path.read_text().count('class="missing"') == 5
    assert _images(partial / "report") == set()


def test_examples_put_model_reasoning_beside_teacher_text_and_frame(run_dir, tmp_path):
    from refine_core.data.annotation_set import AnnotationSet

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "config.yaml", partial / "config.yaml")
    shutil.copytree(run_dir / "annotations", partial / "annotations")
    (partial / "eval").mkdir()
    record = {"episode_id": "train-000002", "instruction": "put the green block on the plate",
              "with_reasoning": {"example": {"step": "train-000002/1",
                                             "reasoning": "the green block is ahead"}}}
    (partial / "eval" / "results.jsonl").write_text(json.dumps(record) + "\n")
    build_report(partial)
    markdown = (partial / "report" / "report.md").read_text()
    examples = markdown.split("## Example reasoning", 1)[1]
    first = examples.split("### ")[1]
    assert first.startswith("train-000002/1") and "(example-1.png)" in first
    assert "**model (free-running, held-out):**" in first and "> the green block is ahead" in first
    teacher = AnnotationSet.load(run_dir / "annotations").text("train-000002", 1)
    assert teacher.splitlines()[0] in first
    assert examples.count("### ") == 3  # topped up with annotated steps of other episodes
    assert (partial / "report" / "example-1.png").is_file()


def test_report_of_no_run_directory_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--out", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_attention_command_compares_base_and_fine_tuned(run_dir, tmp_path, capsys):
    png = tmp_path / "attention.png"
    main(["attention", "--checkpoint", str(run_dir), "--out", str(png), "--episodes", "1",
          "--target", "reasoning", "--top-k", "4", "--fuse", "mean"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "train-000002/" in printed  # the held-out episode's frame
    assert "base (untrained)" in printed and "fine-tuned (step 4)" in printed


@pytest.mark.parametrize("flag, value", [("--fuse", "median"), ("--target", "gripper"), ("--top-k", "0")])
def test_attention_command_refuses_bad_options(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "a.png"), flag, value])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
