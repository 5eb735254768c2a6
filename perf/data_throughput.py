"""P4 — data throughput: RLDS → collated tiny-backbone batches vs raw tfds iteration, same files, same run.

    python perf/data_throughput.py [--episodes 48] [--batch 8] [--rounds 2] [--threads 1]

Data: the `demo` dataset's RLDS folder (bridge_dataset schema, 256×256 JPEG image_0..3, written
once into $REFINE_CACHE_DIR/demo or ~/.cache/refine/demo). Measured, each over the whole train
split, alternating rounds (the machine may be shared; the best round of each is reported):

- raw:     `tfds.builder_from_directory(...).as_dataset("train")` flattened to steps, prefetched,
           every feature decoded (all four cameras, as a plain tfds loop does), nothing else;
           built once, each round one pass (as refine's reader, which keeps its pipeline);
- raw, primary camera: the same with tfds's `SkipDecoding` on image_1..3 (what a tfds loop
           that knows it trains on one camera does);
- refine:  the `bridge` reader (OpenVLA conversion) → `SampleStream` (seeded shuffle buffer) →
           `backbone.collate` of the tiny hf_vlm backbone (tokenise, resize to 224, normalise),
           with `primary_camera_only` (the demo's setting: every backbone feeds the model one
           camera) and without it (every camera an episode has decoded and returned);
- CPU:     process CPU time per step (raw) and per sample (refine), and refine's main-thread
           share: load-insensitive, unlike rates on a shared machine;
- train:   one tiny-backbone training step (forward, loss, backward, AdamW) on a collated batch,
           as samples/s, i.e. how fast the trainer consumes data.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def raw_pipeline(version_dir, primary_only: bool = False):
    import tensorflow_datasets as tfds

    skip = {"steps": {"observation": {f"image_{i}": tfds.decode.SkipDecoding() for i in (1, 2, 3)}}}
    ds = tfds.builder_from_directory(str(version_dir)).as_dataset(
        split="train", shuffle_files=False, decoders=skip if primary_only else None)
    return ds.flat_map(lambda episode: episode["steps"]).prefetch(2)


def raw_tfds(ds) -> tuple[int, float]:
    """One pass over a built pipeline (building it, ~0.2 s, is not timed: refine builds its
    own once per process too, so both sides are timed per epoch of a longer run)."""
    start = time.perf_counter()
    steps = 0
    for step in ds.as_numpy_iterator():
        steps += 1
        assert step["observation"]["image_0"].shape[-1] == 3
    return steps, time.perf_counter() - start


def refine_batches(dataset, backbone, batch_size: int, epoch_samples: int) -> tuple[int, float]:
    from refine_core.data.samples import SampleStream

    start = time.perf_counter()
    stream = iter(SampleStream(dataset, split="train", val_fraction=0.0, shuffle_buffer=256, seed=0))
    count = 0
    while count < epoch_samples:  # exactly one epoch, through the shuffle buffer as training reads it
        chunk = list(itertools.islice(stream, min(batch_size, epoch_samples - count)))
        batch = backbone.collate(chunk)
        assert batch["pixel_values"].shape[0] == len(chunk)
        count += len(chunk)
    return count, time.perf_counter() - start


def train_rate(dataset, backbone, batch_size: int, steps: int = 6) -> float:
    import torch

    from refine_core.loss import reasoning_aware_loss
    from refine_core.data.samples import SampleStream

    stream = iter(SampleStream(dataset, split="train", val_fraction=0.0, shuffle_buffer=64, seed=0))
    batches = [backbone.collate(list(itertools.islice(stream, batch_size))) for _ in range(steps)]
    params = [p for p in backbone.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for batch in batches:
        start = time.perf_counter()
        out = reasoning_aware_loss(backbone.forward(batch), batch["labels"], batch["action_mask"], 0.3)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])  # the first step warms up allocators
    return batch_size / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (tests and the trainer on CPU use 1)")
    args = parser.parse_args()

    import torch

    from refine_core.registry import get_registry

    torch.set_num_threads(args.threads)
    registry = get_registry()
    demo = registry.build("dataset", "demo", {"episodes": args.episodes})
    reader = demo.reader  # writes the RLDS folder on first use; primary camera only
    from refine_plugins.bridge import BridgeOptions
    from refine_plugins.bridge.dataset import BridgeDataset

    every_camera = BridgeDataset(BridgeOptions(data_dir=str(demo.folder)))
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    statistics = reader.statistics()
    backbone.attach_codec(registry.build("codec", "bins", {}), statistics.action)
    pipelines = {"raw": raw_pipeline(reader.version_dir),
                 "raw, primary camera": raw_pipeline(reader.version_dir, primary_only=True)}
    readers = {"refine, primary camera": reader, "refine, every camera": every_camera}
    for pipeline in pipelines.values():
        raw_tfds(pipeline)  # warm-up: TensorFlow graph building, file cache
    for dataset in readers.values():
        refine_batches(dataset, backbone, args.batch, args.batch)  # warm-up: refine's pipeline is built

    rates: dict[str, list[float]] = {name: [] for name in [*pipelines, *readers]}
    # CPU time of the whole process (TensorFlow's threads included) per sample barely depends on
    # what else the shared machine runs, unlike samples/s; the main thread's share is what one
    # Python thread must do (it bounds refine's rate on an idle machine)
    cpu_ms: dict[str, list[float]] = {name: [] for name in rates}
    thread_ms: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.rounds):  # alternating, so load swings hit every side
        for name, pipeline in pipelines.items():
            cpu = time.process_time()
            steps, seconds = raw_tfds(pipeline)
            rates[name].append(steps / seconds)
            cpu_ms[name].append((time.process_time() - cpu) / steps * 1e3)
        for name, dataset in readers.items():
            cpu, thread = time.process_time(), time.thread_time()
            samples, seconds = refine_batches(dataset, backbone, args.batch, statistics.num_steps)
            rates[name].append(samples / seconds)
            cpu_ms[name].append((time.process_time() - cpu) / samples * 1e3)
            thread_ms[name].append((time.thread_time() - thread) / samples * 1e3)
    train = train_rate(reader, backbone, args.batch)
    best = {name: max(values) for name, values in rates.items()}
    print(f"date {datetime.date.today()}  machine {platform.machine()} {os.cpu_count()} cpus  "
          f"torch threads {args.threads}  episodes {args.episodes} ({steps} recorded steps, {samples} "
          f"samples)  batch {args.batch}  load {os.getloadavg()[0]:.2f}")
    for name, values in rates.items():
        unit = "steps/s  " if name.startswith("raw") else "samples/s"
        thread = f", main thread {min(thread_ms[name]):.2f}" if name in thread_ms else ""
        print(f"{name:24s}: {best[name]:8.1f} {unit} rounds {[round(r) for r in values]}  CPU ms "
              f"{min(cpu_ms[name]):.2f}{thread}")
    print(f"tiny train step (fwd+bwd+AdamW): {train:8.1f} samples/s")
    # the same files take raw `steps / rate` seconds and refine `samples / rate` seconds
    # (refine yields fewer samples than recorded steps: Bridge's first and last steps are dropped)
    for ours in readers:
        for raw in pipelines:
            same_files = (steps / best[raw]) / (samples / best[ours])
            print(f"{ours} / {raw}: samples/s {best[ours] / best[raw]:.2f}, same-files time "
                  f"{same_files:.2f}, CPU {min(cpu_ms[raw]) / min(cpu_ms[ours]):.2f} (target >= 0.8)")
    print(f"refine, primary camera / train = {best['refine, primary camera'] / train:.1f}x (target > 1)")


if __name__ == "__main__":
    main()
