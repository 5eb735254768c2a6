"""A minimal `Benchmark`: teacher-forced action-token accuracy on held-out episodes."""
from __future__ import annotations

from refine_core import Benchmark, BenchmarkResult, EvalContext, SampleStream, episode_samples


class AccuracyBenchmark(Benchmark):
    name = "template-accuracy"

    def __init__(self, options) -> None:
        self.options = options

    def evaluate(self, context: EvalContext) -> BenchmarkResult:
        import torch

        from refine_core import reasoning_aware_loss

        backbone = context.backbone
        stream = SampleStream(context.dataset, chunk_size=backbone.codec.chunk_size, split="val",
                              val_fraction=context.val_fraction)
        records = []
        for episode in stream.episodes():
            if len(records) >= self.options.max_episodes:
                break
            samples = list(episode_samples(episode, backbone.codec.chunk_size))
            with torch.no_grad():
                batch = backbone.collate(samples, order=context.reasoning_order)
                out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"])
            records.append({"episode_id": episode.episode_id, "steps": len(samples),
                            "action_token_accuracy": float(out.action_accuracy)})
        steps = sum(r["steps"] for r in records)
        mean = sum(r["action_token_accuracy"] * r["steps"] for r in records) / steps if steps else None
        return BenchmarkResult(records=records, summary={"episodes": len(records), "steps": steps,
                                                         "action_token_accuracy": mean})
