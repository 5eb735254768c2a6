"""OpenVLA: our implementation against the upstream tiny checkpoint (strict load, logits,
intermediates, greedy generation), the full-size key/parameter census on the meta device, and
save/load round trips in the upstream layout."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import OPENVLA_FIXTURE as FIXTURE, require_fixture

ATOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    require_fixture(FIXTURE)
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "reference_io.safetensors"))


@pytest.fixture(scope="module")
def upstream(reference):
    from refine_plugins.openvla.model import OpenVLAForActionPrediction

    return OpenVLAForActionPrediction.from_pretrained(FIXTURE, attn_implementation="eager")


def test_config_reads_every_upstream_field_and_writes_it_back():
    require_fixture(FIXTURE)
    from refine_plugins.openvla.config import OpenVLAConfig

    raw = json.loads((FIXTURE / "config.json").read_text())
    config = OpenVLAConfig.from_dict(raw)
    assert config.extra == {}  # every serialised field is a declared one
    assert config.to_dict() == raw
    llama = config.llama_config()
    # pinned transformers-4.40.1 LlamaConfig defaults the minimal text_config relies on
    assert (llama.rms_norm_eps, llama.max_position_embeddings,
            llama.tie_word_embeddings) == (1e-6, 2048, False)
    assert (llama.hidden_size, llama.num_hidden_layers, llama.vocab_size,
            llama.pad_token_id) == (64, 2, 32064, 32000)


def test_full_config_on_meta_matches_the_official_census():
    from refine_plugins.openvla.config import OpenVLAConfig
    from refine_plugins.openvla.model import OpenVLAForActionPrediction

    with torch.device("meta"):
        model = OpenVLAForActionPrediction(OpenVLAConfig())
    state = model.state_dict()
    assert len(state) == 982
    assert sum(t.numel() for t in state.values()) == 7_541_237_184
    assert state["projector.fc1.weight"].shape == (8704, 2176)
    assert state["projector.fc2.weight"].shape == (4096, 8704)
    assert state["language_model.lm_head.weight"].shape == (32064, 4096)
    assert "vision_backbone.featurizer.blocks.23.ls2.scale_factor" in state
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in state


def test_upstream_checkpoint_loads_strictly_with_its_key_names(upstream):
    from safetensors import safe_open

    with safe_open(str(FIXTURE / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert set(upstream.state_dict()) == keys and len(keys) == 130
    assert sum(p.numel() for p in upstream.parameters()) == 4_451_276


def test_intermediates_match_upstream(upstream, reference):
    with torch.no_grad():
        patches = upstream.vision_backbone(reference["pixel_values"])
        projected = upstream.projector(patches)
        out = upstream(reference["input_ids"], reference["pixel_values"],
                       attention_mask=reference["attention_mask"],
                       output_hidden_states=True)
    torch.testing.assert_close(patches, reference["patch_features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(projected, reference["projector_features"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1], reference["llm_last_hidden_state"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_upstream(upstream, reference, attn):
    from refine_plugins.openvla.model import OpenVLAForActionPrediction

    model = upstream if attn == "eager" else OpenVLAForActionPrediction.from_pretrained(FIXTURE,
                                                                                        attn_implementation=attn)
    with torch.no_grad():
        logits = model(reference["input_ids"], reference["pixel_values"],
                       attention_mask=reference["attention_mask"]).logits
    assert logits.shape == (1, 6 + 256, 32064)  # patches inserted after BOS
    torch.testing.assert_close(logits[:, -6:], reference["logits_last6"], atol=ATOL, rtol=0)
    positions = reference["logits_every16_positions"]
    torch.testing.assert_close(logits[:, positions], reference["logits_every16"], atol=ATOL, rtol=0)
    assert torch.equal(logits.argmax(-1), reference["logits_argmax"])
    sums = logits.double().sum(-1)
    torch.testing.assert_close(sums, reference["logits_sum_per_pos_f64"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("decoder", ["dynamic", "static"])
def test_cached_greedy_generation_matches_upstream(upstream, reference, decoder):
    ids, scores = upstream.generate(reference["input_ids"], reference["pixel_values"], max_new_tokens=7,
                                    return_scores=True, decoder=decoder)
    assert torch.equal(ids, reference["generated_ids"])
    torch.testing.assert_close(scores, reference["generated_scores"], atol=ATOL, rtol=0)


def test_cached_generation_equals_full_recomputation(upstream, reference):
    """Cache positions count the 256 patch tokens: each cached step equals a full forward pass."""
    ids = upstream.generate(reference["input_ids"], reference["pixel_values"], max_new_tokens=4)
    prompt = reference["input_ids"]
    with torch.no_grad():
        for step in range(4):
            logits = upstream(torch.cat([prompt, ids[:, :step]], dim=1), reference["pixel_values"]).logits
            assert int(logits[0, -1].argmax()) == int(ids[0, step])


def test_static_decoder_is_kept_while_it_fits_and_rebuilt_when_the_model_changes(registry):
    import numpy as np

    from refine_core.toolkit.decoding import CACHE_BUCKET

    backbone = registry.build("backbone", "openvla", {"preset": "tiny", "decoder": "static"})
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    free = backbone.generate_ids(frame, "open the drawer", 20)
    decoder = backbone.model._static_decoder
    assert decoder.cache_len % CACHE_BUCKET == 0 and decoder.graph is None  # no CUDA graph on the CPU
    # an allowed-ids constraint is applied per new token, as with the dynamic cache
    allowed = [31800, 31801]
    assert set(backbone.generate_ids(frame, "open the drawer", 5, allowed=lambda i: allowed)) <= set(allowed)
    assert backbone.model._static_decoder is decoder  # same batch, fits: reused
    assert backbone.generate_ids(frame, "open the drawer", 20) == free  # the reset cache holds no stale steps
    backbone.generate_ids(frame, "open the drawer", decoder.cache_len)  # longer than the cache: rebuilt
    assert backbone.model._static_decoder is not decoder
    longer = backbone.model._static_decoder
    backbone.model.to(torch.float64)  # weights replaced: a kept cache/graph would point at the old ones
    backbone.generate_ids(frame, "open the drawer", 5)
    assert backbone.model._static_decoder is not longer


def test_save_writes_upstream_names_and_reloads_identically(upstream, reference, tmp_path):
    from safetensors import safe_open

    from refine_plugins.openvla.model import OpenVLAForActionPrediction

    upstream.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f, \
            safe_open(str(FIXTURE / "model.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys())
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in g.keys())
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        (FIXTURE / "config.json").read_text()
    )

    upstream.save_pretrained(tmp_path / "sharded", max_shard_bytes=2_000_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = OpenVLAForActionPrediction.from_pretrained(tmp_path / "sharded", attn_implementation="eager")
    with torch.no_grad():
        logits = reloaded(reference["input_ids"], reference["pixel_values"]).logits
    torch.testing.assert_close(logits[:, -6:], reference["logits_last6"], atol=ATOL, rtol=0)


def test_timm_style_layerscale_names_load(upstream, tmp_path):
    """A checkpoint exported with timm's LayerScale name (`gamma`) loads into `scale_factor`."""
    from safetensors.torch import load_file, save_file

    from refine_plugins.openvla.model import OpenVLAForActionPrediction

    state = load_file(str(FIXTURE / "model.safetensors"))
    renamed = {k.replace(".scale_factor", ".gamma"): v for k, v in state.items()}
    assert any(k.endswith("ls1.gamma") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
    model = OpenVLAForActionPrediction.from_pretrained(tmp_path)
    assert torch.equal(model.vision_backbone.featurizer.blocks[0].ls1.scale_factor,
                       state["vision_backbone.featurizer.blocks.0.ls1.scale_factor"])


def test_unsupported_configs_are_refused():
    from refine_plugins.openvla.config import OpenVLAConfig

    with pytest.raises(ValueError, match="model_type"):
        OpenVLAConfig(model_type="prismatic")
    with pytest.raises(ValueError, match="unsupported vision tower"):
        OpenVLAConfig(timm_model_ids=["vit_large_patch14_clip_336.openai", "vit_so400m_patch14_siglip_224"])


# -- the refine backbone ----------------------------------------------------------------------------
REASONING = "<Observation>: red block. <Task Planning>: <logical_steps> <1> reach <sub_action> move left"


@pytest.fixture(scope="module")
def registry():
    from refine_core.registry import Registry

    return Registry(entry_points=False)


@pytest.fixture(scope="module")
def stats():
    import numpy as np

    from refine_core import Statistics

    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.05, 0.05, size=(200, 7))
    actions[:, 6] = rng.integers(0, 2, 200)
    return Statistics.from_array(actions)


