"""FSDP training on the CPU: 2 gloo processes under `accelerate launch --use_fsdp --fsdp_version 2`
(torch's fully_shard per transformer block) against 1 process, exact resume after a SIGKILL,
freezing and LoRA under FSDP, the gathered checkpoint, and the DeepSpeed refusal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from refine_core.errors import UsageError
from refine_core.training import list_checkpoints, load_checkpoint, prepare_run, train

from train_toys import ToyDataset, toy_config, write_annotations

TESTS = Path(__file__).parent
# reasoning dropout and reasoning texts of varying length make the two processes' token counts differ
SETTINGS = ("train.max_steps=4", "train.save_every=2", "train.reasoning_dropout=0.3",
            "freeze.first_n_layers=2", "freeze.vision=true")
# no LoRA dropout: its masks come from each process's RNG, so they depend on the split (as under DDP)
LORA = ("train.max_steps=2", "train.save_every=2", "lora.r=4", "lora.dropout=0")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, *sets: str, annotations: Path, extra: tuple[str, ...] = (), check: bool = True):
    """tests/fsdp_worker.py under `accelerate launch --use_fsdp` with 2 CPU processes × batch 2."""
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    flags = [arg for s in ("train.batch_size=2", *sets) for arg in ("--set", s)]
    for _ in range(2):  # a second try when the free port was taken meanwhile
        done = subprocess.run(
            [str(accelerate), "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "--main_process_port", str(free_port()), str(TESTS / "fsdp_worker.py"), str(out),
             "--annotations", str(annotations), *flags, *extra],
            capture_output=True, text=True, env=env, timeout=180)
        if "address already in use" not in done.stderr.lower():
            break
    if check:
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
        assert done.stdout.count("fsdp=True") == 2 and "batch 2 × 2 process(es)" in done.stdout
    return done


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def initial_parameters(*sets: str) -> dict[str, torch.Tensor]:
    model = prepare_run(toy_config(*sets), dataset=ToyDataset()).backbone.model
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
    return write_annotations(tmp_path_factory.mktemp("annotations"), ToyDataset())


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, annotations):
    """4 FSDP steps (2 processes × batch 2, first 2 blocks and the vision tower frozen), the whole
    model gathered into full.safetensors after training."""
    folder = tmp_path_factory.mktemp("fsdp")
    launch(folder / "two", *SETTINGS, annotations=annotations,
           extra=("--dump-full", str(folder / "full.safetensors")))
    return SimpleNamespace(out=folder / "two", full=load_file(str(folder / "full.safetensors")),
                           folder=folder)


def test_two_fsdp_processes_equal_one_with_the_doubled_batch(fsdp_run, annotations, tmp_path):
    one = train(prepare_run(toy_config("train.batch_size=4", *SETTINGS), dataset=ToyDataset(),
                            annotations_dir=annotations), tmp_path / "one")
    a, b = metrics(tmp_path / "one"), metrics(fsdp_run.out)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["reasoning_loss"] > 0
        for key in ("loss", "action_loss", "reasoning_loss", "grad_norm", "action_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key, x[key], y[key])
    w1 = load_file(str(one.checkpoint / "weights.safetensors"))
    w2 = load_file(str(fsdp_run.out / "checkpoints" / "step-0000004" / "weights.safetensors"))
    assert set(w1) == set(w2)
    # the gradients agree to float32 rounding (summation order of the reduce-scatter); AdamW divides
    # by sqrt(v), which lets that rounding move a weight by up to ~1e-5 over 4 steps at lr 3e-3
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_an_fsdp_run_killed_mid_step_resumes_exactly(fsdp_run, annotations):
    out = fsdp_run.folder / "killed"
    killed = launch(out, *SETTINGS, annotations=annotations, extra=("--die-at-forward", "3"), check=False)
    assert killed.returncode != 0  # rank 0 was SIGKILLed in step 3's forward
    assert [step for step, _ in list_checkpoints(out)] == [2]
    launch(out, *SETTINGS, annotations=annotations,
           extra=("--resume", "1", "--dump-full", str(fsdp_run.folder / "resumed.safetensors")))
    a, b = metrics(fsdp_run.out), metrics(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for key in ("loss", "action_loss", "reasoning_loss", "grad_norm", "lr", "action_accuracy"):
            assert abs(x[key] - y[key]) <= 1e-6, (x["step"], key, x[key], y[key])
    resumed = load_file(str(fsdp_run.folder / "resumed.safetensors"))
    assert max((resumed[k] - fsdp_run.full[k]).abs().max().item() for k in resumed) <= 1e-6


def test_with_rank_shards_each_process_reads_only_its_own_episodes_and_resumes_exactly(annotations, tmp_path):
    """data.rank_shards: rank r trains on the train split's episodes r, r + 2, … only (disjoint,
    together the whole split), and a run killed mid-step resumes each rank's own stream exactly."""
    from refine_core.data.samples import SampleStream

    sets = (*SETTINGS, "data.rank_shards=true")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for out in (whole, killed):
        out.mkdir()
    launch(whole / "run", *sets, annotations=annotations, extra=("--record-samples", str(whole)))
    drawn = [{key.split("/")[0] for key in (whole / f"rank-{r}.txt").read_text().split()} for r in (0, 1)]
    data = toy_config(*sets).data
    split = [e.episode_id for e in SampleStream(ToyDataset(), val_fraction=data.val_fraction).episodes()]
    assert drawn == [set(split[0::2]), set(split[1::2])] and not drawn[0] & drawn[1]
    # each rank draws batch 2 per step: 4 steps are 8 samples of its own
    assert [len((whole / f"rank-{r}.txt").read_text().split()) for r in (0, 1)] == [8, 8]

    stopped = launch(killed / "run", *sets, annotations=annotations, extra=("--die-at-forward", "3"),
                     check=False)
    [(step, saved)] = list_checkpoints(killed / "run")
    assert stopped.returncode != 0 and step == 2
    assert sorted(p.name for p in Path(saved).glob("stream-*")) == ["stream-0.json", "stream-1.json"]
    launch(killed / "run", *sets, annotations=annotations, extra=("--resume", "1"))
    for x, y in zip(metrics(whole / "run"), metrics(killed / "run"), strict=True):
        for key in ("loss", "action_loss", "reasoning_loss", "grad_norm"):
            assert abs(x[key] - y[key]) <= 1e-6, (x["step"], key, x[key], y[key])


