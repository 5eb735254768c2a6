"""A closed-loop evaluation split across machines (`refine eval --shard i/n`) and its parts merged
(`refine eval merge`).

The split. vla-eval numbers the work of a benchmark entry as items: (task, episode) pairs, task
after task. Machine i of n runs the items `shard_items(N, i, n)` deals it (a hash order of the item
numbers dealt round robin: fixed, disjoint, together every item, each machine ⌊N/n⌋ or ⌈N/n⌉ of
them whatever their order). A machine runs vla-eval's own orchestrator with its own recording, so
vla-eval's resumable work queue, export and episode ids stay as they are (an item's episode is the
one an unsharded run plays, with the same seed); only the queue is seeded differently: the other
machines' items are marked done, so this machine's processes never claim them (`_MachineStore`).

Each part's OUT records its identity in `shard.json` (i/n, the checkpoint's fingerprint, the
benchmark config, the command that runs it, whether it finished); its results.jsonl and
summary.json are those of its episodes. `merge_shards` checks the parts belong together and
writes the results.jsonl + summary.json an unsharded run writes, summaries recomputed.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from refine_core.annotate.selection import parse_shard
from refine_core.benchmark import BenchmarkResult, write_results
from refine_core.errors import RefineError, UsageError
from refine_core.files import atomic_write

SHARD_FILE = "shard.json"
WEIGHTS_SAMPLE = 1 << 20  # bytes of the weights' start and end in a checkpoint's fingerprint
# closed-loop options that only say how fast a machine runs its part, not what it runs
LOCAL_OPTIONS = ("shards",)

__all__ = ["parse_shard", "shard_items", "shard_label", "begin_shard", "finish_shard", "merge_shards"]


def shard_label(shard: tuple[int, int] | None) -> str | None:
    return None if shard is None else f"{shard[0]}/{shard[1]}"


def shard_items(count: int, index: int, shards: int) -> list[int]:
    """The work items (0..count-1) machine `index` of `shards` runs."""
    order = sorted(range(count), key=lambda item: hashlib.sha256(str(item).encode()).digest())
    return sorted(order[index::shards])


# -- running one machine's part through vla-eval --------------------------------------------------------

class _MachineStore:
    """vla-eval's RecordingStore, except that seeding an entry's work queue also marks the other
    machines' items done, in the same transaction: `RecordingStore.claim` then never hands them out.

    Why: with a recording, vla-eval (0.8.0, read from orchestrator.py and recording.py) runs shards
    off a shared queue where an idle shard takes the others' items; each machine has its own
    recording, so each would run everything. The orchestrator seeds the queue with every item of
    the entry (`seed_queue(eval_id, task_idxs)`, item = index into its task-major work list) right
    before claiming from it, on every (re)start; marking items done again is harmless."""

    def __init__(self, store: Any, machine: tuple[int, int]):
        self._store, self._machine = store, machine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def seed_queue(self, eval_id: str, task_idxs: list[int]) -> None:
        mine = set(shard_items(len(task_idxs), *self._machine))
        with self._store.transaction():
            self._store.seed_queue(eval_id, task_idxs)
            for item in range(len(task_idxs)):
                if item not in mine:
                    self._store.finish(eval_id, item)


def run_orchestrator(config: dict[str, Any], eval_id: str, shard_id: int, num_shards: int,
                     machine: tuple[int, int] | None) -> None:
    """vla-eval's orchestrator as local shard `shard_id` of `num_shards` on the recording's work
    queue, running only machine `machine`'s items (all when None)."""
    import anyio
    from vla_eval.orchestrator import Orchestrator

    if machine is not None and not hasattr(Orchestrator, "_run_benchmark"):
        raise RefineError("this vla-eval's orchestrator has no _run_benchmark (read from vla-eval 0.8.0): "
                          "refine eval --shard cannot split its work queue")

    class MachineShard(Orchestrator):
        async def _run_benchmark(self, bench_cfg: dict[str, Any]) -> dict[str, Any]:
            # vla-eval 0.8.0 opens the store in run() with no hook: wrap it before the entry's queue is seeded
            if self._store is not None and not isinstance(self._store, _MachineStore):
                self._store = _MachineStore(self._store, machine)
            return await super()._run_benchmark(bench_cfg)

    kind = Orchestrator if machine is None else MachineShard
    orchestrator = kind(config, shard_id=shard_id, num_shards=num_shards, eval_id=eval_id)
    anyio.run(orchestrator.run)


def local_shard_command(run_config: Path, eval_id: str, shard_id: int, num_shards: int,
                        machine: tuple[int, int]) -> list[str]:
    """The command of one local process of a machine's part (closed_loop's `shards` option)."""
    return [sys.executable, "-m", "refine_core.evaluate.shards", str(run_config), eval_id, str(shard_id),
            str(num_shards), shard_label(machine)]


