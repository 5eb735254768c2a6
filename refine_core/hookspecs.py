"""The hooks a refine plugin implements. Each component hook returns an iterable of spec records."""
from __future__ import annotations

from typing import Any, Iterable

import pluggy

from refine_core.specs import ActionCodecSpec, BackboneSpec, BenchmarkSpec, DatasetSpec, TeacherSpec

PROJECT = "refine"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def refine_backbones() -> Iterable[BackboneSpec]:
    """Model backbones: a model + processor + codec that turns samples into batches and generates."""


@hookspec
def refine_action_codecs() -> Iterable[ActionCodecSpec]:
    """Action codecs: continuous actions <-> tokens or text."""


@hookspec
def refine_teachers() -> Iterable[TeacherSpec]:
    """Teachers: annotate a step with structured reasoning."""


@hookspec
def refine_datasets() -> Iterable[DatasetSpec]:
    """Robot datasets: stream Episodes and report their statistics."""


@hookspec
def refine_benchmarks() -> Iterable[BenchmarkSpec]:
    """Benchmarks: evaluate a policy and return per-episode records and aggregates."""


@hookspec
def refine_commands(app: Any) -> None:
    """Add sub-commands to the `refine` typer app (`@app.command()` or `app.add_typer`)."""
