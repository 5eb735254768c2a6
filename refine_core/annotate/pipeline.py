"""The annotation pipeline: a dataset's steps through a teacher into a durable annotation set.

Episodes stream from the dataset; the chosen strategy decides which steps are asked; answers
come from the content cache or from the teacher, with up to `concurrency` requests in flight
under the rate limiter, retried on transient errors and re-asked on malformed answers. Each
answer is journaled before it counts; finished episodes go to their file and the manifest (see
`store`). Model- and vendor-agnostic: a teacher is anything implementing `refine_core.Teacher`.
A teacher whose `batch` API is on goes through `batch` instead (same store, cache and records).
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from refine_core.config import AnnotateSettings
from refine_core.dataset import RobotDataset
from refine_core.episode import Episode, Step
from refine_core.errors import RefineError, UsageError
from refine_core.reasoning import Reasoning
from refine_core.teacher import (AnnotationRequest, MalformedAnswer, PermanentTeacherError, Price, Teacher,
                       TeacherIdentity, TokenUsage, TransientTeacherError)
from refine_core.annotate.cache import ContentCache, content_key
from refine_core.annotate.asking import RateLimiter, RetryPolicy
from refine_core.annotate.store import AnnotationStore
from refine_core.annotate.strategy import asked_steps, carry_over, current_sub_actions, sources


# -- selection -----------------------------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/n" (0 <= i < n) → (i, n); None → (0, 1)."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"Bad --shard '{text}': write it as i/n, e.g. 0/4 (shards 0..n-1)") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"Bad --shard '{text}': need 0 <= i < n, e.g. 0/4")
    return index, count


def shard_of(episode_id: str, count: int) -> int:
    """Which of `count` shards owns an episode: a hash of its id, so it does not depend on order."""
    return int(hashlib.sha1(episode_id.encode()).hexdigest()[:12], 16) % count


def select_episodes(dataset: RobotDataset, split: str, shard: tuple[int, int],
                    max_episodes: int | None = None) -> Iterator[Episode]:
    """The episodes this shard annotates (`max_episodes` counts dataset episodes, before sharding,
    so every shard of a capped run sees the same episode pool)."""
    for position, episode in enumerate(dataset.episodes(split)):
        if max_episodes is not None and position >= max_episodes:
            return
        if shard_of(episode.episode_id, shard[1]) == shard[0]:
            yield episode


def run_header(dataset: RobotDataset, identity: TeacherIdentity, settings: AnnotateSettings) -> dict[str, Any]:
    return {"dataset": dataset.name, "dataset_identity": dataset.identity, "teacher": identity.key(),
            "strategy": settings.strategy, "every": settings.every if settings.strategy == "every_k" else None}


def effective_price(teacher: Teacher, settings: AnnotateSettings) -> Price:
    base = teacher.price
    return Price(
        input_per_million=base.input_per_million if settings.price_input_per_million is None
        else settings.price_input_per_million,
        output_per_million=base.output_per_million if settings.price_output_per_million is None
        else settings.price_output_per_million,
    )


def step_request(step: Step, episode_actions: np.ndarray) -> AnnotationRequest:
    return AnnotationRequest(instruction=step.instruction, images=step.images, primary_camera=step.primary_camera,
                             episode_id=step.episode_id, step_index=step.step_index, action=step.action,
                             metadata=step.metadata, episode_actions=episode_actions)


# -- one request -----------------------------------------------------------------------------
@dataclass
class RunStats:
    """What this run did so far (the progress bar shows it; the CLI prints it at the end)."""

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
class Outcome:
    reasoning: Reasoning | None
    usage: TokenUsage
    attempts: int
    reason: str | None = None


async def ask(teacher: Teacher, request: AnnotationRequest, limiter: RateLimiter, policy: RetryPolicy,
              stats: RunStats | None = None) -> Outcome:
    """One step's answer, after retries and re-asks; a failure comes back with its reason."""
    retries = reasks = attempts = 0
    while True:
        estimate = teacher.estimate_usage(request)
        reserved = estimate.input_tokens + estimate.output_tokens
        await limiter.acquire(reserved)
        attempts += 1
        try:
            call = teacher.annotate(request)
            annotation = await (asyncio.wait_for(call, policy.request_timeout) if policy.request_timeout else call)
        except (TimeoutError, asyncio.TimeoutError):
            error: Exception = TransientTeacherError(f"no answer within {policy.request_timeout:g} s")
        except (TransientTeacherError, MalformedAnswer) as exc:
            error = exc
        except PermanentTeacherError as exc:
            return Outcome(None, TokenUsage(), attempts, f"rejected: {exc}")
        except RefineError:
            raise  # e.g. a rejected API key: no point asking anything else
        except Exception as exc:  # a teacher bug must not lose the run; it is recorded per step
            return Outcome(None, TokenUsage(), attempts, f"{type(exc).__name__}: {exc}")
        else:
            usage = annotation.usage
            limiter.settle(reserved, usage.input_tokens + usage.output_tokens)
            return Outcome(annotation.reasoning, usage, attempts)
        if isinstance(error, MalformedAnswer):
            if reasks >= policy.max_reasks:
                return Outcome(None, TokenUsage(), attempts, f"malformed answer {reasks + 1} times: {error}")
            reasks += 1
        else:
            limiter.settle(reserved, 0)  # refused or lost requests do not use the token budget
            if retries >= policy.max_retries:
                return Outcome(None, TokenUsage(), attempts, f"gave up after {attempts} attempts: {error}")
            await asyncio.sleep(policy.delay(retries, getattr(error, "retry_after", None)))
            retries += 1
        if stats is not None:
            stats.retried += 1


