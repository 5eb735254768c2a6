"""Attention maps (ReFineVLA Algorithm 4): the fusion math on hand-built attention with known
answers, the image-token positions of the tiny backbone, and a real map drawn as a PNG."""
from __future__ import annotations

import numpy as np
import pytest

from refine_core.evaluate.attention import (focus, fuse, fused_map, image_attention, image_positions,
    normalise, patch_grid, sample_attention, target_query_positions, top_k_heads, upsample)
from refine_core.errors import UsageError

EOS = 1
# prompt (3 tokens) | reasoning r1 r2 | actions a1 a2 | eos
LABELS = np.array([-100, -100, -100, 50, 51, 900, 901, EOS])
ACTION_MASK = np.array([0, 0, 0, 0, 0, 1, 1, 1], dtype=bool)


def test_target_queries_are_the_positions_that_predict_the_target_tokens():
    # a1, a2 sit at 5, 6 and are predicted by the queries at 4, 5; eos (7) is not a target
    assert target_query_positions(LABELS, ACTION_MASK, "action", EOS).tolist() == [4, 5]
    assert target_query_positions(LABELS, ACTION_MASK, "reasoning", EOS).tolist() == [2, 3]
    with pytest.raises(UsageError, match="Unknown attention target"):
        target_query_positions(LABELS, ACTION_MASK, "vision", EOS)


def test_image_attention_averages_the_target_query_rows_over_image_keys():
    heads, length = 2, 8
    layers = [np.zeros((heads, length, length)) for _ in range(3)]
    image = np.array([0, 1])
    layers[1][0, 4, :2] = [0.2, 0.6]  # query 4 (predicts a1)
    layers[1][0, 5, :2] = [0.4, 0.0]  # query 5 (predicts a2)
    layers[1][0, 6, :2] = [9.0, 9.0]  # the row of a2 itself must not be read
    maps = image_attention(layers, target_query_positions(LABELS, ACTION_MASK, "action", EOS), image)
    assert maps.shape == (3, heads, 2)
    assert maps[1, 0] == pytest.approx([0.3, 0.3])
    assert maps.sum() == pytest.approx(0.6)


def _maps() -> np.ndarray:
    """[2 layers, 2 heads, 4 patches] with image masses 0.4, 0.9, 0.1, 0.8."""
    return np.array([
        [[0.1, 0.1, 0.1, 0.1], [0.0, 0.8, 0.1, 0.0]],
        [[0.0, 0.0, 0.0, 0.1], [0.3, 0.2, 0.0, 0.3]],
    ])


def test_top_k_picks_the_heads_with_most_image_mass():
    assert top_k_heads(_maps(), 2) == [(0, 1), (1, 1)]
    assert top_k_heads(_maps(), 1) == [(0, 1)]
    assert len(top_k_heads(_maps(), 50)) == 4  # k is capped at layers × heads
    tied = np.ones((2, 2, 3))
    assert top_k_heads(tied, 3) == [(0, 0), (0, 1), (1, 0)]  # ties: lower layer, then head
    with pytest.raises(UsageError):
        top_k_heads(_maps(), 0)


def test_max_and_mean_fusion_then_min_max_normalisation():
    heads = top_k_heads(_maps(), 2)  # maps [0, .8, .1, 0] and [.3, .2, 0, .3]
    assert fuse(_maps(), heads, "max") == pytest.approx([0.3, 0.8, 0.1, 0.3])
    assert fuse(_maps(), heads, "mean") == pytest.approx([0.15, 0.5, 0.05, 0.15])
    assert normalise(fuse(_maps(), heads, "max")) == pytest.approx([2 / 7, 1, 0, 2 / 7])
    assert normalise(fuse(_maps(), heads, "mean")) == pytest.approx([1 / 4.5, 1, 0, 1 / 4.5])
    assert normalise(np.full(4, 0.25)).tolist() == [0, 0, 0, 0]  # no preferred patch: nothing highlighted
    with pytest.raises(UsageError, match="Unknown fusion"):
        fuse(_maps(), heads, "median")


