"""The `retention` benchmark: question accuracy of base and fine-tuned model, their agreement, and drift.

Scoring: each question's candidate answers are scored by summed log-likelihood after the question
and the highest wins (no generation). A tiny or freshly fine-tuned model seldom generates a clean
one-word answer, so greedy exact match would measure formatting, not knowledge; option scoring
reads the knowledge directly and works for every backbone. Candidates are mostly one token, so
summing does not favour short answers in practice.

Drift: KL(base ‖ fine-tuned), the expected extra surprise of the fine-tuned model where the base
puts its probability, per position of held-out general text, averaged over positions then prompts.
0 means identical next-token distributions (fresh LoRA adapters, B = 0, give exactly 0).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refine_core import Benchmark, BenchmarkResult, EvalContext, wilson_interval

from . import RetentionOptions
from .measures import (GENERAL_PROMPTS, bootstrap_mean_interval, kl_per_text, next_token_log_probs,
                       on_accelerator, option_log_likelihoods)
from .questions import Question, build_question_set

KINDS = ("colour", "count", "position")
DRIFT_MEANING = ("mean KL(base ‖ fine-tuned) in nats per token of held-out general text: 0 = the same "
                 "next-token distributions as the base; larger = the fine-tuned model moved further from "
                 "the base's language knowledge")


def answer_questions(backbone: Any, questions: list[Question], images: dict[int, np.ndarray]) -> list[dict]:
    """Per question: the chosen candidate, whether it is right, and every candidate's score."""
    out = []
    for q in questions:
        scores = option_log_likelihoods(backbone, images[q.scene], q.question, q.candidates)
        choice = q.candidates[int(np.argmax(scores))]
        out.append({"choice": choice, "correct": choice == q.answer, "scores": [round(s, 4) for s in scores]})
    return out


def rate(successes: int, trials: int) -> dict[str, Any]:
    return {"rate": successes / trials if trials else None, "ci95": list(wilson_interval(successes, trials)),
            "successes": successes, "trials": trials}


def accuracy(answers: list[dict], questions: list[Question]) -> dict[str, Any]:
    out = rate(sum(a["correct"] for a in answers), len(answers))
    out["by_kind"] = {kind: rate(sum(a["correct"] for a, q in zip(answers, questions) if q.kind == kind),
                                 sum(q.kind == kind for q in questions)) for kind in KINDS}
    return out


def drift_summary(per_prompt: list[float], resamples: int) -> dict[str, Any]:
    return {"kl_mean": float(np.mean(per_prompt)), "ci95": bootstrap_mean_interval(per_prompt, resamples),
            "per_prompt_std": float(np.std(per_prompt)), "max": float(np.max(per_prompt)),
            "prompts": len(per_prompt), "direction": "KL(base ‖ fine-tuned)", "meaning": DRIFT_MEANING}


class RetentionBenchmark(Benchmark):
    name = "retention"

    def __init__(self, options: RetentionOptions | None = None) -> None:
        self.options = options or RetentionOptions()

    def evaluate(self, context: EvalContext) -> BenchmarkResult:
        questions, images = build_question_set(self.options.scenes, self.options.seed)
        prompts = GENERAL_PROMPTS[: self.options.drift_prompts or len(GENERAL_PROMPTS)]
        # one model on the accelerator at a time: a real base + fine-tuned pair may not fit side by side
        with on_accelerator(context.backbone) as tuned:
            tuned_answers = answer_questions(tuned, questions, images)
            tuned_lp = next_token_log_probs(tuned, prompts)
        base_answers, per_prompt, notes = None, None, []
        if context.base_backbone is None:
            notes.append("no base model in this evaluation: the fine-tuned model alone is scored, no drift")
        else:
            with on_accelerator(context.base_backbone()) as base:
                base_answers = answer_questions(base, questions, images)
                per_prompt = kl_per_text(next_token_log_probs(base, prompts), tuned_lp)
        del tuned_lp
        records = []
        for i, q in enumerate(questions):
            record = {"key": q.key, "kind": q.kind, "question": q.question, "answer": q.answer,
                      "candidates": list(q.candidates), "fine_tuned": tuned_answers[i]}
            if base_answers is not None:
                record["base"] = base_answers[i]
            records.append(record)
        for i, prompt in enumerate(prompts):
            records.append({"key": f"drift/{i}", "kind": "drift", "prompt": prompt,
                            "kl": None if per_prompt is None else per_prompt[i]})
        summary: dict[str, Any] = {
            "benchmark": self.name, "questions": len(questions), "scenes": self.options.scenes,
            "seed": self.options.seed,
            "scoring": "highest summed log-likelihood among the candidate answers",
            "chance_accuracy": float(np.mean([1 / len(q.candidates) for q in questions])),
            "fine_tuned": accuracy(tuned_answers, questions),
            "base": accuracy(base_answers, questions) if base_answers is not None else None,
            "agreement": (rate(sum(b["choice"] == t["choice"] for b, t in zip(base_answers, tuned_answers)),
                               len(questions)) if base_answers is not None else None),
            "drift": drift_summary(per_prompt, self.options.bootstrap) if per_prompt is not None else None,
            "notes": notes,
        }
        return BenchmarkResult(records=records, summary=summary)