def make_backbone(registry, stats, **options):
    backbone = registry.build("backbone", "openvla", {"preset": "tiny", **options})
    return backbone.attach_codec(registry.build("codec", "bins", {}), stats)


@pytest.fixture(scope="module")
def backbone(registry, stats):
    return make_backbone(registry, stats)


def sample(seed=0, reasoning=REASONING):
    import numpy as np

    from refine_core.backbone import TrainingSample

    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.04, 0.04, size=(1, 7))
    actions[:, 6] = 1.0
    return TrainingSample(images={"cam": rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)},
                          primary_camera="cam",
                          instruction="Put the red block on the blue plate", actions=actions,
                          reasoning=reasoning)


def test_backbone_prompt_ids_and_action_vocabulary(backbone):
    from refine_plugins.openvla.backbone import SPACE_ID

    ids = backbone.prompt_ids("Put the red block on the blue plate")
    assert ids[0] == 1 and ids[-1] == SPACE_ID == 29871
    text = backbone.tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("In: What action should the robot take to put the red block on the blue "
                           "plate?\nOut:")
    assert backbone.codec.action_token_ids.tolist() == list(range(31744, 32000))
    assert (backbone.pad_id, backbone.eos_id, len(backbone.tokenizer)) == (32000, 2, 32001)


