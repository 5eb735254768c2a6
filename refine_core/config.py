"""Run configuration: components (a `name` with that component's options beside it) and stage
settings, loaded from YAML/TOML and overridden with `--set dotted.key=value`.

Layers apply in order: defaults < config file < component flags (`--dataset NAME`) < `--set`.
Changing a component's name in a later layer drops the options the earlier layers gave the old
component (they belong to it, not to the new one).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from refine_core.errors import UsageError, explain_validation
from refine_core.data.reasoning_formats import DEFAULT_FORMAT, format_names
from refine_core.data.vlm2vla import KINDS as VLM2VLA_KINDS
from refine_core.specs import KINDS


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Component(BaseModel):
    """`name` plus the component's own options (validated against its spec at start)."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None  # None: the slot's default component (codec, closed_loop), decided at resolution

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSettings(Section):
    # Defaults suit `refine run`'s offline demo in ~10 min: after 1000 steps at 1e-3 on 48 episodes the
    # tiny preset's free-running compact reasoning has token F1 0.60-0.64 on held-out steps (0.79 to 0.96
    # over four runs of 6000 steps on 1500 episodes, all sections exact on 0-59%; 0.69 after 3500 on
    # 700).
    # A real backbone's config sets its own (ReFineVLA/OpenVLA fine-tune around 1e-4 to 2e-5).
    max_steps: int = Field(1000, ge=1)
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
    # share of samples trained without their reasoning (prompt | actions), as ECoT-Lite's reasoning
    # dropout: the policy then also acts without reasoning (closed-loop mode `never`)
    reasoning_dropout: float = Field(0.5, ge=0, le=1)
    reasoning_format: str = (
        DEFAULT_FORMAT  # training text of the reasoning: refinevla | ecot (reasoning_formats.py)
    )
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
    # several processes: each reads only its own episodes (1/N of the decoding) instead of all of
    # them drawing one global batch, which makes N processes equal one with the N-fold batch
    rank_shards: bool = False
    # draw and collate the next step's batch in a background thread while this step trains
    # (training is bit-identical either way; false: all on the training thread)
    prefetch: bool = True
    # steps: one sample per step (actions, with the step's reasoning); vlm2vla: the text tasks built
    # from each episode's plan (annotate.task=decomposition), see `vlm2vla.*`
    samples: Literal["steps", "vlm2vla"] = "steps"


class VLM2VLASettings(Section):
    """The VLM2VLA text tasks trained when data.samples=vlm2vla (refine_core/data/vlm2vla.py)."""

    kinds: list[str] = Field(default_factory=lambda: list(VLM2VLA_KINDS))
    chunk_size: int = Field(5, ge=1)  # merged moves per action answer
    with_plan: bool = True  # false: action prompts without the motion plan (the no-reasoning ablation)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k not in VLM2VLA_KINDS]
        if unknown or not kinds:
            raise ValueError(f"choose among {', '.join(VLM2VLA_KINDS)} (at least one)")
        return kinds


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
    # unset: the backbone's `lora_recipe()` (VLM2VLA's α 32, dropout 0.05; OpenVLA's α 16, dropout 0,
    # gaussian)
    alpha: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    init: Literal["default", "gaussian"] | None = None  # peft's init of the A matrices
    targets: Literal["all-linear"] | list[str] = "all-linear"


class AnnotateSettings(Section):
    # reasoning: the teacher reasons about steps (ReFineVLA); decomposition: it splits each whole
    # trajectory into subtasks with their share of the actions (VLM2VLA plans, annotate/plans.py)
    task: Literal["reasoning", "decomposition"] = "reasoning"
    strategy: Literal["every_step", "every_k", "keyframes"] = "every_step"
    every: int = Field(5, ge=1)  # every_k: ask steps 0, k, 2k, …
    concurrency: int = Field(8, ge=1)  # requests in flight (in all workers together)
    workers: int = Field(1, ge=1)  # shard processes into one OUT (annotate/workers.py)
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

    recipe: str | None = None  # the named preset applied under the file and --set (refine_core/recipes.py)
    backbone: Component = Component(name="hf_vlm", preset="tiny")
    # unset: the backbone's own codec (BackboneSpec.default_codec), else bins; `resolve_components` decides
    codec: Component | None = None
    # the closed-loop benchmark run beside `benchmark` in the eval stage; unset: the one the
    # dataset's spec names (demo → demo-sim), else none; name "none" skips it
    closed_loop: Component | None = None
    teacher: Component = Component(name="scripted")
    dataset: Component = Component(name="demo")
    benchmark: Component = Component(name="offline")
    data: DataSettings = DataSettings()
    vlm2vla: VLM2VLASettings = VLM2VLASettings()
    train: TrainSettings = TrainSettings()
    loss: LossSettings = LossSettings()
    freeze: FreezeSettings = FreezeSettings()
    lora: LoraSettings = LoraSettings()
    annotate: AnnotateSettings = AnnotateSettings()
    eval: EvalSettings = EvalSettings()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