def test_frozen_parameters_stay_bit_identical_under_fsdp(fsdp_run):
    initial = initial_parameters(*SETTINGS)
    frozen = [n for n, p in prepare_run(toy_config(*SETTINGS), dataset=ToyDataset()).backbone.model
              .named_parameters() if not p.requires_grad]
    assert any(".layers.0." in n for n in frozen) and any("vision_tower" in n for n in frozen)
    assert not any(".layers.3." in n for n in frozen)
    for name in frozen:
        assert torch.equal(fsdp_run.full[name], initial[name]), name
    trained = set(fsdp_run.full) - set(frozen)
    assert max((fsdp_run.full[n] - initial[n]).abs().max().item() for n in trained) > 1e-3


def test_lora_under_fsdp_trains_only_the_adapters(annotations, tmp_path):
    launch(tmp_path / "two", *LORA, annotations=annotations,
           extra=("--dump-full", str(tmp_path / "full.safetensors")))
    one = train(prepare_run(toy_config("train.batch_size=4", *LORA), dataset=ToyDataset(),
                            annotations_dir=annotations), tmp_path / "one")
    weights = tmp_path / "two" / "checkpoints" / "step-0000002" / "weights.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        assert handle.metadata()["kind"] == "adapter"
    w1, w2 = load_file(str(one.checkpoint / "weights.safetensors")), load_file(str(weights))
    assert set(w1) == set(w2) and all(".lora_" in n for n in w2)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    initial, full = initial_parameters(*LORA), load_file(str(tmp_path / "full.safetensors"))
    for name, tensor in full.items():
        if ".lora_" not in name:
            assert torch.equal(tensor, initial[name]), name
    assert max((full[n] - initial[n]).abs().max().item() for n in w2) > 1e-3


def test_the_gathered_checkpoint_loads_as_a_normal_one(fsdp_run):
    step = fsdp_run.out / "checkpoints" / "step-0000004"
    sharded = {p.name for p in (step / "sharded").iterdir()}
    assert sharded and all(name.endswith(".safetensors") for name in sharded)  # one file per rank
    assert not (step / "optimizer.pt").exists()
    backbone, _ = load_checkpoint(fsdp_run.out)
    for name, parameter in backbone.model.named_parameters():
        assert torch.equal(parameter.detach(), fsdp_run.full[name]), name


def test_deepspeed_is_refused_in_one_line_naming_fsdp(tmp_path):
    from accelerate.utils import DistributedType

    from refine_core.training import Trainer

    setup = prepare_run(toy_config("train.max_steps=1"), dataset=ToyDataset(episodes=2, steps=2))
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(UsageError, match="FSDP") as error:
        Trainer(setup, tmp_path, accelerator=accelerator)
    assert "\n" not in str(error.value)
