"""`retention`: does the fine-tuned model keep the base VLM's knowledge? (VLM2VLA's claim for LoRA)

Two measures, base vs fine-tuned (the base is the run's backbone rebuilt without trained weights):
multiple-choice questions about rendered demo scenes, scored by the log-likelihood of each candidate
answer; and drift, KL(base ‖ fine-tuned) of next-token distributions on held-out general text.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import BenchmarkSpec, hookimpl


class RetentionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenes: int = Field(12, ge=1, description="Demo scenes the questions are asked about (3-6 each).")
    seed: int = Field(0, description="Seed of the scenes: the question set depends only on (scenes, seed).")
    drift_prompts: int | None = Field(None, ge=1, description="General-text prompts for the drift measure "
                                                                "(None: all 12).")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples of the prompts (drift's interval).")


@hookimpl
def refine_benchmarks():
    yield BenchmarkSpec(
        name="retention",
        summary="Knowledge retention: demo-scene questions (base vs fine-tuned, Wilson intervals) and "
                "KL drift on general text",
        factory="refine_benchmarks.retention.benchmark:RetentionBenchmark",
        options=RetentionOptions,
    )
