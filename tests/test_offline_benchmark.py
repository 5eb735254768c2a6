"""The offline benchmark measures what it says: a model that learned its held-out episode scores
perfectly; an untrained one does not; results are written as documented."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from refine_core import DatasetStatistics, Episode, RobotDataset, Statistics, Step
from refine_core.benchmark import EvalContext, write_results
from refine_core.loss import reasoning_aware_loss
from refine_core.registry import Registry
from refine_core.data.samples import SampleStream


class TwoEpisodes(RobotDataset):
    name = "two-episodes"
    cameras = ("cam",)

    @property
    def identity(self) -> str:
        return "two-episodes"

    def episodes(self, split="train"):
        rng = np.random.default_rng(0)
        for e in range(2):
            steps = []
            for t in range(2):
                action = np.r_[rng.uniform(-0.04, 0.04, 6), float(t < 1)]
                steps.append(Step(images={"cam": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)},
                                  instruction="pick up the cup", action=action, primary_camera="cam",
                                  episode_id=f"ep{e}", step_index=t))
            yield Episode(episode_id=f"ep{e}", steps=steps)

    def statistics(self):
        return DatasetStatistics(
            action=Statistics.from_array(np.concatenate([e.actions() for e in self.episodes()]))
        )


@pytest.fixture(scope="module")
def setup():
    registry = Registry(entry_points=False)
    dataset = TwoEpisodes()
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    backbone.attach_codec(registry.build("codec", "bins", {}), dataset.statistics().action)
    benchmark = registry.build("benchmark", "offline", {"free_running_steps": 2, "max_new_tokens": 12})
    return registry, dataset, backbone, benchmark


def test_untrained_model_scores_near_chance(setup, tmp_path):
    _, dataset, backbone, benchmark = setup
    result = benchmark.evaluate(EvalContext(backbone, dataset, tmp_path, val_fraction=0.999))
    assert [r["episode_id"] for r in result.records] == ["ep0", "ep1"]
    assert result.summary["action_token_chance"] == pytest.approx(1 / 256)
    # 2 held-out episodes × 2 steps × (7 bins + eos) = 32 scored action tokens. At chance (1/256) a
    # model gets 32/256 = 0.125 of them right on average, and 3 or more with probability
    # ≈ C(32, 3)/256³ ≈ 3e-4: near chance is at most 2 right, an accuracy ≤ 1/16 (an untrained
    # model, whose argmax ranges over the whole vocabulary, gets 0 here)
    scored = sum(r["action_tokens"] for r in result.records)
    assert scored == 32
    right = result.summary["action_token_accuracy"] * scored
    assert right == pytest.approx(round(right)) and round(right) <= 2
    assert result.summary["reasoning_token_accuracy"] is None  # no annotations: no reasoning scored
    write_results(tmp_path / "eval", result)
    lines = (tmp_path / "eval" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["episode_id"] for line in lines] == ["ep0", "ep1"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["with_reasoning"]) == {"predictions", "decode_failure_rate", "forced_rate",
                                              "l1_per_dim",
                                              "l1_mean", "gripper_accuracy"}
    # constrained decoding: even an untrained model's actions decode; its reasoning never reaches them
    for mode in ("with_reasoning", "without_reasoning"):
        assert summary[mode]["decode_failure_rate"] == 0.0
    assert (
        summary["with_reasoning"]["forced_rate"] == 1.0 and summary["without_reasoning"]["forced_rate"] == 0.0
    )


def test_model_that_learned_the_episodes_scores_perfectly(setup, tmp_path):
    _, dataset, backbone, benchmark = setup
    samples = list(SampleStream(dataset, val_fraction=0.999, split="val").samples())
    batch = backbone.collate(samples)
    optimizer = torch.optim.Adam(backbone.model.parameters(), lr=1e-2)
    for step in range(200):
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if out.action_loss < 0.05:  # well past argmax-correct, so padding differences cannot flip a token
            break
    result = benchmark.evaluate(EvalContext(backbone, dataset, tmp_path, val_fraction=0.999))
    summary = result.summary
    assert summary["action_token_accuracy"] == 1.0
    free = summary["without_reasoning"]
    assert free["decode_failure_rate"] == 0.0 and free["gripper_accuracy"] == 1.0
    # free-running predictions are exactly the codec's rendering of the truth: L1 = round-trip error
    chosen = samples  # 2 evenly spaced steps of 2: every step
    codec = backbone.codec
    expected = np.mean([np.abs(codec.decode(codec.encode(s.actions[0]))[0] - s.actions[0]) for s in chosen],
                       axis=0)
    assert np.allclose(free["l1_per_dim"], expected, atol=1e-6)


def test_unconstrained_decoding_reports_an_untrained_model_failing(setup, tmp_path):
    registry, dataset, _, _ = setup
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny", "seed": 3})
    backbone.attach_codec(registry.build("codec", "bins", {}), dataset.statistics().action)
    benchmark = registry.build("benchmark", "offline", {"free_running_steps": 2, "max_new_tokens": 12,
                                                        "constrain_actions": False})
    summary = benchmark.evaluate(EvalContext(backbone, dataset, tmp_path, val_fraction=0.999)).summary
    assert (
        summary["with_reasoning"]["decode_failure_rate"] > 0 and summary["with_reasoning"]["forced_rate"] == 0
    )


def test_no_held_out_episode_is_a_clear_error(setup, tmp_path):
    _, dataset, backbone, benchmark = setup
    with pytest.raises(ValueError, match="no held-out episodes"):
        benchmark.evaluate(EvalContext(backbone, dataset, tmp_path, val_fraction=0.0))


# -- the summary numbers against values worked out by hand ------------------------------------
class _Scripted:
    """A backbone whose `predict` returns the next scripted action chunk (None: the span did not decode)."""

    def __init__(self, guesses):
        self.guesses = list(guesses)

    def predict(self, image, instruction, **kwargs):
        from refine_core.backbone import Prediction

        guess = self.guesses.pop(0)
        return Prediction(actions=None if guess is None else np.array([guess], dtype=float), reasoning=None)


def _sample(truth):
    return SimpleNamespace(image=None, instruction="pick up the cup", actions=np.array([truth], dtype=float),
                           reasoning=None, key=("ep0", 0))


def test_free_running_l1_mean_leaves_out_the_gripper():
    from refine_benchmarks.offline.benchmark import OfflineBenchmark

    truths = [[0.1, -0.2, 0.3, 0.0, 0.0, 0.0, 1.0],
              [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
              [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]]
    guesses = [[0.2, -0.2, 0.0, 0.1, 0.0, 0.0, 0.0],  # |error| 0.1 0 0.3 0.1 0 0 | gripper 1.0, closed≠open
               [0.0, 0.4, 0.0, 0.0, 0.2, 0.0, 0.2],  # |error| 0 0.4 0 0 0.2 0 | gripper 0.2, both closed
               None]  # a decode failure: no error counted
    benchmark = OfflineBenchmark(SimpleNamespace(max_new_tokens=8, constrain_actions=True))
    context = EvalContext(_Scripted(guesses), None, Path("."), reasoning_format="refinevla")
    got = benchmark._free_running(context, [_sample(t) for t in truths], with_reasoning=False)
    # per dimension, the mean over the 2 decoded predictions
    assert got["l1_per_dim"] == pytest.approx([0.05, 0.2, 0.15, 0.05, 0.1, 0.0, 0.6])
    # the 6 arm dimensions only: (0.05 + 0.2 + 0.15 + 0.05 + 0.1 + 0) / 6 = 0.55 / 6; with the
    # gripper it would be 1.15 / 7 ≈ 0.164
    assert got["l1_mean"] == pytest.approx(0.55 / 6)
    assert got["gripper_accuracy"] == 0.5
    assert (got["predictions"], got["decode_failures"], got["forced"]) == (3, 1, 0)


def _record(action_acc, action_tokens, reasoning_acc, reasoning_tokens, l1_per_dim, gripper):
    free = {"predictions": 2, "decode_failures": 0, "forced": 0, "l1_per_dim": l1_per_dim,
            "l1_mean": float(np.mean(l1_per_dim[:6])), "gripper_accuracy": gripper, "example": None,
            "reasoning_scores": []}
    return {"episode_id": "ep", "steps": 3, "instruction": "x", "action_tokens": action_tokens,
            "reasoning_tokens": reasoning_tokens, "action_token_accuracy": action_acc,
            "reasoning_token_accuracy": reasoning_acc, "with_reasoning": free, "without_reasoning": free}


def test_summary_weights_each_accuracy_by_its_own_token_count_and_l1_leaves_out_the_gripper():
    from refine_benchmarks.offline.benchmark import OfflineBenchmark

    records = [
        # action tokens 24, reasoning tokens 90
        _record(0.5, 24, 0.2, 90, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9], 1.0),
        # action tokens 8, reasoning tokens 10
        _record(1.0, 8, 0.8, 10, [0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.1], 0.0),
        # no reasoning scored in this episode (None): left out of the reasoning mean, not counted as 0
        _record(0.25, 16, None, 0, [0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.5], 0.5),
    ]
    backbone = SimpleNamespace(codec=SimpleNamespace(action_token_ids=np.arange(256)))
    summary = OfflineBenchmark._summary(records, backbone)
    # action: (0.5·24 + 1.0·8 + 0.25·16) / 48 = (12 + 8 + 4) / 48 = 0.5
    assert summary["action_token_accuracy"] == pytest.approx(0.5)
    # reasoning: (0.2·90 + 0.8·10) / 100 = 26 / 100 = 0.26
    # (weighted by action tokens instead: (0.2·24 + 0.8·8) / 32 = 0.35)
    assert summary["reasoning_token_accuracy"] == pytest.approx(0.26)
    assert summary["action_token_chance"] == pytest.approx(1 / 256)
    assert (summary["episodes"], summary["steps"]) == (3, 9)
    for mode in ("with_reasoning", "without_reasoning"):
        # arm dimensions: (0.1 + 0.3 + 0.2) / 3 = 0.2; with the gripper it would be
        # (1.5/7 + 1.9/7 + 1.7/7) / 3 = 5.1/21 ≈ 0.243
        assert summary[mode]["l1_mean"] == pytest.approx(0.2)
        assert summary[mode]["l1_per_dim"] == pytest.approx([0.2] * 6 + [0.5])
        assert summary[mode]["gripper_accuracy"] == pytest.approx(0.5)
        assert summary[mode]["predictions"] == 6 and summary[mode]["decode_failure_rate"] == 0.0
