"""Run configuration: components (a `name` with that component's options beside it) and stage
settings, loaded from YAML/TOML and overridden with `--set dotted.key=value`.

Layers apply in order: defaults < config file < component flags (`--dataset NAME`) < `--set`.
Changing a component's name in a later layer drops the options the earlier layers gave the old
component (they belong to it, not to the new one).
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UsageError
from .reasoning_formats import DEFAULT_FORMAT, format_names
from .specs import KINDS, ComponentSpec


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(BaseModel):
    """`name` plus the component's own options (validated against its spec at start)."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSettings(Section):
    # Defaults suit `refine run`'s offline demo (the tiny preset learns it in ~300 steps at 1e-3);
    # a real backbone's config sets its own (ReFineVLA/OpenVLA fine-tune around 1e-4 to 2e-5).
    max_steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    save_every: int = Field(100, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    reasoning_order: Literal["reason_then_act", "act_then_reason"] = "reason_then_act"
    reasoning_dropout: float = Field(0.0, ge=0, le=1)
    reasoning_format: str = DEFAULT_FORMAT  # training text of the reasoning: refinevla | ecot (reasoning_formats.py)
    keep_checkpoints: int = Field(2, ge=1)  # newest N step-* directories kept in OUT/checkpoints
    collapse_window: int = Field(3, ge=1)  # logged steps of input-independent actions before a warning

    @field_validator("reasoning_format")
    @classmethod
    def _known_format(cls, name: str) -> str:
        if name not in format_names():
            raise ValueError(f"unknown reasoning format; choose one of: {', '.join(format_names())}")
        return name


class DataSettings(Section):
    val_fraction: float = Field(0.1, ge=0, lt=1)  # whole episodes held out, fixed by episode id
    max_episodes: int | None = Field(None, ge=1)
    shuffle_buffer: int = Field(1000, ge=1)
    missing_annotation: Literal["action_only", "skip"] = "action_only"


class LossSettings(Section):
    lambda_r: float = Field(0.3, ge=0)


class FreezeSettings(Section):
    # None (unset): the backbone's transfer recipe (ReFineVLA: vision + embeddings frozen, all but
    # the last 2 blocks frozen; random-weight presets train everything).
    vision: bool | None = None
    embeddings: bool | None = None
    first_n_layers: int | None = None  # negative: keep the last |n| blocks trainable


class LoraSettings(Section):
    r: int | None = Field(None, ge=1)  # unset: no LoRA
    # unset: the backbone's `lora_recipe()` (VLM2VLA's α 32, dropout 0.05; OpenVLA's α 16, dropout 0, gaussian)
    alpha: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    init: Literal["default", "gaussian"] | None = None  # peft's init of the A matrices
    targets: Literal["all-linear"] | list[str] = "all-linear"


class AnnotateSettings(Section):
    strategy: Literal["every_step", "every_k", "keyframes"] = "every_step"
    every: int = Field(5, ge=1)  # every_k: ask steps 0, k, 2k, …
    concurrency: int = Field(8, ge=1)  # requests in flight
    max_retries: int = Field(5, ge=0)  # per request, on 429/5xx/timeouts/lost connections
    max_reasks: int = Field(2, ge=0)  # per request, on malformed answers
    backoff_initial: float = Field(1.0, ge=0)  # seconds; doubles per retry, with jitter
    backoff_max: float = Field(60.0, ge=0)
    request_timeout: float | None = Field(120.0, gt=0)  # seconds per request
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    cache: bool = True  # reuse answers to identical requests across runs
    cache_dir: str | None = None  # default ~/.cache/refine/annotations
    price_input_per_million: float | None = Field(None, ge=0)  # USD; overrides the teacher's price table
    price_output_per_million: float | None = Field(None, ge=0)
    split: str = "train"
    max_episodes: int | None = Field(None, ge=1)


class EvalSettings(Section):
    max_episodes: int | None = Field(None, ge=1)
    reasoning: Literal["every_step", "every_k", "never"] = "every_step"


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    backbone: Component = Component(name="hf_vlm", preset="tiny")
    codec: Component = Component(name="bins")
    teacher: Component = Component(name="scripted")
    dataset: Component = Component(name="demo")
    benchmark: Component = Component(name="offline")
    data: DataSettings = DataSettings()
    train: TrainSettings = TrainSettings()
    loss: LossSettings = LossSettings()
    freeze: FreezeSettings = FreezeSettings()
    lora: LoraSettings = LoraSettings()
    annotate: AnnotateSettings = AnnotateSettings()
    eval: EvalSettings = EvalSettings()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


COMPONENTS = tuple(KINDS)  # backbone, codec, teacher, dataset, benchmark


# -- loading -------------------------------------------------------------------------------
def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Config file not found: {path}. Pass an existing YAML or TOML file to --config.")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"Cannot parse config file {path}: {first}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"Config file {path} must hold a mapping at the top level, got {type(data).__name__}.")
    return data


