"""Checkpoint directories: local paths, Hugging Face Hub ids through the real hub client (offline,
from a cache laid out as the Hub writes it), and the one-line errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from refine_core.errors import UsageError
from refine_core.toolkit.weights import resolve_checkpoint_dir

from conftest import SPATIALVLA_FIXTURE, require_fixture


def hub_cache(root: Path, repo: str, source: Path) -> Path:
    """A Hub cache entry for `repo` holding `source`'s files (refs/main → one snapshot)."""
    entry = root / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / ("0" * 40)
    shutil.copytree(source, snapshot)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("0" * 40)
    return snapshot


def test_local_directories_are_used_as_they_are(tmp_path):
    assert resolve_checkpoint_dir(str(tmp_path)) == tmp_path
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="is a file"):
        resolve_checkpoint_dir(str(tmp_path / "model.safetensors"))
    with pytest.raises(UsageError, match="does not exist"):
        resolve_checkpoint_dir(str(tmp_path / "missing"))


def in_fresh_process(code: str, cache: Path) -> subprocess.CompletedProcess:
    """Run `code` where the Hub client reads HF_HUB_CACHE / HF_HUB_OFFLINE (at its import)."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])


def test_a_hub_id_resolves_to_its_snapshot(tmp_path):
    source = tmp_path / "files"
    source.mkdir()
    (source / "config.json").write_text("{}")
    snapshot = hub_cache(tmp_path / "cache", "IPEC-COMMUNITY/spatialvla-4b-224-pt", source)
    result = in_fresh_process("from refine_core.toolkit.weights import resolve_checkpoint_dir as r; "
                              "print(r('IPEC-COMMUNITY/spatialvla-4b-224-pt'))", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(snapshot)


def test_an_unreachable_hub_id_fails_with_one_line(tmp_path):
    result = in_fresh_process("from refine_core.toolkit.weights import resolve_checkpoint_dir as r\n"
                              "try:\n    r('openvla/openvla-7b')\nexcept Exception as e:\n"
                              "    print(type(e).__name__, '|', e)", tmp_path / "empty")
    name, _, message = result.stdout.strip().partition(" | ")
    assert name == "UsageError" and "\n" not in message
    assert message.startswith("Cannot get openvla/openvla-7b from the Hugging Face Hub (")
    assert message.endswith("download it and set backbone.path to the local directory")


def test_spatialvla_loads_from_a_hub_id(tmp_path):
    require_fixture(SPATIALVLA_FIXTURE)
    hub_cache(tmp_path / "cache", "someone/spatialvla-tiny", SPATIALVLA_FIXTURE)
    result = in_fresh_process(
        "from refine_plugins.spatialvla import SpatialVLAOptions\n"
        "from refine_plugins.spatialvla.backbone import SpatialVLABackbone\n"
        "b = SpatialVLABackbone(SpatialVLAOptions(path='someone/spatialvla-tiny', dtype='float32'))\n"
        "print(b.pretrained, b.model.config.spatial_token_num)", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["True", "8194"]
