"""The `retention` benchmark: question set, option scoring, KL drift, end to end through `refine eval`
and into the report, on the tiny hf_vlm preset."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from refine_benchmarks.retention.measures import (GENERAL_PROMPTS, drift, kl_per_text, next_token_log_probs,
                                                  option_log_likelihoods)
from refine_benchmarks.retention.questions import build_question_set, scene_image
from refine_plugins.demo.render import cell_centre
from refine_plugins.demo.scene import COLOURS, generate_episodes
from tiny_policies import tiny_backbone

PROMPTS = GENERAL_PROMPTS[:3]  # a few prompts keep the CPU tests fast


@pytest.fixture(scope="module")
def tiny():
    backbone = tiny_backbone("hf_vlm")
    backbone.model.eval()
    return backbone


def _perturbed(backbone, scale: float):
    other = copy.deepcopy(backbone)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, block in other.blocks():
            for parameter in block.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return other


# -- drift -------------------------------------------------------------------------------------
def test_drift_is_zero_against_itself_and_grows_with_the_perturbation(tiny):
    assert max(drift(tiny, tiny, PROMPTS)) < 1e-6
    small = np.mean(drift(tiny, _perturbed(tiny, 0.01), PROMPTS))
    large = np.mean(drift(tiny, _perturbed(tiny, 0.1), PROMPTS))
    assert 0 < small < large


def test_fresh_lora_adapters_give_zero_drift_and_trained_ones_do_not(tiny):
    pytest.importorskip("peft")
    from refine_core.config import LoraSettings
    from refine_core.training.lora import apply_lora

    adapted = copy.deepcopy(tiny)
    apply_lora(adapted, LoraSettings(r=4))  # peft's default init: B = 0, so the adapter adds nothing
    adapted.model.eval()
    assert any(".lora_B" in name for name, _ in adapted.model.named_parameters())
    assert max(drift(tiny, adapted, PROMPTS)) < 1e-6
    with torch.no_grad():
        for name, parameter in adapted.model.named_parameters():
            if ".lora_B" in name:
                parameter.fill_(0.05)
    assert np.mean(drift(tiny, adapted, PROMPTS)) > 1e-4


def test_kl_is_taken_from_the_base_distribution():
    base = torch.log(torch.tensor([[0.5, 0.5]]))
    tuned = torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert kl_per_text([base], [tuned])[0] == pytest.approx(expected, rel=1e-5)


def test_next_token_distributions_cover_every_token_of_the_prompt(tiny):
    [log_probs] = next_token_log_probs(tiny, PROMPTS[:1])
    assert log_probs.shape == (len(tiny.reasoning_ids(PROMPTS[0])), len(tiny.tokenizer))
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(len(log_probs)), atol=1e-4)


# -- the question set --------------------------------------------------------------------------
def test_question_set_is_deterministic_and_right_by_construction():
    questions, images = build_question_set(4, seed=0)
    again, images_again = build_question_set(4, seed=0)
    assert questions == again and all(np.array_equal(images[i], images_again[i]) for i in images)
    assert build_question_set(4, seed=1)[0] != questions
    episodes = generate_episodes(4, 0)
    for q in questions:
        objects = episodes[q.scene].objects
        assert q.answer in q.candidates
        if q.kind == "count":
            assert q.answer == str(len(objects))
        elif q.kind == "colour":
            kind = q.question.removeprefix("What colour is the ").removesuffix("?")
            [obj] = [o for o in objects if o.kind == kind]
            assert q.answer == obj.colour
            # the object is drawn in that colour where the rendering paints its base colour
            row, col = cell_centre(*obj.cell)
            offset = 9 if kind in ("block", "cup") else 14  # inside the outer shape, outside any inner mark
            pixel = images[q.scene][int(row), int(col + offset)].astype(float)
            nearest = min(COLOURS, key=lambda c: np.linalg.norm(pixel / max(pixel.max(), 1) * 255 -
                                                                   np.asarray(COLOURS[c], float)))
            assert nearest == obj.colour, (q, pixel)
        else:
            names = q.question.removeprefix("Is the ").removesuffix("?").split(" left or right of the ")
            a, b = (next(o for o in objects if o.name == n) for n in names)
            assert q.answer == ("left" if a.cell[1] > b.cell[1] else "right")  # +y is left
    assert {q.kind for q in questions} == {"colour", "count", "position"}
    assert scene_image(episodes[0]).shape == (256, 256, 3)


def test_option_scores_are_the_log_likelihood_of_each_candidate(tiny):
    questions, images = build_question_set(1, seed=0)
    q = questions[0]
    scores = option_log_likelihoods(tiny, images[q.scene], q.question, q.candidates)
    assert len(scores) == len(q.candidates) and all(s < 0 for s in scores)
    # one candidate alone scores the same as in the batch (padding does not leak into the scores)
    alone = option_log_likelihoods(tiny, images[q.scene], q.question, [q.candidates[-1]])
    assert alone[0] == pytest.approx(scores[-1], abs=1e-4)


# -- the benchmark -----------------------------------------------------------------------------
def test_benchmark_summary_has_wilson_intervals_and_zero_drift_against_itself(tiny, tmp_path):
    from refine_benchmarks.retention import RetentionOptions
    from refine_benchmarks.retention.benchmark import RetentionBenchmark
    from refine_core.benchmark import EvalContext

    benchmark = RetentionBenchmark(RetentionOptions(scenes=2, drift_prompts=2))
    context = EvalContext(backbone=tiny, dataset=None, out_dir=tmp_path, base_backbone=lambda: tiny)
    result = benchmark.evaluate(context)
    summary = result.summary
    for model in ("base", "fine_tuned"):
        stats = summary[model]
        assert stats["trials"] == summary["questions"]
        low, high = stats["ci95"]
        assert 0 <= low <= stats["rate"] <= high <= 1
        assert set(stats["by_kind"]) == {"colour", "count", "position"}
    assert summary["agreement"]["rate"] == 1.0 and summary["drift"]["kl_mean"] < 1e-6
    assert len(result.records) == summary["questions"] + 2
    alone = benchmark.evaluate(EvalContext(backbone=tiny, dataset=None, out_dir=tmp_path))
    assert alone.summary["base"] is None and alone.summary["drift"] is None and alone.summary["notes"]


def test_refine_eval_retention_end_to_end_and_in_the_report(tmp_path, refine_cli):
    from train_toys import trained_checkpoint

    from refine_core.report import build_report

    run = tmp_path / "run"
    checkpoint = trained_checkpoint(run)
    result = refine_cli("eval", "--checkpoint", str(checkpoint), "--out", str(run / "eval" / "retention"),
                        "--benchmark", "retention", "--set", "benchmark.scenes=2",
                        "--set", "benchmark.drift_prompts=2",
                        "--set", "benchmark.bootstrap=50")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "eval" / "retention" / "summary.json").read_text())
    assert summary["benchmark"] == "retention"
    assert summary["base"]["rate"] is not None and summary["fine_tuned"]["rate"] is not None
    # one training step at lr 3e-3 moved the model: a small, positive drift
    assert summary["drift"]["kl_mean"] > 0 and summary["drift"]["prompts"] == 2
    report = build_report(run, attention_episodes=0).parent / "report.md"
    text = report.read_text()
    assert "Knowledge retention" in text and "KL(base ‖ fine-tuned), mean nats/token" in text
    assert "picks the base's answer" in text
