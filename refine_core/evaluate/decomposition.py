"""VLM2VLA's task-decomposition score over evaluation episodes.

The rubric: a decomposition passes when it names the object to manipulate and, for a task that
has one, the destination. An episode's decomposition is the text its model wrote (a subtask list),
or a `TrajectoryPlan`, of which the subtasks are read. A name counts when its words appear
together, in order, in the text, ignoring case and punctuation ("the Red  block." names
"red block"; "red cup" does not, nor "block" alone). The score is the share of passing episodes,
with its Wilson interval.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from refine_core.evaluate.closed_loop import wilson_interval
from refine_core.plan import TrajectoryPlan

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def names(text: str, name: str) -> bool:
    """The words of `name` appear together, in order, in `text`."""
    wanted, have = _words(name), _words(text)
    if not wanted:
        return False
    return any(have[i:i + len(wanted)] == wanted for i in range(len(have) - len(wanted) + 1))


@dataclass(frozen=True)
class DecompositionJudgement:
    episode_id: str
    target_named: bool
    destination_named: bool | None  # None: the task has no destination

    @property
    def passed(self) -> bool:
        return self.target_named and self.destination_named is not False


def judge_decomposition(decomposition: str | TrajectoryPlan, target: str, destination: str | None = None,
                        episode_id: str = "") -> DecompositionJudgement:
    text = "\n".join(decomposition.subtasks()) if isinstance(decomposition, TrajectoryPlan) else decomposition
    return DecompositionJudgement(episode_id, names(text, target),
                                  names(text, destination) if destination else None)


@dataclass(frozen=True)
class DecompositionScore:
    judgements: list[DecompositionJudgement]
    passed: int
    episodes: int
    rate: float  # 0 with no episodes
    interval: tuple[float, float]  # Wilson, 95%

    def summary(self) -> dict[str, Any]:
        return {"decomposition_score": self.rate, "passed": self.passed, "episodes": self.episodes,
                "interval": list(self.interval)}


def decomposition_score(records: Iterable[dict[str, Any]]) -> DecompositionScore:
    """`records`: one per evaluation episode, {"decomposition": text or plan, "target": …,
    "destination": … or None, "episode_id": …}."""
    judged = [judge_decomposition(r["decomposition"], r["target"], r.get("destination"),
                                  str(r.get("episode_id", ""))) for r in records]
    passed = sum(j.passed for j in judged)
    return DecompositionScore(judged, passed, len(judged), passed / len(judged) if judged else 0.0,
                              wilson_interval(passed, len(judged)))
