"""P7 -- full-size OpenVLA (7.5 B) and SpatialVLA (4 B) on one GPU: what training needs per recipe,
and how fast actions and reasoning come out.

Run on a CUDA machine: ``python perf/cuda_full_size.py [--batch 16] [--steps 6] [--tokenizer DIR]
[--only openvla|spatialvla]`` (about 5 minutes on an H100).

SpatialVLA first (see `spatialvla()`): its published configuration with random bf16 weights, LoRA
r16 steps on synthetic sequences, then generation with the CUDA-graph and the dynamic cache.

OpenVLA: weights are random (nothing is downloaded): the released configuration (`OpenVLAConfig()`, the 982
keys P6 and the census test count) is built on the GPU, cast to bf16 and saved in the upstream
layout, then loaded back through `backbone.path` as a user's checkpoint is. `--tokenizer` points at
a Llama-2 tokenizer directory (tokenizer.json) for real prompt lengths; without it the tiny preset's
tokenizer (same special ids) is used. For each recipe, refine's Trainer (accelerate, bf16 autocast,
fp32 master copies of the trainable weights, AdamW, grad clip 1.0) trains on the in-memory
ToyDataset of tests/train_toys.py at 224 px with reasoning annotations on every other step:

- lora r32: OpenVLA's fine-tuning recipe (α 16, no dropout, gaussian init, all linear layers of
  both towers, the projector and Llama; not the head)
- refinevla: ReFineVLA's selective transfer (vision and embeddings frozen, all but the last 2
  Llama blocks frozen; the untied head trains)

Printed per recipe: trainable parameters; the static memory (every parameter at its dtype, plus
fp32 gradients and two AdamW moments of the trainable ones), the measured peak, and their ratio
(what activations and workspace add); the median step time and samples/s.

Then inference, batch 1, bf16, SDPA: the 7 action tokens of `predict_action` and 256 reasoning
tokens (what ReFineVLA-style reasoning costs per action) with each decoder: the static cache
replayed as a CUDA graph (the default on GPUs, refine_core/decoding.py), transformers' dynamic
cache, and, for the action, the whole sequence recomputed per token.
"""
from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))  # trainable_params: SpatialVLA-4B's published configuration
sys.path.insert(0, str(ROOT / "tests"))  # the in-memory ToyDataset and its annotation writer

GiB = 1024**3
RECIPES = {
    "lora r32": ["lora.r=32"],
    "refinevla": ["freeze.vision=true", "freeze.embeddings=true", "freeze.first_n_layers=-2"],
}


def write_checkpoint(directory: Path, tokenizer_dir: str | None) -> None:
    import torch

    from refine_plugins.openvla.config import OpenVLAConfig
    from refine_plugins.openvla.model import OpenVLAForActionPrediction
    from refine_plugins.openvla.tiny import build_tokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = OpenVLAForActionPrediction(OpenVLAConfig(), "sdpa")
    model.to(torch.bfloat16).save_pretrained(directory)
    del model
    if tokenizer_dir:
        for path in Path(tokenizer_dir).iterdir():
            if path.name.startswith(("tokenizer", "special_tokens", "added_tokens")):
                shutil.copy(path, directory / path.name)
    else:
        build_tokenizer().save_pretrained(directory)