COMPONENTS = tuple(KINDS)  # backbone, codec, teacher, dataset, benchmark
# config keys that hold a component (a `name` and its options), and the kind each one is
SLOTS: dict[str, str] = {**{kind: kind for kind in KINDS}, "closed_loop": "benchmark"}
NO_COMPONENT = "none"


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
        raise UsageError(f"Config file {path} must hold a mapping at the top level, got "
                         f"{type(data).__name__}.")
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
    if head in SLOTS and keys[1:] in ([], ["name"]):
        update = value if len(keys) == 1 else {"name": value}
        data[head] = _merge_component(data.get(head) or {}, update, head)
        return
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = node[k] = {}
        node = child
    node[keys[-1]] = value


def _merge_layer(data: dict[str, Any], layer: dict[str, Any], where: str) -> None:
    for key, value in layer.items():
        if key in SLOTS:
            data[key] = _merge_component(data[key] or {}, value, f"{key} in {where}")
        elif isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value


def resolve_config(
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    components: dict[str, str | None] | None = None,
    base: RunConfig | None = None,
    recipe: str | None = None,
) -> RunConfig:
    """Defaults (or `base`) < recipe < file < component flags < --set, validated (stage settings only;
    component options are checked, and an unset codec chosen, by resolve_components). The recipe is
    `recipe`, else the one the file names (`recipe: NAME`)."""
    from refine_core.recipes import recipe_values

    data = (base or RunConfig()).to_dict()
    file_data = read_config_file(config_file) if config_file else {}
    recipe = recipe or file_data.get("recipe")
    if recipe and base is None:  # a saved run's config (base) already holds its recipe's values
        _merge_layer(data, recipe_values(recipe), f"recipe {recipe}")
        data["recipe"] = recipe
    elif recipe and base is not None and base.recipe != recipe:
        raise UsageError(f"this run was made with recipe {base.recipe!r}, not {recipe!r}; choose a new --out")
    _merge_layer(data, file_data, str(config_file))
    for kind, name in (components or {}).items():
        if name:
            _apply(data, [kind, "name"], name)
    for item in sets or []:
        keys, value = parse_set(item)
        _apply(data, keys, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(explain_validation(exc, RunConfig)) from None


def resolve_components(config: RunConfig, registry, slots: tuple[str, ...] = COMPONENTS) -> RunConfig:
    """The config with its unset components decided — the codec (the backbone's `default_codec`,
    else bins) and the closed-loop benchmark (the dataset's `closed_loop`, else none) — after
    checking that the components of `slots` exist and their options are valid, before any work
    starts. The one place these choices are made."""
    defaults = {"codec": lambda: registry.default_codec(config.backbone.name),
                "closed_loop": lambda: registry.default_closed_loop(config.dataset.name) or NO_COMPONENT}
    update = {}
    for slot, default in defaults.items():
        component = getattr(config, slot)
        if component is None or component.name is None:  # options may come without a name
            update[slot] = Component(name=default(), **(component.options if component else {}))
    config = config.model_copy(update=update) if update else config
    for slot in slots:
        component = getattr(config, slot)
        if component.name != NO_COMPONENT or slot != "closed_loop":
            registry.validate_options(SLOTS[slot], component.name, component.options)
    return config


def config_difference(saved: dict[str, Any], current: dict[str, Any],
                      ignore: frozenset[str] = frozenset()) -> tuple[str, Any, Any] | None:
    """The first setting (dotted key, saved value, current value; keys sorted) that differs between
    two configs, outside `ignore` (dotted keys, or a key's prefix: "closed_loop" covers
    "closed_loop.name"). Both are re-validated first, so a setting added to refine after `saved`
    was written counts as its default rather than as a change."""
    try:
        saved, current = (
            RunConfig.model_validate(saved).to_dict(),
            RunConfig.model_validate(current).to_dict(),
        )
    except ValueError:  # not a config this version can read: compare as written
        pass
    old, new = _flatten(saved), _flatten(current)
    for key in sorted(set(old) | set(new)):
        ignored = key in ignore or any(key.startswith(prefix + ".") for prefix in ignore)
        if not ignored and old.get(key) != new.get(key):
            return key, old.get(key), new.get(key)
    return None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(copy.deepcopy(config.to_dict()), sort_keys=False)