# -- the run ---------------------------------------------------------------------------------
@dataclass
class _EpisodeWork:
    episode_id: str
    actions: np.ndarray
    asked: list[int]
    records: dict[int, dict[str, Any]]
    pending: set[int]
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)


class _Run:
    def __init__(self, dataset: RobotDataset, teacher: Teacher, store: AnnotationStore, settings: AnnotateSettings,
                 shard: tuple[int, int], on_progress: Callable[[RunStats], None] | None):
        self.dataset, self.teacher, self.store, self.settings, self.shard = dataset, teacher, store, settings, shard
        self.identity = teacher.identity.key()
        self.price = effective_price(teacher, settings)
        self.cache = ContentCache(settings.cache_dir) if settings.cache and teacher.cacheable else None
        self.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
        self.policy = RetryPolicy(max_retries=settings.max_retries, max_reasks=settings.max_reasks,
                                  initial_delay=settings.backoff_initial, max_delay=settings.backoff_max,
                                  request_timeout=settings.request_timeout)
        self.stats = RunStats()
        self.on_progress = on_progress or (lambda stats: None)

    def _record(self, episode_id: str, step: int, reasoning: Reasoning, usage: TokenUsage, attempts: int,
                cached: bool) -> dict[str, Any]:
        return {"episode_id": episode_id, "step": step, "teacher": self.identity,
                "reasoning": reasoning.model_dump(), "usage": {"input": usage.input_tokens, "output": usage.output_tokens},
                "cost": round(self.price.cost(usage), 9), "attempts": attempts, "cached": cached}

    async def run(self) -> RunStats:
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

    def _in_flight(self, work: _EpisodeWork, step: int) -> bool:
        """Asked already, answer still to come (a batch job of an earlier run)."""
        return False

    async def _plan(self, dispatch: Callable[[_EpisodeWork, int, AnnotationRequest], Any]) -> None:
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
            work = _EpisodeWork(episode.episode_id, actions, asked, {t: answered[t] for t in asked if t in answered},
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
                    record = self._record(episode.episode_id, t, hit, TokenUsage(), 0, cached=True)
                    await self.store.journal.append(record)
                    self.stats.cached += 1
                    await self._settle(work, t, record, None)
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
            outcome = await ask(self.teacher, request, self.limiter, self.policy, self.stats)
            if outcome.reasoning is None:
                self.stats.failed += 1
                self.stats.failures.append({"episode_id": work.episode_id, "step": t, "reason": outcome.reason})
                await self._settle(work, t, None, {"step": t, "reason": outcome.reason, "attempts": outcome.attempts})
                continue
            record = self._record(work.episode_id, t, outcome.reasoning, outcome.usage, outcome.attempts, cached=False)
            if self.cache is not None:
                self.cache.put(content_key(self.teacher.identity, request), {"reasoning": record["reasoning"]})
            await self.store.journal.append(record)  # durable before it counts
            self.stats.answered += 1
            self.stats.input_tokens += outcome.usage.input_tokens
            self.stats.output_tokens += outcome.usage.output_tokens
            self.stats.cost += self.price.cost(outcome.usage)
            await self._settle(work, t, record, None)

    async def _settle(self, work: _EpisodeWork, t: int, record: dict[str, Any] | None,
                      failure: dict[str, Any] | None) -> None:
        if t not in work.pending:
            return  # settled before (a batch job collected twice after a kill)
        if record is not None:
            work.records[t] = record
        else:
            work.failed[t] = failure
        work.pending.discard(t)
        self.stats.settled += 1
        self.on_progress(self.stats)
        if not work.pending:
            await self._finish(work)

    async def _finish(self, work: _EpisodeWork) -> None:
        steps = episode_records(work, self.identity, self.settings.strategy)
        asked_records = [work.records[t] for t in work.asked if t in work.records]
        counts = {
            "planned": len(work.actions), "asked": len(work.asked), "annotated": len(steps),
            "failed": len(work.failed), "retried": sum(max(r.get("attempts", 1) - 1, 0) for r in asked_records),
            "cached": sum(1 for r in asked_records if r.get("cached")),
            "input_tokens": sum(r["usage"]["input"] for r in asked_records),
            "output_tokens": sum(r["usage"]["output"] for r in asked_records),
            "cost_usd": round(sum(r.get("cost", self.price.cost(TokenUsage(r["usage"]["input"], r["usage"]["output"])))
                                  for r in asked_records), 9),
        }
        failed = [work.failed[t] for t in sorted(work.failed)]
        filename = await asyncio.to_thread(self.store.write_episode_file, work.episode_id, steps, failed)
        self.store.mark_finished(work.episode_id, filename, counts)
        self.store.flush(price=self.price)


def episode_records(work: _EpisodeWork, teacher_key: str, strategy: str) -> list[dict[str, Any]]:
    """Every step's record: asked steps as answered, the others carried over from their source."""
    if not work.asked:
        return []
    origin = sources(len(work.actions), work.asked)
    sub_actions = current_sub_actions(work.actions) if strategy != "every_step" else []
    out = []
    for t, source in enumerate(origin):
        record = work.records.get(source)
        if record is None:
            continue  # its asked step failed: left for the next run
        reasoning = Reasoning.model_validate(record["reasoning"])
        if source != t:
            reasoning = carry_over(reasoning, sub_actions[t])
        entry: dict[str, Any] = {"step": t, "text": reasoning.render(), "reasoning": reasoning.model_dump(),
                                 "teacher": teacher_key, "source": source}
        if source == t:
            entry.update(usage=record["usage"], attempts=record.get("attempts", 1), cached=record.get("cached", False))
            if "cost" in record:
                entry["cost"] = record["cost"]
        out.append(entry)
    return out


def annotate_dataset(dataset: RobotDataset, teacher: Teacher, out: str | Path, settings: AnnotateSettings,
                     shard: tuple[int, int] = (0, 1),
                     on_progress: Callable[[RunStats], None] | None = None) -> RunStats:
    """Annotate (or resume annotating) `dataset` into `out`; returns what this run did."""
    if teacher.batch is None:
        from refine_core.annotate.batch import read_job_files

        if jobs := read_job_files(out, teacher.identity.key()):
            raise UsageError(f"{out} has {len(jobs)} batch jobs submitted by a batch-mode run and not yet collected; "
                             f"run with the teacher in batch mode again to collect them, or delete "
                             f"{Path(out) / 'batches'} to ask their steps online")
    store = AnnotationStore.open(out, run_header(dataset, teacher.identity, settings))
    if teacher.batch is not None:
        from refine_core.annotate.batch import BatchRun

        run: _Run = BatchRun(dataset, teacher, store, settings, shard, on_progress)
    else:
        run = _Run(dataset, teacher, store, settings, shard, on_progress)
    try:
        return asyncio.run(run.run())
    finally:
        store.close(price=run.price)
