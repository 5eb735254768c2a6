"""The generic HF VLM backbone (PaliGemma layout) on its tiny preset: batches, loss, save/load,
generation and the codec wiring."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refine_core import Statistics
from refine_core.backbone import TrainingSample
from refine_core.data.collate import IGNORE
from refine_core.errors import UsageError
from refine_core.loss import reasoning_aware_loss
from refine_core.registry import Registry

from tiny_policies import overfit

REASONING = ("<Observation>: a red block left of a blue plate. <Situation Analysis>: gripper open. "
             "<Spatial Reasoning>: block is left. <Task Planning>: <logical_steps> <1> reach the block "
             "<sub_action> move left")


@pytest.fixture(scope="module")
def registry():
    return Registry(entry_points=False)


@pytest.fixture(scope="module")
def stats():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.05, 0.05, size=(200, 7))
    actions[:, 6] = rng.integers(0, 2, 200)
    return Statistics.from_array(actions)


def make_backbone(registry, stats, codec="bins", **codec_options):
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    return backbone.attach_codec(registry.build("codec", codec, codec_options), stats)


@pytest.fixture(scope="module")
def backbone(registry, stats):
    return make_backbone(registry, stats)


def sample(seed=0, reasoning=REASONING, chunk=1):
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.04, 0.04, size=(chunk, 7))
    actions[:, 6] = 1.0
    return TrainingSample(images={"cam": rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)},
                          primary_camera="cam",
                          instruction="Put the red block on the blue plate", actions=actions,
                          reasoning=reasoning)


def test_tiny_preset_is_a_paligemma_with_named_parts(backbone):
    assert backbone.model.config.model_type == "paligemma"
    assert [name for name, _ in backbone.blocks()] == [f"model.language_model.layers.{i}" for i in range(4)]
    assert backbone.vision_modules()[0][1] is backbone.model.model.vision_tower
    assert backbone.num_image_tokens == 64  # 224 / 28 = 8 x 8 patches
    assert len(backbone.tokenizer) <= 10_000


def test_tiny_tokenizer_is_deterministic_and_bins_use_reserved_ids(backbone, registry, stats):
    again = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    assert again.tokenizer.get_vocab() == backbone.tokenizer.get_vocab()
    ids = backbone.codec.action_token_ids
    tokens = backbone.tokenizer.convert_ids_to_tokens(ids.tolist())
    assert all(t.startswith("<unused") for t in tokens)  # action bins never collide with words


def test_batch_layout(backbone):
    batch = backbone.collate([sample(0), sample(1, reasoning=None)])
    ids, labels = batch["input_ids"], batch["labels"]
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    for row in range(2):
        image = backbone.image_token_positions(ids[row])
        assert image.tolist() == list(range(64))  # image placeholders lead the prompt
        assert ids[row, 64].item() == backbone.tokenizer.bos_token_id
        supervised = labels[row] != IGNORE
        assert (batch["token_type_ids"][row][supervised] == 1).all()
    # 7 bins + eos are action positions in each row; the row without reasoning has nothing else
    assert batch["action_mask"].sum(1).tolist() == [8, 8]
    assert int((labels[1] != IGNORE).sum()) == 8
    assert int((labels[0] != IGNORE).sum()) > 8


def test_forward_and_loss_train_the_unfrozen_parts(backbone):
    batch = backbone.collate([sample(0), sample(1)])
    backbone.model.zero_grad()
    out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 0.3)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.num_action_tokens == 16
    assert backbone.blocks()[-1][1].mlp.down_proj.weight.grad.abs().sum() > 0
    backbone.model.zero_grad()


def test_save_and_load_round_trip(backbone, registry, tmp_path):
    backbone.save(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["size"]["height"] == 224
    loaded = registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    loaded.attach_codec(registry.build("codec", "bins", {}), backbone.codec.stats)
    batch = backbone.collate([sample(3)])
    with torch.no_grad():
        assert torch.allclose(backbone.forward(batch), loaded.forward(batch), atol=1e-5)


def test_bad_paths_fail_with_one_line(registry, tmp_path):
    with pytest.raises(UsageError, match="has no config.json"):
        registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError, match="model_type 'llama'"):
        registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    with pytest.raises(UsageError, match="backbone.path=DIR_OR_HUB_ID or backbone.preset=tiny"):
        registry.build("backbone", "hf_vlm", {"preset": None})


def test_text_codec_generation_is_split_at_the_action_text(registry, stats):
    backbone = make_backbone(registry, stats, codec="text", dims=[0, 1, 2, 6])
    s = sample(0)
    reasoning_ids = backbone.reasoning_ids(REASONING)
    action_ids = backbone.codec.encode(s.actions[0])
    reasoning, actions = backbone.split_generated(reasoning_ids + action_ids)
    assert reasoning == reasoning_ids and actions == action_ids
    decoded = backbone.codec.decode(actions)
    assert np.allclose(decoded[0, [0, 1, 2, 6]], s.actions[0, [0, 1, 2, 6]], atol=2e-3 * 0.1 + 1e-3)


def test_overfit_one_sample_then_generate_reasoning_and_action(registry, stats):
    """The whole path works: a few steps on one sample, then greedy generation reproduces it."""
    backbone = make_backbone(registry, stats)
    s = sample(0, reasoning="<Observation>: red block. <Task Planning>: <logical_steps> <1> reach "
                            "<sub_action> move left")
    overfit(backbone, backbone.collate([s]), lr=5e-3, max_steps=300)
    prediction = backbone.predict(s.image, s.instruction, reasoning=True, max_new_tokens=64)
    assert prediction.error is None, prediction
    assert (
        prediction.reasoning
        == "<Observation>: red block. <Task Planning>: <logical_steps> <1> reach <sub_action> move left"
    )
    half_bin = (stats.q99 - stats.q01)[:6] / 256
    assert np.all(np.abs(prediction.actions[0, :6] - s.actions[0, :6]) <= half_bin + 1e-6)
    assert prediction.actions[0, 6] == 1.0


def test_sdpa_on_a_gemma2_model_is_refused_with_one_line(registry):
    from refine_core.errors import UsageError

    with pytest.raises(UsageError, match="runs eager attention only"):
        registry.build("backbone", "hf_vlm", {"preset": "tiny", "attn_implementation": "sdpa"})


@pytest.mark.parametrize("prefix", [[], [100, 101, 102]])
def test_static_cache_decoding_equals_transformers_generate_and_full_recomputation(registry, prefix):
    """The static cache (the CUDA-graph decoder's, eager on the CPU) gives transformers' generate ids,
    and each step's token is the argmax of a full forward pass over prompt + generated tokens."""
    frame = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    dynamic, static = [registry.build("backbone", "hf_vlm", {"preset": "tiny",
                                                             "decoder": d}) for d in ("dynamic", "static")]
    new = static.generate_ids(frame, "put the cup on the plate", 10, prefix_ids=prefix)
    assert new == dynamic.generate_ids(frame, "put the cup on the plate", 10, prefix_ids=prefix)
    prompt = static.prompt_ids("put the cup on the plate")
    pixels = static.image_inputs([frame])["pixel_values"]
    model = static.model.eval()
    with torch.no_grad():
        for step in range(len(new)):
            suffix = prefix + new[:step]
            ids = torch.tensor([prompt + suffix])
            types = torch.tensor([[0] * len(prompt) + [1] * len(suffix)])
            logits = model(input_ids=ids, pixel_values=pixels, token_type_ids=types).logits[0, -1]
            assert int(logits.argmax()) == new[step]
    constrained = static.generate_ids(frame, "put the cup on the plate", 4, allowed=lambda i: [200, 201])
    assert len(constrained) == 4 and set(constrained) <= {200, 201}