def test_focus_is_the_share_of_the_top_tenth_of_patches():
    assert focus(np.full(100, 0.01)) == pytest.approx(0.1)  # uniform
    assert focus(np.r_[np.ones(10), np.zeros(90)]) == pytest.approx(1.0)
    assert focus(np.array([0.3, 0.8, 0.1, 0.3])) == pytest.approx(0.8 / 1.5)  # at least one patch
    assert focus(np.zeros(4)) == 0.0


def test_patch_index_maps_to_row_major_grid_and_upsamples_in_place():
    for index, cell in ((0, (0, 0)), (17, (1, 1)), (31, (1, 15)), (240, (15, 0)), (255, (15, 15))):
        one_hot = np.zeros(256)
        one_hot[index] = 1.0
        grid = patch_grid(one_hot)
        assert grid.shape == (16, 16) and grid[cell] == 1.0
    one_hot = np.zeros(256)
    one_hot[15] = 1.0  # top-right patch
    heat = upsample(patch_grid(one_hot), 224, 448)  # a wide frame: each patch covers 14 × 28 pixels
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert row < 14 and col >= 448 - 28
    with pytest.raises(ValueError, match="square"):
        patch_grid(np.zeros(10))


def test_fused_map_records_heads_and_image_share():
    amap = fused_map(_maps(), np.zeros((8, 8, 3), np.uint8), top_k=2, mode="max")
    assert amap.heads == [(0, 1), (1, 1)]
    assert amap.image_share == pytest.approx((0.9 + 0.8) / 2)
    assert amap.focus == pytest.approx(0.8 / 1.5)
    assert amap.grid == pytest.approx(np.array([[2 / 7, 1.0], [0.0, 2 / 7]]))
    assert amap.heat.shape == (8, 8)


# -- the tiny backbone ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from refine_core import Statistics
    from refine_core.registry import Registry

    registry = Registry(entry_points=False)
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    actions = np.random.default_rng(0).uniform(-0.05, 0.05, (40, 7))
    backbone.attach_codec(registry.build("codec", "bins", {}), Statistics.from_array(actions))
    return backbone


def _sample(reasoning: str | None = "<Observation>: the red block is left of the gripper"):
    from refine_core.backbone import TrainingSample

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return TrainingSample(images={"cam": frame}, primary_camera="cam",
                          instruction="put the red block in the bowl",
                          actions=rng.uniform(-0.05, 0.05, (1, 7)), reasoning=reasoning, key="ep0/3")


def test_image_positions_of_the_tiny_backbone_are_the_prompt_placeholders(tiny):
    batch = tiny.collate([_sample()])
    ids = batch["input_ids"][0]
    positions = image_positions(tiny, ids)
    assert tiny.num_image_tokens == 64
    assert positions.tolist() == list(range(64))
    assert set(ids[:64].tolist()) == {tiny.image_token_id}
    assert int(ids[64]) == tiny.tokenizer.bos_token_id  # the text starts right after the patches
    assert (ids[65:] != tiny.image_token_id).all()


def test_attention_map_of_the_tiny_model(tiny, tmp_path):
    from refine_core.report.attention_compare import AttentionComparison, AttentionRow
    from refine_core.report.plots import attention_figure

    sample = _sample()
    action = sample_attention(tiny, sample, "action", top_k=4, mode="max")
    reasoning = sample_attention(tiny, sample, "reasoning", top_k=4, mode="mean")
    for amap in (action, reasoning):
        assert amap.grid.shape == (8, 8) and amap.heat.shape == (48, 64)
        assert amap.grid.max() == pytest.approx(1.0) and amap.grid.min() == pytest.approx(0.0)
        assert 0.1 <= amap.focus < 1.0
        assert len(amap.heads) == 4 and 0 < amap.image_share <= 1.0 + 1e-6
    assert action.target_tokens == tiny.codec.span_length
    assert reasoning.target_tokens > action.target_tokens
    with pytest.raises(UsageError, match="no reasoning text"):
        sample_attention(tiny, _sample(reasoning=None), "reasoning")
    comparison = AttentionComparison(rows=[AttentionRow(key=sample.key, instruction=sample.instruction,
                                                        maps={"action tokens": action,
                                                              "reasoning tokens": reasoning})],
                                     target="action", top_k=4, fusion="max", checkpoint=tmp_path)
    png = attention_figure(comparison, tmp_path / "attention.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
