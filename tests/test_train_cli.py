"""`refine train` end to end: the real bridge plugin on an RLDS fixture, the policy loaded back,
refusal to overwrite, and the one-line errors for bad input (each run pays the TensorFlow import, so the
bad-input runs go together)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import importorskip_or_fail

importorskip_or_fail("tensorflow_datasets")

from conftest import run_refine  # noqa: E402
from refine_core.training import list_checkpoints, load_checkpoint  # noqa: E402

from train_toys import ToyDataset, write_annotations  # noqa: E402


@pytest.fixture(scope="module")
def bridge_root(tmp_path_factory):
    from refine_plugins.rlds import fixtures

    root = tmp_path_factory.mktemp("bridge")
    episodes = []
    for k in range(4):
        rng = np.random.default_rng(k)
        episodes.append({
            "actions": rng.normal(0, 0.05, (6, 7)).astype(np.float32),
            "states": np.cumsum(rng.normal(0, 0.02, (6, 7)), axis=0).astype(np.float32),
            "instruction": f"put the block {k} on the plate", "file_path": f"/data/scene{k}", "episode_id": k,
        })
    fixtures.write_bridge_dataset(root, episodes, image_size=(64, 64))
    return root


@pytest.fixture(scope="module")
def config_file(bridge_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "train.yaml"
    path.write_text(yaml.safe_dump({
        "backbone": {"name": "hf_vlm", "preset": "tiny"},
        "codec": {"name": "bins"},
        "dataset": {"name": "bridge", "data_dir": str(bridge_root)},
        "data": {"val_fraction": 0, "shuffle_buffer": 16},
        "train": {"max_steps": 4, "batch_size": 2, "log_every": 1, "save_every": 2, "lr": 3e-3},
    }))
    return path


def one_line_error(result) -> str:
    """refine's error line; TensorFlow's own start-up logging (absl, oneDNN) may surround it."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_train_resume_and_refusal(config_file, tmp_path):
    out = tmp_path / "run"
    first = run_refine("train", "--config", str(config_file), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert f"metrics → {out / 'metrics.jsonl'}" in first.stdout.replace("\n", "")
    assert "blocks 0-3" in first.stdout and "finished at step 4" in first.stdout  # tiny preset: all trainable
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert [s for s, _ in list_checkpoints(out)] == [2, 4]

    again = run_refine("train", "--config", str(config_file), "--out", str(out))
    assert again.returncode == 2
    assert "already holds checkpoints (newest step-0000004); pass --resume" in one_line_error(again)

    # the policy comes back from the run directory (exact resume is tested in test_training.py)
    backbone, config = load_checkpoint(out)
    assert config.dataset.name == "bridge" and config.train.max_steps == 4 and backbone.codec.is_bound
    saved = load_file(str(out / "checkpoints" / "step-0000004" / "weights.safetensors"))
    parameters = dict(backbone.model.named_parameters())
    assert saved and all(torch.equal(parameters[name], tensor) for name, tensor in saved.items())
    prediction = backbone.predict(np.zeros((64, 64, 3), np.uint8), "put the block 1 on the plate",
                                  reasoning=False)
    # constrained decoding (the default): the loaded policy always writes a decodable action span
    codec = backbone.codec
    assert prediction.error is None and not prediction.forced, prediction.error
    assert prediction.actions.shape == (codec.chunk_size, 7) and np.isfinite(prediction.actions).all()
    assert len(prediction.action_ids) == codec.span_length
    assert set(prediction.action_ids) <= set(codec.action_token_ids.tolist())
    np.testing.assert_allclose(prediction.actions, codec.decode(prediction.action_ids))

    # --resume continues the run from its newest checkpoint (a raised max_steps may be honoured)
    before = (out / "metrics.jsonl").read_text().splitlines()
    resumed = run_refine("train", "--config", str(config_file), "--out", str(out), "--resume", "--set",
                         "train.max_steps=6")
    assert resumed.returncode == 0, resumed.stderr
    said = resumed.stdout.replace("\n", "")
    assert f"resuming from {out / 'checkpoints' / 'step-0000004'} at step 4" in said, said
    assert "finished at step 6" in said
    after = (out / "metrics.jsonl").read_text().splitlines()
    assert after[:4] == before and [json.loads(line)["step"] for line in after] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in list_checkpoints(out)][-2:] == [4, 6]


def test_bad_input_fails_at_start_with_one_line(config_file, tmp_path):
    toy_annotations = write_annotations(tmp_path / "toy-annotations", ToyDataset())
    base = ("train", "--config", str(config_file))
    cases = {
        "layers": ([*base, "--out", str(tmp_path / "a"), "--set", "freeze.first_n_layers=30"], 2,
                   "freeze.first_n_layers=30 but backbone hf_vlm has 4 blocks"),
        "lambda": ([*base, "--out", str(tmp_path / "b"), "--set", "loss.lambda_r=-1"], 2,
                   "Invalid config value for 'loss.lambda_r'"),
        "annotations": ([*base, "--out", str(tmp_path / "c"), "--annotations", str(toy_annotations)], 2,
                        "were made for dataset 'toy'"),
        "vocabulary": ([*base, "--out", str(tmp_path / "d"), "--set", "codec.n_bins=5000"], 2,
                       "cannot hold 5000 action bins"),
        "backbone": ([*base, "--out", str(tmp_path / "e"), "--backbone", "nope"], 2,
                     "Unknown backbone 'nope'. Available: hf_vlm"),
        "diverges": ([*base, "--out", str(tmp_path / "f"), "--set", "train.lr=1e30", "--set",
                      "train.grad_clip=0",
                      "--set", "train.max_steps=20"], 1, "Non-finite"),
    }
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(cases, pool.map(lambda args: run_refine(*args[0]), cases.values())))
    for name, (_, code, expected) in cases.items():
        result = results[name]
        assert result.returncode == code, (name, result.stderr)
        assert expected in one_line_error(result), name
    assert (
        not (tmp_path / "a").exists() and not (tmp_path / "d").exists()
    )  # nothing written before the checks
    diverged = one_line_error(results["diverges"])
    assert "Last good checkpoint:" in diverged and str(tmp_path / "f" / "checkpoints") in diverged
