"""The durable annotation store behind `refine annotate` (format: `refine_core.data.annotation_set`).

Nothing answered is lost, whatever kills the process:
1. every answered step is appended to this process's journal (`OUT/journal/<run>.jsonl`) and
   fsynced before the pipeline counts it (writes are grouped: one fsync covers every answer
   that arrived meanwhile);
2. when all of an episode's steps are settled, its file is written atomically (temp file,
   fsync, rename);
3. the manifest is rewritten atomically (at most every `flush_seconds`, and at the end) under
   an exclusive lock, merged with what other shards wrote to the same OUT: what is on disk wins,
   except for the episodes this process finished itself;
4. a journal is deleted only once every episode it mentions is in the manifest on disk, by a
   run holding its lock (a live run holds its own journal's lock, so nobody else deletes it).

On start, every journal in OUT is read back, those of live runs (other shards) included (a torn
last line, the one write a kill can interrupt, was never acknowledged and is ignored), so a
resumed run asks only what is missing. Several `--shard i/n` runs may share one OUT, on one
machine or on a shared filesystem with working `flock` (e.g. NFSv4).
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from refine_core.data.annotation_set import FORMAT_VERSION, MANIFEST, episode_filename
from refine_core.errors import UsageError
from refine_core.reasoning import Reasoning
from refine_core.teacher import TokenUsage
from refine_core.files import atomic_write

JOURNAL_DIR = "journal"
BATCH_DIR = "batches"  # submitted batch jobs not yet collected (see `batch`)
LOCK_FILE = ".lock"
HEADER_KEYS = ("dataset", "dataset_identity", "teacher", "strategy", "every")
COUNT_KEYS = ("planned", "asked", "annotated", "failed", "retried", "cached", "input_tokens", "output_tokens")


@dataclass
class AnsweredStep:
    """One asked step's answer, as the journal and the episode files keep it."""

    episode_id: str
    step: int
    teacher: str  # the teacher identity's key
    reasoning: Reasoning
    usage: TokenUsage
    attempts: int = 1
    cached: bool = False
    cost: float | None = None  # USD; None in files written before costs were recorded
    batch: str | None = None  # the batch job that answered it

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"episode_id": self.episode_id, "step": self.step, "teacher": self.teacher,
                               "reasoning": self.reasoning.model_dump(),
                               "usage": {"input": self.usage.input_tokens,
                                         "output": self.usage.output_tokens},
                               "attempts": self.attempts, "cached": self.cached}
        if self.cost is not None:
            out["cost"] = self.cost
        if self.batch is not None:
            out["batch"] = self.batch
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], episode_id: str | None = None) -> "AnsweredStep":
        """From a journal line or an episode file's step entry (ValueError/KeyError/TypeError if
        malformed)."""
        usage = data.get("usage") or {}
        return cls(episode_id=str(episode_id if episode_id is not None else data["episode_id"]),
                   step=int(data["step"]), teacher=str(data["teacher"]),
                   reasoning=Reasoning.model_validate(data["reasoning"]),
                   usage=TokenUsage(int(usage.get("input", 0)), int(usage.get("output", 0))),
                   attempts=int(data.get("attempts", 1)), cached=bool(data.get("cached", False)),
                   cost=data.get("cost"), batch=data.get("batch"))


def _describe_header(header: dict[str, Any]) -> str:
    return (f"dataset '{header.get('dataset')}' ({header.get('dataset_identity')}), "
            f"teacher {header.get('teacher')}")