def test_backbone_batch_and_named_parts(backbone):
    from refine_core.data.collate import IGNORE

    batch = backbone.collate([sample(0), sample(1, reasoning=None)])
    assert batch["pixel_values"].shape == (2, 6, 224, 224)
    dino, siglip = batch["pixel_values"][0, :3], batch["pixel_values"][0, 3:]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    # the same resized frame under the two normalisations
    torch.testing.assert_close(dino * std[:, None, None] + mean[:, None, None], siglip * 0.5 + 0.5, atol=1e-5,
                               rtol=0)
    assert batch["action_mask"].sum(1).tolist() == [8, 8]  # 7 bins + eos
    assert int((batch["labels"][1] != IGNORE).sum()) == 8
    assert [n for n, _ in backbone.blocks()] == ["language_model.model.layers.0",
                                                 "language_model.model.layers.1"]
    assert [n for n, _ in backbone.vision_modules()] == ["vision_backbone.featurizer",
                                                         "vision_backbone.fused_featurizer"]
    assert backbone.image_token_positions(batch["input_ids"][0]).tolist() == list(range(1, 257))


def test_backbone_logits_align_with_input_ids_and_match_the_full_model(backbone):
    batch = backbone.collate([sample(0), sample(1, reasoning=None)])
    with torch.no_grad():
        logits = backbone.forward(batch)
        full = backbone.model(batch["input_ids"], batch["pixel_values"],
                              attention_mask=batch["attention_mask"]).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    torch.testing.assert_close(logits, torch.cat([full[:, :1], full[:, 257:]], dim=1), atol=1e-5, rtol=0)


def test_backbone_attentions_rows_align_with_input_ids(registry, stats):
    backbone = make_backbone(registry, stats, attn_implementation="eager")
    batch = backbone.collate([sample(0)])
    with torch.no_grad():
        out = backbone.forward(batch, output_attentions=True)
    length = batch["input_ids"].shape[1]
    assert all(a.shape[-2:] == (length, length + 256) for a in out.attentions)


