"""refine_core.toolkit.decoding: which cache layout a static decoder builds, and when a kept one is stale."""
from __future__ import annotations

import pytest
import torch


def test_sliding_window_layers_are_cached_as_full_layers_within_the_window():
    from transformers import Gemma2Config, LlamaConfig

    from refine_core.toolkit.decoding import full_attention_config

    gemma = Gemma2Config(num_hidden_layers=4, sliding_window=1024)
    assert "sliding_attention" in gemma.layer_types
    full = full_attention_config(gemma, 1024)
    assert full.layer_types == ["full_attention"] * 4
    assert "sliding_attention" in gemma.layer_types  # the model's own config is left alone
    with pytest.raises(ValueError, match="exceeds the sliding window"):
        full_attention_config(gemma, 1280)
    llama = LlamaConfig(num_hidden_layers=2)
    assert full_attention_config(llama, 8192) is llama


def test_weights_fingerprint_follows_replaced_storage_not_in_place_updates():
    from refine_core.toolkit.decoding import weights_fingerprint

    model = torch.nn.Linear(4, 4)
    before = weights_fingerprint(model)
    with torch.no_grad():
        model.weight.mul_(2)  # an optimizer step
    assert weights_fingerprint(model) == before
    model.weight.data = model.weight.data.float().clone()  # the trainer's fp32 master copy
    assert weights_fingerprint(model) != before
    moved = weights_fingerprint(model)
    model.to(torch.float64)
    assert weights_fingerprint(model) != moved


def test_the_decoder_choice():
    from transformers import Gemma2Config, LlamaConfig

    from refine_core.toolkit.decoding import choose_decoder

    llama, gemma = LlamaConfig(num_hidden_layers=2), Gemma2Config(num_hidden_layers=2, sliding_window=1024)
    assert choose_decoder("auto", True, llama, 300) == "graph"
    assert choose_decoder(None, False, llama, 300) == "dynamic"
    assert choose_decoder("static", False, llama, 100_000) == "static"  # no window: any length
    assert choose_decoder("graph", True, gemma, 1024) == "graph"
    assert choose_decoder("graph", True, gemma, 1025) == "dynamic"  # the cache would outgrow the window
