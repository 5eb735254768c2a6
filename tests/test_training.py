"""The trainer on the tiny backbone and an in-memory dataset: learning, freezing, LoRA, metrics,
checkpoints, exact resume, divergence, collapse, and the 2-process equivalence."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from refine_core.errors import UsageError
from refine_core.registry import Registry
from refine_core.training import (METRIC_KEYS, CollapseDetector, TrainingDiverged, apply_freeze,
    frozen_block_count, latest_checkpoint, list_checkpoints, load_checkpoint, parameter_rows, prepare_run,
    train)
from refine_core.training.lora import apply_lora
from refine_core.training.setup import attach_codec
from refine_core.training.checkpoint import resume_difference
from refine_core.training.optimizer import lr_factor

from train_toys import ToyDataset, toy_config, write_annotations

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
    return write_annotations(tmp_path_factory.mktemp("annotations"), ToyDataset())


def run(out, *sets, annotations=None, dataset=None, **kwargs):
    setup = prepare_run(toy_config(*sets), dataset=dataset or ToyDataset(), annotations_dir=annotations)
    return train(setup, out, **kwargs)


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# -- learning ---------------------------------------------------------------------------------
def test_loss_falls_and_metrics_have_every_key(tmp_path):
    small = ToyDataset(episodes=2, steps=2)
    annotations = write_annotations(tmp_path / "annotations", small)
    # the tied output layer learns with the embeddings unfrozen: fast enough for 40 tiny steps
    result = run(tmp_path / "run", "train.max_steps=40", "train.batch_size=2", "train.save_every=100",
                 "train.warmup_steps=5", "train.schedule=linear", "train.lr=1e-2", "freeze.embeddings=false",
                 "freeze.vision=true", "freeze.first_n_layers=2",
                 annotations=annotations, dataset=small)
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 41))
    for record in records:
        assert set(METRIC_KEYS) <= set(record)
        # a share of the step's 16 action tokens (2 samples × (7 bins + eos)) that the argmax got right
        right = record["action_accuracy"] * 16
        assert right == pytest.approx(round(right), abs=1e-9) and 0 <= round(right) <= 16
        assert record["grad_norm"] > 0 and record["samples_per_s"] > 0
        assert record["loss"] == pytest.approx(record["action_loss"] + 0.3 * record["reasoning_loss"],
                                               rel=1e-6)
        # mean |decoded − true| over the 7 dimensions: arm values lie in ±0.05 (an error ≤ 0.1 each),
        # the gripper is 0 or 1 (an error ≤ 1); None exactly when nothing decoded (checked below)
        assert record["action_l1"] is None or 0 <= record["action_l1"] <= (6 * 0.1 + 1) / 7
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(1e-2 / 5) and lrs[4] == pytest.approx(1e-2)  # warmup
    assert lrs[5] > lrs[20] > lrs[39] > 0  # linear decay
    first, last = np.mean([r["loss"] for r in records[:5]]), np.mean([r["loss"] for r in records[-5:]])
    assert last < 0.5 * first, (first, last)
    assert records[0]["action_accuracy"] == 0 and min(r["action_accuracy"] for r in records[-10:]) > 0
    # the reasoning is learnt too, more slowly (λ_r = 0.3, longer targets): its loss falls on the steps
    # whose batch has reasoning (reasoning dropout leaves some without: their reasoning loss is 0)
    reasoning = [r["reasoning_loss"] for r in records if r["reasoning_loss"] > 0]
    assert len(reasoning) >= 10 and np.mean(reasoning[-3:]) < 0.7 * np.mean(reasoning[:3]), reasoning
    assert records[0]["reasoning_accuracy"] == 0
    assert max(r["reasoning_accuracy"] for r in records) <= 1
    # action_l1 is reported exactly when some teacher-forced span decodes
    assert all(0 <= r["action_decoded"] <= 1 and (r["action_l1"] is None) == (r["action_decoded"] == 0)
               for r in records)
    assert result.step == 40 and result.checkpoint.name == "step-0000040"


def test_lr_schedules():
    assert [lr_factor(i, 2, 10, "constant") for i in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 2, 10, "linear") == 1.0 and lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5) and lr_factor(10, 2, 10,
                                                                             "cosine") == pytest.approx(0)


# -- selective transfer -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    registry = Registry(entry_points=False)
    backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    attach_codec(backbone, toy_config(), registry, ToyDataset().statistics().action)
    return backbone


def trainable_by_group(backbone) -> dict[str, int]:
    return {row["group"]: row["trainable"] for row in parameter_rows(backbone)}


def block_params(backbone) -> int:
    return sum(p.numel() for p in backbone.blocks()[0][1].parameters())


def test_freeze_first_n_layers(backbone):
    from refine_core.config import FreezeSettings

    per_block = block_params(backbone)
    cases = {1: ("block 0", "blocks 1-3"), -1: ("blocks 0-2", "block 3"),
             0: (None, "blocks 0-3"), 4: ("blocks 0-3", None), -4: (None, "blocks 0-3")}
    for n, (frozen_row, trainable_row) in cases.items():
        # ReFineVLA's rules spelled out (the tiny preset's own recipe trains everything)
        apply_freeze(backbone, FreezeSettings(vision=True, embeddings=True, first_n_layers=n))
        rows = {row["group"]: row for row in parameter_rows(backbone)}
        if frozen_row:
            assert rows[frozen_row]["trainable"] == 0 and rows[frozen_row]["frozen"] > 0, n
        if trainable_row:
            blocks = rows[trainable_row]
            assert blocks["frozen"] == 0, n
            count = (
                1
                if trainable_row.startswith("block ")
                else int(trainable_row.split("-")[1]) - int(trainable_row.split()[1].split("-")[0]) + 1
            )
            assert blocks["trainable"] == count * per_block, n
        groups = trainable_by_group(backbone)
        assert groups["vision"] == 0 and groups["embeddings"] == 0
        assert groups["model.multi_modal_projector.linear"] > 0 and groups["model.language_model.norm"] > 0
    assert frozen_block_count(None, 26, "x") == 24  # ReFineVLA: 24 of Gemma-2's 26 blocks
    for bad in (5, -5, 30):
        with pytest.raises(UsageError, match=f"freeze.first_n_layers={bad} but backbone hf_vlm has 4 blocks"):
            apply_freeze(backbone, FreezeSettings(vision=True, embeddings=True, first_n_layers=bad))


def test_freeze_vision_and_embeddings(backbone):
    from refine_core.config import FreezeSettings

    vision = sum(p.numel() for p in backbone.model.model.vision_tower.parameters())
    embeddings = backbone.model.get_input_embeddings().weight.numel()
    apply_freeze(backbone, FreezeSettings(vision=False, embeddings=False, first_n_layers=0))
    groups = trainable_by_group(backbone)
    assert groups["vision"] == vision and groups["embeddings"] == embeddings
    assert all(p.requires_grad for p in backbone.model.parameters())
    # the tiny preset's lm_head is untied: frozen embeddings leave the output layer trainable
    apply_freeze(backbone, FreezeSettings(vision=True, embeddings=True, first_n_layers=0))
    assert not backbone.model.get_input_embeddings().weight.requires_grad
    assert backbone.model.get_output_embeddings().weight.requires_grad


def test_unset_freeze_settings_follow_the_backbone_recipe(backbone, tmp_path):
    from refine_core.config import FreezeSettings

    # random-weight preset: nothing worth protecting, everything trains
    apply_freeze(backbone, FreezeSettings())
    assert all(p.requires_grad for p in backbone.model.parameters())
    # the same architecture loaded from a directory gets ReFineVLA's recipe
    backbone.save(tmp_path)
    loaded = Registry(entry_points=False).build("backbone", "hf_vlm", {"path": str(tmp_path)})
    assert apply_freeze(loaded, FreezeSettings()) == 2
    groups = trainable_by_group(loaded)
    assert groups["vision"] == 0 and groups["embeddings"] == 0 and groups["blocks 2-3"] > 0
    apply_freeze(loaded, FreezeSettings(vision=False))  # an explicit value beats the recipe
    assert trainable_by_group(loaded)["vision"] > 0


def test_lora_trains_only_adapters_and_round_trips(tmp_path):
    result = run(tmp_path, "lora.r=4", "lora.dropout=0", "train.max_steps=3", "train.batch_size=2",
                 "train.lr=1e-2")
    weights = load_file(str(result.checkpoint / "weights.safetensors"))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    assert all(k.startswith("model.language_model.layers.") for k in weights)  # not the vision tower
    # 4 blocks x 7 linears (q k v o gate up down) x (A, B)
    assert len(weights) == 4 * 7 * 2
    with safe_open(str(result.checkpoint / "weights.safetensors"), "pt") as handle:
        assert handle.metadata()["kind"] == "adapter"
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it trained
    backbone, config = load_checkpoint(tmp_path)  # OUT resolves to the newest checkpoint
    assert config.lora.r == 4
    assert not any(p.requires_grad for p in backbone.model.parameters())
    loaded = {n: p for n, p in backbone.model.named_parameters() if ".lora_" in n}
    assert set(loaded) == set(weights) and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_lora_rows_in_table(backbone):
    registry = Registry(entry_points=False)
    fresh = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
    attach_codec(fresh, toy_config(), registry, ToyDataset().statistics().action)
    apply_lora(fresh, toy_config("lora.r=8").lora)
    groups = trainable_by_group(fresh)
    assert groups["lora"] == sum(p.numel() for n, p in fresh.model.named_parameters() if ".lora_" in n) > 0
    assert sum(v for k, v in groups.items() if k != "lora") == 0


# -- checkpoints and resume ---------------------------------------------------------------------
RESUME_SETTINGS = ("train.max_steps=6", "train.batch_size=2", "train.grad_accum=2", "train.save_every=2",
                   "train.warmup_steps=2", "train.schedule=cosine", "train.reasoning_dropout=0.5", "lora.r=4",
                   "lora.dropout=0.3", "train.lr=1e-2", "data.shuffle_buffer=5")


def test_accumulating_two_micro_batches_equals_one_doubled_batch(tmp_path, annotations):
    """batch 2 × grad_accum 2 trains exactly as batch 4 × grad_accum 1: the same samples per step, the
    loss normalised by the token counts of the whole step (not of one micro-batch), hence the same
    logged loss, gradient norm and updated weights. Reasoning dropout and reasoning texts of varying
    length make the micro-batches' token counts differ, so a per-micro-batch normalisation shows."""
    sets = ("train.max_steps=3", "train.save_every=3", "train.reasoning_dropout=0.3")
    accumulated = run(tmp_path / "accum", "train.batch_size=2", "train.grad_accum=2", *sets,
                      annotations=annotations)
    doubled = run(tmp_path / "batch", "train.batch_size=4", "train.grad_accum=1", *sets,
                  annotations=annotations)
    a, b = metrics(tmp_path / "accum"), metrics(tmp_path / "batch")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert x["reasoning_loss"] > 0 and x["grad_norm"] > 0
        for key in ("loss", "action_loss", "reasoning_loss", "grad_norm", "action_accuracy",
                    "reasoning_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key, x[key], y[key])
    wa = load_file(str(accumulated.checkpoint / "weights.safetensors"))
    wb = load_file(str(doubled.checkpoint / "weights.safetensors"))
    assert set(wa) == set(wb)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    # and the steps did move the weights (a test of equal no-ops would prove nothing)
    initial = prepare_run(toy_config(), dataset=ToyDataset()).backbone.model.state_dict()
    assert max((wa[k] - initial[k]).abs().max().item() for k in wa) > 1e-3


def test_exact_resume_after_a_kill(tmp_path, annotations, monkeypatch):
    reference = run(tmp_path / "a", *RESUME_SETTINGS, annotations=annotations)
    calls = {"n": 0}
    from refine_plugins.hf_vlm.backbone import HFVLMBackbone

    original = HFVLMBackbone.forward

    def dies_in_step_5(self, batch, output_attentions=False):
        calls["n"] += 1
        if calls["n"] == 9:  # 2 micro-steps per step: the first forward of step 5
            raise KeyboardInterrupt
        return original(self, batch, output_attentions)

    monkeypatch.setattr(HFVLMBackbone, "forward", dies_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", *RESUME_SETTINGS, annotations=annotations)
    monkeypatch.setattr(HFVLMBackbone, "forward", original)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2, 4]
    resumed = run(tmp_path / "b", *RESUME_SETTINGS, annotations=annotations, resume=True)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b):
        for key in ("loss", "action_loss", "reasoning_loss", "grad_norm", "lr", "action_accuracy"):
            assert abs(x[key] - y[key]) <= 1e-6, (x["step"], key, x[key], y[key])
    wa = load_file(str(reference.checkpoint / "weights.safetensors"))
    wb = load_file(str(resumed.checkpoint / "weights.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


def test_retention_latest_and_atomic_writes(tmp_path, monkeypatch):
    run(tmp_path, "train.max_steps=3", "train.batch_size=1", "train.save_every=1", "train.keep_checkpoints=2")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    step3 = tmp_path / "checkpoints" / "step-0000003"
    assert {p.name for p in step3.iterdir()} == {"weights.safetensors", "optimizer.pt", "scheduler.pt",
                                                 "rng-0.safetensors",
                                                  "trainer_state.json", "refine.json"}
    info = json.loads((step3 / "refine.json").read_text())
    assert info["codec"]["name"] == "bins" and info["backbone"] == {"name": "hf_vlm",
                                                                    "options": {"preset": "tiny"}}
    assert len(info["action_statistics"]["q01"]) == 7 and info["dataset"]["name"] == "toy"

    # a save that dies half-way leaves the previous checkpoints and `latest` untouched
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("refine_core.training.trainer.save_weights", broken)
    with pytest.raises(OSError):
        run(tmp_path, "train.max_steps=5", "train.batch_size=1", "train.save_every=1", resume=True)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert latest_checkpoint(tmp_path).name == "step-0000003"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    assert list((tmp_path / "checkpoints").glob(".tmp-*"))  # the partial one, ignored...
    monkeypatch.undo()
    run(tmp_path, "train.max_steps=4", "train.batch_size=1", "train.save_every=1", resume=True)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # ...and cleaned on the next start
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_refuses_to_overwrite_and_checks_resumed_config(tmp_path):
    run(tmp_path, "train.max_steps=1", "train.batch_size=1")
    with pytest.raises(UsageError, match="already holds checkpoints .*pass --resume"):
        run(tmp_path, "train.max_steps=1", "train.batch_size=1")
    with pytest.raises(UsageError, match=r"config differs .* at train.batch_size \(checkpoint 1, now 2\)"):
        run(tmp_path, "train.max_steps=2", "train.batch_size=2", resume=True)
    assert resume_difference({"train": {"max_steps": 1, "lr": 1}}, {"train": {"max_steps": 9,
                                                                              "lr": 1}}) is None


def test_a_checkpoint_from_before_a_new_setting_still_resumes():
    from refine_core.config import RunConfig

    current = RunConfig().to_dict()
    older = RunConfig().to_dict()
    del older["train"]["reasoning_format"]  # written before the setting existed
    assert resume_difference(older, current) is None
    changed = {**current, "train": {**current["train"], "reasoning_format": "ecot"}}
    assert "train.reasoning_format" in resume_difference(older, changed)


DIVERGING = ("train.max_steps=20", "train.batch_size=2", "train.lr=1e30", "train.grad_clip=0",
             "train.save_every=100")


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged) as caught:
        run(tmp_path, *DIVERGING)
    message = str(caught.value)
    step = int(message.split(" at step ")[1].split(";")[0])
    assert "Non-finite" in message and f"step-{step - 1:07d}" in message
    saved = list_checkpoints(tmp_path)
    assert [s for s, _ in saved] == [step - 1]  # none existed: the state before the bad step was saved
    records = metrics(tmp_path)
    assert records[-1]["step"] == step and "non-finite" in records[-1]["error"]
    state = json.loads((saved[0][1] / "trainer_state.json").read_text())
    assert state["step"] == step - 1
    weights = load_file(str(saved[0][1] / "weights.safetensors"))
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    # the saved state is the good one: resuming from it replays exactly that step (same data, same
    # weights, same optimizer), so with the same lr it diverges again at the same step, identically
    with pytest.raises(TrainingDiverged, match=f"at step {step};") as again:
        run(tmp_path, *DIVERGING, resume=True)
    assert f"step-{step - 1:07d}" in str(again.value)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [step - 1]
    replayed = metrics(tmp_path)
    assert [r["step"] for r in replayed] == [r["step"] for r in records]
    assert repr(replayed[-1]) == repr(records[-1])  # loss/grad norm may be nan: compared as text


def test_a_run_resumes_with_a_lower_lr_from_where_it_stopped(tmp_path):
    """What a diverged run is told to do: lower train.lr and --resume from a checkpoint."""
    run(tmp_path, "train.max_steps=2", "train.batch_size=2", "train.lr=3e-3", "train.save_every=2")
    result = run(tmp_path, "train.max_steps=4", "train.batch_size=2", "train.lr=1e-3",
                 "train.save_every=2", resume=True)
    assert result.step == 4
    logged = [(r["step"], r["lr"]) for r in metrics(tmp_path)]
    assert logged == [(1, pytest.approx(3e-3)), (2, pytest.approx(3e-3)), (3, pytest.approx(1e-3)),
                      (4, pytest.approx(1e-3))]


@pytest.mark.xfail(strict=True, raises=TrainingDiverged,
                   reason="a run that diverges before its first checkpoint saves the weights after the "
                          "update that blew up as its 'last good checkpoint', so resuming from it with a "
                          "lower train.lr diverges at once")
def test_a_diverged_run_continues_with_a_lower_lr_as_its_message_says(tmp_path):
    with pytest.raises(TrainingDiverged, match="Lower train.lr"):
        run(tmp_path, *DIVERGING)
    sane = [s if s != "train.lr=1e30" else "train.lr=1e-3" for s in DIVERGING]
    result = run(tmp_path, *sane, "train.max_steps=4", resume=True)
    assert result.step == 4 and all(math.isfinite(r["loss"]) for r in metrics(tmp_path)[-2:])


# -- collapse -----------------------------------------------------------------------------------
def test_collapse_detector_rules():
    detector = CollapseDetector(window=2)
    assert detector.update(True) is None and detector.streak == 0  # not armed before predictions varied
    assert detector.update(False) is None and detector.armed
    assert detector.update(True) is None
    assert "action collapse" in detector.update(True)
    assert detector.update(True) is None  # once per occurrence
    detector.update(None)  # cannot tell: streak unchanged
    assert detector.collapsed
    detector.update(False)
    detector.update(True)
    assert "action collapse" in detector.update(True)


def test_collapse_warning_when_predictions_ignore_the_input(tmp_path, capsys):
    registry = Registry(entry_points=False)
    setup = prepare_run(toy_config("train.max_steps=7", "train.batch_size=3", "train.lr=1e-9"), registry,
                        dataset=ToyDataset())
    head = setup.backbone.model.get_output_embeddings()
    calls = {"n": 0}
    bias = torch.zeros(head.out_features)
    bias[int(setup.backbone.codec.action_token_ids[0])] = 1e4

    def input_independent_after_step_2(module, inputs, output):
        calls["n"] += 1
        if calls["n"] <= 2:  # first varied predictions (noise differs per row) ...
            return output + 1e4 * torch.randn_like(output)
        return output + bias  # ... then one action token whatever the input

    head.register_forward_hook(input_independent_after_step_2)
    train(setup, tmp_path)
    records = metrics(tmp_path)
    assert [r["collapse"] for r in records] == [False, False, False, False, True, True, True]
    warned = [r["step"] for r in records if "warning" in r]
    assert warned == [5] and "action collapse" in records[4]["warning"]
    assert "action collapse" in capsys.readouterr().err


# -- distributed ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one_with_the_doubled_batch(tmp_path, annotations):
    """`accelerate launch` with 2 CPU processes (gloo) × batch 2 ends where 1 process × batch 4 does.

    accelerate 1.15 starts a single process for `--cpu` (multi-process CPU there needs MPI), so
    the 2 gloo processes are started with `--multi_gpu` and ACCELERATE_USE_CPU=1, which is how
    accelerate itself selects its MULTI_CPU mode under torchrun.
    """
    sets = ["--set", "train.max_steps=3", "--set", "train.save_every=3", "--set",
            "train.reasoning_dropout=0.3"]
    accelerate = Path(sys.executable).parent / "accelerate"
    # the workers import the code under test: the checkout first (each one checks, see train_toys.main)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}

    def launch():
        return subprocess.run(
            [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
             str(TESTS / "train_toys.py"), str(tmp_path / "two"), "--annotations", str(annotations),
             "--set", "train.batch_size=2", *sets],
            capture_output=True, text=True, env=env, timeout=150)

    two = launch()
    if (
        two.returncode != 0 and "address already in use" in two.stderr.lower()
    ):  # the free port was taken meanwhile
        two = launch()
    assert two.returncode == 0, (two.stdout[-2000:], two.stderr[-3000:])
    assert "batch 2 × 2 process(es)" in two.stdout
    assert two.stdout.count(f"worker imports refine from {TESTS.parent}") == 2  # both processes checked
    one = run(tmp_path / "one", "train.batch_size=4", "train.max_steps=3", "train.save_every=3",
              "train.reasoning_dropout=0.3", annotations=annotations)
    checkpoint = tmp_path / "two" / "checkpoints" / "step-0000003"
    assert {"rng-0.safetensors", "rng-1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    w2 = load_file(str(checkpoint / "weights.safetensors"))
    w1 = load_file(str(one.checkpoint / "weights.safetensors"))
    assert set(w1) == set(w2)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["reasoning_loss"] > 0
