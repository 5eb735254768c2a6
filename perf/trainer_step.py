"""P2 -- step time of refine's Trainer vs a bare PyTorch loop doing the same work.

Run: ``python perf/trainer_step.py [--steps 40] [--batch 4] [--threads 1]`` (about 1 minute).

Both sides train the tiny hf_vlm preset (same seed, recipe-default freezing, bins codec) on the
same in-memory dataset with reasoning annotations (tests/train_toys.py), batch 4, AdamW, grad
clipping 1.0, fp32 on the CPU. One step of each side is:

- trainer: ``Trainer.train_step`` -- draw the batch from the SampleStream, reasoning dropout,
  collate, token counts, forward through accelerate, reasoning-aware loss, backward, clip,
  AdamW, schedule; no logging step (``log_every`` is larger than the run).
- bare: draw the batch from its own SampleStream, collate, ``backbone.forward``,
  ``reasoning_aware_loss(...).loss.backward()``, ``clip_grad_norm_``, AdamW step, zero_grad.

The two alternate step by step in one process (trainer, bare, bare, trainer, ...: neither side
always runs first), after 5 warm-up steps each, so machine load hits both alike. Printed: the
median step time of each side, their ratio, and the median of the per-step ratios (the two runs
of a step are back to back, so slow drifts of a shared machine's load cancel out in it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the in-memory ToyDataset and its annotation writer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import torch
    from rich.console import Console

    from refine_core.loss import reasoning_aware_loss
    from refine_core.data.samples import SampleStream
    from refine_core.training import Trainer, prepare_run
    from train_toys import ToyDataset, toy_config, write_annotations

    torch.set_num_threads(args.threads)
    total = args.steps + args.warmup
    work = Path(tempfile.mkdtemp(prefix="refine-p2-"))
    dataset = ToyDataset()
    annotations = write_annotations(work / "annotations", dataset)
    config = toy_config(f"train.batch_size={args.batch}", f"train.max_steps={total + 1}",
                        f"train.log_every={total + 1}", f"train.save_every={total + 1}")

    trainer = Trainer(prepare_run(config, dataset=dataset, annotations_dir=annotations), work / "run",
                      console=Console(quiet=True))
    trainer.begin()

    bare = prepare_run(config, dataset=dataset, annotations_dir=annotations)
    model = bare.backbone.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    stream = iter(SampleStream(dataset, chunk_size=1, val_fraction=0,
                               shuffle_buffer=config.data.shuffle_buffer,
                               seed=config.train.seed, annotations=bare.annotations))
    model.train()

    def bare_step() -> None:
        samples = [next(stream) for _ in range(args.batch)]
        batch = bare.backbone.collate(samples, config.train.reasoning_order)
        out = reasoning_aware_loss(bare.backbone.forward(batch), batch["labels"], batch["action_mask"],
                                   config.loss.lambda_r)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    runs = {"trainer": trainer.train_step, "bare": lambda step: bare_step()}
    for step in range(1, total + 1):
        order = ("trainer", "bare") if step % 2 else ("bare", "trainer")  # ABBA: no side always goes first
        for name in order:
            start = time.perf_counter()
            runs[name](step)
            if step > args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"tiny hf_vlm, batch {args.batch}, {args.steps} interleaved steps after {args.warmup} warm-up, "
          f"torch threads {args.threads}, torch {torch.__version__}")
    for name in ("trainer", "bare"):
        values = sorted(times[name])
        print(f"  {name:8s} median {medians[name] * 1e3:7.1f} ms   "
              f"p10 {values[len(values) // 10] * 1e3:7.1f}   p90 {values[9 * len(values) // 10] * 1e3:7.1f}")
    paired = statistics.median(t / b for t, b in zip(times["trainer"], times["bare"]))
    print(f"  ratio trainer/bare (medians) = {medians['trainer'] / medians['bare']:.3f}  (target <= 1.05)")
    print(f"  median of per-step ratios    = {paired:.3f}  (each step's pair runs back to back)")


if __name__ == "__main__":
    main()
