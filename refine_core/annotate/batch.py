"""Batch mode: the planned requests go to the teacher's batch API as jobs, not one by one.

Used when `Teacher.batch` is set (e.g. gemini `mode: batch`); the store, journal, content cache,
records and counts are the online path's (`run`), only the way answers arrive differs:

1. Every job file an earlier run left in `OUT/batches/` is read first: its steps are in flight
   and are never submitted again. The run collects (locks and polls) the jobs of its own shard,
   and those of runs with another shard count; a job whose file is locked has a live collector.
2. Episodes stream in as online; resumed and cached steps settle at once; the others form
   chunks of at most `BatchTeacher.max_requests`. A full chunk is submitted at once, and the job
   name with the (episode, step, cache key) of every request is written durably to
   `OUT/batches/<label>.json` before anything else: a killed run's re-run polls the same job.
   (Only a kill between the vendor's reply to `submit` and that write, or a reply lost after the
   vendor created the job — the submission is then retried — can leave a job nobody collects.)
3. Jobs are polled every `poll_interval` seconds until they end. A succeeded job's answers are
   journaled, cached and settled exactly like online answers (cost at the batch price); a
   request that got an error or a malformed or empty answer is recorded as failed with the
   reason, and the next run submits it again (it is not re-asked in a follow-up job within the
   run: that would mean reading its frames again). Then the job file is deleted.
4. A job that ends failed, cancelled or expired: its file is deleted (the next run submits its
   steps in a new job) and, once every other job is collected, the run stops with one line.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from refine_core.errors import RefineError
from refine_core.teacher import (Annotation, AnnotationRequest, BatchStatus, PermanentTeacherError, Price,
    TeacherError, TransientTeacherError)
from refine_core.annotate.cache import content_key
from refine_core.annotate.run import AnnotationRun, EpisodeWork
from refine_core.annotate.store import BATCH_DIR
from refine_core.files import fsync_dir


def read_job_files(out: str | Path, teacher_key: str) -> list[tuple[Path, dict[str, Any]]]:
    """The job files in OUT (submitted, not yet collected) of this teacher."""
    found = []
    directory = Path(out) / BATCH_DIR
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # collected and deleted meanwhile (files are written atomically, never torn)
        if data.get("teacher") == teacher_key:
            found.append((path, data))
    return found


def _write_locked(path: Path, data: bytes):
    """Write `path` atomically and return an open handle holding its lock (the job's collector)."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    handle = open(temp, "wb")
    fcntl.flock(handle, fcntl.LOCK_EX)  # the lock stays with the file across the rename
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)
    return handle


@dataclass
class _Job:
    path: Path
    handle: Any  # holds the job file's lock while this run collects it
    name: str
    entries: list[tuple[str, int, str]]  # (episode_id, step, content cache key) per request, in order


