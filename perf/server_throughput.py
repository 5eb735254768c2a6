"""P8 -- model-server throughput with 8 concurrent sessions: batched vs one query at a time.

Run: ``python perf/server_throughput.py [--mode never] [--sessions 8] [--steps 20] [--rounds 2]
[--threads 1]`` (about 1 minute in mode never); with reasoning:
``python perf/server_throughput.py --mode every_step --max-reasoning-tokens 16``. On a GPU, at full
size: ``--full-size openvla-7b --work DIR`` (perf_backbones.py).

One policy object (an untrained backbone of perf_backbones.py -- the tiny ``hf_vlm`` preset by
default -- with a ``bins`` codec over fixed statistics, one action per query) is served by
``PolicyModelServer`` with ``vla_eval.api.serve_background`` in two settings: ``max_batch_size=8``
(vla-eval's dispatch loop hands the observations waiting to one ``predict_batch``, i.e. one batched
``policy.act_batch``) and ``max_batch_size=1`` (one ``predict`` at a time).
In each, ``--sessions`` vla-eval clients (``vla_eval.connection.Connection``) connect,
start an episode, and then all at once each send ``--steps`` observations in sequence (``act``:
send, wait for the action, send the next) and end the episode. Every session has its own
instruction, of a different length (so batched prompts are really left-padded), and its own seeded
random 256x256 frames; both settings get exactly the same observations. The clients share one
event loop on the main thread; the server runs on serve_background's thread and its inference in
vla-eval's worker thread, all in this process (as `refine_core.evaluate.closed_loop` serves).

Measured: actions per second = sessions x steps / the wall time from the first observation sent to
the last action received (connections and episode starts excluded), and the mean batch size the
server formed (``policy.act_batch`` is wrapped to count its calls and their sizes). A warm-up pass
of each setting comes first, then the settings alternate in ABBA order over ``--rounds`` rounds so
a shared machine's load drifts hit both alike; the throughput reported is all actions over all
measured time of a setting. Target: batched/one-at-a-time >= 3x. ``--max-wait-time`` is how long a
server waits for a batch to fill after each inference (PolicyModelServer's default, 5 ms, unless
given). Last, the policy alone (no server, no clients): ``act_batch`` on a full batch's rows one by
one and as one batch, median of 3 each -- the most that full batches can gain on this machine.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import Counter

import perf_backbones

INSTRUCTIONS = (
    "pick up the cup",
    "open the drawer",
    "put the orange block in the green bowl",
    "wipe the table with the blue sponge",
    "move the small red cube to the left of the tall white bottle",
    "close the microwave door",
    "put the spoon in the pot on the stove and then push the pot to the back of the counter",
    "stack the green block on top of the yellow block",
)


def untrained_policy(args):
    """An untrained backbone of perf_backbones.py (bins codec over fixed statistics) as a Policy."""
    from refine_core.policy import Policy, PolicySettings

    settings = PolicySettings(reasoning=args.mode, max_reasoning_tokens=args.max_reasoning_tokens,
                              **perf_backbones.guard_settings(args.reasoning_to_budget))
    return Policy(perf_backbones.build(args.full_size, args.work), settings)


def drive(url: str, observations: list[list[dict]]) -> float:
    """Each session's observations sent in sequence, all sessions concurrently; the seconds from the
    first observation to the last action."""
    import anyio
    import numpy as np
    from vla_eval.connection import Connection

    async def session(conn: Connection, steps: list[dict]) -> None:
        for obs in steps:
            action = await conn.act(obs)
            if np.asarray(action["actions"]).shape != (7,):
                raise RuntimeError(f"unexpected action: {action}")

    async def run() -> float:
        conns = [Connection(url, timeout=600) for _ in observations]
        for i, conn in enumerate(conns):
            await conn.connect()
            await conn.start_episode({"task": {"name": f"session-{i}"}})
        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for conn, steps in zip(conns, observations):
                group.start_soon(session, conn, steps)
        elapsed = time.perf_counter() - start
        for conn in conns:
            await conn.end_episode({})
            await conn.close()
        return elapsed

    return anyio.run(run)


def median_seconds(act_batch, sessions, images, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        act_batch(sessions, images)
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("never", "every_step", "every_k"), default="never",
                        help="the policy's reasoning mode")
    parser.add_argument("--max-reasoning-tokens", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=8, help="concurrent clients")
    parser.add_argument("--steps", type=int, default=20, help="observations each session sends")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size of the batched setting")
    parser.add_argument("--warmup", type=int, default=2, help="observations per session in the warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds: each setting runs 2x rounds")
    parser.add_argument("--max-wait-time", type=float, default=0.005,
                        help="seconds a server waits for a batch to fill (PolicyModelServer's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    perf_backbones.add_arguments(parser, "the untrained backbone served (perf_backbones.py)")
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers
    import vla_eval
    from vla_eval.api import serve_background

    from refine_core.serve.model_server import PolicyModelServer

    torch.set_num_threads(args.threads)
    # 8 sessions keeping the server saturated is the point here, not a shard count to warn about
    logging.getLogger("vla_eval.model_servers.serve").setLevel(logging.ERROR)
    policy = untrained_policy(args)
    batch_sizes: list[int] = []
    act_batch = policy.act_batch

    def counted(sessions, images, observations=None):
        batch_sizes.append(len(sessions))
        return act_batch(sessions, images, observations)

    policy.act_batch = counted

    rng = np.random.default_rng(0)
    observations = [[{"images": {"image_0": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)},
                      "task_description": INSTRUCTIONS[i % len(INSTRUCTIONS)]} for _ in range(args.steps)]
                    for i in range(args.sessions)]
    warmup = [steps[: args.warmup] for steps in observations]

    def serve(max_batch_size: int, sessions: list[list[dict]]) -> tuple[float, list[int]]:
        batch_sizes.clear()
        server = PolicyModelServer(policy, max_batch_size=max_batch_size, max_wait_time=args.max_wait_time,
                                   camera="image_0")
        with serve_background(server) as handle:
            elapsed = drive(handle.url, sessions)
        return elapsed, list(batch_sizes)

    settings = {"batched": args.batch, "one at a time": 1}
    for size in settings.values():
        serve(size, warmup)
    totals = {name: [0.0, 0, []] for name in settings}  # seconds, actions, batch sizes
    names = list(settings)
    order = [name for r in range(args.rounds) for name in (names if r % 2 == 0 else names[::-1])]  # ABBA
    print(f"policy: {perf_backbones.describe(args.full_size)}, reasoning {args.mode}"
          + (f", max_reasoning_tokens {args.max_reasoning_tokens}" if args.mode != "never" else "")
          + (", no repetition guard" if args.reasoning_to_budget and args.mode != "never" else ""))
    print(f"{args.sessions} concurrent sessions x {args.steps} observations, instructions of "
          f"{min(len(s) for s in INSTRUCTIONS)}-{max(len(s) for s in INSTRUCTIONS)} characters, "
          f"warm-up {args.warmup} per session, ABBA x {args.rounds} rounds, max_wait_time "
          f"{args.max_wait_time} s, torch threads {args.threads}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, vla-eval {vla_eval.__version__}")
    print()
    print("| run | setting | max_batch_size | actions | seconds | actions/s | act_batch calls | mean batch | "
          "batch sizes (size x calls) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for run, name in enumerate(order, 1):
        elapsed, sizes = serve(settings[name], observations)
        actions = sum(sizes)
        totals[name][0] += elapsed
        totals[name][1] += actions
        totals[name][2] += sizes
        print(f"| {run} | {name} | {settings[name]} | {actions} | {elapsed:.2f} | {actions / elapsed:.1f} | "
              f"{len(sizes)} | {actions / len(sizes):.2f} | "
              + ", ".join(f"{size}x{n}" for size, n in sorted(Counter(sizes).items())) + " |")
    print()
    throughput = {}
    for name, (seconds, actions, sizes) in totals.items():
        throughput[name] = actions / seconds
        print(f"{name:14s} {throughput[name]:7.1f} actions/s  (mean batch {actions / len(sizes):.2f}, "
              f"{actions} actions in {seconds:.2f} s)")
    ratio = throughput["batched"] / throughput["one at a time"]
    print(f"batched / one at a time = {ratio:.2f}x  (target >= 3x)")

    # the policy alone, no server: what full batches can gain at most on this machine
    texts = [steps[0]["task_description"] for steps in observations[: args.batch]]
    images = [steps[0]["images"]["image_0"] for steps in observations[: args.batch]]
    alone = sum(median_seconds(act_batch, [policy.reset(t)], [i]) for t, i in zip(texts, images))
    together = median_seconds(act_batch, [policy.reset(t) for t in texts], images)
    print(f"policy.act_batch alone (median of 3): {len(texts)} rows one by one {alone * 1e3:.1f} ms, "
          f"as one batch {together * 1e3:.1f} ms -> full batches gain at most {alone / together:.2f}x here")


if __name__ == "__main__":
    main()
