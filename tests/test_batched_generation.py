"""Batched generation on the tiny presets: `generate_ids_batch` over left-padded rows (prompts and
prefixes of different lengths) gives every row what it gets alone, free, under the codec's action
constraint and with a guard that stops one row early; the batch takes one forward per new token;
OpenVLA's and SpatialVLA's padded rows keep their single-row logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from refine_core import left_padded
from refine_core.registry import Registry
from tiny_policies import action_statistics, tiny_backbone

BACKBONES = ("openvla", "spatialvla", "hf_vlm")
CODECS = {"openvla": "bins", "spatialvla": "spatial", "hf_vlm": "bins"}
INSTRUCTIONS = ["open the drawer", "put the red block on the blue plate and then close the lid",
                "pick up the cup"]
PREFIXES = [[], [100, 101, 102], [200, 201, 202, 203, 204, 205, 206]]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def stats():
    return action_statistics()


@pytest.fixture(scope="module")
def backbones():
    return {name: tiny_backbone(name, CODECS[name]) for name in BACKBONES}


def frames(n=3):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def one_by_one(backbone, max_new_tokens, allowed=None, prefixes=PREFIXES, instructions=INSTRUCTIONS):
    return [backbone.generate_ids(frame, text, max_new_tokens, prefix_ids=prefix, allowed=allowed)
            for frame, text, prefix in zip(frames(), instructions, prefixes)]


@pytest.mark.parametrize("name", BACKBONES)
def test_padded_rows_equal_their_single_row_generation(backbones, name):
    backbone = backbones[name]
    batched = backbone.generate_ids_batch(frames(), INSTRUCTIONS, NEW_TOKENS, PREFIXES)
    assert batched == one_by_one(backbone, NEW_TOKENS)


@pytest.mark.parametrize("name", BACKBONES)
def test_constrained_rows_equal_their_single_row_generation(backbones, name):
    backbone = backbones[name]
    allowed = backbone.action_constraint()
    span = backbone.codec.span_length
    batched = backbone.generate_ids_batch(frames(), INSTRUCTIONS, span, PREFIXES, allowed=allowed)
    assert batched == one_by_one(backbone, span, allowed)
    assert all(len(row) == span and backbone.decodes(row) for row in batched)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_stopped_row_ends_while_the_others_continue(backbones, name):
    backbone = backbones[name]
    # under the action constraint no row can end at eos by itself, so row 1 is cut by the guard only
    allowed = backbone.action_constraint()
    span = backbone.codec.span_length
    free = one_by_one(backbone, span, allowed)
    guarded = backbone.generate_ids_batch(frames(), INSTRUCTIONS, span, PREFIXES, allowed=allowed,
                                          stop=lambda row, ids: row == 1 and len(ids) >= 2)
    assert guarded == [free[0], free[1][:2], free[2]]


@pytest.mark.parametrize("name", BACKBONES)
def test_the_batch_takes_one_language_model_forward_per_new_token(backbones, name):
    """A loop over rows would run the language model once per row and token, each on one row."""
    backbone = backbones[name]
    language_model = {"openvla": lambda m: m.language_model, "spatialvla": lambda m: m.language_model,
                      "hf_vlm": lambda m: m.model.language_model}[name](backbone.model)
    sizes = []
    handle = language_model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(next(v for v in (*args, *kwargs.values())
                                                       if isinstance(v, torch.Tensor)).shape[0]),
        with_kwargs=True)
    try:
        span = backbone.codec.span_length  # constrained: no row stops early
        backbone.generate_ids_batch(frames(), INSTRUCTIONS, span, PREFIXES,
                                    allowed=backbone.action_constraint())
    finally:
        handle.remove()
    assert sizes == [3] * span


@pytest.mark.parametrize("name", ["openvla", "spatialvla"])
def test_unpadded_rows_keep_the_static_decoder(backbones, stats, name):
    """Rows of one length are not padded: they take the static cache (the CUDA-graph decoder's, eager
    here) as a batch; padded rows fall back to the dynamic cache and agree with it."""
    registry = Registry(entry_points=False)
    backbone = registry.build("backbone", name, {"preset": "tiny", "dtype": "float32", "decoder": "static"})
    backbone.attach_codec(registry.build("codec", CODECS[name], {}), stats)
    same = [INSTRUCTIONS[0]] * 3
    prefixes = [[100, 101], [102, 103], [104, 105]]
    batched = backbone.generate_ids_batch(frames(), same, NEW_TOKENS, prefixes)
    assert backbone.model._static_decoder.batch == 3
    assert batched == one_by_one(backbone, NEW_TOKENS, prefixes=prefixes, instructions=same)
    padded = backbone.generate_ids_batch(frames(), INSTRUCTIONS, NEW_TOKENS, PREFIXES)
    assert padded == backbones[name].generate_ids_batch(frames(), INSTRUCTIONS, NEW_TOKENS, PREFIXES)


def model_inputs(backbone, name):
    prompts = [backbone.prompt_ids(text) for text in INSTRUCTIONS]
    rows = [p + s for p, s in zip(prompts, PREFIXES)]
    ids, mask = left_padded(rows, backbone.pad_id)
    pixels = backbone.image_inputs(frames())
    if name == "openvla":
        def generate(ids, mask, index):
            return backbone.model.generate(ids, pixels["pixel_values"][index], NEW_TOKENS,
                                           attention_mask=mask, return_scores=True, decoder="dynamic")
    else:
        types = left_padded([[0] * len(p) + [1] * len(s) for p, s in zip(prompts, PREFIXES)], 0)[0]

        def generate(ids, mask, index):
            return backbone.model.generate(ids, pixels["pixel_values"][index], pixels["intrinsic"][index],
                                           NEW_TOKENS, token_type_ids=types[index, -ids.shape[1]:],
                                           attention_mask=mask, return_scores=True, decoder="dynamic")
    return rows, ids, mask, generate


@pytest.mark.parametrize("name", ["openvla", "spatialvla"])
def test_padded_rows_keep_their_single_row_logits(backbones, name):
    backbone = backbones[name]
    rows, ids, mask, generate = model_inputs(backbone, name)
    assert not bool(mask.all())
    batch_ids, batch_scores = generate(ids, mask, slice(None))
    for row, tokens in enumerate(rows):
        alone_ids, alone_scores = generate(torch.tensor([tokens]), None, slice(row, row + 1))
        assert torch.equal(batch_ids[row], alone_ids[0])
        torch.testing.assert_close(batch_scores[row], alone_scores[0], atol=1e-5, rtol=0)
