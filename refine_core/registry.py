"""Plugin loading and the component registry.

Built-in plugins are modules listed in `BUILTIN_PLUGINS`; third-party packages register
modules under the entry-point group `refine`. Both go through the same pluggy manager, so the
core knows its built-ins no better than anyone else's. `REFINE_PLUGINS=a,b` restricts which
third-party distributions load (set but empty: none); built-ins always load.

A plugin that fails to import, implements a hook that does not exist, or raises inside a hook
is recorded (see `refine plugins`) and left out; every other component stays usable.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from refine_core import hookspecs
from refine_core.errors import DuplicateComponent, UnknownComponent, UsageError, missing_extra
from refine_core.specs import KINDS, ComponentSpec

ENTRY_POINT_GROUP = "refine"
DEFAULT_CODEC = "bins"
ENV_FILTER = "REFINE_PLUGINS"

# Modules of the built-in plugins, each a package whose __init__ holds its hook implementations.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "refine_plugins.action_codecs",
    "refine_plugins.rlds",
    "refine_plugins.bridge",
    "refine_plugins.fractal",
    "refine_plugins.demo",
    "refine_plugins.lerobot",
    "refine_plugins.hf_vlm",
    "refine_plugins.openvla",
    "refine_plugins.spatialvla",
    "refine_teachers.scripted",
    "refine_teachers.gemini",
    "refine_teachers.openai",
    "refine_teachers.hf",
    "refine_benchmarks.offline",
    "refine_benchmarks.simpler",
    "refine_benchmarks.retention",
)


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin" or the distribution name
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "version": self.version,
                "hooks": self.hooks, "error": self.error}


@dataclass(frozen=True)
class Registered:
    spec: ComponentSpec
    plugin: str

    @property
    def kind(self) -> str:
        return self.spec.kind


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Registry:
    """Every registered component, by kind and name, and what each plugin contributed."""

    def __init__(self, builtins: Iterable[str] = BUILTIN_PLUGINS, entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._components: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        from refine_core import __version__

        for module_name in builtins:
            self._load(module_name, "builtin", __version__, lambda m=module_name: importlib.import_module(m))
        if entry_points:
            for ep in self._selected_entry_points():
                dist = ep.dist.name if ep.dist else ep.name
                version = ep.dist.version if ep.dist else "?"
                name = ep.name if ep.name not in self.plugins else f"{ep.name} ({dist})"
                self._load(name, dist, version, ep.load)
        self._collect()

    # -- loading ---------------------------------------------------------------------------
    @staticmethod
    def _selected_entry_points() -> list[metadata.EntryPoint]:
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        wanted = os.environ.get(ENV_FILTER)
        if wanted is None:
            return eps
        allowed = {_normalise(w) for w in wanted.split(",") if w.strip()}
        return [
            ep for ep in eps
            if _normalise(ep.name) in allowed or (ep.dist and _normalise(ep.dist.name) in allowed)
        ]

    def _load(self, name: str, source: str, version: str, importer) -> None:
        info = self.plugins.setdefault(name, PluginInfo(name, source, version))
        try:
            module = importer()
            self.pm.register(module, name=name)
        except Exception as exc:  # a broken plugin must not break the others
            info.error = f"failed to load: {_describe(exc)}"
            return
        try:
            self.pm.check_pending()  # a misspelt hook name is caught here, against this plugin
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            info.error = f"invalid plugin: {exc}"
            return
        info.hooks = sorted(
            hook.name for hook in self.pm.get_hookcallers(self.pm.get_plugin(name)) or []
        )

    def _collect(self) -> None:
        for kind, (hook_name, spec_cls) in KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                info = self.plugins[impl.plugin_name]
                if info.error:
                    continue
                try:
                    specs = list(impl.function() or ())
                    bad = [s for s in specs if not isinstance(s, spec_cls)]
                    if bad:
                        raise TypeError(f"{hook_name} yielded {type(bad[0]).__name__}, expected "
                                        f"{spec_cls.__name__}")
                except Exception as exc:
                    info.error = f"{hook_name} raised {_describe(exc)}"
                    self._forget(impl.plugin_name)
                    continue
                for spec in specs:
                    self._add(Registered(spec, impl.plugin_name))

    def _forget(self, plugin: str) -> None:
        for table in self._components.values():
            for name in [n for n, r in table.items() if r.plugin == plugin]:
                del table[name]

    def _add(self, entry: Registered) -> None:
        table = self._components[entry.kind]
        if entry.spec.name in table:
            raise DuplicateComponent(entry.kind, entry.spec.name, table[entry.spec.name].plugin, entry.plugin)
        table[entry.spec.name] = entry

    # -- queries ---------------------------------------------------------------------------
    def components(self, kind: str | None = None) -> list[Registered]:
        kinds = [kind] if kind else list(KINDS)
        return [entry for k in kinds for _, entry in sorted(self._components[check_kind(k)].items())]

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[check_kind(kind)])

    def get(self, kind: str, name: str) -> Registered:
        table = self._components[check_kind(kind)]
        if name not in table:
            raise UnknownComponent(kind, name, sorted(table))
        return table[name]

    def validate_options(self, kind: str, name: str, options: dict[str, Any]):
        """The component's options model built from `options`; unknown or invalid keys → UsageError."""
        return self.get(kind, name).spec.validate_options(options)

    def default_closed_loop(self, dataset: str) -> str | None:
        """The closed-loop benchmark a dataset's spec names, when it is registered."""
        table = self._components["dataset"]
        name = getattr(table[dataset].spec, "closed_loop", None) if dataset in table else None
        return name if name in self._components["benchmark"] else None

    def default_codec(self, backbone: str) -> str:
        """The codec a backbone uses when none is named: its spec's `default_codec`, else bins
        (also for a backbone that is not registered: that is reported where it is built)."""
        table = self._components["backbone"]
        spec = table[backbone].spec if backbone in table else None
        return getattr(spec, "default_codec", None) or DEFAULT_CODEC

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """Validate `options` against the spec's model and call its factory. A missing optional
        dependency is a MissingExtra naming the extra that installs it."""
        validated = self.validate_options(kind, name, options or {})
        try:
            return self.get(kind, name).spec.load_factory()(validated)
        except ImportError as exc:
            extra = missing_extra(exc, needed_for=f"{kind} '{name}'")
            if extra is None:
                raise
            raise extra from exc

    def add_commands(self, app: Any) -> None:
        for impl in self.pm.hook.refine_commands.get_hookimpls():
            info = self.plugins[impl.plugin_name]
            if info.error:
                continue
            try:
                impl.function(app=app)
            except Exception as exc:
                info.error = f"refine_commands raised {_describe(exc)}"


def check_kind(kind: str) -> str:
    """A kind's name from what a user typed: singular or plural; "action_codec" is "codec" spelt out
    (the kind's short name is the config key and CLI flag; code says ActionCodec)."""
    singular = kind[:-1] if kind.endswith("s") else kind
    singular = "codec" if singular == "action_codec" else singular
    if singular not in KINDS:
        raise UsageError(f"Unknown kind '{kind}'. Available: {', '.join(KINDS)}")
    return singular


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built-ins + selected entry points), loaded on first use."""
    global _registry
    if _registry is None:
        _registry = Registry()
    return _registry


def reset_registry() -> None:
    """Forget the loaded registry (tests; after installing a plugin in-process)."""
    global _registry
    _registry = None
