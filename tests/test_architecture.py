"""The shape of the distribution: namespaced install names, one public plugin API, import
direction, no pickle, and a missing optional dependency named by its extra."""
from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import refine_core

ROOT = Path(__file__).resolve().parents[1]
INSTALL_NAMES = {
    "plugins": "refine_plugins",
    "teachers": "refine_teachers",
    "benchmarks": "refine_benchmarks",
}
PLUGIN_CODE = [
    ROOT / "plugins",
    ROOT / "teachers",
    ROOT / "benchmarks",
    ROOT / "examples" / "plugin-template",
]
ALL_CODE = [ROOT / "refine_core", *PLUGIN_CODE, ROOT / "tests", ROOT / "perf"]


def python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "build" not in p.relative_to(root).parts)


def imported_modules(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a file; relative ones resolved."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # inside one of our packages: relative imports stay in that package
                package = path.parent.relative_to(ROOT).parts
                package = (INSTALL_NAMES.get(package[0], package[0]), *package[1:])
                base = package[: len(package) - node.level + 1]
                module = ".".join((*base, module) if module else base)
            found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def test_every_package_folder_is_installed_under_its_refine_name():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {k: v for k, v in settings["package-dir"].items() if k != "refine_core"} == {
        new: old for old, new in INSTALL_NAMES.items()}
    folders = set()
    for folder in ("refine_core", *INSTALL_NAMES):
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            folders.add(".".join((INSTALL_NAMES.get(parts[0], parts[0]), *parts[1:])))
    assert set(settings["packages"]) == folders  # a package missing here would be absent from a wheel


def test_generic_names_are_not_importable_and_every_builtin_component_builds(tmp_path):
    """After the README install, from anywhere but the checkout: `plugins`, `teachers` and
    `benchmarks` are not refine's to take, and every built-in still registers and builds."""
    script = textwrap.dedent("""
        import importlib
        for name in ("plugins", "teachers", "benchmarks"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            raise SystemExit(f"{name} is importable")
        from refine_core import get_registry
        registry = get_registry()
        errors = {name: info.error for name, info in registry.plugins.items() if info.error}
        assert not errors, errors
        built = []
        needs_input = {("teacher", n) for n in ("gemini", "openai", "hf")} | {
            ("dataset", n) for n in ("bridge", "fractal", "rlds", "lerobot")}
        for entry in registry.components():
            if (entry.kind, entry.spec.name) in needs_input:
                entry.spec.load_factory()  # builds with an API key or a data folder; its code must import
            else:
                registry.build(entry.kind, entry.spec.name)
            built.append(f"{entry.kind}:{entry.spec.name}")
        print(" ".join(built))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["REFINE_CACHE_DIR"] = str(tmp_path / "cache")
    env["REFINE_PLUGINS"] = ""  # built-ins only
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    built = set(result.stdout.split())
    assert {
        "backbone:hf_vlm",
        "backbone:openvla",
        "backbone:spatialvla",
        "codec:bins",
        "codec:spatial",
        "teacher:scripted",
        "teacher:gemini",
        "dataset:demo",
        "dataset:bridge",
        "benchmark:offline",
    } <= built


def test_plugins_import_only_the_public_api():
    """Built-in plugins and the example plugin import `refine_core` (the documented surface) and
    no submodule of it; each name they take from it is in `refine_core.__all__`."""
    offenders = []
    for path in python_files(*PLUGIN_CODE):
        for line, module, names in imported_modules(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.startswith("refine_core."):
                offenders.append(f"{where} imports {module}")
            elif module == "refine_core":
                offenders += [
                    f"{where} imports {n}, not public" for n in names if n not in refine_core.__all__
                ]
    assert not offenders, "\n".join(offenders)


def test_imports_point_from_plugins_to_the_core_never_back_nor_to_generic_names():
    offenders = []
    for path in python_files(*ALL_CODE):
        in_core = path.is_relative_to(ROOT / "refine_core")
        for line, module, _ in imported_modules(path):
            top = module.split(".")[0]
            if top in INSTALL_NAMES:  # the repository's folder names are not import names
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            if in_core and top in INSTALL_NAMES.values():  # the core finds built-ins through the registry
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_public_api_resolves_and_import_stays_light():
    for name in refine_core.__all__:
        assert getattr(refine_core, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        refine_core.Nope  # noqa: B018
    probe = ("import sys, refine_core\n"
             "from refine_core import Backbone, BenchmarkSpec, Episode, hookimpl\n"
             "print(sorted(m for m in ('torch', 'tensorflow', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_public_api_is_documented_in_the_package_docstring():
    doc = refine_core.__doc__
    missing = [name for name in refine_core.__all__ if name != "__version__" and name not in doc]
    assert not missing, missing


# -- no pickle ---------------------------------------------------------------------------------
def test_no_code_path_unpickles():
    """No pickle module, no torch.load without weights_only=True, no allow_pickle=True."""
    offenders = []
    for path in python_files(ROOT / "refine_core", *PLUGIN_CODE):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                if isinstance(node, ast.ImportFrom):
                    names.append(node.module or "")
                if {n.split(".")[0] for n in names} & {
                    "pickle",
                    "cPickle",
                    "dill",
                    "cloudpickle",
                    "joblib",
                    "shelve",
                }:
                    offenders.append(f"{where} imports a pickle library")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                keywords = {k.arg: k.value for k in node.keywords}
                if node.func.attr == "load" and ast.unparse(node.func.value) == "torch":
                    value = keywords.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        offenders.append(f"{where} torch.load without weights_only=True")
                if "allow_pickle" in keywords and not (isinstance(keywords["allow_pickle"], ast.Constant)
                                                       and keywords["allow_pickle"].value is False):
                    offenders.append(f"{where} allow_pickle")
                if node.func.attr in ("read_pickle", "loads") and ast.unparse(node.func.value) in (
                    "pd",
                    "pickle",
                ):
                    offenders.append(f"{where} {ast.unparse(node.func)}")
    assert not offenders, "\n".join(offenders)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_rng_file_of_an_old_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    from refine_core.training.checkpoint import load_rng

    monkeypatch.chdir(tmp_path)
    import torch

    torch.save({"python": _Exploit()}, tmp_path / "rng-0.pt", pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        load_rng(tmp_path, 0)
    assert not (tmp_path / "pwned").exists()


def test_rng_state_round_trips_through_safetensors(tmp_path):
    import random

    import numpy as np
    import torch

    from refine_core.training.checkpoint import load_rng, rng_state, save_rng, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian is part of numpy's state
    save_rng(rng_state(), tmp_path / "rng-0.safetensors")
    first = (random.random(), float(np.random.standard_normal()), torch.rand(3).tolist())
    set_rng_state(load_rng(tmp_path, rank=1))  # a rank that did not save resumes from rank 0's
    assert (random.random(), float(np.random.standard_normal()), torch.rand(3).tolist()) == first
    assert not list(tmp_path.glob("*.pt"))


# -- optional dependencies ---------------------------------------------------------------------
def run_hiding(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`refine ARGS` in a fresh process where importing `module` fails as if it were not installed."""
    code = f"import sys; sys.modules[{module!r}] = None\nfrom refine_core.cli import main; main()"
    env = {**os.environ, "REFINE_CACHE_DIR": str(cwd / "cache"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.mark.parametrize(
    "module, extra, args",
    [
        ("tensorflow", "rlds", ["run", "--out", "run"]),
        (
            "accelerate",
            "train",
            ["run", "--out", "run", "--set", "dataset.episodes=4", "--set", "train.max_steps=1"],
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(tmp_path, module, extra, args):
    result = run_hiding(module, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {module} is not installed: pip install 'refine-vla[{extra}]'"
    )
    assert "Traceback" not in result.stderr


def test_building_a_component_without_its_extra_names_the_extra(monkeypatch):
    from refine_core import MissingExtra, get_registry

    monkeypatch.setitem(sys.modules, "google", None)
    monkeypatch.setitem(sys.modules, "google.genai", None)
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    with pytest.raises(MissingExtra, match=r"pip install 'refine-vla\[gemini\]'"):
        get_registry().build("teacher", "gemini")


def test_lint_is_clean():
    """ruff (pycodestyle + pyflakes, lines <= 110; pyproject.toml) passes on the whole repository
    (ruff comes with the `dev` extra)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", str(ROOT)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_every_cache_lives_under_one_root(tmp_path, monkeypatch):
    from refine_core import cache_dir
    from refine_core.annotate.cache import ContentCache
    from refine_plugins.demo.dataset import default_cache_dir

    monkeypatch.delenv("REFINE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("stats") == tmp_path / "xdg" / "refine" / "stats"
    monkeypatch.setenv("REFINE_CACHE_DIR", str(tmp_path / "mine"))  # refine's own variable wins
    assert ContentCache().directory == tmp_path / "mine" / "annotations"
    assert default_cache_dir() == tmp_path / "mine" / "demo"
    assert cache_dir("stats") == tmp_path / "mine" / "stats"
