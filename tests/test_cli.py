"""The `refine` CLI as users run it: installed third-party plugins, --json shapes, exit codes,
and no heavy import for --help / list."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_refine

ROOT = Path(__file__).resolve().parents[1]


def pip_install_target(project: Path, target: Path) -> None:
    """A real `pip install` of a plugin project, into its own folder (the test env stays clean)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), str(project)],
        check=True, capture_output=True, timeout=300,
    )


def write_project(root: Path, dist: str, module: str, source: str) -> Path:
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "0.0.1"
        [project.entry-points.refine]
        {module} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
    """))
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plugin and a broken and a failing plugin, pip-installed into one folder."""
    base = tmp_path_factory.mktemp("plugins")
    target = base / "site"
    pip_install_target(ROOT / "examples" / "plugin-template", target)
    pip_install_target(write_project(base / "broken", "refine-broken-plugin", "refine_broken",
                                     "raise ImportError('needs a library that is not installed')\n"), target)
    pip_install_target(write_project(base / "failing", "refine-failing-command", "refine_failing", '''
        from refine_core import hookimpl, BackboneSpec, ActionCodecSpec, BenchmarkSpec
        @hookimpl
        def refine_backbones():
            yield BackboneSpec(name="fake-bb", summary="s", factory=dict)
        @hookimpl
        def refine_action_codecs():
            yield ActionCodecSpec(name="fake-cc", summary="s", factory=dict)
        @hookimpl
        def refine_benchmarks():
            yield BenchmarkSpec(name="fake-be", summary="s", factory=dict)
        @hookimpl
        def refine_commands(app):
            @app.command("explode")
            def explode():
                """A command that fails while working."""
                raise RuntimeError("disk on fire\\nsecond line")
    '''), target)
    return target


def cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_refine(*args, env={"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **env})


def test_installed_plugin_components_are_listed(site):
    result = cli(site, "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(set(row) == {"kind", "name", "summary", "plugin"} for row in rows)
    mine = {(r["kind"], r["name"]): r["plugin"] for r in rows}
    for kind, name in (("teacher", "template-fixed"), ("dataset", "template-line"), ("codec",
                                                                                     "template-sign"),
                       ("benchmark", "template-accuracy")):
        assert mine[(kind, name)] == "template"


def test_installed_plugin_components_work_through_the_registry(site):
    """The template's components, built by name from the installed distribution, do their jobs."""
    probe = textwrap.dedent("""
        import asyncio, json, tempfile
        import numpy as np, torch
        torch.set_num_threads(1)
        from refine_core import AnnotationRequest, get_registry
        from refine_core.benchmark import EvalContext
        registry = get_registry()
        dataset = registry.build("dataset", "template-line", {"episodes": 3, "steps": 4})
        episode = next(dataset.episodes())
        teacher = registry.build("teacher", "template-fixed", {"sub_action": "slide right"})
        step = episode.steps[0]
        request = AnnotationRequest(step.instruction, step.images, step.primary_camera)
        answer = asyncio.run(teacher.annotate(request))
        backbone = registry.build("backbone", "hf_vlm", {"preset": "tiny"})
        codec = registry.build("codec", "template-sign", {"deadband": 0.1})
        backbone.attach_codec(codec, dataset.statistics().action)
        ids = codec.encode(step.action)
        decoded = codec.decode(ids)[0]
        # targets per episode: the codec's 7 ids per step, then eos
        from refine_core import episode_samples
        targets = {}
        for episode in dataset.episodes():
            samples = list(episode_samples(episode, codec.chunk_size))
            encoded = [i for sample in samples for i in codec.encode(sample.actions)]
            targets[episode.episode_id] = (encoded, len(samples))
        # a model that always predicts the commonest target id: its accuracy follows from the data alone
        every = [i for ids_, _ in targets.values() for i in ids_]
        favourite = max(set(every), key=every.count)
        favour = torch.zeros(backbone.model.config.text_config.vocab_size)
        favour[favourite] = 1e4
        backbone.model.get_output_embeddings().register_forward_hook(lambda m, i, out: out + favour)
        benchmark = registry.build("benchmark", "template-accuracy", {"max_episodes": 2})
        result = benchmark.evaluate(EvalContext(backbone, dataset, tempfile.mkdtemp(), val_fraction=0.999))
        expected = {r["episode_id"]: [targets[r["episode_id"]][0].count(favourite),
                                      len(targets[r["episode_id"]][0]) + targets[r["episode_id"]][1]]
                    for r in result.records}
        print(json.dumps({"sub_action": answer.reasoning.task_planning.sub_action, "ids": ids,
                          "vocab": int(backbone.tokenizer.vocab_size), "gripper": float(decoded[6]),
                          "summary": result.summary, "records": result.records, "expected": expected}))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])})
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["sub_action"] == "slide right"
    assert len(out["ids"]) == 7 and set(out["ids"]) <= set(range(out["vocab"] - 3, out["vocab"]))
    assert out["gripper"] == 1.0  # the first step's gripper is open and survives the round trip
    assert out["summary"]["episodes"] == 2 and out["summary"]["steps"] == 8
    # the benchmark's accuracy is the share of action tokens the model gets right, per episode and
    # over the held-out steps: against the count of the one id the model predicts among the targets
    hits = {r["episode_id"]: r["action_token_accuracy"] for r in out["records"]}
    assert set(hits) == set(out["expected"]) and len(hits) == 2
    for episode_id, (right, tokens) in out["expected"].items():
        assert tokens == 4 * (7 + 1) and 0 < right < tokens  # not a trivial 0 or 1
        assert hits[episode_id] == pytest.approx(right / tokens)
    total = sum(right for right, _ in out["expected"].values()) / 64
    assert out["summary"]["action_token_accuracy"] == pytest.approx(total)


def test_list_one_kind_as_a_table(site):
    result = cli(site, "list", "dataset")
    assert result.returncode == 0
    assert "template-line" in result.stdout and "template-fixed" not in result.stdout


def test_broken_plugin_is_shown_and_does_not_break_list(site):
    listed = cli(site, "list")
    assert listed.returncode == 0 and "template-fixed" in listed.stdout
    result = cli(site, "plugins", "--json")
    assert result.returncode == 0
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plugins["refine_broken"]) == {"name", "source", "version", "hooks", "error"}
    assert (
        plugins["refine_broken"]["error"]
        == "failed to load: ImportError: needs a library that is not installed"
    )
    assert plugins["refine_broken"]["source"] == "refine-broken-plugin"
    assert plugins["template"]["error"] is None
    assert "refine_teachers" in plugins["template"]["hooks"]
    table = cli(site, "plugins")
    assert "needs a library that is not installed" in table.stdout


def test_refine_plugins_env_filters_third_party_distributions(site):
    only = json.loads(cli(site, "plugins", "--json", REFINE_PLUGINS="refine-plugin-template").stdout)
    assert [p["name"] for p in only if p["source"] != "builtin"] == ["template"]
    by_entry_point = json.loads(cli(site, "plugins", "--json", REFINE_PLUGINS="refine_broken").stdout)
    assert [p["name"] for p in by_entry_point if p["source"] != "builtin"] == ["refine_broken"]
    none = json.loads(cli(site, "list", "--json", REFINE_PLUGINS="").stdout)
    assert not [r for r in none if r["plugin"] == "template"]


def test_plugin_command_runs(site):
    result = cli(site, "template-reasoning", "--sub-action", "grasp the cup")
    assert result.returncode == 0
    assert result.stdout.strip().endswith("<sub_action> grasp the cup")


def test_failure_while_working_exits_1_with_one_line(site):
    result = cli(site, "explode")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: RuntimeError: disk on fire (run with --debug for the traceback)"]
    debug = cli(site, "--debug", "explode")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


ALL_FAKE = ("--backbone", "fake-bb", "--codec", "fake-cc", "--dataset", "template-line",
            "--benchmark", "fake-be")


def test_unknown_component_exits_2(site):
    result = cli(site, "config", "show", "--check", *ALL_FAKE, "--teacher", "nope")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Unknown teacher 'nope'. Available: ")
    assert "template-fixed" in lines[0]
    lenient = cli(site, "config", "show", *ALL_FAKE, "--teacher", "nope")
    assert lenient.returncode == 0 and "warning: Unknown teacher 'nope'" in lenient.stderr


def test_option_typo_exits_2_naming_the_field(site):
    result = cli(site, "config", "show", *ALL_FAKE, "--teacher", "template-fixed", "--set",
                 "teacher.sub_actoin=go")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: Unknown option 'teacher.sub_actoin' for teacher 'template-fixed'. "
        "Did you mean 'sub_action'? Allowed: sub_action")
    assert "Traceback" not in result.stderr


def test_config_show_json_is_the_resolved_config(site, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("teacher: {name: template-fixed, sub_action: from-file}\ntrain: {lr: 0.5}\n")
    result = cli(site, "config", "show", "--json", "--check", *ALL_FAKE, "--config", str(config),
                 "--set", "train.max_steps=7")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["teacher"] == {"name": "template-fixed", "sub_action": "from-file"}
    assert resolved["train"]["lr"] == 0.5 and resolved["train"]["max_steps"] == 7
    assert resolved["backbone"] == {"name": "fake-bb"}


def test_config_show_with_the_defaults_shows_the_components_a_run_would_use():
    result = run_refine("config", "show", "--json", "--check")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["backbone"]["name"] == "hf_vlm" and resolved["dataset"]["name"] == "demo"
    assert resolved["codec"]["name"] == "bins"  # hf_vlm's default codec, decided as a run decides it
    assert resolved["closed_loop"]["name"] == "demo-sim"  # the demo dataset's simulated task


def test_bad_usage_exits_2():
    assert run_refine("list", "gizmo").returncode == 2
    assert "Unknown kind 'gizmo'. Available: backbone, codec, teacher, dataset, benchmark" in run_refine(
        "list", "gizmo").stderr
    assert run_refine("no-such-command").returncode == 2
    assert run_refine("config", "show", "--set", "train.lr").returncode == 2


def test_help_and_list_import_no_heavy_dependency():
    probe = textwrap.dedent("""
        import sys
        from refine_core.cli import main
        for args in (["--help"], ["list"], ["plugins"]):
            try:
                main(args)
            except SystemExit as exit:
                assert exit.code in (0, None), (args, exit.code)
        heavy = ["torch", "tensorflow", "transformers", "google.genai", "openai", "tensorflow_datasets",
                 "matplotlib", "peft", "accelerate"]
        print("HEAVY=" + ",".join(m for m in heavy if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def test_version():
    from refine_core import __version__

    result = run_refine("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"refine {__version__}"
