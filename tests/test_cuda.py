"""The CUDA path of every backbone: refine's trainer in bf16 mixed precision on one GPU, the
checkpoint reloaded, and a constrained prediction made on the GPU.

Skipped on machines without CUDA (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train_toys import ToyDataset, toy_config, write_annotations

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

BACKBONES = ("hf_vlm", "openvla", "spatialvla")
RECIPES = {"lora": ["lora.r=8"], "freeze": ["freeze.first_n_layers=1"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    dataset = ToyDataset(episodes=2, steps=4, image=64)
    return dataset, write_annotations(tmp_path_factory.mktemp("annotations"), dataset)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_trains_in_bf16_on_the_gpu_and_predicts_there(backbone, recipe, data, tmp_path):
    from refine_core.training import load_checkpoint, prepare_run, train

    dataset, annotations = data
    config = toy_config(f"backbone.name={backbone}", "backbone.preset=tiny", "train.max_steps=30",
                        "train.batch_size=2", "train.save_every=30", "train.lr=3e-3", *RECIPES[recipe])
    setup = prepare_run(config, dataset=dataset, annotations_dir=annotations)
    assert setup.backbone.model.dtype == torch.bfloat16  # dtype "auto" on CUDA
    result = train(setup, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)
    if recipe == "freeze":  # tiny LoRA learns too slowly in 30 steps for a stable comparison
        assert np.mean([r["loss"] for r in records[-5:]]) < np.mean([r["loss"] for r in records[:5]])
    assert torch.cuda.max_memory_allocated() > 0

    loaded, _ = load_checkpoint(result.checkpoint)
    loaded.model.to("cuda")
    step = next(iter(next(iter(dataset.episodes())).steps))
    prediction = loaded.predict(step.images["cam"], step.instruction, reasoning=True, max_new_tokens=48)
    assert prediction.actions is not None and prediction.actions.shape[-1] == 7, prediction.error
    assert np.isfinite(prediction.actions).all()
    assert next(loaded.model.parameters()).device.type == "cuda"


def test_sdpa_and_eager_attention_agree_on_the_gpu():
    """The fused attention kernels used on GPUs give the logits of the reference implementation
    (OpenVLA's Llama; the Gemma-2 backbones run eager attention only)."""
    from refine_core.registry import Registry

    registry = Registry(entry_points=False)
    for name in ("openvla",):
        models = [registry.build("backbone", name, {"preset": "tiny", "dtype": "float32",
                                                    "attn_implementation": attn})
                  for attn in ("eager", "sdpa")]
        ids = models[0].prompt_ids("put the red block in the bowl")
        frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids),
                                                                                dtype=torch.long),
                 **models[0].image_inputs([frame])}
        logits = []
        for backbone in models:
            backbone.model.to("cuda").eval()
            with torch.no_grad():
                logits.append(backbone.forward({k: v.cuda() for k, v in batch.items()}).float())
        torch.testing.assert_close(logits[0], logits[1], atol=2e-3, rtol=0)



def test_cuda_graph_decoding_equals_the_dynamic_cache_and_follows_weight_updates():
    """Prediction on a GPU replays each decode step as a CUDA graph (the default there); it gives
    the dynamic cache's ids and logits, also after the weights were updated in place (training)."""
    from refine_core.registry import Registry

    backbone = Registry(entry_points=False).build("backbone", "openvla", {"preset": "tiny",
                                                                          "dtype": "float32"})
    model = backbone.model.to("cuda").eval()
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ids = torch.tensor([backbone.prompt_ids("put the red block in the bowl")], device="cuda")
    pixels = backbone.image_inputs([frame])["pixel_values"].cuda()

    def both():
        return [model.generate(ids, pixels, 24, return_scores=True, decoder=d) for d in ("graph", "dynamic")]

    (graph_ids, graph_scores), (dynamic_ids, dynamic_scores) = both()
    assert model._static_decoder.graph is not None
    assert torch.equal(graph_ids, dynamic_ids)
    torch.testing.assert_close(graph_scores, dynamic_scores, atol=1e-4, rtol=1e-4)
    captured = model._static_decoder
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(-1.5)  # in place, as an optimizer step
    (graph_ids, graph_scores), (dynamic_ids, dynamic_scores) = both()
    assert model._static_decoder is captured  # same storage: the graph is kept and reads the new values
    assert torch.equal(graph_ids, dynamic_ids)
    torch.testing.assert_close(graph_scores, dynamic_scores, atol=1e-4, rtol=1e-4)
    backbone.generate_ids(frame, "put the red block in the bowl", 7)  # option "auto": the graph on CUDA
    assert model._static_decoder.graph is not None


def test_spatialvla_cuda_graph_decoding_equals_the_dynamic_cache():
    from refine_core.registry import Registry

    backbone = Registry(entry_points=False).build("backbone", "spatialvla", {"preset": "tiny",
                                                                             "dtype": "float32"})
    model = backbone.model.to("cuda").eval()
    prompt = backbone.prompt_ids("put the red block in the bowl")
    ids = torch.tensor([prompt + [100, 101, 102]], device="cuda")  # a causal suffix, as reasoning is
    types = torch.tensor([[0] * len(prompt) + [1] * 3], device="cuda")
    inputs = backbone.image_inputs([np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)])
    pixels, intrinsic = inputs["pixel_values"].cuda(), inputs["intrinsic"].cuda()
    graph, dynamic = [model.generate(ids, pixels, intrinsic, 24, token_type_ids=types, decoder=d,
                                     return_scores=True)
                      for d in ("graph", "dynamic")]
    assert model._static_decoder.graph is not None
    assert torch.equal(graph[0], dynamic[0])
    torch.testing.assert_close(graph[1], dynamic[1], atol=1e-4, rtol=1e-4)


def test_hf_vlm_cuda_graph_decoding_equals_transformers_generate():
    from refine_core.registry import Registry

    registry = Registry(entry_points=False)
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    results = {}
    for decoder in ("graph", "dynamic"):
        backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny", "dtype": "float32",
                                                         "decoder": decoder})
        backbone.model.to("cuda")
        results[decoder] = [backbone.generate_ids(frame, "put the red block in the bowl", 24,
                                                  prefix_ids=prefix)
                            for prefix in ([], [100, 101, 102])]
        if decoder == "graph":
            assert backbone.model._static_decoder.graph is not None
    assert results["graph"] == results["dynamic"]
