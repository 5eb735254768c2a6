"""`--dry-run`: what a run would ask and cost, without asking anything."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from refine_core.config import AnnotateSettings
from refine_core.dataset import RobotDataset
from refine_core.teacher import Price, Teacher
from refine_core.annotate.cache import ContentCache, content_key
from refine_core.annotate.selection import effective_price, run_header, select_episodes, step_request
from refine_core.annotate.store import AnnotationStore
from refine_core.annotate.strategy import asked_steps


@dataclass
class Estimate:
    episodes: int = 0
    steps: int = 0
    asked_steps: int = 0  # steps the strategy asks about
    already_annotated: int = 0  # answered in earlier runs into this OUT
    cache_hits: int = 0
    calls: int = 0  # requests to the teacher, before retries
    input_tokens: int = 0
    output_tokens: int = 0
    input_per_million: float = 0.0
    output_per_million: float = 0.0
    cost_usd: float = 0.0
    mode: str = "online"  # or "batch": the teacher's batch API, at its batch price
    batch_size: int = 0  # batch mode: requests per job
    jobs: int = 0  # batch mode: jobs to submit
    in_flight: int = 0  # batch mode: steps in jobs submitted by an earlier run, not yet collected

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_run(dataset: RobotDataset, teacher: Teacher, out: str | Path, settings: AnnotateSettings,
                 shard: tuple[int, int] = (0, 1)) -> Estimate:
    store = AnnotationStore.inspect(out, run_header(dataset, teacher.identity, settings))
    cache = ContentCache(settings.cache_dir) if settings.cache and teacher.cacheable else None
    price = effective_price(teacher, settings)
    batch = teacher.batch
    in_flight: set[tuple[str, int]] = set()
    if batch is not None:
        from refine_core.annotate.batch import read_job_files

        price = Price(price.input_per_million * batch.price_factor,
                      price.output_per_million * batch.price_factor)
        for _, data in read_job_files(out, teacher.identity.key()):
            in_flight.update((str(e), int(t)) for e, t, _ in data.get("requests", []))
    result = Estimate(input_per_million=price.input_per_million, output_per_million=price.output_per_million,
                      mode="online" if batch is None else "batch",
                      batch_size=batch.max_requests if batch else 0)
    for episode in select_episodes(dataset, settings.split, shard, settings.max_episodes):
        result.episodes += 1
        result.steps += len(episode)
        if not episode.steps:
            continue
        actions = episode.actions()
        asked = asked_steps(actions, settings.strategy, settings.every)
        result.asked_steps += len(asked)
        answered = (
            set(asked) if store.is_complete(episode.episode_id) else set(store.answered(episode.episode_id))
        )
        for t in asked:
            if t in answered:
                result.already_annotated += 1
                continue
            if (episode.episode_id, t) in in_flight:
                result.in_flight += 1
                continue
            request = step_request(episode.steps[t], actions)
            if cache is not None and content_key(teacher.identity, request) in cache:
                result.cache_hits += 1
                continue
            usage = teacher.estimate_usage(request)
            result.calls += 1
            result.input_tokens += usage.input_tokens
            result.output_tokens += usage.output_tokens
    if batch is not None:
        result.jobs = -(-result.calls // batch.max_requests)
    result.cost_usd = round((result.input_tokens * price.input_per_million
                             + result.output_tokens * price.output_per_million) / 1e6, 6)
    return result
