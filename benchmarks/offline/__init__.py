"""`offline`: held-out episodes of the training dataset, teacher-forced and free-running."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from refine_core import BenchmarkSpec, hookimpl


class OfflineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_episodes: int | None = Field(8, ge=1, description="Held-out episodes to evaluate (None: all).")
    batch_size: int = Field(8, ge=1, description="Teacher-forced batch size.")
    free_running_steps: int = Field(4, ge=0, description="Steps per episode predicted free-running "
                                                         "(evenly spaced; 0 = teacher-forced only).")
    max_new_tokens: int = Field(512, ge=1, description="Generation budget for reasoning + actions "
                                                        "(a teacher's reasoning is often 200-400 tokens).")
    constrain_actions: bool = Field(True,
                                    description="Decode the action span under the codec's id constraints "
                                                      "(always executable); reasoning that never reached a "
                                                      "valid "
                                                      "span is counted as forced.")


@hookimpl
def refine_benchmarks():
    yield BenchmarkSpec(
        name="offline",
        summary="Held-out episodes: teacher-forced token accuracy and free-running action L1 / gripper "
                "accuracy",
        factory="refine_benchmarks.offline.benchmark:OfflineBenchmark",
        options=OfflineOptions,
    )
