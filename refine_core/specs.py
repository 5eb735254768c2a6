"""Spec records: what a plugin hook yields to register one component.

A record names the component, says in one line what it is, and tells the core how to build it:
`factory(options)` where `options` is an instance of the record's pydantic `options` model,
validated from the user's config. `factory` may also be a `"module:attribute"` string so that a
plugin's registration stays import-light (torch, tensorflow… are imported only when built).
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from refine_core.errors import UsageError, explain_validation


class NoOptions(BaseModel):
    """Options model of a component that takes none: any option given is a typo."""

    model_config = ConfigDict(extra="forbid")


Factory = Union[Callable[..., Any], str]


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    summary: str
    factory: Factory
    options: type[BaseModel] = NoOptions

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

    def validate_options(self, options: dict[str, Any]) -> BaseModel:
        """The options model built from `options`: an unknown key names a close match and the
        allowed keys, a bad value names the field (UsageError, one line)."""
        model = self.options
        allowed = sorted(model.model_fields)
        for key in options:
            if key not in model.model_fields and model.model_config.get("extra") != "allow":
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f" Did you mean '{hint[0]}'?" if hint else ""
                raise UsageError(f"Unknown option '{self.kind}.{key}' for {self.kind} '{self.name}'.{did} "
                                 f"Allowed: {', '.join(allowed) or '(none)'}")
        try:
            return model.model_validate(options)
        except ValidationError as exc:
            raise UsageError(explain_validation(exc, model, prefix=f"{self.kind}.")) from None

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
    # the codec used when the config names none (SpatialVLA: its own spatial action tokens)
    default_codec: str | None = None

    kind: ClassVar[str] = "backbone"


@dataclass(frozen=True)
class ActionCodecSpec(ComponentSpec):
    kind: ClassVar[str] = "codec"


@dataclass(frozen=True)
class TeacherSpec(ComponentSpec):
    kind: ClassVar[str] = "teacher"


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    # the closed-loop benchmark that simulates this dataset's task (the demo's: demo-sim), run in
    # the eval stage unless the config names another
    closed_loop: str | None = None

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
