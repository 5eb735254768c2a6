"""hf_vlm's Gemma-3 layout on its tiny preset: the chat-turn prompt with its image block, training
with text and bin actions, generation, save/load, LoRA scope and model-type dispatch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from refine_core.backbone import TrainingSample
from refine_core.config import LoraSettings
from refine_core.data.collate import IGNORE
from refine_core.errors import UsageError
from refine_core.loss import reasoning_aware_loss
from refine_core.registry import Registry
from tiny_policies import action_statistics, overfit

REASONING = "<Observation>: red block. <Task Planning>: <logical_steps> <1> reach <sub_action> move left"


@pytest.fixture(scope="module")
def registry():
    return Registry(entry_points=False)


def make_backbone(registry, codec="bins", **codec_options):
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny-gemma3"})
    return backbone.attach_codec(registry.build("codec", codec, codec_options), action_statistics())


@pytest.fixture(scope="module")
def backbone(registry):
    return make_backbone(registry)


def sample(seed=0, reasoning=REASONING, instruction="Put the red block on the blue plate"):
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.04, 0.04, size=(1, 7))
    actions[:, 6] = 1.0
    return TrainingSample(images={"cam": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)},
                          primary_camera="cam", instruction=instruction, actions=actions, reasoning=reasoning)


def test_tiny_gemma3_builds_offline_with_named_parts(backbone, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = backbone.model.config
    assert type(backbone).__name__ == "Gemma3Backbone" and config.model_type == "gemma3"
    assert set(config.text_config.layer_types) == {"sliding_attention", "full_attention"}
    assert [name for name, _ in backbone.blocks()] == [f"model.language_model.layers.{i}" for i in range(4)]
    assert backbone.vision_modules()[0][1] is backbone.model.model.vision_tower
    assert sum(p.numel() for p in backbone.model.parameters()) < 500_000
    assert backbone.eos_id == backbone.tokenizer.convert_tokens_to_ids("<end_of_turn>")


def test_prompt_is_gemma3s_chat_turn_with_one_image_block(backbone):
    tokens = backbone.model.config.mm_tokens_per_image
    prompt = backbone.prompt_ids("  Put the red block on the blue plate ")
    assert backbone.tokenizer.decode(prompt) == (
        "<bos><start_of_turn>user\n\n\n<start_of_image>" + "<image_soft_token>" * tokens
        + "<end_of_image>\n\nPut the red block on the blue plate<end_of_turn>\n<start_of_turn>model\n")
    batch = backbone.collate([sample(0), sample(1, reasoning=None, instruction="lift the cup")])
    for row in range(2):
        ids = batch["input_ids"][row]
        boi = int((ids == backbone.boi_id).nonzero())
        eoi = int((ids == backbone.eoi_id).nonzero())
        assert eoi - boi - 1 == tokens
        assert (ids[boi + 1:eoi] == backbone.image_token_id).all()
        # Gemma-3's token types: exactly the image soft tokens (padding and text are 0)
        assert batch["token_type_ids"][row].tolist() == (ids == backbone.image_token_id).long().tolist()
        supervised = (batch["labels"][row] != IGNORE).nonzero().flatten()
        assert supervised.min() > eoi  # the prompt (and the image) is never supervised
        assert int(batch["labels"][row, supervised.max()]) == backbone.eos_id  # the model turn ends
    assert batch["action_mask"].sum(1).tolist() == [8, 8]  # 7 bins + <end_of_turn>
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    # the token types reach the model: image tokens see the whole image block, not a causal prefix
    with torch.no_grad():
        image = backbone.forward(batch)
        causal = backbone.forward({**batch, "token_type_ids": torch.zeros_like(batch["token_type_ids"])})
    first = int((batch["input_ids"][0] == backbone.image_token_id).nonzero()[0])
    assert not torch.allclose(image[0, first], causal[0, first])
    assert torch.allclose(image[0, :first], causal[0, :first])


def train(backbone, samples, steps, lr=3e-3):
    optimizer = torch.optim.Adam([p for p in backbone.model.parameters() if p.requires_grad], lr=lr)
    batch = backbone.collate(samples)
    losses = []
    for _ in range(steps):
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("codec,options", [("bins", {}), ("text", {"dims": [0, 1, 2, 6]})])
def test_a_few_training_steps_lower_the_loss(registry, codec, options):
    backbone = make_backbone(registry, codec, **options)
    losses = train(backbone, [sample(0), sample(1)], 8)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_predict_with_bins_decodes_actions(backbone):
    s = sample(2)
    prediction = backbone.predict(s.image, s.instruction, reasoning=False)
    assert prediction.error is None and prediction.actions.shape == (1, 7)


def test_text_codec_overfit_then_predict_parses_the_generated_text(registry):
    backbone = make_backbone(registry, "text", dims=[0, 1, 2, 6], decimals=2)
    s = sample(0)
    overfit(backbone, backbone.collate([s]), lr=1e-2, max_steps=200)
    prediction = backbone.predict(s.image, s.instruction, reasoning=True, max_new_tokens=80)
    assert prediction.error is None, prediction
    assert prediction.reasoning == REASONING
    expected = backbone.codec.decode(backbone.codec.encode(s.actions[0]))
    assert np.allclose(prediction.actions, expected)


def test_batched_generation_equals_single_rows_and_full_recomputation(backbone):
    frames = [sample(seed).image for seed in (3, 4, 5)]
    instructions = ["put the cup on the plate", "lift the red block", "open the top drawer of the cabinet"]
    prefixes = [[], [300, 301], []]
    batched = backbone.generate_ids_batch(frames, instructions, 6, prefixes)
    single = [backbone.generate_ids(f, i, 6, prefix_ids=p) for f, i, p in zip(frames, instructions, prefixes)]
    assert batched == single
    # each greedy token is the argmax of a full forward over prompt + prefix + tokens so far
    prompt, new = backbone.prompt_ids(instructions[1]) + prefixes[1], single[1]
    pixels = backbone.image_inputs([frames[1]])["pixel_values"]
    model = backbone.model.eval()
    with torch.no_grad():
        for step in range(len(new)):
            ids = torch.tensor([prompt + new[:step]])
            types = backbone.image_types(ids)
            logits = model(input_ids=ids, pixel_values=pixels, token_type_ids=types).logits
            assert int(logits[0, -1].argmax()) == new[step]
    constrained = backbone.generate_ids(frames[0], instructions[0], 3, allowed=lambda i: [200, 201])
    assert len(constrained) == 3 and set(constrained) <= {200, 201}


def test_save_and_load_round_trip_gives_identical_logits(backbone, registry, tmp_path):
    backbone.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gemma3"
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["size"]["height"] == 64
    loaded = registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    assert type(loaded).__name__ == "Gemma3Backbone"
    loaded.attach_codec(registry.build("codec", "bins", {}), backbone.codec.stats)
    assert loaded.prompt_ids("lift the cup") == backbone.prompt_ids("lift the cup")
    batch = backbone.collate([sample(3)])
    backbone.model.eval()
    with torch.no_grad():
        assert torch.equal(backbone.forward(batch), loaded.forward(batch))


def test_lora_adapts_only_language_model_linears_and_keeps_base_weights(registry):
    from refine_core.training.lora import apply_lora

    backbone = make_backbone(registry)
    base = {name: p.detach().clone() for name, p in backbone.model.named_parameters()}
    names = apply_lora(backbone, LoraSettings(r=4, init="gaussian"))
    suffixes = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(names) == 4 * len(suffixes)
    assert all(n.startswith("model.language_model.layers.") and n.split(".")[-1] in suffixes for n in names)
    train(backbone, [sample(0)], 1)
    after = dict(backbone.model.named_parameters())
    for name, value in base.items():  # peft keeps the wrapped weight under base_layer
        key = name if name in after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], value), name
    assert any(not torch.equal(p, 0 * p) for n, p in after.items() if ".lora_B." in n)


def test_unknown_model_type_is_one_line_naming_the_supported_ones(registry, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError) as error:
        registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    message = str(error.value)
    assert "\n" not in message and "paligemma, gemma3" in message and "model_type 'llama'" in message
    with pytest.raises(UsageError, match="decodes with transformers' generate only"):
        registry.build("backbone", "hf_vlm", {"preset": "tiny-gemma3", "decoder": "static"})
