"""The plugin system: hooks, built-ins vs entry points, duplicates, broken plugins, REFINE_PLUGINS."""
from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import pytest

from refine_core import hookspecs
from refine_core.errors import DuplicateComponent, UnknownComponent, UsageError
from refine_core.registry import BUILTIN_PLUGINS, Registry

ALL_KINDS_PLUGIN = '''
from pydantic import BaseModel, ConfigDict
from refine_core import (hookimpl, BackboneSpec, ActionCodecSpec, TeacherSpec, DatasetSpec,
                         BenchmarkSpec)

class Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = 3

def make(options):
    return ("built", options.size)

@hookimpl
def refine_backbones():
    yield BackboneSpec(name="bb", summary="a backbone", factory=make, options=Opts)

@hookimpl
def refine_action_codecs():
    return [ActionCodecSpec(name="cc", summary="a codec", factory=make, options=Opts)]

@hookimpl
def refine_teachers():
    yield TeacherSpec(name="tt", summary="a teacher", factory="{mod}:make", options=Opts)

@hookimpl
def refine_datasets():
    yield DatasetSpec(name="dd", summary="a dataset", factory=make, options=Opts)

@hookimpl
def refine_benchmarks():
    yield BenchmarkSpec(name="be", summary="a benchmark", factory=make, options=Opts)

@hookimpl
def refine_commands(app):
    @app.command("fake-hello")
    def hello():
        print("hello from fake")
'''


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source).replace("{mod}", name))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def registry_of(*modules: str) -> Registry:
    return Registry(builtins=BUILTIN_PLUGINS + modules, entry_points=False)


def test_every_hook_has_a_test():
    """Datasette's rule: each hookspec is exercised by a test named after it."""
    hooks = [name for name, _ in inspect.getmembers(hookspecs,
                                                    inspect.isfunction) if name.startswith("refine_")]
    assert len(hooks) == 6
    source = Path(__file__).read_text()
    for hook in hooks:
        assert f"def test_hook_{hook}" in source, f"no test for hook {hook}"


def _check_component_hook(module_dir, kind, name):
    registry = registry_of(module_dir("fake_all", ALL_KINDS_PLUGIN))
    entry = registry.get(kind, name)
    assert entry.plugin == "fake_all"
    assert registry.build(kind, name, {"size": 5}) == ("built", 5)


def test_hook_refine_backbones(module_dir):
    _check_component_hook(module_dir, "backbone", "bb")


def test_hook_refine_action_codecs(module_dir):
    _check_component_hook(module_dir, "codec", "cc")


def test_hook_refine_teachers(module_dir):
    # this spec's factory is a "module:attribute" string, resolved only when built
    _check_component_hook(module_dir, "teacher", "tt")


def test_hook_refine_datasets(module_dir):
    _check_component_hook(module_dir, "dataset", "dd")


def test_hook_refine_benchmarks(module_dir):
    _check_component_hook(module_dir, "benchmark", "be")


def test_hook_refine_commands(module_dir):
    import typer
    from typer.testing import CliRunner

    registry = registry_of(module_dir("fake_all", ALL_KINDS_PLUGIN))
    app = typer.Typer()
    app.command("noop")(lambda: None)
    registry.add_commands(app)
    result = CliRunner().invoke(app, ["fake-hello"])
    assert result.exit_code == 0 and "hello from fake" in result.output


def test_plugins_report_their_hooks(module_dir):
    registry = registry_of(module_dir("fake_all", ALL_KINDS_PLUGIN))
    info = registry.plugins["fake_all"]
    assert info.error is None
    assert info.hooks == sorted(["refine_backbones", "refine_action_codecs", "refine_teachers",
                                 "refine_datasets", "refine_benchmarks", "refine_commands"])


def test_duplicate_names_name_both_plugins(module_dir):
    a = module_dir("dup_a", ALL_KINDS_PLUGIN)
    b = module_dir("dup_b", ALL_KINDS_PLUGIN)
    with pytest.raises(DuplicateComponent) as err:
        registry_of(a, b)
    message = str(err.value)
    assert "dup_a" in message and "dup_b" in message and "'bb'" in message


