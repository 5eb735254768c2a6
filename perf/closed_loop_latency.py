"""P5 -- closed-loop latency per executed action by reasoning mode (every step, every K, never).

Run: ``python perf/closed_loop_latency.py [--checkpoint PATH] [--episodes 6] [--rounds 2] [--every 5]
[--max-reasoning-tokens 64] [--threads 1]`` (about 2 minutes with the tiny model). On a GPU, at full
size: ``--full-size openvla-7b --work DIR --reasoning-to-budget --max-reasoning-tokens 256``.

The same policy acts in demo-sim three times in one run, once per reasoning mode, through refine's
real closed-loop path: ``run_policy`` serves it (``PolicyModelServer`` on vla-eval's protocol) and
vla-eval's orchestrator runs the episodes against it, one at a time. The episodes are split into
``--rounds`` rounds; round r uses demo-sim seed ``--seed`` + r (its own scenes, the same for all three
modes) and runs the modes in alternating order (every_step, every_k, never, then never, every_k,
every_step, ...), so a shared machine's load drifts hit every mode alike. Each mode of each round gets
its own fresh temporary output directory, so nothing is resumed or read back. Numbers come from
``summarise(records)`` over all rounds, i.e. from the server's per-episode records:

- latency per action = the wall time of the policy's generations in an episode divided by the
  actions it executed, averaged over episodes (the simulator's own time is not included);
- tokens per query = tokens generated per query (reasoning + action span; a reused every_k
  reasoning is a forced prefix, not generated, so it is not counted);
- success with its Wilson 95% interval.
Besides, ``policy.act_batch`` is wrapped to record every query: whether it reasoned anew ("fresh":
all queries every step, ideally 1 in K every K, none never), its generation time and its actions.
every_k can only reuse a reasoning that is not empty: where the model's free generation starts with
an action id, its reasoning is empty, nothing is stored, and the next query reasons anew too. So the
fresh queries of every_k are counted per episode, and the latency of its fresh and of its reusing
queries is printed, with what every_k would give at exactly one fresh query in K (a fresh query
costing what every_step's do, the others what every_k's reusing ones did) -- a projection from
measured query latencies, labelled as such, not a measurement.

The policy is the checkpoint given (``Policy.from_checkpoint``), else an untrained backbone of
perf_backbones.py (the tiny ``hf_vlm`` preset, or OpenVLA-7B's configuration with random weights) with
a ``bins`` codec over fixed statistics: it reasons until the repetition guard (off with
``--reasoning-to-budget``) or the token budget stops it, so its reasoning latency is an upper bound
for the budget and its success is 0. The ratios printed are every_step/every_k and every_step/never
of the latency per action (target: every_k at least 3x faster than every_step).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import perf_backbones

MODES = ("every_step", "every_k", "never")
ENTRY = {"benchmark": "refine_plugins.demo.vla_benchmark:DemoSimBenchmark", "name": "demo-sim"}


def record_queries(policy, mode: str) -> list[dict]:
    """Wrap `policy.act_batch` to record each query: its session (one per episode), whether it
    reasoned anew, its actions and its generation time (the wall time of the batch it was in)."""
    act_batch = policy.act_batch
    queries: list[dict] = []

    def recorded(sessions, images, observations=None):
        chunks = act_batch(sessions, images, observations)
        queries.extend({"session": session, "fresh": mode != "never" and not chunk.reasoning_reused,
                        "actions": len(chunk.actions), "latency_s": chunk.latency_s}
                       for session, chunk in zip(sessions, chunks))
        return chunks

    policy.act_batch = recorded
    return queries


def per_action_ms(queries: list[dict]) -> float:
    return 1e3 * sum(q["latency_s"] for q in queries) / max(sum(q["actions"] for q in queries), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a refine run directory, training OUT or step-* directory; "
                             "default: the tiny untrained hf_vlm preset")
    parser.add_argument("--episodes", type=int, default=6, help="demo-sim episodes per mode, all rounds")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of alternating mode order")
    parser.add_argument("--every", type=int, default=5, help="K of every_k")
    parser.add_argument("--max-reasoning-tokens", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8,
                        help="the server's batch limit (episodes run one at a time, so batches are 1)")
    parser.add_argument("--seed", type=int, default=0, help="demo-sim seed of the first round's scenes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    perf_backbones.add_arguments(parser, "the untrained backbone when no --checkpoint is given "
                                         "(perf_backbones.py)")
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
        backbone, trained_order = perf_backbones.build(args.full_size, args.work), "reason_then_act"
        source = (perf_backbones.describe(args.full_size) + ": reasoning runs to the "
                  + ("token budget" if args.reasoning_to_budget else "repetition guard or the token budget")
                  + ", so latency is an upper bound and success is 0")
    if args.episodes % args.rounds:
        parser.error("--episodes must be a multiple of --rounds")

    policies, records, walls = {}, {mode: [] for mode in MODES}, {mode: 0.0 for mode in MODES}
    for mode in MODES:
        guard = perf_backbones.guard_settings(args.reasoning_to_budget)
        settings = PolicySettings(reasoning=mode, every=args.every,
                                  max_reasoning_tokens=args.max_reasoning_tokens, **guard)
        policies[mode] = Policy(backbone, settings, trained_order=trained_order)
    queries = {mode: record_queries(policies[mode], mode) for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="refine-p5-") as work:
        for r in range(args.rounds):
            entry = {**ENTRY, "episodes_per_task": args.episodes // args.rounds,
                     "params": {"seed": args.seed + r}}
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # vla-eval's per-benchmark summary box
                    records[mode] += run_policy(policies[mode], entry, Path(work) / f"{mode}-{r}",
                                                max_batch_size=args.max_batch_size, camera="image_0")
                walls[mode] += time.perf_counter() - start
    rows = {mode: (summarise(records[mode]), queries[mode], walls[mode]) for mode in MODES}

    print(f"policy: {source}")
    print(f"demo-sim seeds {args.seed}..{args.seed + args.rounds - 1} ({args.rounds} rounds of "
          f"{args.episodes // args.rounds} episodes), {args.episodes} episodes per mode, K={args.every}, "
          f"max_reasoning_tokens {args.max_reasoning_tokens}, order {trained_order}, torch threads "
          f"{args.threads}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"vla-eval {vla_eval.__version__}")
    print()
    print("| mode | episodes | latency per action (ms) | tokens per query | fresh reasoning | "
          "success [95% CI] | wall s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for mode in MODES:
        summary, queries, wall = rows[mode]
        low, high = summary["success_ci95"]
        fresh = sum(q["fresh"] for q in queries) / len(queries)
        print(f"| {mode} | {summary['trials']} | {summary['latency_per_action_s'] * 1e3:.1f} | "
              f"{summary['tokens_per_query']:.1f} | {fresh:.0%} of {len(queries)} | "
              f"{summary['success_rate']:.2f} [{low:.2f}, {high:.2f}] | {wall:.1f} |")
        if summary["errors"]:
            print(f"    ({summary['errors']} episodes of {mode} ended with an error)")
    latency = {mode: rows[mode][0]["latency_per_action_s"] for mode in MODES}
    print()
    print(f"every_step/every_k = {latency['every_step'] / latency['every_k']:.2f}x  (target >= 3x)")
    print(f"every_step/never   = {latency['every_step'] / latency['never']:.2f}x")

    # every_k reuses only a non-empty reasoning: how often it reasoned anew, episode by episode
    queries = rows["every_k"][1]
    episodes: dict[int, list[dict]] = {}  # by session (one per episode), in the order they ran
    for q in queries:
        episodes.setdefault(id(q["session"]), []).append(q)  # the records keep the sessions alive
    counts = [(sum(q["fresh"] for q in episode), len(episode)) for episode in episodes.values()]
    print("every_k fresh queries per episode: " + ", ".join(f"{f}/{n}" for f, n in counts)
          + f"  (one in {args.every} would be {len(queries) / args.every:.0f} of {len(queries)})")
    fresh = [q for q in queries if q["fresh"]]
    reusing = [q for q in queries if not q["fresh"]]
    if fresh and reusing:
        # a fresh query costs what every_step's do, over the same episodes (every_k's own fresh queries
        # are mostly those of episodes whose reasoning came out empty, so they are not typical)
        k, every_step, reuse = args.every, per_action_ms(rows["every_step"][1]), per_action_ms(reusing)
        projected = (every_step + (k - 1) * reuse) / k
        print(f"every_k per action: fresh queries {per_action_ms(fresh):.1f} ms ({len(fresh)}), reusing "
              f"queries {reuse:.1f} ms ({len(reusing)}); every_step {every_step:.1f} ms "
              f"({len(rows['every_step'][1])})")
        print(f"at exactly 1 fresh in {k}: ({every_step:.1f} + {k - 1} x {reuse:.1f}) / {k} = "
              f"{projected:.1f} ms -> every_step/every_k {every_step / projected:.2f}x; at most "
              f"{every_step / reuse:.2f}x for any K (projected from measured query latencies, not measured)")


if __name__ == "__main__":
    main()
