"""VLM2VLA training path: the recipe, trajectory plans made by the annotate stage (journaled,
resumed, tied to their dataset), text-answer samples (prompt unsupervised, answer + eos supervised)
and a training run on them with LoRA only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from refine_core import TrainingSample, UsageError
from refine_core.annotate.plans import PLANS_JOURNAL, decompose_dataset, load_plans
from refine_core.config import AnnotateSettings, VLM2VLASettings, resolve_config
from refine_core.data.collate import IGNORE
from refine_core.data.samples import SampleStream
from refine_core.data.vlm2vla import KINDS, actions_prompt, parse_actions, parse_subtasks
from refine_core.registry import get_registry


@pytest.fixture
def demo(tmp_path):
    return get_registry().build("dataset", "demo", {"episodes": 8, "cache_dir": str(tmp_path / "cache")})


@pytest.fixture
def scripted():
    return get_registry().build("teacher", "scripted", {})


def test_the_vlm2vla_recipe_sets_the_papers_values_and_later_layers_override_it():
    config = resolve_config(recipe="vlm2vla")
    assert config.recipe == "vlm2vla"
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (16, 32.0, 0.05)
    assert (config.train.lr, config.train.schedule) == (5e-5, "linear")
    assert config.codec.name == "text" and config.annotate.task == "decomposition"
    assert config.data.samples == "vlm2vla"
    assert config.backbone.options == {"preset": "tiny-gemma3"}
    assert config.vlm2vla.with_plan and resolve_config(recipe="vlm2vla-nr").vlm2vla.with_plan is False
    assert resolve_config(recipe="vlm2vla", sets=["train.lr=1e-3"]).train.lr == 1e-3
    assert resolve_config().recipe is None and resolve_config().data.samples == "steps"
    with pytest.raises(UsageError, match="Unknown recipe 'vlm3vla'. Available: refinevla, vlm2vla"):
        resolve_config(recipe="vlm3vla")
    with pytest.raises(UsageError, match="vlm2vla.kinds.*choose among subtasks, motion, actions"):
        resolve_config(sets=["vlm2vla.kinds=[actions, dance]"])


def test_config_show_prints_the_recipe(refine_cli):
    result = refine_cli("config", "show", "--recipe", "vlm2vla", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["recipe"] == "vlm2vla" and shown["lora"]["r"] == 16 and shown["data"]["samples"] == "vlm2vla"
    bad = refine_cli("config", "show", "--recipe", "nope")
    assert bad.returncode == 2 and "Unknown recipe 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_decomposition_writes_plans_resumes_and_belongs_to_its_dataset(demo, scripted, tmp_path):
    out = tmp_path / "plans"
    report = decompose_dataset(demo, scripted, out, AnnotateSettings(task="decomposition"))
    episodes = [e.episode_id for e in demo.episodes("train")]
    assert sorted(report.plans) == sorted(episodes) and not report.rejected and report.resumed == 0
    manifest = json.loads((out / "plans.json").read_text())
    assert manifest["complete"] and manifest["counts"]["planned"] == len(episodes)
    lines = (out / PLANS_JOURNAL).read_text().splitlines()
    again = decompose_dataset(demo, scripted, out, AnnotateSettings(task="decomposition"))
    assert again.resumed == len(episodes) and (out / PLANS_JOURNAL).read_text().splitlines() == lines
    assert load_plans(out, demo) == report.plans
    other = get_registry().build("dataset", "demo", {"episodes": 9, "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(UsageError, match="holds plans of another dataset"):
        decompose_dataset(other, scripted, out, AnnotateSettings(task="decomposition"))
    with pytest.raises(UsageError, match="were made for dataset"):
        load_plans(out, other)


def test_a_teacher_that_cannot_decompose_is_one_line(demo, tmp_path):
    class Talker:
        name = "talker"

    with pytest.raises(UsageError, match="teacher 'talker' cannot decompose"):
        decompose_dataset(demo, Talker(), tmp_path / "p", AnnotateSettings())


def test_text_answer_samples_supervise_the_answer_and_eos_only():
    backbone = get_registry().build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})
    prompt = actions_prompt("put the red block on the blue plate", "reach the red block", "forward 0.031 m")
    sample = TrainingSample(images={"cam": np.zeros((64, 64, 3), np.uint8)}, primary_camera="cam",
                            instruction=prompt, actions=np.zeros((1, 7), np.float32),
                            answer="[[0.031, 0.000, 0.000, 1.0]]")
    encoded = backbone.encode(sample)
    prompt_ids = backbone.prompt_ids(prompt)
    answer_ids = backbone.reasoning_ids(sample.answer)
    assert encoded.input_ids == prompt_ids + answer_ids + [backbone.eos_id]
    assert encoded.labels == [IGNORE] * len(prompt_ids) + answer_ids + [backbone.eos_id]
    assert encoded.action_mask == [False] * len(prompt_ids) + [True] * (len(answer_ids) + 1)
    assert backbone.tokenizer.decode(answer_ids) == sample.answer  # the answer survives tokenizing


def test_the_sample_stream_yields_each_planned_episodes_text_tasks(demo, scripted, tmp_path):
    decompose_dataset(demo, scripted, tmp_path / "plans", AnnotateSettings(task="decomposition"))
    plans = load_plans(tmp_path / "plans", demo)
    dropped = sorted(plans)[0]
    plans.pop(dropped)
    stream = SampleStream(demo, val_fraction=0.0, plans=plans, vlm2vla=VLM2VLASettings())
    samples = list(stream.samples())
    assert {s.key.split("/")[-1] for s in samples} == set(KINDS)
    assert not any(s.key.startswith(dropped + "/") for s in samples)  # no plan: no samples
    assert stream.counts.skipped == len(next(e for e in demo.episodes() if e.episode_id == dropped).steps)
    for sample in samples:
        assert sample.answer and sample.image.shape == (256, 256, 3)
        kind = sample.key.split("/")[-1]
        if kind == "subtasks":
            assert parse_subtasks(sample.answer) == plans[sample.key.split("/")[0]].subtasks()
        if kind == "actions":
            assert parse_actions(sample.answer).shape[1] == 4 and "Plan: " in sample.instruction
    only = SampleStream(demo, val_fraction=0.0, plans=plans,
                        vlm2vla=VLM2VLASettings(kinds=["actions"], with_plan=False))
    actions = list(only.samples())
    assert actions and all(s.key.endswith("/actions") and "Plan: " not in s.instruction for s in actions)


def test_refine_train_learns_from_the_plans_refine_annotate_made(refine_cli, tmp_path):
    cache = ["--set", "dataset.episodes=4", "--set", f"dataset.cache_dir={tmp_path / 'cache'}"]
    made = refine_cli("annotate", "--out", str(tmp_path / "plans"), "--recipe", "vlm2vla", *cache)
    assert made.returncode == 0, made.stderr
    assert "4 episodes decomposed" in made.stdout
    missing = refine_cli("train", "--out", str(tmp_path / "t0"), "--recipe", "vlm2vla", *cache)
    assert missing.returncode == 2 and "trains on trajectory plans" in missing.stderr
    trained = refine_cli("train", "--out", str(tmp_path / "t"), "--recipe", "vlm2vla", "--annotations",
                         str(tmp_path / "plans"), *cache, "--set", "train.max_steps=3",
                         "--set", "train.log_every=1")
    assert trained.returncode == 0, trained.stderr
    metrics = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) >= 3 and all(np.isfinite(m["loss"]) and m["reasoning_loss"] == 0.0 for m in metrics)
    from refine_core.training.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path / "t") is not None


def test_the_report_reads_retention_as_a_claim_and_lists_plans(tmp_path):
    from refine_core.report.answer_section import answer_section
    from refine_core.report.sections import data_section

    (tmp_path / "eval").mkdir()
    (tmp_path / "annotations").mkdir()

    def rate(successes, trials=50):
        from refine_core.evaluate.closed_loop import wilson_interval

        return {"rate": successes / trials, "ci95": list(wilson_interval(successes, trials)),
                "successes": successes, "trials": trials}

    def claim(base, tuned):
        summary = {"benchmark": "retention", "base": rate(base), "fine_tuned": rate(tuned),
                   "drift": {"kl_mean": 0.25}}
        (tmp_path / "eval" / "summary.json").write_text(json.dumps(summary))
        rows = answer_section(tmp_path, None).blocks[1].rows
        return next(row for row in rows if row[0].startswith("keeps its knowledge"))

    kept = claim(40, 38)
    assert kept[2].startswith("yes") and "drift KL 0.25 nats/token" in kept[1] and "80.0%" in kept[1]
    assert claim(40, 10)[2].startswith("no: it answers fewer questions")
    (tmp_path / "annotations" / "plans.json").write_text(json.dumps({
        "dataset": "demo", "teacher": "scripted", "counts": {"planned": 7, "rejected": 1, "resumed": 0},
        "rejected": {"ep-3": "the concatenated actions do not reproduce the log"}, "cost_usd": 0.5}))
    section = data_section(tmp_path, None)
    assert ["episodes planned", "7"] in section.blocks[0].rows and not section.missing
    assert any("ep-3" in block.text for block in section.blocks[1:])


def test_refine_run_with_the_vlm2vla_recipe_works_offline_end_to_end(refine_cli, tmp_path):
    out = tmp_path / "run"
    result = refine_cli("run", "--out", str(out), "--recipe", "vlm2vla", "--set", "dataset.episodes=4",
                        "--set", f"dataset.cache_dir={tmp_path / 'cache'}", "--set", "train.max_steps=2",
                        "--set", "closed_loop.name=none")
    assert result.returncode == 0, result.stderr
    assert "4 episodes decomposed into plans" in result.stdout
    assert json.loads((out / "eval" / "summary.json").read_text())["benchmark"] == "retention"
    report = (out / "report" / "report.md").read_text()
    assert "keeps its knowledge (retention questions, base vs fine-tuned)" in report
    assert "| episodes planned | 4 |" in report and "recipe: vlm2vla" in report
    again = refine_cli("run", "--out", str(out), "--recipe", "vlm2vla")  # a finished run is kept
    assert again.returncode == 0 and "Nothing to do" in again.stdout
    other = refine_cli("run", "--out", str(out), "--recipe", "vlm2vla-nr")
    assert other.returncode == 2 and "made with recipe 'vlm2vla'" in other.stderr


def test_the_at_ablation_writes_action_answers_with_the_codecs_symbol_ids():
    from refine_core.training.setup import attach_codec
    from tiny_policies import action_statistics

    config = resolve_config(recipe="vlm2vla-at")
    assert config.codec.name == "least-likely" and config.data.samples == "vlm2vla"
    backbone = get_registry().build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})
    attach_codec(backbone, config, get_registry(), action_statistics())
    text = "[[0.031, -0.031, 0.000, 1.0], [0.000, 0.000, 0.000, 0.0]]"
    ids = backbone.answer_ids(text, "actions")
    symbols = backbone.codec.symbol_ids
    assert ids == [symbols[c] for c in "[[0.031,-0.031,0.000,1.0],[0.000,0.000,0.000,0.0]]"]
    assert backbone.answer_text(ids, "actions") == "".join(text.split())
    parsed = parse_actions(backbone.answer_text(ids, "actions"))
    assert parsed.tolist() == [[0.031, -0.031, 0, 1], [0, 0, 0, 0]]
    # every other answer, and action answers under the text codec, are the tokenizer's own text
    words = "reach the red block"
    assert backbone.answer_ids(words, "subtasks") == backbone.reasoning_ids(words)
    plain = get_registry().build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})
    attach_codec(plain, resolve_config(recipe="vlm2vla"), get_registry(), action_statistics())
    assert plain.answer_ids(text, "actions") == plain.reasoning_ids(text)
    assert plain.answer_text(plain.answer_ids(text, "actions"), "actions") == text
