"""P4 memory — resident memory (RSS) of the RLDS reader → SampleStream over a long stream.

    python perf/stream_memory.py [--data-dir DIR] [--buffer 256] [--times 10] [--points 10] [--json]

Open-X loaders whose memory grows until the job dies are a known failure (openvla#4/#39/#167).
This streams one process's samples through the real `bridge` reader and `SampleStream` (seeded
shuffle buffer, epochs re-reading the files) and reads VmRSS from /proc/self/status. After a
warm-up (two epochs, at least one full buffer: TensorFlow's graphs and thread pools, the
allocator's arenas and one epoch-to-epoch change of input pipelines are behind us) it streams
`times` × `buffer` more samples and samples RSS at `points` even intervals. The verdict is the
largest deviation from the warm-up RSS.

Data: `--data-dir` (a `bridge_dataset` folder, e.g. one the tests wrote) or the `demo` dataset's
RLDS folder (256×256 JPEG, written once into the refine cache).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def stream_rss(dataset, buffer: int, times: int, points: int, epoch_samples: int) -> dict:
    """RSS (MB) at `points` positions over `times` × `buffer` samples after a warm-up epoch."""
    from refine_core.data.samples import SampleStream

    stream = iter(SampleStream(dataset, split="train", val_fraction=0.0, shuffle_buffer=buffer, seed=0))
    warmup = max(2 * epoch_samples, buffer)
    for _ in range(warmup):
        next(stream)
    gc.collect()
    baseline = rss_mb()
    total, every = times * buffer, max(1, times * buffer // points)
    start, readings = time.perf_counter(), []
    for count in range(1, total + 1):
        sample = next(stream)
        if count % every == 0 or count == total:
            gc.collect()  # garbage waiting for a collection is not a leak
            readings.append((count, round(rss_mb(), 1)))
    del sample
    seconds = time.perf_counter() - start
    deviation = max(abs(mb - baseline) for _, mb in readings) / baseline
    return {"warmup_samples": warmup, "baseline_mb": round(baseline, 1), "streamed": total,
            "buffer": buffer, "epoch_samples": epoch_samples, "readings": readings,
            "max_deviation": round(deviation, 4), "samples_per_s": round(total / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="a bridge_dataset folder (default: the demo dataset's)")
    parser.add_argument("--episodes", type=int, default=48, help="demo episodes (without --data-dir)")
    parser.add_argument("--buffer", type=int, default=256, help="shuffle buffer (samples)")
    parser.add_argument("--times", type=int, default=10, help="stream this many buffers after the warm-up")
    parser.add_argument("--points", type=int, default=10, help="RSS readings over the measured stream")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    from refine_core.registry import get_registry

    registry = get_registry()
    if args.data_dir:
        dataset = registry.build("dataset", "bridge", {"data_dir": args.data_dir})
    else:
        dataset = registry.build("dataset", "demo", {"episodes": args.episodes}).reader
    epoch = sum(len(t.actions) for t in dataset.trajectories("train", images=False))
    result = stream_rss(dataset, args.buffer, args.times, args.points, epoch)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return
    print(f"date {datetime.date.today()}  machine {platform.machine()} {os.cpu_count()} cpus  "
          f"load {os.getloadavg()[0]:.1f}  data {dataset.version_dir}")
    print(f"epoch {epoch} samples, shuffle buffer {args.buffer}, warm-up {result['warmup_samples']} "
          f"samples, then {result['streamed']} samples ({args.times}× the buffer) at "
          f"{result['samples_per_s']} samples/s")
    print(f"RSS after warm-up {result['baseline_mb']} MB; then " +
          ", ".join(f"{n}: {mb}" for n, mb in result["readings"]))
    print(f"largest deviation {100 * result['max_deviation']:.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
