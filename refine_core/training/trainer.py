"""The training loop: any backbone, any codec, any dataset, on accelerate.

The same code runs on the CPU, one GPU, or several processes under `accelerate launch`
(DDP; gloo on CPU). What one optimizer step does:

1. Data. Every process reads the same seeded `SampleStream` and draws the *global* batch of
   the step: `batch_size × processes × grad_accum` samples. Micro-step a of process r takes
   the slice starting at `(a × processes + r) × batch_size`. So the samples a step sees do not
   depend on how it is split: 2 processes × batch 4 train on exactly the samples of 1 process
   × batch 8, and the stream position is one number for all processes (exact resume). The
   price is that every process decodes the whole global batch. Reasoning dropout is drawn per
   step from (seed, step) over the global batch, so it too is independent of the split.
   With `data.rank_shards` process r instead reads only its own episodes (r, r + N, …) and
   draws `batch_size × grad_accum` of them (dropout from (seed, step, r)); each process's
   stream position is saved as `stream-<r>.json`, and a resume needs the same process count.
   The next step's batch is drawn and collated on a background thread while a step trains
   (`data.prefetch`, `prefetch.py`).
2. Loss. The loss of a step is the reasoning-aware loss of the whole global batch: CE sums over
   every action (reasoning) token of all micro-batches and processes, divided by their global
   counts (counted from the labels before the forward and summed across processes). Each
   micro-step back-propagates its share, scaled by the process count to undo DDP's gradient
   averaging; the accumulated gradient is then exactly the gradient of the global-batch loss,
   whatever the split into processes and micro-steps.
3. Update. Gradients are synchronised on the last micro-step only, clipped to
   `train.grad_clip` (0 = no clipping; the norm is still logged), AdamW steps (weight decay on
   matrices, not on biases and norms), the LR schedule advances once per step.

`train.precision` bf16 (or auto on a bf16 GPU) runs the forward under bf16 autocast, and then
trainable parameters are kept in float32 (frozen ones keep the backbone's dtype, e.g. bf16).
Without autocast the backbone's own dtype is trained as it is (a bf16 backbone trains in bf16).
A non-finite loss or gradient norm stops the run before the update (RefineError, exit 1),
naming the step and the last good checkpoint — one is saved first if the run has none.
Under `accelerate launch --use_fsdp` the model is sharded with FSDP2 and checkpoints hold the
shards too (see `fsdp.py`); DeepSpeed is refused.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refine_core.data.collate import drop_reasoning
from refine_core.errors import RefineError, UsageError
from refine_core.loss import reasoning_aware_loss
from refine_core.data.samples import SampleStream
from refine_core.training.checkpoint import (CHECKPOINTS, RUN_INFO, TRAINER_STATE, WEIGHTS,
    check_out_dir, resume_difference, finish_checkpoint, latest_checkpoint, load_rng, load_weights_into,
    read_json, rebase_lr, remove_partial, rng_state, run_info, save_rng, save_weights, set_rng_state,
    step_dir_name)
from refine_core.training.fsdp import (DEEPSPEED_REFUSAL, SHARDED, ShardedBackbone, clip_sharded_gradients,
    fsdp_requested, load_sharded, save_sharded, shard_backbone)
from refine_core.training.optimizer import build_adamw, mixed_precision
from refine_core.training.prefetch import StepPrefetcher
from refine_core.training.progress import announce, progress_bar
from refine_core.training.metrics import (CollapseDetector, MetricsFile, action_l1, action_predictions,
    rows_collapsed, token_counts)
from refine_core.training.setup import RunSetup

METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(RefineError):
    """The loss or the gradient norm stopped being finite."""


@dataclass
class PreparedStep:
    """A step's collated micro-batches and the stream position before and after drawing them."""

    stream_before: dict
    stream_after: dict
    micro: list[tuple[list, dict]]


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    metrics_path: Path
    last_metrics: dict[str, Any] | None


