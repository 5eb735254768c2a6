"""Offline evaluation on held-out episodes (the validation split of the training dataset).

Per episode:
- teacher-forced: action-token and reasoning-token argmax accuracy (the training metrics, on
  data the model never trained on), with the annotations' reasoning when given;
- free-running: at `free_running_steps` evenly spaced steps, generate with and without
  reasoning, decode, and compare the first action of the chunk with the ground truth:
  per-dimension L1 (in the dataset's units), gripper accuracy, and the decode-failure rate;
  with reasoning, the generated reasoning against the teacher's for that step, section by
  section (exact match, token F1, the sub-action's phase: `compare_reasoning`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from refine_core import (Benchmark, BenchmarkResult, EvalContext, GRIPPER, SampleStream, compare_reasoning,
    episode_samples, get_reasoning_format, reasoning_aware_loss, summarise_reasoning)

MODES = {"with_reasoning": True, "without_reasoning": False}


def _spaced(n: int, k: int) -> list[int]:
    if k <= 0 or n == 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


class OfflineBenchmark(Benchmark):
    name = "offline"

    def __init__(self, options) -> None:
        self.options = options

    @staticmethod
    def opening(context: EvalContext) -> str:
        """The opening of the reasoning the model was trained on, forced when it is asked to reason."""
        return get_reasoning_format(context.reasoning_format).opening

    def evaluate(self, context: EvalContext) -> BenchmarkResult:
        backbone = context.backbone
        stream = SampleStream(context.dataset, chunk_size=backbone.codec.chunk_size, split="val",
                              val_fraction=context.val_fraction, annotations=context.annotations)
        records = []
        with backbone.inference():
            for episode in stream.episodes():
                if self.options.max_episodes is not None and len(records) >= self.options.max_episodes:
                    break
                samples = list(episode_samples(episode, backbone.codec.chunk_size, context.annotations))
                if samples:
                    records.append(self._episode(context, episode.episode_id, samples))
        if not records:
            raise ValueError(f"dataset '{context.dataset.name}' has no held-out episodes "
                             f"(data.val_fraction={context.val_fraction}); raise data.val_fraction")
        summary = self._summary(records, backbone)
        if (context.reasoning_order == "reason_then_act" and context.reasoning_dropout == 0
                and context.annotations is not None):
            summary["without_reasoning"]["note"] = (
                "trained reason_then_act with train.reasoning_dropout=0: every training sample reasoned "
                "before acting, so acting without reasoning was never taught (use reasoning_dropout > 0 "
                "or act_then_reason to compare both)")
        return BenchmarkResult(records=records, summary=summary)

    @torch.no_grad()
    def _episode(self, context: EvalContext, episode_id: str, samples) -> dict:
        backbone = context.backbone
        hits = {"action": [0.0, 0], "reasoning": [0.0, 0]}
        for start in range(0, len(samples), self.options.batch_size):
            batch = backbone.collate(samples[start:start + self.options.batch_size],
                                     order=context.reasoning_order)
            out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"],
                                       context.lambda_r)
            hits["action"][0] += float(out.action_accuracy) * out.num_action_tokens
            hits["action"][1] += out.num_action_tokens
            hits["reasoning"][0] += float(out.reasoning_accuracy) * out.num_reasoning_tokens
            hits["reasoning"][1] += out.num_reasoning_tokens
        record = {
            "episode_id": episode_id,
            "steps": len(samples),
            "instruction": samples[0].instruction,
            "action_tokens": hits["action"][1],
            "reasoning_tokens": hits["reasoning"][1],
            "action_token_accuracy": hits["action"][0] / hits["action"][1] if hits["action"][1] else None,
            "reasoning_token_accuracy": hits["reasoning"][0] / hits["reasoning"][1]
            if hits["reasoning"][1]
            else None,
        }
        chosen = [samples[i] for i in _spaced(len(samples), self.options.free_running_steps)]
        for mode, with_reasoning in MODES.items():
            record[mode] = self._free_running(context, chosen, with_reasoning) if chosen else None
        return record

    def _free_running(self, context: EvalContext, samples, with_reasoning: bool) -> dict:
        errors, grippers, failures, forced, example, scores = [], [], 0, 0, None, []
        reasoning_format = get_reasoning_format(context.reasoning_format)
        for sample in samples:
            prediction = context.backbone.predict(sample.image, sample.instruction, reasoning=with_reasoning,
                                                  order=context.reasoning_order,
                                                  max_new_tokens=self.options.max_new_tokens,
                                                  constrain_actions=self.options.constrain_actions,
                                                  reasoning_opening=self.opening(context))
            forced += prediction.forced
            if with_reasoning and example is None and prediction.reasoning:
                example = {"step": sample.key, "reasoning": prediction.reasoning}
            if with_reasoning and sample.reasoning and context.reasoning_order == "reason_then_act":
                scores.append(compare_reasoning(prediction.reasoning, sample.reasoning, reasoning_format))
            if prediction.actions is None:
                failures += 1
                continue
            truth, guess = sample.actions[0], prediction.actions[0]
            errors.append(np.abs(guess - truth))
            grippers.append(float((guess[GRIPPER] >= 0.5) == (truth[GRIPPER] >= 0.5)))
        l1 = np.mean(errors, axis=0) if errors else None
        return {
            "predictions": len(samples), "decode_failures": failures, "forced": forced,
            "l1_per_dim": l1.tolist() if l1 is not None else None,
            "l1_mean": float(np.mean(l1[:GRIPPER])) if l1 is not None else None,
            "gripper_accuracy": float(np.mean(grippers)) if grippers else None,
            "example": example, "reasoning_scores": scores,
        }

    @staticmethod
    def _summary(records: list[dict], backbone) -> dict:
        def weighted(key: str, weight: str):
            pairs = [(r[key], r[weight]) for r in records if r[key] is not None and r[weight]]
            total = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / total if total else None

        summary = {
            "episodes": len(records), "steps": sum(r["steps"] for r in records),
            "action_token_accuracy": weighted("action_token_accuracy", "action_tokens"),
            "reasoning_token_accuracy": weighted("reasoning_token_accuracy", "reasoning_tokens"),
        }
        ids = backbone.codec.action_token_ids
        summary["action_token_chance"] = 1.0 / len(ids) if ids is not None and len(ids) else None
        for mode in MODES:
            runs = [r[mode] for r in records if r.get(mode)]
            predictions = sum(m["predictions"] for m in runs)
            decoded = [m for m in runs if m["l1_per_dim"] is not None]
            summary[mode] = {
                "predictions": predictions,
                "decode_failure_rate": (sum(m["decode_failures"] for m in runs) / predictions)
                if predictions
                else None,
                "forced_rate": (sum(m.get("forced", 0) for m in runs) / predictions) if predictions else None,
                "l1_per_dim": np.mean([m["l1_per_dim"] for m in decoded], axis=0).tolist()
                if decoded
                else None,
                "l1_mean": float(np.mean([m["l1_mean"] for m in decoded])) if decoded else None,
                "gripper_accuracy": float(np.mean([m["gripper_accuracy"] for m in decoded]))
                if decoded
                else None,
            }
        summary["reasoning_quality"] = summarise_reasoning(
            score for r in records if r.get("with_reasoning")
            for score in r["with_reasoning"]["reasoning_scores"])
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