def free_gpu() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def train_recipe(name: str, checkpoint: Path, work: Path, batch: int, steps: int, warmup: int) -> dict:
    import torch
    from rich.console import Console

    from refine_core.training import Trainer, prepare_run
    from train_toys import ToyDataset, toy_config, write_annotations

    dataset = ToyDataset(episodes=8, steps=8, image=224)
    annotations = write_annotations(work / "annotations", dataset)
    total = steps + warmup
    config = toy_config("backbone.name=openvla", f"backbone.path={checkpoint}", f"train.batch_size={batch}",
                        f"train.max_steps={total + 1}", f"train.log_every={total + 1}",
                        f"train.save_every={total + 1}", "train.lr=1e-5", *RECIPES[name])
    trainer = Trainer(prepare_run(config, dataset=dataset, annotations_dir=annotations),
                      work / name.replace(" ", "_"),
                      console=Console(quiet=True))
    trainer.begin()
    model = trainer.backbone.model
    parameters = list(model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    static = sum(p.numel() * p.element_size() for p in parameters) + 12 * trainable  # fp32 grads + 2 moments
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(1, total + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train_step(step)
        torch.cuda.synchronize()
        if step > warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated()
    del trainer, model, parameters
    free_gpu()
    median = statistics.median(times)
    return {"recipe": name, "trainable": trainable, "static": static, "peak": peak, "step": median,
            "samples_per_s": batch / median}


def inference(checkpoint: Path, reasoning_tokens: int) -> dict:
    import numpy as np
    import torch

    from refine_core.registry import Registry

    backbone = Registry(entry_points=False).build("backbone", "openvla", {"path": str(checkpoint)})
    model = backbone.model.to("cuda").eval()
    frame = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    ids = torch.tensor([backbone.prompt_ids("put the eggplant in the yellow basket")], device="cuda")
    pixels = backbone.image_inputs([frame])["pixel_values"].cuda()

    def timed(run, repeats: int = 5) -> tuple[float, object]:
        run()  # warm-up (kernels, allocator)
        values = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = run()
            torch.cuda.synchronize()
            values.append(time.perf_counter() - start)
        return statistics.median(values), out

    @torch.no_grad()
    def uncached(n: int):
        sequence = ids
        for _ in range(n):
            logits = model(sequence, pixels, use_cache=False).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        return sequence[0, ids.shape[1]:].tolist()

    def generate(decoder: str, n: int):
        return model.generate(ids, pixels, n, eos_token_id=None, return_scores=True, decoder=decoder)

    with torch.no_grad():
        result = {"prompt_tokens": ids.shape[1]}
        for decoder in ("graph", "dynamic"):
            result[f"{decoder}_7"], (result[f"{decoder}_ids"], result[f"{decoder}_scores"]) = timed(
                lambda: generate(decoder, 7))
            result[f"{decoder}_reasoning"], _ = timed(lambda: generate(decoder, reasoning_tokens), repeats=3)
        result["recomputed_7"], _ = timed(lambda: uncached(7))
    # bf16 with random weights has near-ties, so ids may part; compare logits up to the first difference
    same = (result["graph_ids"] == result["dynamic_ids"])[0].long().cumprod(0).sum().item()
    steps = max(same, 1)
    a, b = result["graph_scores"][0, :steps], result["dynamic_scores"][0, :steps]
    result.update(same_prefix=same, logit_diff=float((a - b).abs().max() / b.std()),
                  reasoning_tokens=reasoning_tokens)
    backbone = model = None  # rebinding (not del) keeps the closures above valid; frees the GPU
    free_gpu()
    return result


def spatialvla(batch: int, steps: int, warmup: int, reasoning_tokens: int) -> dict:
    """SpatialVLA-4B (perf/trainable_params.py's published configuration) with random bf16 weights:
    LoRA r16 steps on synthetic sequences (256 image tokens, a 20-token instruction, 60 reasoning
    tokens, a 4-step chunk of 12 spatial action tokens), then generation with each decoder."""
    import torch

    from refine_plugins.spatialvla.backbone import SpatialVLABackbone
    from refine_plugins.spatialvla.model import SpatialVLAForConditionalGeneration
    from refine_core.data.collate import IGNORE
    from refine_core.config import LoraSettings
    from refine_core.loss import reasoning_aware_loss
    from refine_core.training.lora import apply_lora
    from trainable_params import spatialvla_4b_config

    config = spatialvla_4b_config()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = SpatialVLAForConditionalGeneration(config, "eager")
    model.to(torch.bfloat16)
    shell = SpatialVLABackbone.__new__(SpatialVLABackbone)  # module accessors for the LoRA scope
    shell.model, shell.pretrained = model, True
    apply_lora(shell, LoraSettings(r=16, alpha=32, dropout=0.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()  # fp32 adapters, as refine's trainer keeps them under bf16 autocast
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)

    def sequences(n: int, suffix: int):
        text = torch.randint(3, 257_000, (n, 20), device="cuda")
        image = torch.full((n, 256), config.image_token_index, device="cuda")
        prompt = torch.cat([torch.full((n, 1), 2, device="cuda"), image, text], dim=1)
        reasoning = torch.randint(3, 257_000, (n, suffix - 12), device="cuda")
        actions = torch.randint(config.action_token_begin_idx, config.action_token_begin_idx + 8194, (n, 12),
                                device="cuda")
        return prompt, torch.cat([reasoning, actions], dim=1)

    prompt, suffix = sequences(batch, 72)
    ids = torch.cat([prompt, suffix], dim=1)
    types = torch.cat([torch.zeros_like(prompt), torch.ones_like(suffix)], dim=1)
    labels = torch.cat([torch.full_like(prompt, IGNORE), suffix], dim=1)
    action_mask = torch.zeros_like(ids, dtype=torch.bool)
    action_mask[:, -12:] = True
    pixels = torch.rand(batch, 3, 224, 224, device="cuda")
    intrinsic = torch.tensor([[[200.0, 0, 112], [0, 200.0, 112], [0, 0, 1]]],
                             device="cuda").expand(batch, 3, 3)
    model.train()
    model.vision_zoe_model.eval()  # frozen in every recipe, as the backbone keeps it
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps + warmup):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids, pixels, intrinsic, token_type_ids=types).logits
            loss = reasoning_aware_loss(logits, labels, action_mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    result = {"trainable": sum(p.numel() for p in trainable), "peak": torch.cuda.max_memory_allocated(),
              "step": statistics.median(times), "loss_finite": bool(torch.isfinite(loss))}
    del logits, loss, optimizer
    model.eval()
    prompt, _ = sequences(1, 12)

    def timed(n: int, repeats: int, decoder: str) -> float:
        values = []
        for _ in range(repeats + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(prompt, pixels[:1], intrinsic[:1], n, token_type_ids=torch.zeros_like(prompt),
                           decoder=decoder)
            torch.cuda.synchronize()
            values.append(time.perf_counter() - start)
        return statistics.median(values[1:])  # the first is a warm-up (and the graph's capture)

    with torch.no_grad():
        for decoder in ("graph", "dynamic"):
            result[f"{decoder}_chunk"] = timed(12, 5, decoder)
            result[f"{decoder}_reasoning"] = timed(reasoning_tokens, 2, decoder)
    model = shell = trainable = None  # rebinding (not del) keeps the closures above valid
    free_gpu()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reasoning-tokens", type=int, default=256)
    parser.add_argument("--tokenizer", default=None, help="a Llama-2 tokenizer directory (tokenizer.json)")
    parser.add_argument("--work", default=None, help="scratch directory for the 15 GB checkpoint")
    parser.add_argument("--only", choices=("openvla", "spatialvla"), default=None)
    args = parser.parse_args()

    import torch
    import transformers

    if not torch.cuda.is_available():
        sys.exit("P7 needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    if args.only != "openvla":
        r = spatialvla(8, args.steps, args.warmup, args.reasoning_tokens)
        print(f"SpatialVLA-4B (random, bf16, eager attention): LoRA r16, batch 8 of 349 tokens, "
              f"{r['trainable']:,} trainable: peak {r['peak'] / GiB:.1f} G, step {r['step']:.3f} s "
              f"(finite loss: {r['loss_finite']})")
        n = args.reasoning_tokens
        for decoder in ("graph", "dynamic"):
            print(f"  generation, {decoder:7s}: 12 action tokens {r[f'{decoder}_chunk'] * 1e3:7.1f} ms "
                  f"({1 / r[f'{decoder}_chunk']:4.1f} chunks/s), {n} tokens {r[f'{decoder}_reasoning']:5.2f} "
                  "s "
                  f"({n / r[f'{decoder}_reasoning']:.0f} tokens/s)")
        print(f"  ratio dynamic/graph: {r['dynamic_chunk'] / r['graph_chunk']:.2f} per chunk, "
              f"{r['dynamic_reasoning'] / r['graph_reasoning']:.2f} per {n} tokens")
        if args.only == "spatialvla":
            return
    work = Path(args.work or tempfile.mkdtemp(prefix="refine-p7-"))
    checkpoint = work / "openvla-7b-random"
    start = time.perf_counter()
    write_checkpoint(checkpoint, args.tokenizer)
    free_gpu()
    print(f"OpenVLA-7B: random weights written in {time.perf_counter() - start:.0f} s")
    print(f"training: batch {args.batch}, 224 px, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"  {'recipe':10s} {'trainable':>14s} {'static':>9s} {'peak':>9s} {'peak/static':>11s} "
          f"{'step':>8s} {'samples/s':>9s}")
    for name in RECIPES:
        r = train_recipe(name, checkpoint, work, args.batch, args.steps, args.warmup)
        print(f"  {r['recipe']:10s} {r['trainable']:>14,d} {r['static'] / GiB:>7.1f} G "
              f"{r['peak'] / GiB:>7.1f} G "
              f"{r['peak'] / r['static']:>11.2f} {r['step']:>7.3f}s {r['samples_per_s']:>9.1f}")
    r = inference(checkpoint, args.reasoning_tokens)
    print(
        f"inference, batch 1, prompt {r['prompt_tokens']} tokens + 256 patches (times include the prefill):"
    )
    for decoder, label in (("graph", "CUDA graph, static cache"), ("dynamic", "dynamic cache"),
                           ("recomputed", "recomputed, no cache")):
        print(f"  7 action tokens, {label:25s} {r[f'{decoder}_7'] * 1e3:7.1f} ms  "
              f"({1 / r[f'{decoder}_7']:5.1f} actions/s, {r[f'{decoder}_7'] / r['graph_7']:.2f}x the graph's "
              "time)")
    n = r["reasoning_tokens"]
    for decoder in ("graph", "dynamic"):
        print(f"  {n} reasoning tokens, {decoder:8s} {r[f'{decoder}_reasoning']:6.2f} s "
              f"({n / r[f'{decoder}_reasoning']:.0f} tokens/s)")
    print(f"  ratio dynamic/graph over {n} tokens = {r['dynamic_reasoning'] / r['graph_reasoning']:.2f}; "
          f"the two agree on the first {r['same_prefix']} of 7 ids, logits there differ by at most "
          f"{r['logit_diff']:.3f} standard deviations")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
