"""SpatialVLA: our transformers-5 implementation against the upstream tiny checkpoint (strict load
with upstream's key names, logits), upstream-layout save/load, the processor's statistics and
camera handling, and the backbone's parts (freezing, LoRA scope, generation)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SPATIALVLA_FIXTURE as FIXTURE, importorskip_or_fail, require_fixture

ATOL = 1e-4


def upstream_keys(n_vision: int, n_text: int, n_beit: int, tied: bool = True,
                  zoe_levels: int = 4) -> set[str]:
    """Checkpoint keys of upstream's SpatialVLAForConditionalGeneration (transformers 4.47 module
    names: SiglipVisionModel, Gemma2ForCausalLM, ZoeDepth on a 4.x BEiT), written out by hand."""
    keys = {"multi_modal_projector.linear.weight", "multi_modal_projector.linear.bias",
            "spatial_embed_tokens.weight",
            "language_model.model.embed_tokens.weight", "language_model.model.norm.weight"}
    keys |= {
        f"position_embedding_3d.position_embedding_head.{i}.{p}"
        for i in (0, 1, 3)
        for p in ("weight", "bias")
    }
    v = "vision_tower.vision_model."
    keys |= {v + "embeddings.patch_embedding.weight", v + "embeddings.patch_embedding.bias",
             v + "embeddings.position_embedding.weight", v + "post_layernorm.weight",
             v + "post_layernorm.bias"}
    for i in range(n_vision):
        for part in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2", "self_attn.q_proj",
                     "self_attn.k_proj",
                     "self_attn.v_proj", "self_attn.out_proj"):
            keys |= {f"{v}encoder.layers.{i}.{part}.weight", f"{v}encoder.layers.{i}.{part}.bias"}
    for i in range(n_text):
        for part in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                     "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
            keys.add(f"language_model.model.layers.{i}.{part}.weight")
    if not tied:
        keys.add("language_model.lm_head.weight")
    z = "vision_zoe_model."
    keys |= {z + "backbone.embeddings.cls_token",
             z + "backbone.embeddings.patch_embeddings.projection.weight",
             z + "backbone.embeddings.patch_embeddings.projection.bias"}
    for i in range(n_beit):
        layer = f"{z}backbone.encoder.layer.{i}."
        keys |= {layer + s for s in (
            "attention.attention.query.weight", "attention.attention.query.bias",
            "attention.attention.key.weight",
            "attention.attention.value.weight", "attention.attention.value.bias",
            "attention.attention.relative_position_bias.relative_position_bias_table",
            "attention.output.dense.weight", "attention.output.dense.bias", "intermediate.dense.weight",
            "intermediate.dense.bias", "output.dense.weight", "output.dense.bias", "lambda_1", "lambda_2",
            "layernorm_before.weight", "layernorm_before.bias", "layernorm_after.weight",
            "layernorm_after.bias")}
    wb = ("weight", "bias")
    for n in range(zoe_levels):
        keys.add(f"{z}neck.convs.{n}.weight")
        keys |= {f"{z}neck.reassemble_stage.readout_projects.{n}.0.{p}" for p in wb}
        keys |= {f"{z}neck.reassemble_stage.layers.{n}.projection.{p}" for p in wb}
        if n != 2:  # reassemble factor 1: no resize layer
            keys |= {f"{z}neck.reassemble_stage.layers.{n}.resize.{p}" for p in wb}
        keys |= {f"{z}neck.fusion_stage.layers.{n}.projection.{p}" for p in wb}
        keys |= {f"{z}neck.fusion_stage.layers.{n}.residual_layer{r}.convolution{c}.{p}"
                 for r in (1, 2) for c in (1, 2) for p in wb}
        keys |= {f"{z}metric_head.{part}.{n}.conv{c}.{p}" for part in ("attractors", "projectors")
                 for c in (1, 2) for p in wb}
    keys |= {f"{z}metric_head.conditional_log_binomial.mlp.{n}.{p}" for n in (0, 2) for p in wb}
    keys |= {f"{z}metric_head.{part}.conv{c}.{p}" for part in ("seed_bin_regressor", "seed_projector")
             for c in (1, 2) for p in wb}
    keys |= {f"{z}metric_head.conv2.{p}" for p in wb}
    keys |= {f"{z}relative_head.conv{c}.{p}" for c in (1, 2, 3) for p in wb}
    return keys


def tiny_options(**overrides):
    from refine_plugins.spatialvla import SpatialVLAOptions

    return SpatialVLAOptions(**{"preset": "tiny", "dtype": "float32", **overrides})


@pytest.fixture(scope="module")
def tiny():
    from refine_plugins.spatialvla.backbone import SpatialVLABackbone

    return SpatialVLABackbone(tiny_options())


@pytest.fixture(scope="module")
def reference():
    require_fixture(FIXTURE)
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "reference_io.safetensors"))


def fixture_logits(model, reference):
    with torch.no_grad():
        out = model(reference["input_ids"], reference["pixel_values"], reference["intrinsic"],
                    attention_mask=reference["attention_mask"], use_cache=False)
    return out.logits


# -- layout --------------------------------------------------------------------------------------
def test_tiny_state_dict_has_exactly_upstreams_key_names(tiny):
    assert set(tiny.model.state_dict()) == upstream_keys(n_vision=2, n_text=4, n_beit=4)


def test_upstream_checkpoint_keys_are_the_ones_we_expect():
    require_fixture(FIXTURE)
    from safetensors import safe_open

    with safe_open(str(FIXTURE / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == upstream_keys(n_vision=2, n_text=4, n_beit=4)


def test_config_reads_every_upstream_field_and_writes_it_back():
    require_fixture(FIXTURE)
    from refine_plugins.spatialvla.config import SpatialVLAConfig

    raw = json.loads((FIXTURE / "config.json").read_text())
    config = SpatialVLAConfig.from_dict(raw)
    assert config.extra == {} and config.to_dict() == raw
    gemma = config.gemma2_config()
    # transformers-4.47 Gemma-2 defaults the minimal text_config relies on, pinned
    assert (gemma.query_pre_attn_scalar, gemma.final_logit_softcapping,
            gemma.attn_logit_softcapping) == (256, 30.0, 50.0)
    assert (gemma.hidden_size, gemma.num_hidden_layers, gemma.head_dim, gemma.vocab_size) == (64, 4, 32, 9362)
    assert config.siglip_config().image_size == 224 and config.num_image_tokens == 256


# -- equivalence with upstream -------------------------------------------------------------------------
def test_logits_match_upstream_on_identical_weights(reference):
    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration

    model = SpatialVLAForConditionalGeneration.from_pretrained(FIXTURE, sync_spatial_embeddings=False)
    logits = fixture_logits(model, reference)
    assert torch.allclose(logits[:, -20:], reference["logits_last20"], atol=ATOL)
    assert torch.allclose(logits[:, ::17], reference["logits_every17"], atol=ATOL)


def test_loading_syncs_spatial_embeddings_into_the_action_rows_as_upstream():
    require_fixture(FIXTURE)
    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration

    model = SpatialVLAForConditionalGeneration.from_pretrained(FIXTURE)
    rows = model.get_input_embeddings().weight[-8194:]
    assert torch.equal(rows, model.spatial_embed_tokens.weight)
    assert model.language_model.lm_head.weight is model.get_input_embeddings().weight  # tied, one Parameter


def test_save_writes_upstream_names_and_reloads_identically_even_sharded(reference, tmp_path):
    from safetensors import safe_open

    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration

    model = SpatialVLAForConditionalGeneration.from_pretrained(FIXTURE, sync_spatial_embeddings=False)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_bytes=1_000_000)
    with safe_open(str(tmp_path / "one" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == upstream_keys(2, 4, 4)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 1
    expected = fixture_logits(model, reference)
    for name in ("one", "sharded"):
        again = SpatialVLAForConditionalGeneration.from_pretrained(tmp_path / name,
                                                                   sync_spatial_embeddings=False)
        assert torch.equal(fixture_logits(again, reference), expected)


def test_cached_generation_equals_full_recomputation(tiny):
    model = tiny.model.eval()
    prompt = torch.tensor([tiny.prompt_ids("pick up the red block")])
    inputs = tiny.image_inputs([np.full((64, 64, 3), 120, np.uint8)])
    new = model.generate(prompt, inputs["pixel_values"], inputs["intrinsic"], 6)
    ids = prompt
    for _ in range(6):  # no cache: prompt bidirectional, generated tokens causal
        types = torch.tensor([[0] * prompt.shape[1] + [1] * (ids.shape[1] - prompt.shape[1])])
        with torch.no_grad():
            logits = model(ids, inputs["pixel_values"], inputs["intrinsic"], token_type_ids=types,
                           use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert new.tolist() == ids[:, prompt.shape[1]:].tolist()


# -- depth -----------------------------------------------------------------------------------------
def test_zoedepth_is_frozen_and_stays_in_eval_mode(tiny):
    tiny.model.train()
    try:
        zoe = tiny.model.vision_zoe_model
        assert not zoe.training and all(not m.training for m in zoe.modules())
        assert not any(p.requires_grad for p in zoe.parameters())
    finally:
        tiny.model.eval()


def test_backprojection_recovers_points_on_a_plane():
    from refine_plugins.spatialvla.depth import backproject_patches, patch_pixel_grid

    intrinsic = torch.tensor([[[200.0, 0.0, 112.0], [0.0, 200.0, 112.0], [0.0, 0.0, 1.0]]])
    depth = torch.full((1, 1, 224, 224), 2.0)
    points = backproject_patches(intrinsic, depth, patch_pixel_grid(224, 14, 2), 14, 2)
    assert points.shape == (1, 256, 12)
    xyz = points.reshape(1, 256, 4, 3)
    assert torch.allclose(xyz[..., 2], torch.full_like(xyz[..., 2], 2.0))
    # first patch, first sample point sits at pixel (3.5, 3.5): x = (3.5 - 112) / 200 * 2
    assert xyz[0, 0, 0, 0].item() == pytest.approx((3.5 - 112) / 200 * 2)
    assert xyz[0, 0, 1, 0].item() == pytest.approx((10.5 - 112) / 200 * 2)  # next point to the right


# -- processor -------------------------------------------------------------------------------------
def test_prompt_and_batch_follow_upstreams_processor(tiny):
    ids = tiny.prompt_ids("  Put the RED block on the plate ")
    assert ids[:256] == [tiny.image_token_id] * 256 and ids[256] == tiny.tokenizer.bos_token_id
    assert tiny.tokenizer.decode(ids[257:]) == "put the red block on the plate\n"
    batch = tiny.image_inputs([np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 255, np.uint8)])
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    assert batch["pixel_values"].min() == 0.0 and batch["pixel_values"].max() == 1.0  # not normalised
    # the default 640×480 camera scaled to 224×224
    expected = [[623.588 * 0.35, 0, 319.501 * 0.35], [0, 623.588 * 224 / 480, 239.545 * 224 / 480], [0, 0, 1]]
    np.testing.assert_allclose(batch["intrinsic"][0].numpy(), expected, rtol=1e-6)
    if FIXTURE.is_dir():  # the intrinsic upstream's processor gave the fixture's input
        from safetensors.torch import load_file

        np.testing.assert_allclose(
            batch["intrinsic"][0].numpy(),
            load_file(str(FIXTURE / "reference_io.safetensors"))["intrinsic"][0].numpy(),
            rtol=1e-5,
        )


def write_checkpoint(tmp_path: Path, statistics: dict | None = None) -> Path:
    directory = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, directory)
    if statistics is not None:
        (directory / "processor_config.json").write_text(json.dumps({"statistics": statistics}))
    return directory


def stats_block(scale: float) -> dict:
    return {"action": {"q01": [-scale] * 7, "q99": [scale] * 7, "mask": [True] * 6 + [False]}}


def test_checkpoint_statistics_need_a_known_unnorm_key(tmp_path):
    require_fixture(FIXTURE)
    from refine_plugins.spatialvla.backbone import SpatialVLABackbone
    from refine_core.errors import UsageError

    path = write_checkpoint(tmp_path, {"bridge_orig/1.0.0": stats_block(0.1),
                                       "fractal/0.1.0": stats_block(0.2)})
    config = json.loads((path / "processor_config.json").read_text())
    policy = {"translation": {"theta_bins": np.linspace(0, np.pi, 17).tolist(),
                              "phi_bins": np.linspace(-np.pi, np.pi, 33).tolist(),
                              "r_bins": np.linspace(0, 3 ** 0.5, 9).tolist()},
              "rotation": {f"{a}_bins": np.linspace(-1, 1, 17).tolist() for a in ("roll", "pitch", "yaw")}}
    (path / "processor_config.json").write_text(json.dumps({**config, "bin_policy": policy}))
    fine_tuning = SpatialVLABackbone(tiny_options(path=str(path)))  # the data will bring its statistics
    assert fine_tuning.unnorm_key is None and fine_tuning.codec is None
    with pytest.raises(UsageError,
                       match="choose one with backbone.unnorm_key.*bridge_orig/1.0.0, fractal/0.1.0"):
        fine_tuning.predict_action(np.zeros((32, 32, 3), np.uint8), "pick up the can")
    with pytest.raises(UsageError, match="unnorm_key 'kuka' is not in the checkpoint's statistics"):
        SpatialVLABackbone(tiny_options(path=str(path), unnorm_key="kuka"))
    backbone = SpatialVLABackbone(tiny_options(path=str(path), unnorm_key="fractal/0.1.0"))
    assert backbone.codec.stats.q99.tolist() == [0.2] * 7 and backbone.codec.stats.mask.tolist() == [
        True
    ] * 6 + [False]
    assert backbone.predict_action(np.zeros((32, 32, 3), np.uint8), "pick up the can").shape == (4, 7)


def test_bad_checkpoint_directories_fail_with_one_line(tmp_path):
    require_fixture(FIXTURE)
    from refine_plugins.spatialvla.backbone import SpatialVLABackbone
    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration
    from refine_core.errors import UsageError

    wrong = write_checkpoint(tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "model_type": "paligemma"}))
    with pytest.raises(UsageError, match="holds a 'paligemma' model, not SpatialVLA") as error:
        SpatialVLABackbone(tiny_options(path=str(wrong)))
    assert "\n" not in str(error.value)

    sharded = tmp_path / "sharded"
    SpatialVLAForConditionalGeneration.from_pretrained(FIXTURE).save_pretrained(sharded,
                                                                                max_shard_bytes=1_000_000)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURE / name, sharded / name)
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    shards[1].unlink()
    with pytest.raises(UsageError, match=f"missing 1 of the {len(shards)} shards.*{shards[1].name}"):
        SpatialVLABackbone(tiny_options(path=str(sharded)))

    with pytest.raises(UsageError, match="has no config.json"):
        SpatialVLABackbone(tiny_options(path=str(tmp_path)))


# -- training parts --------------------------------------------------------------------------------
def test_lora_scope_is_upstreams_linear_set_and_never_zoedepth(tiny):
    from refine_core.training.lora import lora_module_names

    names = lora_module_names(tiny, "all-linear")
    assert "language_model.model.layers.0.self_attn.q_proj" in names
    assert "language_model.model.layers.3.mlp.down_proj" in names
    assert "vision_tower.vision_model.encoder.layers.1.mlp.fc1" in names
    assert "vision_tower.vision_model.encoder.layers.0.self_attn.out_proj" in names
    assert "multi_modal_projector.linear" in names
    assert {"position_embedding_3d.position_embedding_head.0",
            "position_embedding_3d.position_embedding_head.3"} <= set(names)
    assert not any(name.startswith("vision_zoe_model") for name in names)


def test_named_parts_for_freezing(tiny):
    assert [name for name, _ in tiny.blocks()] == [f"language_model.model.layers.{i}" for i in range(4)]
    assert [name for name, _ in tiny.vision_modules()] == ["vision_tower"]
    assert "spatial_embed_tokens" in [name for name, _ in tiny.embedding_modules()]


def test_zoedepth_stays_frozen_when_everything_else_trains(stats):
    from refine_core.config import FreezeSettings
    from refine_core.training.freeze import apply_freeze

    backbone = spatial_backbone(stats)
    apply_freeze(backbone, FreezeSettings(vision=False, embeddings=False, first_n_layers=0))
    trainable = {name for name, p in backbone.model.named_parameters() if p.requires_grad}
    assert not any(name.startswith("vision_zoe_model.") for name in trainable)
    assert "vision_tower.vision_model.post_layernorm.weight" in trainable
    frozen = apply_freeze(backbone, FreezeSettings(vision=True, embeddings=True, first_n_layers=3))
    trainable = {name for name, p in backbone.model.named_parameters() if p.requires_grad}
    assert frozen == 3 and any(name.startswith("language_model.model.layers.3.") for name in trainable)
    assert not any(name.startswith(("language_model.model.layers.2.", "vision_tower.",
                                    "spatial_embed_tokens"))
                   for name in trainable)


# -- codec integration, training, prediction -------------------------------------------------------
REASONING = "<Observation>: a red block on the table <Task Planning>: <sub_action> lift the block"


@pytest.fixture(scope="module")
def stats():
    from refine_core import Statistics

    rng = np.random.default_rng(0)
    actions = rng.normal(0.0, 0.02, size=(400, 7))
    actions[:, 6] = rng.integers(0, 2, 400)
    return Statistics.from_array(actions)


def spatial_backbone(stats, **options):
    from refine_plugins.action_codecs.spatial import SpatialCodec
    from refine_plugins.spatialvla.backbone import SpatialVLABackbone

    backbone = SpatialVLABackbone(tiny_options(**options))
    return backbone.attach_codec(SpatialCodec(), stats)


def test_tiny_trains_with_the_reasoning_aware_loss_and_predicts_a_chunk(stats):
    from refine_core.backbone import TrainingSample
    from refine_core.loss import reasoning_aware_loss

    backbone = spatial_backbone(stats)
    chunk = np.array([[0.01, -0.02, 0.015, 0.0, 0.01, -0.01, 1.0]] * 2 + [[-0.01, 0.02, 0.0, 0.01, 0.0, 0.0,
                                                                           0.0]] * 2)
    frame = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    sample = TrainingSample(images={"main": frame}, primary_camera="main", instruction="lift the block",
                            actions=chunk, reasoning=REASONING)
    batch = backbone.collate([sample])
    assert batch["action_mask"].sum() == 12 + 1  # 4 steps × 3 ids + eos
    assert {"intrinsic", "token_type_ids", "pixel_values"} <= set(batch)
    optimizer = torch.optim.Adam([p for p in backbone.model.parameters() if p.requires_grad], lr=5e-3)
    backbone.model.train()
    first = None
    for _ in range(200):
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 1.0)
        first = first if first is not None else out.loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if out.loss < 0.05:
            break
    assert out.loss.item() < 0.05 < first
    prediction = backbone.predict(frame, "lift the block", reasoning=True, max_new_tokens=80)
    assert prediction.error is None, prediction
    assert prediction.reasoning == REASONING
    assert prediction.actions.shape == (4, 7)
    assert prediction.actions[:, 6].tolist() == [1.0, 1.0, 0.0, 0.0]
    # each step lands in the cell its target was encoded to
    assert prediction.action_ids == backbone.codec.encode(chunk)
    assert backbone.predict_action(frame, "lift the block", reasoning=True).shape == (4, 7)


def test_a_checkpoint_with_processor_bins_predicts_with_them_and_saves_them_back(stats, tmp_path):
    require_fixture(FIXTURE)
    from refine_plugins.action_codecs.spatial import (SpatialCodec, gaussian_bin_policy,
        gaussian_from_statistics)
    from refine_plugins.spatialvla.backbone import SpatialVLABackbone
    from refine_core import Statistics

    policy = gaussian_bin_policy(gaussian_from_statistics(stats))
    path = write_checkpoint(tmp_path, {"bridge_orig/1.0.0": stats_block(0.05)})
    config = json.loads((path / "processor_config.json").read_text())
    (path / "processor_config.json").write_text(json.dumps({**config, "bin_policy": policy,
                                                            "action_chunk_size": 4}))
    backbone = SpatialVLABackbone(tiny_options(path=str(path)))
    assert backbone.unnorm_key == "bridge_orig/1.0.0" and backbone.codec.bin_policy == policy
    # the action ids upstream's processor wrote into the fixture's input decode with these bins
    from safetensors.torch import load_file

    ids = load_file(str(FIXTURE / "reference_io.safetensors"))["input_ids"][0, -13:].tolist()
    chunk = backbone.codec.decode(ids)
    assert chunk.shape == (4, 7) and np.all(np.abs(chunk[:, :6]) <= 0.05 + 1e-6)
    assert chunk[:, 6].tolist() == [0.0, 1.0, 0.0, 0.0]  # <ACTION08192> = closed, <ACTION08193> = open

    # fine-tuning on another robot: new bins, spatial embeddings re-gridded onto them
    other = Statistics.from_array(np.random.default_rng(2).normal(0.0, 0.3, size=(400, 7)))
    before = backbone.model.spatial_embed_tokens.weight.detach().clone()
    backbone.statistics_key = "my_robot"
    backbone.attach_codec(SpatialCodec(), other)
    after = backbone.model.spatial_embed_tokens.weight.detach()
    assert backbone.codec.bin_policy != policy and not torch.equal(before, after)
    assert torch.equal(after[-2:], before[-2:])  # gripper rows are not on a grid
    assert torch.equal(backbone.model.get_input_embeddings().weight[-8194:], after)
    backbone.save(tmp_path / "tuned")
    saved = json.loads((tmp_path / "tuned" / "processor_config.json").read_text())
    assert set(saved["statistics"]) == {"bridge_orig/1.0.0", "my_robot"}
    assert saved["bin_policy"] == backbone.codec.bin_policy
    again = SpatialVLABackbone(tiny_options(path=str(tmp_path / "tuned"), unnorm_key="my_robot"))
    assert again.codec.bin_policy == backbone.codec.bin_policy
    np.testing.assert_allclose(again.codec.stats.q99, other.q99)


def test_the_backbone_brings_its_codec_unless_one_is_named():
    from refine_core.config import resolve_components, resolve_config
    from refine_core.registry import get_registry

    def resolved(**components):
        return resolve_components(resolve_config(components=components), get_registry())

    assert resolved(backbone="spatialvla").codec.name == "spatial"
    assert resolved(backbone="spatialvla", codec="bins").codec.name == "bins"
    assert resolved(backbone="hf_vlm").codec.name == "bins"
    # the choice is made once and kept: a config that names its codec is not re-decided
    assert resolve_components(resolved(backbone="spatialvla", codec="bins"),
                              get_registry()).codec.name == "bins"


def test_refine_train_with_the_tiny_preset_end_to_end(tmp_path):
    importorskip_or_fail("tensorflow_datasets")
    import yaml
    from conftest import run_refine

    from refine_plugins.rlds import fixtures
    from refine_core.training import list_checkpoints, load_checkpoint

    rng = np.random.default_rng(0)
    episodes = [{"actions": rng.normal(0, 0.05, (6, 7)).astype(np.float32),
                 "states": np.cumsum(rng.normal(0, 0.02, (6, 7)), axis=0).astype(np.float32),
                 "instruction": f"put the block {k} on the plate", "file_path": f"/data/scene{k}",
                 "episode_id": k}
                for k in range(3)]
    fixtures.write_bridge_dataset(tmp_path / "bridge", episodes, image_size=(64, 64))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"name": "bridge", "data_dir": str(tmp_path / "bridge")},
        "data": {"val_fraction": 0, "shuffle_buffer": 8},
        "train": {"max_steps": 2, "batch_size": 2, "log_every": 1, "save_every": 2},
    }))
    result = run_refine("train", "--config", str(config), "--backbone", "spatialvla", "--out",
                        str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    _, checkpoint = list_checkpoints(tmp_path / "out")[-1]
    backbone, run_config = load_checkpoint(checkpoint)
    assert run_config.codec.name == "spatial" and backbone.codec.chunk_size == 4
    assert backbone.statistics_key == "bridge"
    # the trained weights are the ones loaded (not the preset's fresh initialisation)
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "weights.safetensors"))
    state = backbone.model.state_dict()
    assert saved and all(torch.equal(state[name].to(value.dtype), value) for name, value in saved.items())
    # greedy generation: exactly the tokens asked for unless eos came first, and a prefix of a longer one
    frame = np.zeros((64, 64, 3), np.uint8)
    ids = backbone.generate_ids(frame, "put the block 0 on the plate", 3)
    longer = backbone.generate_ids(frame, "put the block 0 on the plate", 6)
    assert ids == longer[:3] and (len(ids) == 3 or longer == ids), (ids, longer)
    # and the checkpoint acts: constrained decoding gives a whole chunk of finite actions
    prediction = backbone.predict(frame, "put the block 0 on the plate", reasoning=False)
    assert prediction.actions.shape == (4, 7) and np.isfinite(prediction.actions).all(), prediction.error


def test_constrained_decoding_gives_an_untrained_model_a_valid_chunk(stats):
    backbone = spatial_backbone(stats, seed=5)
    frame = np.full((64, 64, 3), 90, np.uint8)
    free = backbone.predict(frame, "open the drawer", reasoning=False, constrain_actions=False)
    acting = backbone.predict(frame, "open the drawer", reasoning=False)
    assert free.actions is None  # a random model does not write a valid span by itself
    assert acting.actions.shape == (4, 7) and not acting.forced
    groups = backbone.codec.group_ids()
    assert all(i in groups[k % 3] for k, i in enumerate(acting.action_ids))
    reasoned = backbone.predict(frame, "open the drawer", reasoning=True, max_new_tokens=6)
    assert reasoned.forced and reasoned.actions.shape == (4, 7)
    assert reasoned.generated_ids[-12:] == reasoned.action_ids  # appended after the reasoning it kept


def test_bfloat16_trains_and_predicts(stats):
    """The dtype a GPU run uses (checked on CPU here): depth and back-projection stay fp32 inside."""
    from refine_core.backbone import TrainingSample
    from refine_core.loss import reasoning_aware_loss

    backbone = spatial_backbone(stats, dtype="bfloat16")
    assert backbone.model.dtype == torch.bfloat16
    sample = TrainingSample(images={"main": np.zeros((64, 64, 3), np.uint8)}, primary_camera="main",
                            instruction="lift the cup", actions=np.zeros((4, 7)), reasoning=REASONING)
    batch = backbone.collate([sample])
    backbone.model.train()
    trainable = [p for p in backbone.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-2)
    losses = []
    for _ in range(3):
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 0.3)
        optimizer.zero_grad()
        out.loss.backward()
        grad = backbone.model.multi_modal_projector.linear.weight.grad
        # the gradient reaches through the projector, in bf16, finite and not all zero
        assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert torch.isfinite(out.loss)
        losses.append(out.loss.item())
        optimizer.step()
    assert losses[-1] < losses[0], losses  # the steps lower the loss on the sample they train on
    assert backbone.predict(np.zeros((64, 64, 3), np.uint8), "lift the cup",
                            reasoning=False).actions.shape == (4, 7)


def test_a_zoe_backbone_config_without_reshape_hidden_states_still_runs():
    """ZoeDepth needs BEiT's token sequences; a config naming its BEiT without the key (BeitConfig's
    default is feature maps) gets ZoeDepth's own default instead of failing at the first image."""
    from refine_plugins.spatialvla.config import SpatialVLAConfig
    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration
    from refine_plugins.spatialvla.tiny import build_config, build_tokenizer

    data = build_config(build_tokenizer())
    data["vision_zoe_config"]["backbone_config"].pop("reshape_hidden_states")
    config = SpatialVLAConfig.from_dict(data)
    assert config.zoe_config().backbone_config.reshape_hidden_states is False
    torch.manual_seed(0)
    model = SpatialVLAForConditionalGeneration(config, "eager").eval()
    intrinsic = torch.tensor([[[200.0, 0, 112], [0, 200.0, 112], [0, 0, 1]]])
    with torch.no_grad():
        features = model.image_features(torch.rand(1, 3, 224, 224), intrinsic)
    assert features.shape[:2] == (1, 256) and torch.isfinite(features).all()


@pytest.mark.parametrize("suffix", [0, 5])
def test_static_cache_decoding_equals_the_dynamic_cache(tiny, suffix):
    """The static cache (the CUDA-graph decoder's, run eagerly here) gives the dynamic cache's ids and
    logits, with the prompt's prefix-LM mask and a causal suffix (reasoning before constrained actions)."""
    model = tiny.model.eval()
    prompt = tiny.prompt_ids("put the cup on the plate")
    extra = list(range(100, 100 + suffix))
    ids = torch.tensor([prompt + extra])
    types = torch.tensor([[0] * len(prompt) + [1] * suffix])
    inputs = tiny.image_inputs([np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)])
    runs = [model.generate(ids, inputs["pixel_values"], inputs["intrinsic"], 12, token_type_ids=types,
                           decoder=decoder, return_scores=True) for decoder in ("dynamic", "static")]
    assert torch.equal(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-4, rtol=1e-4)
    assert model._static_decoder.cache_len >= ids.shape[1] + 12
