"""hf_vlm's Qwen-VL layouts (Qwen2.5-VL, Qwen3-VL) on their tiny presets: the chat-turn prompt with its
image block, parity with transformers' own Qwen-VL processors, training with text and bin actions,
generation with 3-D rotary positions, save/load, LoRA scope and model-type dispatch."""
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
from refine_plugins.hf_vlm.qwen_vl import fixed_side
from tiny_policies import action_statistics, overfit

REASONING = "<Observation>: red block. <Task Planning>: <logical_steps> <1> reach <sub_action> move left"
LM_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
# preset → (class, model_type, transformers processor, default system turn, ViT parts)
LAYOUTS = {
    "tiny-qwen2_5_vl": ("QwenVLBackbone", "qwen2_5_vl", "Qwen2_5_VLProcessor", True,
                        ["patch_embed", "blocks"]),
    "tiny-qwen3_vl": ("Qwen3VLBackbone", "qwen3_vl", "Qwen3VLProcessor", False,
                      ["patch_embed", "pos_embed", "blocks"]),
}


@pytest.fixture(scope="module")
def registry():
    return Registry(entry_points=False)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def preset(request):
    return request.param


def make_backbone(registry, preset, codec="bins", **codec_options):
    backbone = registry.build("backbone", "hf_vlm", {"preset": preset})
    return backbone.attach_codec(registry.build("codec", codec, codec_options), action_statistics())


@pytest.fixture(scope="module")
def backbone(registry, preset):
    return make_backbone(registry, preset)


def sample(seed=0, reasoning=REASONING, instruction="Put the red block on the blue plate"):
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.04, 0.04, size=(1, 7))
    actions[:, 6] = 1.0
    return TrainingSample(images={"cam": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)},
                          primary_camera="cam", instruction=instruction, actions=actions, reasoning=reasoning)