def check_out_dir(out: Path, header: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest already in OUT (None when OUT is new or empty); refuse an OUT that holds
    anything but annotations of the same dataset, teacher and strategy."""
    manifest_path = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory for the annotations")
    if not manifest_path.is_file():
        leftovers = (
            [
                p.name
                for p in out.iterdir()
                if p.name not in (JOURNAL_DIR, BATCH_DIR, LOCK_FILE) and not p.name.startswith(".")
            ]
            if out.is_dir()
            else []
        )  # dot files: another shard's temp
        if leftovers:
            raise UsageError(f"--out {out} is not empty and holds no annotation set ({leftovers[0]} …); "
                             f"choose an empty or new directory")
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise UsageError(f"{manifest_path} is unreadable ({exc}); choose another --out") from None
    for key in HEADER_KEYS:
        if manifest.get(key) != header.get(key):
            raise UsageError(
                f"{out} holds annotations of {_describe_header(manifest)}, strategy "
                f"{manifest.get('strategy')} "
                f"every {manifest.get('every')}; this run is {_describe_header(header)}, strategy "
                f"{header.get('strategy')} every {header.get('every')} ({key} differs); choose another --out")
    return manifest


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return  # torn tail of a killed write: never acknowledged
            try:
                yield json.loads(line)
            except ValueError:
                return


class Journal:
    """Append-only, fsynced JSON lines; concurrent `append`s share one write + fsync."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = open(path, "ab")
        fcntl.flock(self._handle, fcntl.LOCK_EX)  # marks it live: other runs leave it alone
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self.episodes: set[str] = set()

    async def append(self, answer: AnsweredStep) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((json.dumps(answer.to_json(), separators=(",", ":")) + "\n").encode(), future))
        self.episodes.add(answer.episode_id)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, b"".join(line for line, _ in batch))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _write(self, data: bytes) -> None:
        self._handle.write(data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


class AnnotationStore:
    """One OUT directory: resume state in, episode files and manifest out."""

    def __init__(self, out: Path, header: dict[str, Any], manifest: dict[str, Any] | None,
                 flush_seconds: float = 2.0):
        self.out = out
        self.header = header
        self.flush_seconds = flush_seconds
        self.manifest = manifest or {"format": FORMAT_VERSION, **header, "episodes": {}, "episode_counts": {},
                                     "counts": {k: 0 for k in COUNT_KEYS}, "cost_usd": 0.0}
        self._dirty: dict[str, tuple[str, dict[str, Any]]] = {}
        self._mine: dict[str, tuple[str, dict[str, Any]]] = {}  # every episode this process finished
        self._last_flush = 0.0
        self.journal_dir = out / JOURNAL_DIR
        self.old_journals: list[tuple[Path, Any]] = []  # (path, handle holding its lock)
        self.recovered: dict[str, dict[int, AnsweredStep]] = {}
        self.journal: Journal | None = None

    @classmethod
    def open(cls, out: str | Path, header: dict[str, Any], flush_seconds: float = 2.0) -> "AnnotationStore":
        out = Path(out)
        manifest = check_out_dir(out, header)
        out.mkdir(parents=True, exist_ok=True)
        store = cls(out, header, manifest, flush_seconds)
        store.journal_dir.mkdir(exist_ok=True)
        if manifest is None:
            store.flush(force=True)  # claim OUT for this dataset and teacher at once
        for path in sorted(store.journal_dir.glob("*.jsonl")):
            try:
                handle = open(path, "rb")
            except FileNotFoundError:  # its run finished and deleted it meanwhile
                continue
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                store.old_journals.append((path, handle))
            except OSError:  # held by a run still writing to this OUT (another shard): read, not owned
                handle.close()
            store._recover(path)
        store.journal = Journal(store.journal_dir / f"{os.getpid()}-{time.time_ns()}.jsonl")
        return store

    @classmethod
    def inspect(cls, out: str | Path, header: dict[str, Any]) -> "AnnotationStore":
        """Read-only view of OUT's progress (for --dry-run): creates, locks and writes nothing."""
        out = Path(out)
        store = cls(out, header, check_out_dir(out, header))
        for path in sorted(store.journal_dir.glob("*.jsonl")) if store.journal_dir.is_dir() else []:
            store._recover(path)
        return store

    def _recover(self, path: Path) -> None:
        try:
            for record in read_journal(path):
                if record.get("teacher") != self.header["teacher"]:
                    continue
                try:
                    answer = AnsweredStep.from_json(record)
                except (KeyError, TypeError, ValueError):
                    continue  # not a line this version wrote: its step is asked again
                self.recovered.setdefault(answer.episode_id, {})[answer.step] = answer
        except FileNotFoundError:
            pass  # its run finished and deleted it meanwhile: its episodes are in the manifest

    # -- resume ----------------------------------------------------------------------------
    def is_complete(self, episode_id: str) -> bool:
        counts = self.manifest.get("episode_counts", {}).get(episode_id)
        return bool(counts) and counts.get("failed",
                                           1) == 0 and episode_id in self.manifest.get("episodes", {})

    def answered(self, episode_id: str) -> dict[int, AnsweredStep]:
        """Asked steps already answered: from the episode file (if one was written) and journals."""
        found: dict[int, AnsweredStep] = {}
        path = self.out / episode_filename(episode_id)
        if path.is_file():
            try:
                for record in json.loads(path.read_bytes()).get("steps", []):
                    if record.get("source", record["step"]) == record["step"]:
                        found[int(record["step"])] = AnsweredStep.from_json(record, episode_id)
            except (ValueError, KeyError, TypeError):
                found = {}  # unreadable: its steps are asked again (the file is rewritten)
        found.update(self.recovered.get(episode_id, {}))
        return found

    # -- writing ---------------------------------------------------------------------------
    def write_episode_file(self, episode_id: str, steps: list[dict[str, Any]],
                           failed: list[dict[str, Any]]) -> str:
        """Write one episode's file atomically (thread-safe); returns its name."""
        filename = episode_filename(episode_id)
        payload = {"episode_id": episode_id, "teacher": self.header["teacher"], "steps": steps,
                   "failed": failed}
        atomic_write(self.out / filename, json.dumps(payload, indent=1).encode())
        return filename

    def mark_finished(self, episode_id: str, filename: str, counts: dict[str, Any]) -> None:
        """Queue a written episode for the next manifest flush."""
        self._dirty[episode_id] = self._mine[episode_id] = (filename, counts)

    @contextmanager
    def _locked(self):
        with open(self.out / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def flush(self, force: bool = False, price=None) -> None:
        """Merge finished episodes into the manifest on disk (throttled unless `force`)."""
        now = time.monotonic()
        if not force and (not self._dirty or now - self._last_flush < self.flush_seconds):
            return
        with self._locked():
            path = self.out / MANIFEST
            if path.is_file():  # another shard may have written since: its entries are newer than ours
                on_disk = json.loads(path.read_text())
                self.manifest["episodes"] = dict(on_disk.get("episodes", {}))
                self.manifest["episode_counts"] = dict(on_disk.get("episode_counts", {}))
            for episode_id, (filename, counts) in self._mine.items():
                self.manifest["episodes"][episode_id] = filename
                self.manifest["episode_counts"][episode_id] = counts
            totals = {k: 0 for k in COUNT_KEYS}
            cost = 0.0
            for counts in self.manifest["episode_counts"].values():
                for key in COUNT_KEYS:
                    totals[key] += counts.get(key, 0)
                if "cost_usd" in counts:  # what its answers cost (online or batch price)
                    cost += counts["cost_usd"]
                elif price is not None:  # written before costs were recorded per episode
                    cost += (counts.get("input_tokens", 0) * price.input_per_million
                             + counts.get("output_tokens", 0) * price.output_per_million) / 1e6
            self.manifest["counts"] = totals
            self.manifest["cost_usd"] = round(cost, 6)
            self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            atomic_write(path, json.dumps(self.manifest, indent=1).encode())
        self._dirty.clear()
        self._last_flush = now

    def close(self, price=None) -> None:
        """Final manifest; then drop every journal whose episodes are all in it."""
        self.flush(force=True, price=price)
        finished = set(self.manifest["episodes"])
        owned = {p for p, _ in self.old_journals} | ({self.journal.path} if self.journal else set())
        for path in owned:
            if path.exists() and {r["episode_id"] for r in read_journal(path)} <= finished:
                path.unlink()  # unlinked while still locked, so no other run picks it up meanwhile
        # Journals that were live at start (other shards) and have ended since: clean up the finished ones.
        for path in set(self.journal_dir.glob("*.jsonl")) - owned:
            try:
                with open(path, "rb") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: still live
                    if {r["episode_id"] for r in read_journal(path)} <= finished:
                        path.unlink()
            except OSError:  # live, or deleted meanwhile by its own run
                continue
        if self.journal is not None:
            self.journal.close()
        for _, handle in self.old_journals:
            handle.close()
        self.old_journals = []