def parse_set(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    keys = [k for k in key.strip().split(".")]
    if not sep or not all(keys):
        raise UsageError(f"Bad --set '{item}': write it as dotted.key=value, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def _merge_component(current: dict[str, Any], update: Any, where: str) -> dict[str, Any]:
    if isinstance(update, str):  # `dataset: bridge` is shorthand for `dataset: {name: bridge}`
        update = {"name": update}
    if not isinstance(update, dict):
        raise UsageError(f"{where} must be a name or a mapping with 'name', got {update!r}")
    if "name" in update and update["name"] != current.get("name"):
        current = {}
    return {**current, **update}


def _apply(data: dict[str, Any], keys: list[str], value: Any) -> None:
    head = keys[0]
    if head in COMPONENTS and keys[1:] in ([], ["name"]):
        update = value if len(keys) == 1 else {"name": value}
        data[head] = _merge_component(data.get(head, {}), update, head)
        return
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = node[k] = {}
        node = child
    node[keys[-1]] = value


def resolve_config(
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    components: dict[str, str | None] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """Defaults (or `base`) < file < component flags < --set, validated (stage settings only;
    component options are checked by validate_components)."""
    data = (base or RunConfig()).to_dict()
    codec_named = base is not None  # a base config (a run being resumed) already made its choice
    if config_file:
        file_data = read_config_file(config_file)
        codec_named |= isinstance(file_data.get("codec"), (dict, str))
        for key, value in file_data.items():
            if key in COMPONENTS:
                data[key] = _merge_component(data[key], value, f"{key} in {config_file}")
            elif isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    for kind, name in (components or {}).items():
        if name:
            _apply(data, [kind, "name"], name)
            codec_named |= kind == "codec"
    for item in sets or []:
        keys, value = parse_set(item)
        codec_named |= keys == ["codec", "name"] or keys == ["codec"]
        _apply(data, keys, value)
    if not codec_named:  # the backbone's own action tokens (SpatialVLA's spatial grid) unless told otherwise
        default = backbone_default_codec(data["backbone"]["name"])
        if default and default != data["codec"]["name"]:
            data["codec"] = {**data["codec"], "name": default}
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_explain(exc, RunConfig)) from None


def backbone_default_codec(backbone: str) -> str | None:
    """The codec a backbone's spec names in `metadata["default_codec"]`, if it is registered."""
    from .plugins import get_registry

    try:
        spec = get_registry().get("backbone", backbone).spec
    except UsageError:  # unknown backbone: reported when components are validated
        return None
    return spec.metadata.get("default_codec")


def _explain(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line for the first error: the dotted field, what is wrong, and the allowed keys."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = prefix + ".".join(loc)
    if err["type"] == "extra_forbidden":
        parent: Any = model
        for part in loc[:-1]:
            field = parent.model_fields.get(part) if isinstance(parent, type) else None
            parent = field.annotation if field is not None else None
        allowed = sorted(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        did = f" Did you mean '{hint[0]}'?" if hint else ""
        return f"Unknown config key '{dotted}'.{did} Allowed: {', '.join(allowed) or '(none)'}"
    return f"Invalid config value for '{dotted}': {err['msg']} (got {err.get('input')!r})"


def validate_options(kind: str, spec: ComponentSpec, options: dict[str, Any]) -> BaseModel:
    """Build the spec's options model; typos and bad values fail with the field and allowed keys."""
    model = spec.options
    allowed = sorted(model.model_fields)
    for key in options:
        if key not in model.model_fields and model.model_config.get("extra") != "allow":
            hint = difflib.get_close_matches(key, allowed, n=1)
            did = f" Did you mean '{hint[0]}'?" if hint else ""
            raise UsageError(
                f"Unknown option '{kind}.{key}' for {kind} '{spec.name}'.{did} "
                f"Allowed: {', '.join(allowed) or '(none)'}"
            )
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise UsageError(_explain(exc, model, prefix=f"{kind}.")) from None


def validate_components(config: RunConfig, registry, kinds: tuple[str, ...] = COMPONENTS) -> dict[str, BaseModel]:
    """Check every named component exists and its options are valid, before any work starts."""
    return {
        kind: registry.validate_options(kind, getattr(config, kind).name, getattr(config, kind).options)
        for kind in kinds
    }


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(copy.deepcopy(config.to_dict()), sort_keys=False)