def processor_text(preset: str, instruction: str) -> str:
    """The chat template's output for one user turn (image, then text) with the generation prompt,
    written out by hand: the templates ship with the checkpoints, not with transformers."""
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if LAYOUTS[preset][3] else ""
    return (f"{system}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_tiny_qwen_builds_offline_with_named_parts(backbone, preset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = backbone.model.config
    assert (type(backbone).__name__, config.model_type) == LAYOUTS[preset][:2]
    assert [name for name, _ in backbone.blocks()] == [f"model.language_model.layers.{i}" for i in range(4)]
    visual = backbone.model.model.visual
    assert backbone.vision_modules() == [(f"model.visual.{part}", getattr(visual, part))
                                         for part in LAYOUTS[preset][4]]
    assert backbone.embedding_modules()[0][1] is backbone.model.model.language_model.embed_tokens
    assert sum(p.numel() for p in backbone.model.parameters()) < 500_000
    assert backbone.eos_id == backbone.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (backbone.image_size, backbone.num_image_tokens) == (64, 16)  # 8x8 patches merged 2x2


def test_fixed_side_follows_the_processors_pixel_limits():
    assert fixed_side(56 * 56, 28 * 28 * 1280, 28) == 224  # Qwen2.5-VL's released limits
    assert fixed_side(84 * 84, 84 * 84, 28) == 84  # a saved model's min = max comes back exactly
    assert fixed_side(56 * 56, 112 * 112, 28) == 112 and fixed_side(336 * 336, 10 ** 7, 28) == 336


def test_prompt_is_qwens_chat_turn_with_one_image_block(backbone, preset):
    prompt = backbone.prompt_ids("  Put the red block on the blue plate ")
    expected = processor_text(preset, "Put the red block on the blue plate")
    assert backbone.tokenizer.decode(prompt) == expected.replace("<|image_pad|>", "<|image_pad|>" * 16)
    start, end = (backbone.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    batch = backbone.collate([sample(0), sample(1, reasoning=None, instruction="lift the cup")])
    assert "token_type_ids" not in batch
    for row in range(2):
        ids = batch["input_ids"][row]
        first, last = int((ids == start).nonzero()), int((ids == end).nonzero())
        assert last - first - 1 == 16 and (ids[first + 1:last] == backbone.image_token_id).all()
        assert batch["mm_token_type_ids"][row].tolist() == (ids == backbone.image_token_id).long().tolist()
        supervised = (batch["labels"][row] != IGNORE).nonzero().flatten()
        assert supervised.min() > last  # the prompt (and the image) is never supervised
        assert int(batch["labels"][row, supervised.max()]) == backbone.eos_id  # the assistant turn ends
    assert batch["action_mask"].sum(1).tolist() == [8, 8]  # 7 bins + <|im_end|>
    assert batch["pixel_values"].shape == (2 * 64, 3 * 2 * 8 * 8)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 2
    # the image tokens' 3-D rotary positions reach the model: without the image marks every token
    # gets 1-D positions. The first image token sits at (p, p, p) either way; from the second on
    # (p, p, p + 1), not p + 1 on every axis, so the logits differ there and not before
    with torch.no_grad():
        placed = backbone.forward(batch)
        flat = backbone.forward({**batch, "mm_token_type_ids": torch.zeros_like(batch["mm_token_type_ids"])})
    second = int((batch["input_ids"][0] == backbone.image_token_id).nonzero()[1])
    assert not torch.allclose(placed[0, second], flat[0, second])
    assert torch.allclose(placed[0, :second], flat[0, :second])


def test_pixels_and_prompt_ids_match_transformers_qwen_vl_processor(backbone, preset):
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class Processor(getattr(transformers, LAYOUTS[preset][2])):
        # Qwen's video processor needs torchvision (absent here); images never reach it
        def check_argument_for_proper_class(self, name, argument):
            if name != "video_processor":
                return super().check_argument_for_proper_class(name, argument)

    images = Qwen2VLImageProcessorPil(min_pixels=64 * 64, max_pixels=64 * 64, patch_size=8, merge_size=2,
                                      temporal_patch_size=2, image_mean=backbone.image_mean,
                                      image_std=backbone.image_std)
    processor = Processor(image_processor=images, tokenizer=backbone.tokenizer, video_processor=None)
    rng = np.random.default_rng(7)
    for side, tolerance in ((64, 1e-5), (96, 0.02)):  # as is; resized (within one uint8 level of PIL's)
        frame = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        expected = processor(text=[processor_text(preset, "lift the cup")], images=[frame],
                             return_tensors="pt")
        mine = backbone.image_inputs([frame])
        assert expected["input_ids"][0].tolist() == backbone.prompt_ids("lift the cup")
        ids = torch.tensor([backbone.prompt_ids("lift the cup")])
        assert torch.equal(expected["mm_token_type_ids"], backbone.image_types(ids))
        assert torch.equal(expected["image_grid_thw"], mine["image_grid_thw"])
        assert expected["pixel_values"].shape == mine["pixel_values"].shape == (64, 384)
        assert torch.allclose(expected["pixel_values"], mine["pixel_values"], atol=tolerance)


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
def test_a_few_training_steps_lower_the_loss(registry, preset, codec, options):
    backbone = make_backbone(registry, preset, codec, **options)
    losses = train(backbone, [sample(0), sample(1)], 10)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_predict_with_bins_decodes_actions(backbone):
    s = sample(2)
    prediction = backbone.predict(s.image, s.instruction, reasoning=False)
    assert prediction.error is None and prediction.actions.shape == (1, 7)


def test_text_codec_overfit_then_predict_parses_the_generated_text(registry, preset):
    backbone = make_backbone(registry, preset, "text", dims=[0, 1, 2, 6], decimals=2)
    s = sample(0)
    overfit(backbone, backbone.collate([s]), lr=1e-2, max_steps=200)
    prediction = backbone.predict(s.image, s.instruction, reasoning=True, max_new_tokens=80)
    assert prediction.error is None and not prediction.forced, prediction
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
    # each greedy token is the argmax of a full forward (3-D positions recomputed from scratch) over
    # prompt + prefix + tokens so far
    prompt, new = backbone.prompt_ids(instructions[1]) + prefixes[1], single[1]
    images = backbone.image_inputs([frames[1]])
    model = backbone.model.eval()
    with torch.no_grad():
        for step in range(len(new)):
            ids = torch.tensor([prompt + new[:step]])
            logits = model(input_ids=ids, mm_token_type_ids=backbone.image_types(ids), **images).logits
            assert int(logits[0, -1].argmax()) == new[step]
    constrained = backbone.generate_ids(frames[0], instructions[0], 3, allowed=lambda i: [200, 201])
    assert len(constrained) == 3 and set(constrained) <= {200, 201}


def test_save_and_load_round_trip_gives_identical_logits(backbone, preset, registry, tmp_path):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    backbone.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == LAYOUTS[preset][1]
    loaded = registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    assert type(loaded).__name__ == LAYOUTS[preset][0]
    assert (loaded.image_size, loaded.image_mean, loaded.image_std) == (64, backbone.image_mean,
                                                                        backbone.image_std)
    loaded.attach_codec(registry.build("codec", "bins", {}), backbone.codec.stats)
    assert loaded.prompt_ids("lift the cup") == backbone.prompt_ids("lift the cup")
    batch = backbone.collate([sample(3)])
    backbone.model.eval()
    with torch.no_grad():
        assert torch.equal(backbone.forward(batch), loaded.forward(batch))
    # transformers reads the saved preprocessor_config.json into the same pixels
    frame = sample(4).image
    pixels = Qwen2VLImageProcessorPil.from_pretrained(tmp_path)(images=[frame[:, :48]], return_tensors="pt")
    assert torch.allclose(pixels["pixel_values"], loaded.image_inputs([frame[:, :48]])["pixel_values"],
                          atol=0.02)


def test_lora_adapts_only_language_model_linears_and_keeps_base_weights(registry, preset):
    from refine_core.training.lora import apply_lora

    backbone = make_backbone(registry, preset)
    if preset == "tiny-qwen2_5_vl":  # its ViT's MLPs carry the LM's names: the scope keeps LoRA off them
        assert any(n.startswith("model.visual.blocks.") and n.endswith(".gate_proj")
                   for n, _ in backbone.model.named_modules())
    base = {name: p.detach().clone() for name, p in backbone.model.named_parameters()}
    names = apply_lora(backbone, LoraSettings(r=4, init="gaussian"))
    assert len(names) == 4 * len(LM_LINEARS)
    assert all(n.startswith("model.language_model.layers.") and n.split(".")[-1] in LM_LINEARS for n in names)
    assert not any(".lora_" in n for n, _ in backbone.model.model.visual.named_parameters())
    train(backbone, [sample(0)], 1)
    after = dict(backbone.model.named_parameters())
    for name, value in base.items():  # peft keeps the wrapped weight (and bias) under base_layer
        key = name if name in after else name.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")
        assert torch.equal(after[key], value), name
    assert any(not torch.equal(p, 0 * p) for n, p in after.items() if ".lora_B." in n)


def test_unknown_model_type_is_one_line_naming_the_supported_ones(registry, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UsageError) as error:
        registry.build("backbone", "hf_vlm", {"path": str(tmp_path)})
    message = str(error.value)
    assert "\n" not in message and "paligemma, gemma3, qwen2_5_vl, qwen3_vl" in message
    assert "model_type 'llama'" in message
    with pytest.raises(UsageError, match="decodes with transformers' generate only"):
        registry.build("backbone", "hf_vlm", {"preset": "tiny-qwen2_5_vl", "decoder": "static"})
