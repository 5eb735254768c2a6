"""The offline benchmark measures what it says: a model that learned its held-out episode scores
perfectly; an untrained one does not; results are written as documented."""
from __future__ import annotations

import json

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
    assert result.summary["action_token_accuracy"] < 0.5
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
