"""Shared test setup: one CPU thread (2 shared cores make a tiny step 20x slower otherwise),
a fresh plugin registry per test, helpers to run the CLI, and the one way a test may do without
something it needs (an upstream fixture, an extra): locally it skips saying what is missing and how
to get it; in CI (`CI=true`) it fails, so a missing fixture or a broken extra cannot pass unseen."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # torch is a core dependency, but the registry/CLI tests must not need it imported
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

from hypothesis import settings

from refine_core.registry import reset_registry

# Property tests explore the same examples on every run: a CI failure reproduces locally.
settings.register_profile("refine", derandomize=True, database=None)
settings.load_profile("refine")


# -- what a test may lack: skipped locally, a failure in CI --------------------------------------
CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = CHECKOUT.parent / "shared" / "fixtures"
OPENVLA_FIXTURE = SHARED_FIXTURES / "openvla_upstream_tiny"
SPATIALVLA_FIXTURE = SHARED_FIXTURES / "spatialvla_upstream_tiny"


def in_ci() -> bool:
    """True under CI (`CI=true`, as GitHub Actions, GitLab and most runners set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip the test (or the module, when called at import) with `reason`; under CI fail instead."""
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing requirement fails the run instead of skipping]",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_fixture(path: Path) -> Path:
    """`path` (an upstream reference folder under ../shared/fixtures), or skip/fail saying how to get it."""
    if not path.is_dir():
        skip_or_fail(f"upstream fixture {path.name} not found at {path}: it is one of the project's "
                     f"shared fixtures, kept in {SHARED_FIXTURES} next to this checkout (see the design "
                     "card ../shared/ARCHITECTURE.md, 'Upstream references'); copy or mount that folder "
                     "there to run this test")
    return path


EXTRAS = {"tensorflow_datasets": "rlds", "tensorflow": "rlds", "pyarrow": "lerobot", "av": "lerobot",
          "vla_eval": "eval", "accelerate": "train", "peft": "train"}


def importorskip_or_fail(module: str) -> ModuleType:
    """`pytest.importorskip` that names the extra to install, and fails under CI (`.[dev]` has them all)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module)
        how = f"pip install -e '.[{extra}]'" if extra else "pip install -e '.[dev]'"
        skip_or_fail(f"cannot import {module} ({exc}): install it with {how}")
        raise  # unreachable: skip_or_fail raised


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def run_refine(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run the real `refine` entry point in a subprocess (exit codes and stderr as users see them)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from refine_core.cli import main; main()", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300,
    )


@pytest.fixture
def refine_cli():
    return run_refine
