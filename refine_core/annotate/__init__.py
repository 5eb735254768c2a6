"""The annotation pipeline behind `refine annotate` (strategies, concurrency, rate limits,
retries, durable store, content cache, cost). See `run` for the flow and `store` for
the durability rules; the on-disk format is `refine_core.data.annotation_set`."""
from __future__ import annotations

from refine_core.annotate.estimate import Estimate, estimate_run
from refine_core.annotate.asking import RateLimiter, RetryPolicy, ask
from refine_core.annotate.pipeline import annotate_dataset
from refine_core.annotate.run import AnnotationProgress, AnnotationRun
from refine_core.annotate.selection import parse_shard, select_episodes, shard_of
from refine_core.annotate.prompt import (PROMPT_VERSION, TeacherAnswer, answer_json_schema, build_prompt,
    reasoning_from_answer)
from refine_core.annotate.strategy import STRATEGIES, asked_steps

__all__ = [
    "Estimate", "PROMPT_VERSION", "RateLimiter", "RetryPolicy", "AnnotationProgress", "AnnotationRun",
    "STRATEGIES", "TeacherAnswer",
    "annotate_dataset", "answer_json_schema", "ask", "asked_steps", "build_prompt", "estimate_run",
    "parse_shard", "reasoning_from_answer", "select_episodes", "shard_of",
]
