"""P3 — annotation throughput: the real pipeline against a local server (its own process) that
answers Gemini's `generateContent` after a fixed latency (200 ms), for several concurrency
levels, compared with the ideal min(concurrency / latency, rate limit).

    python perf/annotate_throughput.py [--latency 0.2] [--seconds 3] [--concurrency 1 8 32 64]
                                       [--workers 1 2] [--clients raw-http gemini]

Two clients per row: `gemini` is the real teacher (google-genai SDK, structured output parsed
into pydantic); `raw-http` is a minimal teacher that posts the same request with httpx and
parses the JSON itself, so the pipeline's own ceiling (limiter, workers, journal fsyncs,
episode files, manifest) shows apart from the SDK's per-request CPU cost.

Each row runs enough steps for about `--seconds` of ideal time (at least 30 steps). Elapsed time
is the whole `annotate_dataset` call: reading the dataset, PNG encoding, the client, the
journal, episode files and the manifest. The content cache is off, so every step is a request.
With `--workers N` (N > 1) a row runs `annotate.workers = N` shard processes into one OUT; the
concurrency and rate limit are totals split between them, and the elapsed time includes starting
the worker processes (each imports refine and the SDK). "start-up" is the time until the first
step settled (one latency plus imports, client and dataset set-up); the last column is the rate
from then on (the first step's latency counted once) against the ideal.
"""
from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from annotate_servers import INSTRUCTION, coded_frame, pick_place_actions  # noqa: E402
from refine_core import DatasetStatistics, Episode, RobotDataset, Statistics, Step  # noqa: E402
from refine_core.annotate import annotate_dataset  # noqa: E402
from refine_core.annotate.workers import annotate_with_workers  # noqa: E402
from refine_core.annotate.prompt import PROMPT_VERSION, build_prompt, reasoning_from_answer  # noqa: E402
from refine_core.config import AnnotateSettings  # noqa: E402
from refine_core.registry import get_registry  # noqa: E402
from refine_core.teacher import Annotation, Teacher, TeacherIdentity, TokenUsage  # noqa: E402
from refine_teachers.common import encode_png  # noqa: E402

STEPS_PER_EPISODE = 20


class ManyEpisodes(RobotDataset):
    name, robot, control_frequency, cameras = "perf", "perf-arm", 5.0, ("front",)

    def __init__(self, steps: int):
        self.total = steps

    @property
    def identity(self) -> str:
        return f"perf-{self.total}"

    def episodes(self, split: str = "train"):
        actions = pick_place_actions(STEPS_PER_EPISODE)
        for e in range(-(-self.total // STEPS_PER_EPISODE)):
            count = min(STEPS_PER_EPISODE, self.total - e * STEPS_PER_EPISODE)
            yield Episode(f"ep{e}", [Step(images={"front": coded_frame(e % 12, t, size=64)},
                                          instruction=INSTRUCTION,
                                          action=actions[t], primary_camera="front", episode_id=f"ep{e}",
                                          step_index=t)
                                     for t in range(count)])

    def statistics(self) -> DatasetStatistics:
        return DatasetStatistics(action=Statistics.from_array(pick_place_actions(STEPS_PER_EPISODE)))


class RawHttpTeacher(Teacher):
    """The same generateContent request through a bare httpx client (no SDK)."""

    def __init__(self, base_url: str):
        import httpx2

        self._client = httpx2.AsyncClient(base_url=base_url, timeout=30,
                                          limits=httpx2.Limits(max_connections=None))

    @property
    def identity(self) -> TeacherIdentity:
        return TeacherIdentity("raw-http", "gemini-2.0-flash", PROMPT_VERSION)

    async def annotate(self, request) -> Annotation:
        image = base64.b64encode(encode_png(request.images[request.primary_camera])).decode()
        body = {"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png",
                                                                        "data": image}},
                                                        {"text": build_prompt(request.instruction)}]}],
                "generationConfig": {"responseMimeType": "application/json"}}
        response = await self._client.post("/v1beta/models/gemini-2.0-flash:generateContent", json=body,
                                           headers={"x-goog-api-key": "perf-key"})
        response.raise_for_status()
        data = response.json()
        usage = data.get("usageMetadata", {})
        return Annotation(reasoning_from_answer(data["candidates"][0]["content"]["parts"][0]["text"]),
                          TokenUsage(usage.get("promptTokenCount", 0), usage.get("candidatesTokenCount", 0)))


