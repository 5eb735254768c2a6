"""A closed-loop evaluation split across machines: `refine eval --shard i/n` runs a fixed, disjoint
part of every policy's demo-sim episodes, `refine eval merge` joins the parts into what one machine
writes; the merge refuses parts that do not make one whole, a killed part resumes."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_refine
from refine_core.errors import UsageError
from refine_core.evaluate.baselines import DoNothingPolicy
from refine_core.evaluate.closed_loop import run_policy
from refine_core.evaluate.shards import begin_shard, merge_shards, shard_items
from tiny_policies import SlowDoNothing, kill_after_logged_episodes
from train_toys import trained_checkpoint

ENTRY = {"benchmark": "refine_plugins.demo.vla_benchmark:DemoSimBenchmark", "name": "demo-sim",
         "episodes_per_task": 6, "params": {"seed": 0}}
# the scripted policies (both baselines and the expert; the model's modes act through the same
# path, only slower): 5 demo-sim episodes each
BENCHMARK = ["--benchmark", "demo-sim", "--set", "benchmark.episodes=5", "--set", "benchmark.modes=[]"]
POLICIES = ("do-nothing", "random", "expert")
KEYS = ("policy", "mode", "role", "task", "episode", "success", "grasp", "steps", "failure_reason")


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("count", [0, 1, 5, 6, 7, 100])
@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_the_split_is_fixed_disjoint_complete_and_balanced(count, shards):
    parts = [shard_items(count, i, shards) for i in range(shards)]
    assert sorted(item for part in parts for item in part) == list(range(count))
    assert {len(part) for part in parts} <= {count // shards, -(-count // shards)}
    assert parts == [shard_items(count, i, shards) for i in range(shards)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return trained_checkpoint(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def evaluated(checkpoint, tmp_path_factory):
    """One unsharded `refine eval`, two `refine eval --shard i/2` (one with two local processes)
    and their `refine eval merge`, through the real command line."""
    root = tmp_path_factory.mktemp("evals")
    timings = {}
    whole = root / "whole"
    started = time.perf_counter()
    result = run_refine("eval", "--checkpoint", str(checkpoint), "--out", str(whole), *BENCHMARK)
    timings["unsharded"] = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    parts = [root / "part0", root / "part1"]
    for i, part in enumerate(parts):
        local = ["--set", "benchmark.shards=2"] if i == 1 else []  # a machine's own parallelism may differ
        started = time.perf_counter()
        result = run_refine("eval", "--checkpoint", str(checkpoint), "--out", str(part), *BENCHMARK, *local,
                            "--shard", f"{i}/2")
        timings[f"shard {i}/2"] = time.perf_counter() - started
        assert result.returncode == 0, result.stderr
    merged = root / "merged"
    result = run_refine("eval", "merge", str(parts[0]), str(parts[1]), "--out", str(merged), "--json")
    assert result.returncode == 0, result.stderr
    print(f"\ntimings: {timings}")
    return {"whole": whole, "parts": parts, "merged": merged, "printed": json.loads(result.stdout)}


def _records(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]


def test_sharded_then_merged_equals_the_unsharded_evaluation(evaluated):
    whole, merged = _records(evaluated["whole"]), _records(evaluated["merged"])
    assert len(whole) == 3 * 5 and {r["policy"] for r in whole} == set(POLICIES)
    assert [tuple(r[k] for k in KEYS) for r in merged] == [tuple(r[k] for k in KEYS) for r in whole]
    assert [r["protocol"] for r in merged] == [r["protocol"] for r in whole]
    assert all("shard" not in r for r in merged)
    summary = json.loads((evaluated["merged"] / "summary.json").read_text())
    unsharded = json.loads((evaluated["whole"] / "summary.json").read_text())
    assert summary == evaluated["printed"]
    assert summary["benchmark"] == unsharded["benchmark"]
    assert summary["episodes"] == unsharded["episodes"] == 15
    assert list(summary["policies"]) == list(unsharded["policies"])
    for name, row in unsharded["policies"].items():
        for key in ("mode", "role", "trials", "success_rate", "success_ci95", "grasp_rate", "grasp_ci95",
                    "errors"):
            assert summary["policies"][name][key] == row[key], (name, key)
    assert summary["policies"]["expert"]["success_rate"] == 1.0  # a real result, not an empty one
    assert summary["shards"]["count"] == 2


def test_each_part_runs_only_its_own_episodes_and_records_its_shard(evaluated):
    for i, part in enumerate(evaluated["parts"]):
        records = _records(part)
        mine = shard_items(5, i, 2)  # demo-sim has one task: item k is episode k
        assert {(r["policy"], r["episode"]) for r in records} == {(p, e) for p in POLICIES for e in mine}
        assert {r["shard"] for r in records} == {f"{i}/2"}
        summary = json.loads((part / "summary.json").read_text())
        part_of = summary["shard"]
        assert (part_of["index"], part_of["count"], part_of["complete"]) == (i, 2, True)
        assert summary["episodes"] == 3 * len(mine)
        for policy in ("do-nothing", "expert"):  # the server acted in this part's episodes only
            log = (part / policy / "policy_log.jsonl").read_text().splitlines()
            assert len(log) == len(mine)
    assert "--shard 1/2" in json.loads((evaluated["parts"][1] / "shard.json").read_text())["command"]


def _copy(part: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("shard.json", "summary.json", "results.jsonl"):
        shutil.copy(part / name, to / name)
    return to


def _edit(path: Path, change) -> None:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        change(rows)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))


def test_merge_refuses_parts_that_do_not_make_one_whole(evaluated, tmp_path):
    part0, part1 = evaluated["parts"]
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"shard 1/2 missing"):
        merge_shards([part0], out)
    with pytest.raises(UsageError, match=r"shard 0/2 is given twice"):
        merge_shards([part0, _copy(part0, tmp_path / "again"), part1], out)
    other_n = _copy(part1, tmp_path / "n3")
    _edit(other_n / "shard.json", lambda d: d.update(count=3))
    with pytest.raises(UsageError, match=r"disagree on n: .*0/2.*1/3"):
        merge_shards([part0, other_n], out)
    other_checkpoint = _copy(part1, tmp_path / "checkpoint")
    _edit(other_checkpoint / "shard.json", lambda d: d["checkpoint"].update(sha256="0" * 16))
    with pytest.raises(UsageError, match=r"disagree on the checkpoint"):
        merge_shards([part0, other_checkpoint], out)
    other_config = _copy(part1, tmp_path / "config")
    _edit(other_config / "shard.json", lambda d: d["benchmark"]["options"].update(seed=1))
    with pytest.raises(UsageError, match=r"disagree on the benchmark config"):
        merge_shards([part0, other_config], out)
    other_protocol = _copy(part1, tmp_path / "protocol")
    _edit(other_protocol / "results.jsonl", lambda rows: rows[0]["protocol"].update(vla_eval_version="0.9.0"))
    with pytest.raises(UsageError, match=r"disagree on the protocol of do-nothing"):
        merge_shards([part0, other_protocol], out)
    assert not out.exists()  # nothing written by a refused merge


def test_merge_names_an_unfinished_part_and_the_command_that_resumes_it(evaluated, tmp_path):
    part0, part1 = evaluated["parts"]
    unfinished = _copy(part1, tmp_path / "unfinished")
    _edit(unfinished / "shard.json", lambda d: d.update(complete=False))
    out = str(tmp_path / "o")
    error = one_line_error(run_refine("eval", "merge", str(part0), str(unfinished), "--out", out))
    assert f"shard 1/2 in {unfinished} is unfinished: rerun `refine eval --checkpoint" in error
    assert "--shard 1/2 --benchmark demo-sim --set benchmark.episodes=5 --set 'benchmark.modes=[]'" in error
    assert error.endswith("(it resumes), then merge again")
    no_part = one_line_error(run_refine("eval", "merge", str(part0), str(tmp_path), "--out", out))
    assert "is not the output of `refine eval --shard` (no shard.json)" in no_part


def test_merge_never_overwrites_other_results(evaluated, tmp_path):
    part0, part1 = evaluated["parts"]
    out = tmp_path / "merged"
    first = merge_shards([part0, part1], out)
    again = merge_shards([part1, part0], out)  # the same whole: nothing changes
    assert again.summary == first.summary and _records(out) == first.records
    _edit(out / "summary.json", lambda d: d.update(episodes=1))
    error = one_line_error(run_refine("eval", "merge", str(part0), str(part1), "--out", str(out)))
    assert "already holds other results (summary.json): merge into another --out" in error
    assert json.loads((out / "summary.json").read_text())["episodes"] == 1
    with pytest.raises(UsageError, match="is a shard's OUT"):
        merge_shards([part0, part1], part0)
    with pytest.raises(UsageError, match=r"already holds other results \(do-nothing\)"):
        merge_shards([part0, part1], evaluated["whole"])  # an unsharded evaluation's OUT


@pytest.mark.parametrize("shard, message", [
    ("2/2", "need 0 <= i < n"), ("0/0", "need 0 <= i < n"), ("-1/2", "need 0 <= i < n"),
    ("x", "write it as i/n"), ("1/2/3", "write it as i/n"),
])
def test_a_bad_shard_is_one_line(shard, message, tmp_path):
    error = one_line_error(run_refine("eval", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--shard", shard))
    assert f"Bad --shard '{shard}'" in error and message in error


def test_a_benchmark_that_is_not_closed_loop_is_not_sharded(checkpoint, tmp_path):
    error = one_line_error(run_refine("eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                                      "--shard", "0/2"))  # the checkpoint's own benchmark: offline
    assert "--shard splits the episodes of a closed-loop benchmark; 'offline' is not one" in error
    assert not (tmp_path / "o").exists()


def test_a_part_refuses_the_out_of_another_part(evaluated, checkpoint, tmp_path):
    part0 = evaluated["parts"][0]
    error = one_line_error(run_refine("eval", "--checkpoint", str(checkpoint), "--out", str(part0),
                                      *BENCHMARK, "--shard", "1/2"))
    assert f"{part0} holds shard 0/2 of another evaluation (its index differs)" in error
    unsharded = one_line_error(run_refine("eval", "--checkpoint", str(checkpoint), "--out",
                                          str(evaluated["whole"]), *BENCHMARK, "--shard", "0/2"))
    assert "holds the results of an unsharded evaluation" in unsharded
    identity = json.loads((part0 / "shard.json").read_text())
    begin_shard(part0, identity)  # its own rerun is welcome
    # a policy's recording is one part's: another part (or an unsharded run) never continues it
    with pytest.raises(UsageError, match=r"holds the episodes of shard 0/2, not of an unsharded evaluation"):
        run_policy(DoNothingPolicy(), ENTRY, part0 / "do-nothing", camera="image_0")


def _evaluate_part_slowly(out: str) -> None:  # the process the resume test kills
    run_policy(SlowDoNothing(), {**ENTRY, "episodes_per_task": 16}, Path(out), camera="image_0", shard=(1, 2))


def test_a_killed_part_resumes_without_rerunning_its_finished_episodes(tmp_path):
    out = tmp_path / "do-nothing"
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           f"from test_eval_shards import _evaluate_part_slowly; _evaluate_part_slowly({str(out)!r})"
    log = out / "policy_log.jsonl"
    before = kill_after_logged_episodes(code, log, tmp_path / "cache")
    mine = shard_items(16, 1, 2)
    assert 3 <= before < len(mine) and not (out / "episodes.jsonl").exists()
    records = run_policy(SlowDoNothing(), {**ENTRY, "episodes_per_task": 16}, out, camera="image_0",
                         shard=(1, 2))
    assert [r["episode"] for r in records] == mine  # its own part, each episode once, no other part's
    assert all(r["queries"] == r["steps"] for r in records)
    assert len(log.read_text().splitlines()) - before <= len(mine) - before + 1  # at most the one in flight
    assert (out / "episodes.jsonl").is_file()