# -- a part's identity, written by `refine eval --shard` ----------------------------------------------------

def checkpoint_fingerprint(checkpoint: str | Path) -> dict[str, Any]:
    """The step and a digest of refine.json and of the weights' size, start and end: the same for
    copies of one checkpoint on different machines, different for another checkpoint."""
    from refine_core.training.checkpoint import RUN_INFO, WEIGHTS, read_checkpoint_info

    directory, info = read_checkpoint_info(checkpoint)
    digest = hashlib.sha256((directory / RUN_INFO).read_bytes())
    weights = directory / WEIGHTS
    if weights.is_file():
        size = weights.stat().st_size
        digest.update(str(size).encode())
        with open(weights, "rb") as handle:
            digest.update(handle.read(WEIGHTS_SAMPLE))
            handle.seek(max(0, size - WEIGHTS_SAMPLE))
            digest.update(handle.read(WEIGHTS_SAMPLE))
    return {"step": info.get("step"), "sha256": digest.hexdigest()[:16]}


def shard_identity(shard: tuple[int, int], checkpoint: dict[str, Any], benchmark: Any, name: str,
                   command: str | None = None) -> dict[str, Any]:
    """What `shard.json` says of a part: i/n, checkpoint, benchmark config (less LOCAL_OPTIONS)."""
    from refine_core.evaluate.closed_loop import ClosedLoopBenchmark

    if not isinstance(benchmark, ClosedLoopBenchmark):
        raise UsageError(f"--shard splits the episodes of a closed-loop benchmark; '{name}' is not one: "
                         "run it without --shard")
    options = benchmark.options.model_dump(mode="json")
    options = {key: value for key, value in options.items() if key not in LOCAL_OPTIONS}
    return {"index": shard[0], "count": shard[1], "checkpoint": checkpoint,
            "benchmark": {"name": name, "options": options}, "command": command, "complete": False}