class _BackboneModule(torch.nn.Module):
    """Lets accelerate wrap (DDP, autocast) a backbone whose forward takes a batch dict."""

    def __init__(self, backbone: Any):
        super().__init__()
        self.model = backbone.model
        self.backbone = backbone

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.backbone.forward(batch)


class Trainer:
    """Trains `setup.backbone` on `setup.dataset`; writes metrics and checkpoints under `out`."""

    def __init__(self, setup: RunSetup, out: str | Path, resume: bool = False, console: Any = None,
                 err_console: Any = None, accelerator: Any = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType
        from rich.console import Console

        self.setup, self.config, self.settings = setup, setup.config, setup.config.train
        self.backbone = setup.backbone
        self.out, self.resume = Path(out), resume
        precision = mixed_precision(self.settings.precision)
        self.accelerator = accelerator or Accelerator(mixed_precision=precision)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise UsageError(DEEPSPEED_REFUSAL)
        self.fsdp = fsdp_requested(self.accelerator)
        self.rank_shards = self.config.data.rank_shards and self.accelerator.num_processes > 1
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:  # e.g. --multi_gpu on a CPU machine without --cpu
            runs = self.accelerator.num_processes
            raise UsageError(f"{launched} processes were launched but accelerate runs {runs} (each would "
                             "train alone into the same --out); for CPU processes set ACCELERATE_USE_CPU=1 "
                             f"with `accelerate launch --multi_gpu --num_processes {launched}`")
        quiet = not self.accelerator.is_main_process
        self.console = console or Console(quiet=quiet)
        self.err_console = err_console or Console(stderr=True, quiet=quiet)
        self.metrics = MetricsFile(self.out / METRICS_FILE)
        self.detector = CollapseDetector(self.settings.collapse_window)
        self.step = 0

    # -- setup ----------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.backbone.model.named_parameters() if p.requires_grad]

    def _saved_names(self) -> set[str]:
        names = {n for n, _ in self._trainable()}
        if self.setup.resized_embeddings:  # new codec rows were initialised at random: keep them
            model = self.backbone.model
            modules = [model.get_input_embeddings(), model.get_output_embeddings()]
            ids = {id(p) for m in modules if m is not None for p in m.parameters()}
            names |= {n for n, p in model.named_parameters() if id(p) in ids}
        return names

    def _build_optimizer(self) -> None:
        trainable = self._trainable()
        if not trainable:
            raise UsageError("nothing to train: every parameter is frozen (check freeze.* and lora.*)")
        if self.accelerator.mixed_precision != "no":  # autocast casts per op: fp32 master weights are safe
            for _, parameter in trainable:
                if parameter.dtype in (torch.bfloat16, torch.float16):
                    parameter.data = parameter.data.float()
        if self.fsdp:  # after the cast (FSDP keeps the dtypes it is given); parameters become DTensors
            shard_backbone(self.backbone, self.accelerator)
            trainable = self._trainable()
        self.parameters = [p for _, p in trainable]
        self.optimizer, self.scheduler = build_adamw(self.parameters, self.settings)

    def _build_stream(self) -> None:
        data = self.config.data
        self.stream = SampleStream(
            self.setup.dataset, chunk_size=self.backbone.codec.chunk_size, split="train",
            val_fraction=data.val_fraction, max_episodes=data.max_episodes, seed=self.settings.seed,
            shuffle_buffer=data.shuffle_buffer, annotations=self.setup.annotations,
            missing_annotation=data.missing_annotation, plans=self.setup.plans,
            vlm2vla=self.config.vlm2vla if self.setup.plans is not None else None,
            **({"rank": self.accelerator.process_index, "world_size": self.accelerator.num_processes}
               if self.rank_shards else {}))

    def _restore(self, checkpoint: Path) -> None:
        info = read_json(checkpoint / RUN_INFO)
        difference = resume_difference(info.get("config", {}), self.config.to_dict())
        if difference:
            raise UsageError(f"--resume: the config differs from {checkpoint.name}'s at {difference}; resume "
                             f"with the run's config, or start a new run in another --out")
        state = read_json(checkpoint / TRAINER_STATE)
        if (checkpoint / SHARDED).is_dir() != self.fsdp:
            raise UsageError(f"--resume: {checkpoint.name} was {'not ' if self.fsdp else ''}saved by an FSDP "
                             f"run and this run is {'' if self.fsdp else 'not '}one: launch it as it was")
        if self.fsdp:
            load_sharded(self.backbone.model, self.optimizer, self._saved_names(), checkpoint)
        else:
            load_weights_into(self.backbone.model, checkpoint / WEIGHTS)
            self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        if info.get("config", {}).get("train", {}).get("lr") != self.settings.lr:
            rebase_lr(self.scheduler, self.settings.lr)  # a lower lr after a divergence, as advised
        if self.rank_shards and state.get("world_size") != self.accelerator.num_processes:
            raise UsageError(f"--resume: {checkpoint.name} was saved by {state.get('world_size')} processes "
                             "each reading its own episodes (data.rank_shards): resume with as many")
        self.stream.load_state_dict(read_json(checkpoint / f"stream-{self.accelerator.process_index}.json")
                                    if self.rank_shards else state["stream"])
        self.detector.load_state_dict(state["collapse"])
        self.step = int(state["step"])

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, step: int, stream_state: dict | None = None, rng: dict | None = None) -> Path:
        """Write step's checkpoint atomically (all processes call this)."""
        acc = self.accelerator
        root = self.out / CHECKPOINTS
        tmp = root / f".tmp-{step_dir_name(step)}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_rng(rng if rng is not None else rng_state(), tmp / f"rng-{acc.process_index}.safetensors")
        if self.rank_shards:  # each process's own position in its own episodes
            (tmp / f"stream-{acc.process_index}.json").write_text(json.dumps(stream_state
                                                                             or self.stream.state_dict()))
        saved, kind = self._saved_names(), "adapter" if self.setup.lora_modules else "trainable"
        if self.fsdp:
            save_sharded(self.backbone.model, self.optimizer, saved, tmp, kind, self.is_main)
        elif self.is_main:
            save_weights(tmp / WEIGHTS,
                         {n: p for n, p in self.backbone.model.named_parameters() if n in saved}, kind)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        if self.is_main:
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / TRAINER_STATE).write_text(json.dumps({
                "step": step, "stream": stream_state or self.stream.state_dict(),
                "collapse": self.detector.state_dict(), "world_size": acc.num_processes}, indent=2))
            (tmp / RUN_INFO).write_text(json.dumps(run_info(self.setup, step), indent=2))
        acc.wait_for_everyone()
        if self.is_main:
            finish_checkpoint(tmp, self.out, step, self.settings.keep_checkpoints)
        acc.wait_for_everyone()
        return root / step_dir_name(step)

    # -- the loop -------------------------------------------------------------------------------
    def _draw(self, count: int) -> list:
        try:
            return [next(self.samples) for _ in range(count)]
        except ValueError as exc:  # the split has no samples at all
            raise UsageError(f"cannot train: {exc}") from None

    def _is_log_step(self, step: int) -> bool:
        return step % self.settings.log_every == 0 or step == self.settings.max_steps

    def prepare_step(self, step: int) -> PreparedStep:
        """Draw and collate step's batch (no model, no global RNG: safe on the prefetch thread)."""
        acc, s = self.accelerator, self.settings
        world, rank, size = acc.num_processes, acc.process_index, s.batch_size
        before = self.stream.state_dict()
        # one global batch that each process slices, or (rank_shards) each process's own samples
        shards = self.rank_shards
        samples = self._draw(size * s.grad_accum * (1 if shards else world))
        rng = np.random.default_rng([s.seed, step, rank] if shards else [s.seed, step])
        drops = [drop_reasoning(rng, s.reasoning_dropout) for _ in samples]
        micro = []
        for a in range(s.grad_accum):
            lo = a * size if shards else (a * world + rank) * size
            mine = samples[lo:lo + size]
            micro.append((mine, self.backbone.collate(mine, s.reasoning_order, drops[lo:lo + size])))
        return PreparedStep(before, self.stream.state_dict(), micro)

    def train_step(self, step: int, prepared: PreparedStep | None = None) -> dict[str, Any] | None:
        acc, s = self.accelerator, self.settings
        world = acc.num_processes
        lambda_r = self.config.loss.lambda_r
        prepared = prepared or self.prepare_step(step)
        start, micro = (prepared.stream_before, rng_state()), prepared.micro
        counts = torch.tensor([sum(c) for c in zip(*(token_counts(b) for _, b in micro))],
                              dtype=torch.float64, device=acc.device)
        counts = acc.reduce(counts, "sum") if world > 1 else counts
        n_action, n_reasoning = max(float(counts[0]), 1.0), max(float(counts[1]), 1.0)
        totals = torch.zeros(4, dtype=torch.float64, device=acc.device)
        logging = self._is_log_step(step)
        rows, truths = [], []
        for index, (mine, batch) in enumerate(micro):
            last = index == len(micro) - 1
            with nullcontext() if last else acc.no_sync(self.wrapped):
                logits = self.wrapped(batch)
                out = reasoning_aware_loss(logits, batch["labels"], batch["action_mask"], lambda_r)
                action_sum = out.action_loss * max(out.num_action_tokens, 1)
                reasoning_sum = out.reasoning_loss * max(out.num_reasoning_tokens, 1)
                acc.backward((action_sum / n_action + lambda_r * reasoning_sum / n_reasoning) * world)
            totals += torch.stack([action_sum.detach().double(), reasoning_sum.detach().double(),
                                   out.action_accuracy.double() * max(out.num_action_tokens, 1),
                                   out.reasoning_accuracy.double() * max(out.num_reasoning_tokens,
                                                                         1)]).to(totals.device)
            if last and logging:
                rows = action_predictions(logits.detach(), batch, self.backbone.eos_id)
                truths = [sample.actions for sample in mine]
            del logits, out
        totals = acc.reduce(totals, "sum") if world > 1 else totals
        loss = float(totals[0]) / n_action + lambda_r * float(totals[1]) / n_reasoning
        clip = clip_sharded_gradients if self.fsdp else acc.clip_grad_norm_
        grad_norm = float(clip(self.parameters, s.grad_clip if s.grad_clip > 0 else float("inf")))
        lr = self.scheduler.get_last_lr()[0]
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self._diverged(step, loss, grad_norm, lr, start)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not logging:
            return None
        l1_sum, decoded = action_l1(self.backbone.codec, [p for p, _ in rows], truths)
        verdict = rows_collapsed(rows)
        extra = torch.tensor([l1_sum, decoded, len(rows), verdict is True, verdict is not None],
                             dtype=torch.float64, device=acc.device)
        extra = acc.reduce(extra, "sum") if world > 1 else extra
        l1_sum, decoded, n_rows, n_collapsed, n_judged = (float(v) for v in extra)
        warning = self.detector.update(None if n_judged == 0 else n_collapsed == n_judged)
        record = {
            "step": step, "loss": loss, "action_loss": float(totals[0]) / n_action,
            "reasoning_loss": float(totals[1]) / n_reasoning, "action_accuracy": float(totals[2]) / n_action,
            "reasoning_accuracy": float(totals[3]) / n_reasoning,
            "action_l1": l1_sum / decoded if decoded else None, "lr": lr, "grad_norm": grad_norm,
            "samples_per_s": None, "action_decoded": decoded / n_rows if n_rows else None,
            "collapse": self.detector.collapsed,
        }
        if warning:
            record["warning"] = warning
            self.err_console.print(f"[yellow]warning:[/] step {step}: {warning}", highlight=False,
                                   soft_wrap=True)
        return record

    def _diverged(self, step: int, loss: float, grad_norm: float, lr: float,
                  start: tuple[dict, dict]) -> None:
        what = f"loss ({loss})" if not math.isfinite(loss) else f"gradient norm ({grad_norm})"
        if self.is_main:
            self.metrics.append({"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr,
                                 "error": f"non-finite {what}"})
        latest = latest_checkpoint(self.out)
        if latest is None:  # the weights are still those after step-1: save them before stopping
            self.optimizer.zero_grad(set_to_none=True)
            latest = self.save_checkpoint(step - 1, stream_state=start[0], rng=start[1])
        raise TrainingDiverged(
            f"Non-finite {what} at step {step}; training stopped before that update. Last good checkpoint: "
            f"{latest}. Lower train.lr or check the data, then continue with --resume")

    def begin(self) -> Path | None:
        """Everything before the first step: output directory, optimizer, data, resume, accelerate.
        Returns the checkpoint resumed from (None for a new run)."""
        acc, s = self.accelerator, self.settings
        resume_from = check_out_dir(self.out, self.resume)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_partial(self.out)
        acc.wait_for_everyone()
        self._build_optimizer()
        self._build_stream()
        if resume_from is not None:
            self._restore(resume_from)
            if self.is_main:
                self.metrics.truncate_after(self.step)
        else:
            from accelerate.utils import set_seed

            set_seed(s.seed)
            if self.is_main:
                self.metrics.path.unlink(missing_ok=True)
        self.backbone.model.train()
        if self.fsdp:  # already sharded: accelerate's prepare would wrap it again
            self.wrapped = ShardedBackbone(self.backbone, acc)
        else:
            self.wrapped, self.optimizer = acc.prepare(_BackboneModule(self.backbone), self.optimizer)
        if resume_from is not None:
            set_rng_state(load_rng(resume_from, acc.process_index))
        self.samples = iter(self.stream)
        return resume_from

    def fit(self) -> TrainResult:
        """Train from step 1 (or the resumed step) to `train.max_steps`."""
        acc, s = self.accelerator, self.settings
        resume_from = self.begin()
        first_step = self.step
        announce(self, resume_from)
        checkpoint = resume_from
        last_record = None
        global_batch = s.batch_size * acc.num_processes * s.grad_accum
        window_start, window_steps = time.perf_counter(), 0
        prefetcher = StepPrefetcher(self.prepare_step, s.max_steps, enabled=self.config.data.prefetch)
        with progress_bar(self.console, self.is_main) as progress, prefetcher:
            task = progress.add_task("training", total=s.max_steps, completed=self.step)
            for step in range(self.step + 1, s.max_steps + 1):
                prepared = prefetcher.get(step)
                record = self.train_step(step, prepared)
                self.step, window_steps = step, window_steps + 1
                if record is not None:
                    now = time.perf_counter()
                    record["samples_per_s"] = global_batch * window_steps / max(now - window_start, 1e-9)
                    window_start, window_steps = now, 0
                    if self.is_main:
                        self.metrics.append(record)
                    last_record = record
                    progress.update(task, description=f"loss {record['loss']:.4f}")
                if step % s.save_every == 0 or step == s.max_steps:
                    checkpoint = self.save_checkpoint(step, stream_state=prepared.stream_after)
                progress.update(task, completed=step)
        if resume_from is not None and first_step >= s.max_steps:
            self.console.print(f"{resume_from.name} already reached train.max_steps={s.max_steps}; nothing "
                               "to do")
        return TrainResult(step=self.step, checkpoint=checkpoint, metrics_path=self.metrics.path,
                           last_metrics=last_record)


def train(setup: RunSetup, out: str | Path, resume: bool = False, **kwargs: Any) -> TrainResult:
    """Train a prepared run (see `prepare_run`); returns the final step, checkpoint and metrics."""
    return Trainer(setup, out, resume=resume, **kwargs).fit()
