"""P5 -- closed-loop latency per executed action by reasoning mode (every step, every K, never).

Run: ``python perf/closed_loop_latency.py [--checkpoint PATH] [--episodes 6] [--every 5]
[--max-reasoning-tokens 64] [--threads 1]`` (about 2 minutes with the tiny model).

The same policy acts in demo-sim three times in one run, once per reasoning mode, through refine's
real closed-loop path: ``run_policy`` serves it (``PolicyModelServer`` on vla-eval's protocol) and
vla-eval's orchestrator runs the episodes against it, one at a time. Each mode gets its own fresh
temporary output directory, so nothing is resumed or read back. Numbers come from
``summarise(records)``, i.e. from the server's per-episode records:

- latency per action = the wall time of the policy's generations in an episode divided by the
  actions it executed, averaged over episodes (the simulator's own time is not included);
- tokens per query = tokens generated per query (reasoning + action span; a reused every_k
  reasoning is a forced prefix, not generated, so it is not counted);
- success with its Wilson 95% interval.
Besides, ``policy.act_batch`` is wrapped to count the queries that reasoned anew ("fresh"): all of
them every step, about 1 in K every K, none never.

The policy is the checkpoint given (``Policy.from_checkpoint``), else the tiny ``hf_vlm`` preset
with a ``bins`` codec over fixed statistics, untrained: it reasons until the repetition guard or
the token budget stops it, so its reasoning latency is an upper bound for the budget and its
success is 0. The ratios printed are every_step/every_k and every_step/never of the latency per
action (target: every_k at least 3x faster than every_step).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

MODES = ("every_step", "every_k", "never")
ENTRY = {"benchmark": "refine_plugins.demo.vla_benchmark:DemoSimBenchmark", "name": "demo-sim"}


def tiny_backbone():
    """The tiny hf_vlm preset with a bins codec over fixed statistics (untrained)."""
    import numpy as np

    from refine_core import Statistics
    from refine_core.registry import Registry

    registry = Registry(entry_points=False)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.04, 0.04, size=(100, 7))
    actions[:, 6] = rng.integers(0, 2, 100)
    model = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    return model.attach_codec(registry.build("codec", "bins", {}), Statistics.from_array(actions))


def per_episode(policy, mode: str) -> list[dict]:
    """Wrap `policy.act_batch` to record, per session (one per episode, in the order they start), its
    queries, the queries that reasoned anew, actions and generation time."""
    act_batch = policy.act_batch
    episodes: list[dict] = []
    index: dict[int, int] = {}  # id(session) -> position; the entries keep the sessions alive

    def counted(sessions, images):
        chunks = act_batch(sessions, images)
        for session, chunk in zip(sessions, chunks):
            if id(session) not in index:
                index[id(session)] = len(episodes)
                episodes.append({"session": session, "queries": 0, "fresh": 0, "actions": 0,
                                 "latency_s": 0.0})
            episode = episodes[index[id(session)]]
            episode["queries"] += 1
            episode["fresh"] += int(mode != "never" and not chunk.reasoning_reused)
            episode["actions"] += len(chunk.actions)
            episode["latency_s"] += chunk.latency_s
        return chunks

    policy.act_batch = counted
    return episodes


def mean_latency(episodes: list[dict], which: list[int]) -> float:
    """Latency per action averaged over the episodes `which` (as `summarise` averages)."""
    return sum(episodes[i]["latency_s"] / episodes[i]["actions"] for i in which) / len(which)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a refine run directory, training OUT or step-* directory; "
                             "default: the tiny untrained hf_vlm preset")
    parser.add_argument("--episodes", type=int, default=6, help="demo-sim episodes per mode")
    parser.add_argument("--every", type=int, default=5, help="K of every_k")
    parser.add_argument("--max-reasoning-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="the server's batch limit (episodes run one at a time, so batches are 1)")
    parser.add_argument("--seed", type=int, default=0, help="demo-sim seed of the episodes' scenes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    import torch
    import transformers
    import vla_eval

    from refine_core.evaluate.closed_loop import run_policy, summarise
    from refine_core.policy import Policy, PolicySettings

    torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        loaded = Policy.from_checkpoint(args.checkpoint)
        backbone, trained_order = loaded.backbone, loaded.order
        source = f"checkpoint {args.checkpoint} ({backbone.name}, {backbone.codec.name} codec)"
    else:
        backbone, trained_order = tiny_backbone(), "reason_then_act"
        source = ("tiny hf_vlm preset, UNTRAINED (bins codec over fixed statistics): reasoning runs to the "
                  "repetition guard or the token budget, so latency is an upper bound and success is 0")
    entry = {**ENTRY, "episodes_per_task": args.episodes, "params": {"seed": args.seed}}

    rows = {}
    with tempfile.TemporaryDirectory(prefix="refine-p5-") as work:
        for mode in MODES:
            settings = PolicySettings(reasoning=mode, every=args.every,
                                      max_reasoning_tokens=args.max_reasoning_tokens)
            policy = Policy(backbone, settings, trained_order=trained_order)
            episodes = per_episode(policy, mode)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # vla-eval's per-benchmark summary box
                records = run_policy(policy, entry, Path(work) / mode, max_batch_size=args.max_batch_size,
                                     camera="image_0")
            if [e["queries"] for e in episodes] != [r["queries"] for r in records]:
                raise RuntimeError("the sessions seen do not line up with vla-eval's episodes")
            rows[mode] = (summarise(records), episodes, time.perf_counter() - start)

    print(f"policy: {source}")
    print(f"demo-sim seed {args.seed}, {args.episodes} episodes per mode, K={args.every}, "
          f"max_reasoning_tokens {args.max_reasoning_tokens}, order {trained_order}, torch threads "
          f"{args.threads}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"vla-eval {vla_eval.__version__}")
    print()
    print("| mode | episodes | latency per action (ms) | tokens per query | fresh reasoning | "
          "success [95% CI] | wall s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for mode in MODES:
        summary, episodes, wall = rows[mode]
        low, high = summary["success_ci95"]
        queries = sum(e["queries"] for e in episodes)
        fresh = sum(e["fresh"] for e in episodes) / queries
        print(f"| {mode} | {summary['trials']} | {summary['latency_per_action_s'] * 1e3:.1f} | "
              f"{summary['tokens_per_query']:.1f} | {fresh:.0%} of {queries} | "
              f"{summary['success_rate']:.2f} [{low:.2f}, {high:.2f}] | {wall:.1f} |")
        if summary["errors"]:
            print(f"    ({summary['errors']} episodes of {mode} ended with an error)")
    latency = {mode: rows[mode][0]["latency_per_action_s"] for mode in MODES}
    print()
    print(f"every_step/every_k = {latency['every_step'] / latency['every_k']:.2f}x  (target >= 3x)")
    print(f"every_step/never   = {latency['every_step'] / latency['never']:.2f}x")

    # every_k can only reuse a reasoning that is not empty: where the free generation starts with an
    # action id the reasoning is empty, nothing is stored, and the next query reasons anew
    every_k = rows["every_k"][1]
    reused = [i for i, e in enumerate(every_k) if e["fresh"] < e["queries"]]
    print(f"every_k reused its reasoning in {len(reused)} of {len(every_k)} episodes "
          f"(episodes {reused}); in the others every query reasoned anew")
    if reused and len(reused) < len(every_k):
        same = {mode: mean_latency(rows[mode][1], reused) for mode in MODES}
        print(f"  over those {len(reused)} episodes: " + ", ".join(
            f"{mode} {same[mode] * 1e3:.1f} ms" for mode in MODES)
            + f" per action; every_step/every_k = {same['every_step'] / same['every_k']:.2f}x")


if __name__ == "__main__":
    main()