def begin_shard(out: str | Path, identity: dict[str, Any]) -> None:
    """Write OUT/shard.json, or check the one there is this part's (a rerun resumes it)."""
    out = Path(out)
    path = out / SHARD_FILE
    if path.is_file():
        held = json.loads(path.read_text())
        for key in ("index", "count", "checkpoint", "benchmark"):
            if held.get(key) != identity[key]:
                raise UsageError(f"{out} holds shard {held.get('index')}/{held.get('count')} of another "
                                 f"evaluation (its {key} differs): evaluate into another --out")
        return
    if (out / "summary.json").exists():
        raise UsageError(f"{out} holds the results of an unsharded evaluation: evaluate into another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(identity, indent=2) + "\n")


def finish_shard(out: str | Path, identity: dict[str, Any], result: BenchmarkResult) -> BenchmarkResult:
    """Tag the part's records and summary with its shard, write them, then mark it finished if
    every policy's episodes are all done (else a rerun of its command resumes it)."""
    from refine_core.evaluate.closed_loop import EPISODES_FILE

    out = Path(out)
    label = f"{identity['index']}/{identity['count']}"
    complete = all((out / name / EPISODES_FILE).is_file() for name in result.summary.get("policies", {}))
    identity = {**identity, "complete": complete}
    tagged = BenchmarkResult(records=[{**record, "shard": label} for record in result.records],
                             summary={**result.summary, "shard": identity}, files=result.files)
    write_results(out, tagged)
    atomic_write(out / SHARD_FILE, json.dumps(identity, indent=2) + "\n")
    return tagged


# -- merging the parts ------------------------------------------------------------------------------------

def _read_part(directory: Path) -> dict[str, Any]:
    path = directory / SHARD_FILE
    if not path.is_file():
        raise UsageError(f"{directory} is not the output of `refine eval --shard` (no {SHARD_FILE})")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UsageError(f"{path} is not readable JSON") from None


def _check_parts(directories: list[Path], parts: list[dict[str, Any]]) -> int:
    """The shard count, once the parts are every shard of one evaluation, each finished."""
    first, first_dir = parts[0], directories[0]
    for directory, part in zip(directories, parts):
        if part.get("count") != first.get("count"):
            raise UsageError(f"the shards disagree on n: {first_dir} is {first.get('index')}/"
                             f"{first.get('count')}, {directory} is {part.get('index')}/{part.get('count')}")
        for key, what in (("checkpoint", "checkpoint"), ("benchmark", "benchmark config")):
            if part.get(key) != first.get(key):
                raise UsageError(f"the shards disagree on the {what}: {first_dir} has "
                                 f"{json.dumps(first.get(key))}, {directory} has {json.dumps(part.get(key))}")
    count = int(first["count"])
    seen: dict[int, Path] = {}
    for directory, part in zip(directories, parts):
        if part["index"] in seen:
            raise UsageError(f"shard {part['index']}/{count} is given twice: {seen[part['index']]} and "
                             f"{directory}")
        seen[part["index"]] = directory
    missing = [f"{i}/{count}" for i in range(count) if i not in seen]
    if missing:
        raise UsageError(f"shard {', '.join(missing)} missing: give the OUT of every shard 0/{count}.."
                         f"{count - 1}/{count}")
    for directory, part in zip(directories, parts):
        if not (part.get("complete") and (directory / "results.jsonl").is_file()
                and (directory / "summary.json").is_file()):
            command = part.get("command") or f"refine eval ... --out {directory} --shard {part['index']}/" \
                                              f"{count}"
            raise UsageError(f"shard {part['index']}/{count} in {directory} is unfinished: rerun `{command}` "
                             "(it resumes), then merge again")
    return count


def merge_shards(directories: list[str | Path], out: str | Path) -> BenchmarkResult:
    """The results.jsonl and summary.json of the whole evaluation from every shard's OUT, written
    to `out` (refused when `out` already holds other results)."""
    from refine_core.evaluate.closed_loop import summarise

    directories, out = [Path(d) for d in directories], Path(out)
    if not directories:
        raise UsageError("give the OUT of every shard to merge")
    parts = [_read_part(d) for d in directories]
    count = _check_parts(directories, parts)
    summaries = [json.loads((d / "summary.json").read_text()) for d in directories]
    table = summaries[0].get("policies", {})
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in table}
    protocols: dict[str, tuple[str, Path]] = {}
    episodes: dict[tuple, Path] = {}
    for directory, summary in zip(directories, summaries):
        if list(summary.get("policies", {})) != list(table):
            raise UsageError(f"the shards disagree on the policies: {directories[0]} has {', '.join(table)}, "
                             f"{directory} has {', '.join(summary.get('policies', {}))}")
        for line in (directory / "results.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            record = {k: v for k, v in json.loads(line).items() if k != "shard"}
            name, protocol = record["policy"], json.dumps(record.get("protocol"), sort_keys=True)
            seen = protocols.setdefault(name, (protocol, directory))
            if seen[0] != protocol:
                raise UsageError(f"the shards disagree on the protocol of {name}: {seen[1]} has {seen[0]}, "
                                 f"{directory} has {protocol}")
            key = (name, record.get("task"), record.get("episode"))
            if key in episodes:
                raise RefineError(f"episode {key[2]} of task {key[1]} ({name}) is in two shards: "
                                  f"{episodes[key]} and {directory}")
            episodes[key] = directory
            records[name].append(record)
    merged, policies = [], {}
    for name, rows in records.items():
        rows.sort(key=lambda r: (str(r.get("task")), int(r.get("episode") or 0)))
        merged += rows
        policies[name] = {"mode": table[name].get("mode"), "role": table[name].get("role"), **summarise(rows)}
    first = parts[0]
    summary = {"benchmark": summaries[0].get("benchmark"), "policies": policies, "episodes": len(merged),
               "shards": {"count": count, "checkpoint": first["checkpoint"], "benchmark": first["benchmark"]}}
    files = _benchmark(first["benchmark"]).aggregate(merged, summary)  # its tables, of the whole
    result = BenchmarkResult(records=merged, summary=summary, files=files)
    _write_merged(out, directories, result)
    return result


def _benchmark(config: dict[str, Any]) -> Any:
    """The benchmark the parts ran, built from their recorded name and options."""
    from refine_core.registry import get_registry

    return get_registry().build("benchmark", config["name"], config.get("options") or {})


def _write_merged(out: Path, directories: list[Path], result: BenchmarkResult) -> None:
    """Write the merge into `out`: new, empty, or holding this very merge (then nothing changes)."""
    if any(out.resolve() == d.resolve() for d in directories) or (out / SHARD_FILE).exists():
        raise UsageError(f"{out} is a shard's OUT: merge into another --out")
    contents = {"results.jsonl": "".join(json.dumps(r) + "\n" for r in result.records),
                "summary.json": json.dumps(result.summary, indent=2) + "\n", **result.files}
    for path in sorted(out.iterdir()) if out.is_dir() else []:
        if path.name.startswith("."):
            continue  # a temp file a crash left
        if path.name not in contents or not path.is_file() or path.read_text() != contents[path.name]:
            raise UsageError(f"{out} already holds other results ({path.name}): merge into another --out")
    write_results(out, result)  # the same bytes, each file written atomically


if __name__ == "__main__":  # one local process of a machine's part: see local_shard_command
    import os

    from vla_eval import watchdog

    # as `vla-eval run` does: a process wedged in a simulator's native code exits instead of hanging
    watchdog.start(float(os.environ.get("VLA_EVAL_WATCHDOG_TIMEOUT_S", "1200")))
    path, eval_id, shard_id, num_shards, machine = sys.argv[1:6]
    run_orchestrator(json.loads(Path(path).read_text()), eval_id, int(shard_id), int(num_shards),
                     parse_shard(machine))
