"""Shared test setup: one CPU thread (2 shared cores make a tiny step 20x slower otherwise),
a fresh plugin registry per test, and helpers to run the CLI."""
from __future__ import annotations

import os
import subprocess
import sys

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
