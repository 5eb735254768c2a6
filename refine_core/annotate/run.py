"""One annotation run: a dataset's steps through a teacher into an annotation store.

Episodes stream from the dataset; the chosen strategy decides which steps are asked; answers
come from the content cache or from the teacher, with up to `concurrency` requests in flight
under the rate limiter (`asking`). Each answer is journaled before it counts; finished episodes
go to their file and the manifest (`store`). `AnnotationRun` is the online run; a batch API run
(`batch.BatchRun`) extends it and changes only how answers arrive.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from refine_core.annotate.asking import RateLimiter, RetryPolicy, ask
from refine_core.annotate.cache import ContentCache, content_key
from refine_core.annotate.selection import effective_price, select_episodes, step_request
from refine_core.annotate.store import AnnotationStore, AnsweredStep
from refine_core.annotate.strategy import asked_steps, carry_over, current_sub_actions, sources
from refine_core.config import AnnotateSettings
from refine_core.dataset import RobotDataset
from refine_core.reasoning import Reasoning
from refine_core.teacher import AnnotationRequest, Teacher, TokenUsage


@dataclass
class AnnotationProgress:
    """What an annotation run did so far (the progress bar shows it; the CLI prints it at the end)."""

    episodes: int = 0
    episodes_done_before: int = 0
    planned: int = 0  # asked steps this run has to settle
    settled: int = 0
    answered: int = 0  # by the teacher in this run
    cached: int = 0
    resumed: int = 0  # already answered in an earlier run
    failed: int = 0
    retried: int = 0
    jobs: int = 0  # batch mode: jobs submitted by this run or resumed from an earlier one
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failures: list[dict[str, Any]] = field(default_factory=list)
    producer_done: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("started", "producer_done")} | {
            "elapsed_s": round(time.monotonic() - self.started, 3)}


@dataclass
class EpisodeWork:
    episode_id: str
    actions: np.ndarray
    asked: list[int]
    records: dict[int, AnsweredStep]
    pending: set[int]
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)


class AnnotationRun:
    def __init__(self, dataset: RobotDataset, teacher: Teacher, store: AnnotationStore,
                 settings: AnnotateSettings,
                 shard: tuple[int, int], on_progress: Callable[[AnnotationProgress], None] | None):
        self.dataset, self.teacher, self.store, self.settings, self.shard = (
            dataset,
            teacher,
            store,
            settings,
            shard,
        )
        self.identity = teacher.identity.key()
        self.price = effective_price(teacher, settings)
        self.cache = ContentCache(settings.cache_dir) if settings.cache and teacher.cacheable else None
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.policy = RetryPolicy.from_settings(settings)
        self.stats = AnnotationProgress()
        self.on_progress = on_progress or (lambda stats: None)

    def _count_retry(self) -> None:
        self.stats.retried += 1

    def _answer(self, episode_id: str, step: int, reasoning: Reasoning, usage: TokenUsage, attempts: int,
                cached: bool, batch: str | None = None) -> AnsweredStep:
        return AnsweredStep(episode_id, step, self.identity, reasoning, usage, attempts, cached,
                            cost=round(self.price.cost(usage), 9), batch=batch)

    async def run(self) -> AnnotationProgress:
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self.settings.concurrency)
        producer = asyncio.create_task(self._produce(queue))
        workers = [asyncio.create_task(self._work(queue)) for _ in range(self.settings.concurrency)]
        done, pending = await asyncio.wait([producer, *workers], return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
        return self.stats

    async def _produce(self, queue: asyncio.Queue) -> None:
        await self._plan(lambda work, t, request: queue.put((work, t, request)))
        for _ in range(self.settings.concurrency):
            await queue.put(None)

    def _in_flight(self, work: EpisodeWork, step: int) -> bool:
        """Asked already, answer still to come (a batch job of an earlier run)."""
        return False

    async def _plan(self, dispatch: Callable[[EpisodeWork, int, AnnotationRequest], Any]) -> None:
        """Every step this run must settle: resumed and cached ones at once, the others to `dispatch`."""
        settings = self.settings
        episodes = select_episodes(self.dataset, settings.split, self.shard, settings.max_episodes)
        while True:
            # Reading (decoding) an episode can take a while: off the loop, so answers keep flowing.
            episode = await asyncio.to_thread(next, episodes, None)
            if episode is None:
                break
            self.stats.episodes += 1
            if not episode.steps:
                continue
            if self.store.is_complete(episode.episode_id):
                self.stats.episodes_done_before += 1
                self.on_progress(self.stats)
                continue
            actions = episode.actions()
            asked = asked_steps(actions, settings.strategy, settings.every)
            answered = self.store.answered(episode.episode_id)
            work = EpisodeWork(episode.episode_id, actions, asked,
                               {t: answered[t] for t in asked if t in answered},
                                {t for t in asked if t not in answered})
            self.stats.resumed += len(work.records)
            self.stats.planned += len(work.pending)
            if not work.pending:
                await self._finish(work)  # answered in an earlier run; only its file was missing
            for t in sorted(work.pending):
                if self._in_flight(work, t):
                    continue
                request = step_request(episode.steps[t], actions)
                hit = self._from_cache(request)
                if hit is not None:
                    answer = self._answer(episode.episode_id, t, hit, TokenUsage(), 0, cached=True)
                    await self.store.journal.append(answer)
                    self.stats.cached += 1
                    await self._settle(work, t, answer, None)
                else:
                    await dispatch(work, t, request)
            self.on_progress(self.stats)
        self.stats.producer_done = True
        self.on_progress(self.stats)

    def _from_cache(self, request: AnnotationRequest) -> Reasoning | None:
        if self.cache is None:
            return None
        entry = self.cache.get(content_key(self.teacher.identity, request))
        try:
            return Reasoning.model_validate(entry["reasoning"]) if entry else None
        except (KeyError, TypeError, ValueError):
            return None

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            work, t, request = item
            outcome = await ask(self.teacher, request, self.limiter, self.policy, self._count_retry)
            if outcome.reasoning is None:
                self.stats.failed += 1
                self.stats.failures.append({"episode_id": work.episode_id, "step": t,
                                            "reason": outcome.reason})
                await self._settle(work, t, None, {"step": t, "reason": outcome.reason,
                                                   "attempts": outcome.attempts})
                continue
            answer = self._answer(work.episode_id, t, outcome.reasoning, outcome.usage, outcome.attempts,
                                  cached=False)
            if self.cache is not None:
                self.cache.put(content_key(self.teacher.identity, request),
                               {"reasoning": answer.reasoning.model_dump()})
            await self.store.journal.append(answer)  # durable before it counts
            self.stats.answered += 1
            self.stats.input_tokens += outcome.usage.input_tokens
            self.stats.output_tokens += outcome.usage.output_tokens
            self.stats.cost += self.price.cost(outcome.usage)
            await self._settle(work, t, answer, None)

    async def _settle(self, work: EpisodeWork, t: int, answer: AnsweredStep | None,
                      failure: dict[str, Any] | None) -> None:
        if t not in work.pending:
            return  # settled before (a batch job collected twice after a kill)
        if answer is not None:
            work.records[t] = answer
        else:
            work.failed[t] = failure
        work.pending.discard(t)
        self.stats.settled += 1
        self.on_progress(self.stats)
        if not work.pending:
            await self._finish(work)

    async def _finish(self, work: EpisodeWork) -> None:
        steps = episode_records(work, self.identity, self.settings.strategy)
        asked_records = [work.records[t] for t in work.asked if t in work.records]
        counts = {
            "planned": len(work.actions),
            "asked": len(work.asked),
            "annotated": len(steps),
            "failed": len(work.failed),
            "retried": sum(max(r.attempts - 1, 0) for r in asked_records),
            "cached": sum(1 for r in asked_records if r.cached),
            "input_tokens": sum(r.usage.input_tokens for r in asked_records),
            "output_tokens": sum(r.usage.output_tokens for r in asked_records),
            "cost_usd": round(
                sum(self.price.cost(r.usage) if r.cost is None else r.cost for r in asked_records), 9
            ),
        }
        failed = [work.failed[t] for t in sorted(work.failed)]
        filename = await asyncio.to_thread(self.store.write_episode_file, work.episode_id, steps, failed)
        self.store.mark_finished(work.episode_id, filename, counts)
        self.store.flush(price=self.price)


def episode_records(work: EpisodeWork, teacher_key: str, strategy: str) -> list[dict[str, Any]]:
    """Every step's record: asked steps as answered, the others carried over from their source."""
    if not work.asked:
        return []
    origin = sources(len(work.actions), work.asked)
    sub_actions = current_sub_actions(work.actions) if strategy != "every_step" else []
    out = []
    for t, source in enumerate(origin):
        answer = work.records.get(source)
        if answer is None:
            continue  # its asked step failed: left for the next run
        reasoning = answer.reasoning if source == t else carry_over(answer.reasoning, sub_actions[t])
        entry: dict[str, Any] = {"step": t, "text": reasoning.render(), "reasoning": reasoning.model_dump(),
                                 "teacher": teacher_key, "source": source}
        if source == t:
            asked = answer.to_json()
            entry.update({key: asked[key] for key in ("usage", "attempts", "cached", "cost") if key in asked})
        out.append(entry)
    return out