def test_same_name_in_different_kinds_is_fine(module_dir):
    plugin = module_dir("samename", '''
        from refine_core import hookimpl, TeacherSpec, DatasetSpec
        @hookimpl
        def refine_teachers():
            yield TeacherSpec(name="x", summary="t", factory=dict)
        @hookimpl
        def refine_datasets():
            yield DatasetSpec(name="x", summary="d", factory=dict)
    ''')
    registry = registry_of(plugin)
    assert registry.get("teacher", "x").spec.summary == "t"
    assert registry.get("dataset", "x").spec.summary == "d"


def test_plugin_that_raises_on_import_is_recorded(module_dir):
    broken = module_dir("broken_import", "raise RuntimeError('boom at import')\n")
    good = module_dir("good_one", ALL_KINDS_PLUGIN)
    registry = registry_of(broken, good)
    assert registry.plugins["broken_import"].error == "failed to load: RuntimeError: boom at import"
    assert registry.get("teacher", "tt").plugin == "good_one"


def test_misspelt_hook_is_caught_and_plugin_left_out(module_dir):
    typo = module_dir("typo_plugin", '''
        from refine_core import hookimpl, TeacherSpec
        @hookimpl
        def refine_teacher():
            yield TeacherSpec(name="never", summary="s", factory=dict)
    ''')
    registry = registry_of(typo)
    assert "refine_teacher" in registry.plugins["typo_plugin"].error
    assert "never" not in registry.names("teacher")


def test_hook_that_raises_is_recorded_and_its_components_dropped(module_dir):
    bad = module_dir("raising_hook", '''
        from refine_core import hookimpl, TeacherSpec, DatasetSpec
        @hookimpl
        def refine_datasets():
            yield DatasetSpec(name="half", summary="s", factory=dict)
        @hookimpl
        def refine_teachers():
            raise ValueError("cannot list teachers")
    ''')
    registry = registry_of(bad)
    assert registry.plugins["raising_hook"].error == "refine_teachers raised ValueError: cannot list teachers"
    assert "half" not in registry.names("dataset")


def test_wrong_record_type_is_an_error(module_dir):
    bad = module_dir("wrong_record", '''
        from refine_core import hookimpl, DatasetSpec
        @hookimpl
        def refine_teachers():
            yield DatasetSpec(name="oops", summary="s", factory=dict)
    ''')
    registry = registry_of(bad)
    assert "expected TeacherSpec" in registry.plugins["wrong_record"].error


def test_unknown_component_lists_the_available_ones(module_dir):
    registry = registry_of(module_dir("fake_all", ALL_KINDS_PLUGIN))
    with pytest.raises(UnknownComponent) as err:
        registry.get("teacher", "x")
    assert str(err.value).startswith("Unknown teacher 'x'. Available: ")
    assert "tt" in str(err.value)


def test_unknown_option_names_field_and_allowed_keys(module_dir):
    registry = registry_of(module_dir("fake_all", ALL_KINDS_PLUGIN))
    with pytest.raises(UsageError) as err:
        registry.build("dataset", "dd", {"sise": 4})
    assert (
        str(err.value) == "Unknown option 'dataset.sise' for dataset 'dd'. Did you mean 'size'? Allowed: size"
    )
    with pytest.raises(UsageError, match=r"Invalid config value for 'dataset.size'"):
        registry.build("dataset", "dd", {"size": "big"})


def test_spec_records_check_their_fields():
    from refine_core import TeacherSpec

    with pytest.raises(TypeError, match="options must be a pydantic model"):
        TeacherSpec(name="t", summary="s", factory=dict, options=dict)
    with pytest.raises(TypeError, match="factory must be callable"):
        TeacherSpec(name="t", summary="s", factory="no_colon")


def test_kind_names_accept_plural_and_the_spelt_out_codec():
    from refine_core.registry import check_kind

    assert [check_kind(k) for k in ("codec", "codecs", "action_codec", "action_codecs", "datasets")] == [
        "codec", "codec", "codec", "codec", "dataset"]
    with pytest.raises(UsageError, match="Unknown kind 'codex'. Available: backbone, codec, teacher"):
        check_kind("codex")
