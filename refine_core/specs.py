"""Spec records: what a plugin hook yields to register one component.

A record names the component, says in one line what it is, and tells the core how to build it:
`factory(options)` where `options` is an instance of the record's pydantic `options` model,
validated from the user's config. `factory` may also be a `"module:attribute"` string so that a
plugin's registration stays import-light (torch, tensorflow… are imported only when built).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class NoOptions(BaseModel):
    """Options model of a component that takes none: any option given is a typo."""

    model_config = ConfigDict(extra="forbid")


Factory = Union[Callable[..., Any], str]


def decoder_option() -> Any:
    """The `decoder` option of backbones that generate through refine_core.decoding."""
    return Field("auto", description="Generation's KV cache: auto is graph on CUDA (a static cache, each token's "
                                     "step replayed as a CUDA graph: 2-4x faster on GPUs, perf P7), dynamic "
                                     "(transformers' cache) elsewhere; static runs the static cache eagerly.")


Decoder = Literal["auto", "dynamic", "static", "graph"]


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    summary: str
    factory: Factory
    options: type[BaseModel] = NoOptions
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    kind: ClassVar[str] = "component"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"{type(self).__name__}.name must be a non-empty string")
        if not (isinstance(self.options, type) and issubclass(self.options, BaseModel)):
            raise TypeError(f"{type(self).__name__} '{self.name}': options must be a pydantic model class")
        if not (callable(self.factory) or (isinstance(self.factory, str) and ":" in self.factory)):
            raise TypeError(
                f"{type(self).__name__} '{self.name}': factory must be callable or 'module:attribute'"
            )

    def load_factory(self) -> Callable[..., Any]:
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


@dataclass(frozen=True)
class BackboneSpec(ComponentSpec):
    kind: ClassVar[str] = "backbone"


@dataclass(frozen=True)
class ActionCodecSpec(ComponentSpec):
    kind: ClassVar[str] = "codec"


@dataclass(frozen=True)
class TeacherSpec(ComponentSpec):
    kind: ClassVar[str] = "teacher"


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    kind: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class BenchmarkSpec(ComponentSpec):
    kind: ClassVar[str] = "benchmark"


# kind -> (hook name, spec class). The order is the order `refine list` shows.
KINDS: dict[str, tuple[str, type[ComponentSpec]]] = {
    "backbone": ("refine_backbones", BackboneSpec),
    "codec": ("refine_action_codecs", ActionCodecSpec),
    "teacher": ("refine_teachers", TeacherSpec),
    "dataset": ("refine_datasets", DatasetSpec),
    "benchmark": ("refine_benchmarks", BenchmarkSpec),
}