class BatchRun(AnnotationRun):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.api = self.teacher.batch
        online = self.price
        self.price = Price(online.input_per_million * self.api.price_factor,
                           online.output_per_million * self.api.price_factor)
        self.directory = self.store.out / BATCH_DIR
        self.jobs: list[_Job] = []
        self.in_flight: set[tuple[str, int]] = set()
        self.works: dict[str, EpisodeWork] = {}  # episodes waiting for answers
        self.finished: set[str] = set()
        self.ended: list[tuple[_Job, BatchStatus]] = []

    async def run(self):
        self.directory.mkdir(exist_ok=True)
        try:
            self._adopt()
            chunk: list[tuple[EpisodeWork, int, AnnotationRequest]] = []

            async def dispatch(work: EpisodeWork, t: int, request: AnnotationRequest) -> None:
                self.works.setdefault(work.episode_id, work)
                chunk.append((work, t, request))
                if len(chunk) >= self.api.max_requests:
                    await self._submit(chunk)
                    chunk.clear()

            await self._plan(dispatch)
            if chunk:
                await self._submit(chunk)
            await self._collect()
        finally:
            for job in self.jobs:
                job.handle.close()  # its file stays: the next run polls the job again
        if self.ended:
            job, status = self.ended[0]
            steps = sum(len(j.entries) for j, _ in self.ended)
            first = (
                f"batch job {job.name} ended {status.state}{f' ({status.message})' if status.message else ''}"
            )
            if len(self.ended) > 1:
                first = f"{len(self.ended)} batch jobs ended without answers (first: {first})"
            raise RefineError(f"{first}; its {steps} steps were not annotated (answers of other jobs are "
                              "saved): "
                              f"run the same command again to submit them in a new job")
        return self.stats

    # -- jobs of earlier runs ----------------------------------------------------------------
    def _adopt(self) -> None:
        for path, data in read_job_files(self.store.out, self.identity):
            try:
                name = str(data["job"])
                entries = [(str(e), int(t), str(k)) for e, t, k in data["requests"]]
            except (KeyError, TypeError, ValueError):
                continue  # not a job file of ours
            self.in_flight.update((e, t) for e, t, _ in entries)
            index, count = data.get("shard", (0, 1))
            if count == self.shard[1] and index != self.shard[0]:
                continue  # another shard's job: that shard's run collects it
            try:
                handle = open(path, "rb")
            except OSError:
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live run is collecting it
                handle.close()
                continue
            if not path.exists():  # collected and deleted between reading and locking
                handle.close()
                continue
            self.jobs.append(_Job(path, handle, name, entries))
            self.stats.jobs += 1

    def _in_flight(self, work: EpisodeWork, step: int) -> bool:
        if (work.episode_id, step) not in self.in_flight:
            return False
        self.works.setdefault(work.episode_id, work)
        return True

    # -- submitting and collecting -------------------------------------------------------------
    async def _call(self, make: Callable[[], Awaitable[Any]], what: str, hint: str,
                    timeout: float | None = None) -> Any:
        """One batch API call; transient failures retried with backoff, then one clear error.

        Only polls get a timeout of ours: a submission that timed out may still have created its job."""
        attempt = 0
        while True:
            try:
                try:
                    return await (asyncio.wait_for(make(), timeout) if timeout else make())
                except (TimeoutError, asyncio.TimeoutError):
                    raise TransientTeacherError(f"no answer within {timeout:g} s") from None
            except PermanentTeacherError as exc:
                raise RefineError(f"could not {what}: {exc}{hint}") from None
            except TeacherError as exc:  # transient, or an unreadable reply
                if attempt >= self.policy.max_retries:
                    raise RefineError(f"could not {what} after {attempt + 1} attempts: {exc}{hint}") from None
                await asyncio.sleep(self.policy.delay(attempt, getattr(exc, "retry_after", None)))
                attempt += 1
                self.stats.retried += 1

    async def _submit(self, chunk: list[tuple[EpisodeWork, int, AnnotationRequest]]) -> None:
        label = f"refine-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        keys = [content_key(self.teacher.identity, request) if self.cache is not None else ""
                for _, _, request in chunk]
        entries = [(work.episode_id, t, key) for (work, t, _), key in zip(chunk, keys)]
        requests = [request for _, _, request in chunk]
        name = await self._call(lambda: self.api.submit(requests, label), f"submit batch job {label}",
                                "; jobs submitted before are kept in OUT: run the same command again")
        path = self.directory / f"{label}.json"
        record = {"job": name, "label": label, "teacher": self.identity, "shard": list(self.shard),
                  "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": [list(e) for e in entries]}
        handle = await asyncio.to_thread(_write_locked, path, json.dumps(record).encode())
        self.jobs.append(_Job(path, handle, name, entries))
        self.in_flight.update((e, t) for e, t, _ in entries)
        self.stats.jobs += 1
        self.on_progress(self.stats)

    async def _collect(self) -> None:
        while self.jobs:
            for job in list(self.jobs):
                status: BatchStatus = await self._call(
                    lambda: self.api.status(job.name), f"check batch job {job.name}",
                    "; the job is kept in OUT: run the same command again to resume polling it",
                    timeout=self.policy.request_timeout)
                if not status.done:
                    continue
                if status.state == "succeeded":
                    await self._take(job, list(status.results or []))
                else:
                    self.ended.append((job, status))
                job.path.unlink(missing_ok=True)  # answers journaled first: a kill before this re-collects
                job.handle.close()
                self.jobs.remove(job)
            self.on_progress(self.stats)
            if self.jobs:
                await asyncio.sleep(self.api.poll_interval)

    async def _take(self, job: _Job, results: list[Annotation | TeacherError]) -> None:
        for index, (episode_id, t, key) in enumerate(job.entries):
            result = results[index] if index < len(results) else TeacherError("no answer in the job's output")
            work = self.works.get(episode_id)
            if episode_id in self.finished or (work is not None and t not in work.pending) \
                    or t in self.store.recovered.get(episode_id, {}) or self.store.is_complete(episode_id):
                continue  # settled before (a job collected again after a kill)
            if isinstance(result, Annotation):
                answer = self._answer(episode_id, t, result.reasoning, result.usage, 1, cached=False,
                                      batch=job.name)
                await self.store.journal.append(answer)  # durable before it counts
                if self.cache is not None and key:
                    self.cache.put(key, {"reasoning": answer.reasoning.model_dump()})
                self.stats.answered += 1
                self.stats.input_tokens += result.usage.input_tokens
                self.stats.output_tokens += result.usage.output_tokens
                self.stats.cost += self.price.cost(result.usage)
                if work is not None:
                    await self._settle(work, t, answer, None)
            elif work is not None:  # a step of an episode this run plans: recorded, submitted again next run
                reason = f"batch job {job.name}: {result}"
                self.stats.failed += 1
                self.stats.failures.append({"episode_id": episode_id, "step": t, "reason": reason})
                await self._settle(work, t, None, {"step": t, "reason": reason, "attempts": 1})

    async def _finish(self, work: EpisodeWork) -> None:
        await super()._finish(work)
        self.works.pop(work.episode_id, None)  # its records can go
        self.finished.add(work.episode_id)