def build(client: str, steps: int) -> tuple[ManyEpisodes, Teacher]:
    """The dataset and a fresh client (each run, and each worker process, has its own event loop)."""
    teacher = (get_registry().build("teacher", "gemini", {}) if client == "gemini"
               else RawHttpTeacher(os.environ["GOOGLE_GEMINI_BASE_URL"]))
    return ManyEpisodes(steps), teacher


def measure(client: str, concurrency: int, steps: int, rpm: float | None,
            workdir: Path, workers: int = 1) -> tuple[float, float, int, int]:
    """(elapsed s, start-up s = until the first step settled, answered, failed)."""
    settings = AnnotateSettings(concurrency=concurrency, cache=False, requests_per_minute=rpm, max_retries=0,
                                workers=workers)
    out = Path(tempfile.mkdtemp(dir=workdir))
    first: list[float] = []

    def progress(stats) -> None:
        if stats.settled and not first:
            first.append(time.perf_counter())

    start = time.perf_counter()
    if workers > 1:
        stats = annotate_with_workers(build, (client, steps), out, settings, on_progress=progress)
    else:
        stats = annotate_dataset(*build(client, steps), out, settings, on_progress=progress)
    elapsed = time.perf_counter() - start
    if stats.failures:
        print(f"  failures at concurrency {concurrency}: {stats.failures[0]['reason']}", flush=True)
    return elapsed, (first[0] if first else start) - start, stats.answered, stats.failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rate-limited", type=float, default=3000.0,
                        help="requests/min of an extra rate-limited row at the highest concurrency (0: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="annotate.workers values, one set of rows each")
    parser.add_argument("--clients", nargs="+", default=["raw-http", "gemini"],
                        choices=["raw-http", "gemini"])
    args = parser.parse_args()

    rows = [(c, None) for c in args.concurrency]
    if args.rate_limited:
        rows.append((max(args.concurrency), args.rate_limited))
    # The server runs in its own process, as a real endpoint would: it does not share our GIL.
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "annotate_servers.py"), "--latency",
                               str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        os.environ.update(GEMINI_API_KEY="perf-key", GOOGLE_GEMINI_BASE_URL=url)
        with tempfile.TemporaryDirectory() as workdir:
            for client in args.clients:
                measure(client, 4, 8, None, Path(workdir))  # warm-up: imports, first connections
            print(f"latency {args.latency * 1000:.0f} ms; ideal = min(concurrency / latency, rate limit); "
                  f"load average {os.getloadavg()[0]:.1f}")
            print("| client | workers | concurrency | rate limit (req/min) | steps | elapsed s | steps/s | "
                  "ideal steps/s | ratio | start-up s | ratio after start-up |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for client, workers in ((c, w) for c in args.clients for w in args.workers):
                for concurrency, rpm in rows:
                    ideal = concurrency / args.latency if rpm is None else min(concurrency / args.latency,
                                                                               rpm / 60)
                    # Rate-limited rows run longer: the limiter's one-second burst would flatter a short run.
                    steps = max(30, round(ideal * args.seconds * (1 if rpm is None else 4)))
                    elapsed, startup, answered, failed = measure(client, concurrency, steps, rpm,
                                                                 Path(workdir), workers)
                    if failed or answered != steps:
                        raise SystemExit(f"{failed} of {steps} requests failed at concurrency {concurrency}")
                    rate = answered / elapsed
                    limit = '-' if rpm is None else f'{rpm:g}'
                    print(f"| {client} | {workers} | {concurrency} | {limit} | {steps} | "
                          f"{elapsed:.2f} | "
                          f"{rate:.1f} | {ideal:.1f} | {rate / ideal:.2f} | {startup:.2f} | "
                          f"{answered / (elapsed - startup + args.latency) / ideal:.2f} |", flush=True)
    finally:
        server.kill()


if __name__ == "__main__":
    main()
