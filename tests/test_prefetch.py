"""The trainer's one-step-ahead batch preparation: the same training with and without it, and each
step's batch ready (drawn and collated on the background thread) before the step asks for it."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

from refine_core.training import prepare_run, train
from refine_core.training.checkpoint import step_dir_name
from refine_core.training.prefetch import StepPrefetcher
from refine_core.training.trainer import Trainer

from train_toys import ToyDataset, toy_config

SETTINGS = ("train.max_steps=4", "train.batch_size=2", "train.save_every=2", "train.reasoning_dropout=0.5")


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_prefetching_trains_bit_identically_and_prepares_off_the_training_thread(tmp_path, monkeypatch):
    threads: dict[int, str] = {}
    original = Trainer.prepare_step

    def recording(self, step):
        threads[step] = threading.current_thread().name
        return original(self, step)

    monkeypatch.setattr(Trainer, "prepare_step", recording)
    results = {}
    for prefetch in ("true", "false"):
        threads.clear()
        setup = prepare_run(toy_config(*SETTINGS, f"data.prefetch={prefetch}"), dataset=ToyDataset())
        results[prefetch] = train(setup, tmp_path / prefetch)
        if prefetch == "true":  # step 1 on the caller's thread, every later one prepared ahead
            assert threads[1] == "MainThread"
            assert all(threads[s].startswith("refine-prefetch") for s in (2, 3, 4)), threads
            assert 5 not in threads  # nothing is drawn past max_steps
        else:
            assert set(threads.values()) == {"MainThread"}
    assert _losses(tmp_path / "true") == _losses(tmp_path / "false")
    for step in (step_dir_name(2), step_dir_name(4)):
        states = [json.loads((tmp_path / p / "checkpoints" / step / "trainer_state.json").read_text())
                  for p in ("true", "false")]
        # the position saved is the one after the step's own batch, not after the prefetched one
        assert states[0]["stream"] == states[1]["stream"]
    a, b = (load_file(str(results[p].checkpoint / "weights.safetensors")) for p in ("true", "false"))
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_a_preparation_error_surfaces_at_its_own_step_and_order_is_enforced():
    prepared = []

    def prepare(step):
        prepared.append(step)
        if step == 3:
            raise ValueError("no samples")
        return step * 10

    with StepPrefetcher(prepare, last_step=5) as prefetcher:
        assert prefetcher.get(1) == 10
        assert prefetcher.get(2) == 20  # step 3 fails in the background while step 2 trains ...
        with pytest.raises(ValueError, match="no samples"):
            prefetcher.get(3)  # ... and is raised here, not earlier
    assert prepared == [1, 2, 3]
    with StepPrefetcher(lambda step: step, last_step=5) as prefetcher:
        prefetcher.get(1)
        with pytest.raises(RuntimeError, match="prefetched step 2, asked for step 4"):
            prefetcher.get(4)