def test_backbone_on_the_upstream_fixture_reproduces_its_logits(registry, reference, tmp_path):
    from refine_plugins.openvla.tiny import build_tokenizer

    for name in ("config.json", "model.safetensors"):  # the fixture has weights only: add a tokenizer
        (tmp_path / name).symlink_to(FIXTURE / name)
    build_tokenizer().save_pretrained(tmp_path)
    backbone = registry.build("backbone", "openvla", {"path": str(tmp_path), "attn_implementation": "eager"})
    batch = {"input_ids": reference["input_ids"], "attention_mask": reference["attention_mask"],
             "pixel_values": reference["pixel_values"]}
    with torch.no_grad():
        logits = backbone.forward(batch)
    torch.testing.assert_close(logits[:, 1:], reference["logits_last6"][:, 1:], atol=ATOL, rtol=0)


def test_backbone_save_load_round_trip(backbone, registry, tmp_path):
    backbone.save(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    loaded = registry.build("backbone", "openvla", {"path": str(tmp_path)})
    loaded.attach_codec(registry.build("codec", "bins", {}), backbone.codec.stats)
    assert loaded.prompt_ids("open the drawer") == backbone.prompt_ids("open the drawer")
    batch = backbone.collate([sample(3)])
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward(batch), loaded.forward(batch), atol=1e-5, rtol=0)


def test_backbone_bad_options_fail_with_one_line(registry, tmp_path):
    from refine_core.errors import UsageError

    with pytest.raises(UsageError, match="has no config.json"):
        registry.build("backbone", "openvla", {"path": str(tmp_path)})
    with pytest.raises(UsageError, match="backbone.path=DIR_OR_HUB_ID or backbone.preset=tiny"):
        registry.build("backbone", "openvla", {"preset": None})


def test_tiny_trains_with_the_reasoning_aware_loss_and_predicts_an_action(registry, stats):
    import numpy as np

    from tiny_policies import overfit

    backbone = make_backbone(registry, stats)
    s = sample(0)
    overfit(backbone, backbone.collate([s]), lr=5e-3, max_steps=300)
    prediction = backbone.predict(s.image, s.instruction, reasoning=True, max_new_tokens=64)
    assert prediction.error is None, prediction
    assert prediction.reasoning == REASONING
    assert prediction.actions.shape == (1, 7)
    half_bin = (stats.q99 - stats.q01)[:6] / 256
    assert np.all(np.abs(prediction.actions[0, :6] - s.actions[0, :6]) <= half_bin + 1e-6)


def test_constrained_decoding_keeps_every_action_id_in_the_bins(registry, stats):
    import numpy as np

    backbone = make_backbone(registry, stats, seed=4)
    frame = np.full((64, 64, 3), 30, np.uint8)
    prediction = backbone.predict(frame, "close the drawer", reasoning=False)
    assert prediction.actions.shape == (1, 7) and not prediction.forced
    assert all(31744 <= i < 32000 for i in prediction.action_ids)


def test_lora_follows_openvlas_recipe(registry, stats):
    from refine_core.config import LoraSettings
    from refine_core.training.lora import apply_lora, lora_module_names, resolve_lora

    backbone = make_backbone(registry, stats)
    names = lora_module_names(backbone, "all-linear")
    # peft's all-linear, as OpenVLA's finetune.py: both towers, the projector and Llama; not lm_head
    assert {"vision_backbone.featurizer.blocks.0.attn.qkv",
            "vision_backbone.fused_featurizer.blocks.2.mlp.fc2",
            "projector.fc3", "language_model.model.layers.1.mlp.down_proj"} <= set(names)
    assert "language_model.lm_head" not in names
    settings = resolve_lora(backbone, LoraSettings(r=32))
    assert (settings.alpha, settings.dropout, settings.init) == (16.0, 0.0, "gaussian")
    assert resolve_lora(backbone, LoraSettings(r=32, alpha=64)).alpha == 64
    apply_lora(backbone, LoraSettings(r=32))
    lora_a = dict(backbone.model.named_parameters())["projector.fc1.lora_A.default.weight"]
    assert lora_a.std().item() == pytest.approx(1 / 32, rel=0.2)  # peft's gaussian init: N(0, 1/r)
