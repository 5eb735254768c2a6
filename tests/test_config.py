"""Run config: file formats, precedence (defaults < file < component flags < --set), errors."""
from __future__ import annotations

import pytest

from refine_core.config import RunConfig, resolve_config
from refine_core.errors import UsageError

YAML = """
dataset: {name: bridge, data_dir: /data/rlds}
teacher: gemini
train:
  lr: 0.001
  max_steps: 50
loss: {lambda_r: 0.5}
"""

TOML = """
[dataset]
name = "bridge"
data_dir = "/data/rlds"

[train]
lr = 0.001
max_steps = 50
"""


def test_defaults_are_the_offline_demo_run():
    cfg = RunConfig()
    assert (cfg.dataset.name, cfg.teacher.name, cfg.benchmark.name) == ("demo", "scripted", "offline")
    assert cfg.loss.lambda_r == 0.3


@pytest.mark.parametrize("suffix,text", [(".yaml", YAML), (".toml", TOML)])
def test_file_then_set_precedence(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    cfg = resolve_config(path, ["train.lr=3e-4", "dataset.data_dir=/other"])
    assert cfg.dataset.name == "bridge"
    assert cfg.dataset.options == {"data_dir": "/other"}
    assert cfg.train.lr == pytest.approx(3e-4)  # --set beats the file
    assert cfg.train.max_steps == 50  # the file beats the default
    assert cfg.train.batch_size == RunConfig().train.batch_size  # untouched default


def test_set_values_are_yaml_scalars(tmp_path):
    cfg = resolve_config(None, ["freeze.vision=false", "freeze.first_n_layers=-2", "lora.r=16",
                                "lora.targets=[q_proj, v_proj]", "backbone.path=/models/x",
                                "backbone.dtype=null"])
    assert cfg.freeze.vision is False and cfg.freeze.first_n_layers == -2
    assert cfg.lora.r == 16 and cfg.lora.targets == ["q_proj", "v_proj"]
    assert cfg.backbone.options == {"preset": "tiny", "path": "/models/x", "dtype": None}


def test_component_flag_is_shorthand_and_set_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    cfg = resolve_config(path, None, {"teacher": "openai"})
    assert cfg.teacher.name == "openai"
    cfg = resolve_config(path, ["teacher.name=hf"], {"teacher": "openai"})
    assert cfg.teacher.name == "hf"


def test_changing_a_component_drops_the_old_components_options(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    cfg = resolve_config(path, None, {"dataset": "demo"})
    assert cfg.dataset.name == "demo" and cfg.dataset.options == {}
    same = resolve_config(path, None, {"dataset": "bridge"})
    assert same.dataset.options == {"data_dir": "/data/rlds"}
    # options set after the name change apply to the new component
    cfg = resolve_config(path, ["dataset.name=fractal", "dataset.data_dir=/f"])
    assert cfg.dataset.name == "fractal" and cfg.dataset.options == {"data_dir": "/f"}


def test_unknown_stage_key_suggests_and_lists_allowed():
    with pytest.raises(UsageError) as err:
        resolve_config(None, ["train.lrr=1"])
    message = str(err.value)
    assert message.startswith("Unknown config key 'train.lrr'. Did you mean 'lr'? Allowed: ")
    assert "max_steps" in message


def test_unknown_section_is_an_error():
    with pytest.raises(UsageError, match=r"Unknown config key 'trian'\. Did you mean 'train'\?"):
        resolve_config(None, ["trian.lr=1"])


def test_invalid_values_name_the_field():
    with pytest.raises(UsageError, match=r"Invalid config value for 'loss.lambda_r'"):
        resolve_config(None, ["loss.lambda_r=-0.1"])
    with pytest.raises(UsageError, match=r"Invalid config value for 'annotate.strategy'"):
        resolve_config(None, ["annotate.strategy=sometimes"])


@pytest.mark.parametrize("item", ["train.lr", "=3", "train..lr=1"])
def test_malformed_set(item):
    with pytest.raises(UsageError, match="write it as dotted.key=value"):
        resolve_config(None, [item])


def test_config_file_errors(tmp_path):
    with pytest.raises(UsageError, match="Config file not found"):
        resolve_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(UsageError, match="Cannot parse config file"):
        resolve_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="must hold a mapping"):
        resolve_config(listy)
    bad_component = tmp_path / "bad.yaml"
    bad_component.write_text("dataset: [1, 2]\n")
    with pytest.raises(UsageError, match="dataset in .* must be a name or a mapping"):
        resolve_config(bad_component)
