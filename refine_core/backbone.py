"""The backbone contract: a model + tokenizer + action codec that turns training samples into
batches, gives logits for the reasoning-aware loss, names its parts (for freezing and LoRA) and
generates reasoning and actions.

Training:   batch = backbone.collate(samples, order=..., drop=[...]);  logits = backbone.forward(batch)
            loss = reasoning_aware_loss(logits, batch["labels"], batch["action_mask"], lambda_r)
Inference:  backbone.predict(images, instruction, reasoning=True) -> Prediction
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from contextlib import contextmanager
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from refine_core.action_codec import ActionCodec, ActionDecodeError
from refine_core.data.collate import EncodedSample, ReasoningOrder, assemble, pad_batch
from refine_core.errors import UsageError
from refine_core.statistics import Statistics


def model_dtype(name: str):
    """A backbone's `dtype` option as a torch dtype: "auto" is bf16 on CUDA, else fp32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


AllowedIds = Callable[[int], "Sequence[int] | np.ndarray | None"]  # new-token index → allowed ids (None: any)
StopRow = Callable[[int, list[int]], bool]  # (row, its new ids so far) → end that row now (a decoding guard)
Decoder = Literal["auto", "dynamic", "static", "graph"]


class BackboneOptions(BaseModel):
    """The options every backbone takes; a backbone's own options model extends this one."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None,
                             description="Local checkpoint directory or Hugging Face Hub id (org/name); "
                                               "takes precedence over `preset`.")
    preset: Literal["tiny"] | None = Field("tiny", description="Build a randomly initialised model from a "
                                                               "config (no download) when `path` is unset.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto",
                                                          description="auto: bf16 on CUDA, else fp32.")
    attn_implementation: Literal["auto", "sdpa", "eager"] = Field(
        "auto", description="auto: the backbone's default; eager is needed for attention maps.")
    seed: int = Field(0, description="Seed of the preset's random initialisation.")
    decoder: Decoder = Field("auto",
                             description="Generation's KV cache: auto is graph on CUDA (a static cache, "
                                                 "each token's step replayed as a CUDA graph: 2-4x faster on "
                                                 "GPUs, "
                                                 "perf P7), dynamic (transformers' cache) elsewhere; static "
                                                 "runs "
                                                 "the static cache eagerly.")


@dataclass
class TrainingSample:
    """One supervised step: frames, instruction, the action chunk to predict, optional reasoning text.

    A text-answer sample (VLM2VLA's, `refine_core.data.vlm2vla`) sets `answer`: `instruction` is then
    the whole question, `actions` is not read, and the answer's tokens and eos are the supervised
    suffix (plain cross-entropy: they count as action tokens, so λ_r does not weigh them)."""

    images: dict[str, np.ndarray]
    primary_camera: str
    instruction: str
    actions: np.ndarray  # [chunk, 7] in refine's convention
    reasoning: str | None = None
    key: str = ""  # "<episode_id>/<step_index>", for messages and annotation joins
    answer: str | None = None
    answer_kind: str | None = None  # the VLM2VLA task ("actions": written with the codec, see answer_ids)

    @property
    def image(self) -> np.ndarray:
        return self.images[self.primary_camera]


@dataclass
class Prediction:
    """What the model generated for one observation."""

    actions: np.ndarray | None  # [chunk, 7], None when the action span did not decode
    reasoning: str | None
    generated_ids: list[int] = field(default_factory=list)
    action_ids: list[int] = field(default_factory=list)
    error: str | None = None  # the ActionDecodeError message, if any
    forced: bool = (
        False  # the action span was generated under constraints after the reasoning failed to give one
    )


class Backbone(ABC):
    """Base class of every backbone. Subclasses own `model` (a torch module), `tokenizer`, `codec`."""

    name: str = "backbone"
    pretrained: bool = True  # False for randomly initialised presets (see transfer_recipe)
    # The name the codec's action statistics are filed under when a backbone writes them into its
    # own checkpoint format (OpenVLA's config.json norm_stats): the training dataset's name, set
    # by refine when it attaches the codec for training or loads a checkpoint.
    statistics_key: str | None = None
    model: Any
    tokenizer: Any
    codec: ActionCodec

    # -- construction (a template: subclasses implement `load` and `build_preset`) -----------
    def __init__(self, options: BackboneOptions) -> None:
        self.options = options
        self.pretrained = bool(options.path)
        self.codec = None  # attached by attach_codec
        if options.path:
            self.load(options.path)
        elif options.preset:
            import torch

            with torch.random.fork_rng():  # the preset's weights depend on its seed only
                torch.manual_seed(options.seed)
                self.build_preset(options.preset)
        else:
            raise UsageError(f"{self.name} needs a model: set backbone.path=DIR_OR_HUB_ID or "
                             "backbone.preset=tiny")
        rows = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:
            raise UsageError(f"the tokenizer has {len(self.tokenizer)} ids but the model only {rows} "
                             "embeddings")

    def attention(self, auto: str = "sdpa") -> str:
        """The `attn_implementation` option, "auto" standing for `auto`."""
        return auto if self.options.attn_implementation == "auto" else self.options.attn_implementation

    def load(self, path: str) -> None:
        """Set `model` and `tokenizer` from a checkpoint directory or Hub id (`backbone.path`)."""
        raise UsageError(f"{self.name} cannot load checkpoints; use backbone.preset")

    def build_preset(self, preset: str) -> None:
        """Set `model` and `tokenizer` to a randomly initialised preset (torch's RNG is seeded)."""
        raise UsageError(f"{self.name} has no preset {preset!r}; set backbone.path")

    # -- codec ------------------------------------------------------------------------------
    def attach_codec(self, codec: ActionCodec, action_stats: Statistics) -> "Backbone":
        """Add the codec's new tokens (resizing the embeddings), bind it, check the vocabulary holds it."""
        vocab = self.tokenizer.get_vocab()
        new = [t for t in codec.new_tokens() if t not in vocab]
        if new:
            self.tokenizer.add_tokens(new)
            self.resize_embeddings(len(self.tokenizer))
        codec.bind(self.tokenizer, action_stats)
        rows = self.model.get_input_embeddings().num_embeddings
        ids = codec.action_token_ids
        if ids is not None and len(ids) and int(np.max(ids)) >= rows:
            raise UsageError(f"{self.name}'s vocabulary ({rows} embeddings) cannot hold codec "
                             f"'{codec.name}' token id {int(np.max(ids))}; pick another codec or backbone")
        self.codec = codec
        return self

    def resize_embeddings(self, size: int) -> None:
        self.model.resize_token_embeddings(size)

    # -- data -------------------------------------------------------------------------------
    @abstractmethod
    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the unsupervised prompt for one sample (image placeholders included)."""

    @abstractmethod
    def image_inputs(self, samples_images: Sequence[np.ndarray]) -> dict[str, Any]:
        """Model inputs for a batch of primary frames (e.g. {"pixel_values": [B,3,H,W]})."""

    @property
    @abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abstractmethod
    def pad_id(self) -> int: ...

    _PROMPT_CACHE_SIZE = 4096  # distinct instructions remembered (a dataset repeats few of them)

    def cached_prompt_ids(self, instruction: str) -> list[int]:
        """`prompt_ids` remembered per instruction (least recently used dropped first): an
        instruction is the same on every step of an episode, and tokenising it per sample was a
        measurable share of collate. Keyed with the vocabulary size, as codecs may add tokens."""
        cache = self.__dict__.setdefault("_prompt_cache", OrderedDict())
        key = (instruction, len(self.tokenizer))
        ids = cache.get(key)
        if ids is None:
            ids = cache[key] = list(self.prompt_ids(instruction))
            if len(cache) > self._PROMPT_CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return ids

    def reasoning_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer_ids(self, text: str, kind: str | None = None) -> list[int]:
        """A text answer's ids: tokenized, except action answers under a codec that writes action text
        with its own ids (`encode_action_text`: least-likely, VLM2VLA's AT ablation)."""
        writer = getattr(self.codec, "encode_action_text", None) if kind == "actions" else None
        return list(writer(text)) if writer is not None else self.reasoning_ids(text)

    def answer_text(self, ids: Sequence[int], kind: str | None = None) -> str:
        """Generated ids back to answer text (the inverse of `answer_ids`)."""
        reader = getattr(self.codec, "decode_action_text", None) if kind == "actions" else None
        return reader(ids) if reader is not None else self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode(self, sample: TrainingSample, order: ReasoningOrder = "reason_then_act",
               with_reasoning: bool = True) -> EncodedSample:
        if sample.answer is not None:  # a text answer: every token (and eos) supervised alike
            answer = self.answer_ids(sample.answer, sample.answer_kind)
            return assemble(self.cached_prompt_ids(sample.instruction), answer, [True] * len(answer),
                            self.eos_id)
        action_ids = self.codec.encode(sample.actions if self.codec.chunk_size > 1 else sample.actions[0])
        reasoning = self.reasoning_ids(sample.reasoning) if (with_reasoning and sample.reasoning) else None
        return assemble(self.cached_prompt_ids(sample.instruction), action_ids,  # assemble copies
                        self.codec.action_span_mask(action_ids),
                        self.eos_id, reasoning, order)

    def collate(self, samples: Sequence[TrainingSample], order: ReasoningOrder = "reason_then_act",
                drop_reasoning: Sequence[bool] | None = None) -> dict[str, Any]:
        drop = drop_reasoning or [False] * len(samples)
        encoded = [self.encode(s, order, not d) for s, d in zip(samples, drop)]
        batch = pad_batch(encoded, self.pad_id)
        batch.update(self.image_inputs([s.image for s in samples]))
        return batch

    # -- model ------------------------------------------------------------------------------
    @abstractmethod
    def forward(self, batch: dict[str, Any], output_attentions: bool = False) -> Any:
        """Logits [B, T, V] aligned with batch["input_ids"] (or the model output with attentions)."""

    @abstractmethod
    def blocks(self) -> list[tuple[str, Any]]:
        """The language model's transformer blocks, first to last, as (qualified name, module)."""

    @abstractmethod
    def vision_modules(self) -> list[tuple[str, Any]]:
        """Modules that see pixels before the language model (vision tower, depth model…)."""

    def embedding_modules(self) -> list[tuple[str, Any]]:
        return []

    def frozen_modules(self) -> list[tuple[str, Any]]:
        """Modules that never train whatever `freeze.*` says (SpatialVLA's ZoeDepth)."""
        return []

    def transfer_recipe(self) -> dict[str, Any]:
        """Defaults for `freeze.*` left unset: ReFineVLA's selective transfer of pretrained weights
        (vision tower and embeddings frozen; first_n_layers None = all but the last 2 blocks).
        Randomly initialised weights (a preset) hold no knowledge to protect: all of them train."""
        if not self.pretrained:
            return {"vision": False, "embeddings": False, "first_n_layers": 0}
        return {"vision": True, "embeddings": True, "first_n_layers": None}

    def lora_targets(self) -> str | list[str]:
        """Module-name suffixes LoRA adapts by default ("all-linear" = every linear of the LM)."""
        return "all-linear"

    def lora_recipe(self) -> dict[str, Any]:
        """Defaults for `lora.alpha/dropout/init` left unset: VLM2VLA's (α 32, dropout 0.05)."""
        return {"alpha": 32.0, "dropout": 0.05, "init": "default"}

    def lora_scope(self) -> list[tuple[str, Any]]:
        """Where `lora.targets=all-linear` looks for `lora_targets()`: the language-model blocks
        unless a backbone's recipe adapts more (SpatialVLA's also covers SigLIP and the projector)."""
        return self.blocks()

    # -- inference ----------------------------------------------------------------------------
    def generate_ids(self, image: np.ndarray, instruction: str, max_new_tokens: int,
                     prefix_ids: Sequence[int] = (), allowed: AllowedIds | None = None) -> list[int]:
        """Greedy continuation of the prompt (plus `prefix_ids`), eos excluded. `allowed(i)` (when
        given) lists the ids the i-th new token may take, None meaning any (constrained decoding)."""
        return self.generate_ids_batch([image], [instruction], max_new_tokens, [prefix_ids], allowed)[0]

    def generate_ids_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                           max_new_tokens: int,
                           prefix_ids: Sequence[Sequence[int]] | None = None,
                           allowed: AllowedIds | None = None,
                           stop: StopRow | None = None) -> list[list[int]]:
        """`generate_ids` for several observations in one batched generation (prompts left-padded,
        one forward per new token for the batch); row i equals `generate_ids` of row i alone.
        `stop(row, ids)` ends a row early. Runs the model in eval mode without gradients."""
        prefixes = [list(p) for p in (prefix_ids or [()] * len(images))]
        if type(self).greedy_continuation is Backbone.greedy_continuation:
            if type(self).generate_ids is Backbone.generate_ids:
                raise NotImplementedError(f"{type(self).__name__} implements neither greedy_continuation "
                                          "nor generate_ids")
            # a backbone written before batched generation: one row at a time
            return [self.generate_ids(image, instruction, max_new_tokens, prefix, allowed)
                    for image, instruction, prefix in zip(images, instructions, prefixes)]
        with self.inference():
            rows = self.greedy_continuation(list(images), list(instructions), max_new_tokens, prefixes,
                                            allowed, stop)
        return self._cut_at_eos(rows)

    @contextmanager
    def inference(self):
        """The model in eval mode without gradients, its training mode given back after."""
        import torch

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _cut_at_eos(self, rows: list[list[int]]) -> list[list[int]]:
        return [row[: row.index(self.eos_id)] if self.eos_id in row else row for row in rows]

    def sample_ids_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str], max_new_tokens: int,
                         temperature: float, top_p: float = 1.0,
                         seed: int | Sequence[int] = 0) -> list[list[int]]:
        """Sampled continuations of the prompts (eos excluded), batched: softmax(logits / temperature)
        cut to its top-p nucleus. Row i draws from its own random stream seeded with `seed[i]` (an int:
        the same seed for every row), so it equals row i sampled alone with that seed, reruns repeat,
        and torch's global RNG is left alone. `temperature` <= 0 is greedy (`generate_ids_batch`).
        Runs the model in eval mode without gradients."""
        if temperature <= 0:
            return self.generate_ids_batch(images, instructions, max_new_tokens)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        seeds = [int(seed)] * len(images) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} rows")
        with self.inference():
            rows = self.sampled_continuation(list(images), list(instructions), max_new_tokens,
                                             float(temperature), float(top_p), seeds)
        return self._cut_at_eos(rows)

    def sampled_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                             temperature: float, top_p: float, seeds: list[int]) -> list[list[int]]:
        """The sampled new ids of each row (see `sample_ids_batch`; rows may run past eos). A backbone
        that can sample implements this."""
        raise UsageError(f"{self.name} cannot sample (temperature {temperature}): it decodes greedily only; "
                         "set the temperature to 0")

    def greedy_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                            prefix_ids: list[list[int]], allowed: AllowedIds | None,
                            stop: StopRow | None) -> list[list[int]]:
        """The model's greedy new ids after each prompt + its prefix, batched (up to
        `max_new_tokens` per row; rows may run past eos, which `generate_ids_batch` cuts). A backbone
        implements this, or (one row at a time) overrides `generate_ids`."""
        raise NotImplementedError

    def split_generated(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """(reasoning ids, action ids) of a reason-then-act continuation."""
        start = self.codec.locate_actions(ids)
        if start is None:
            return list(ids), []
        return list(ids[:start]), list(ids[start:])

    def predict(self, image: np.ndarray, instruction: str, reasoning: bool = True,
                order: ReasoningOrder = "reason_then_act", max_new_tokens: int = 256,
                constrain_actions: bool = True, reasoning_opening: str | None = None) -> Prediction:
        """Reasoning (optional) then actions, decoded in refine's action convention.

        `reasoning_opening` (the reasoning format's opening tag) is forced at the start of the
        reasoning: a model trained with reasoning dropout might otherwise act at once.
        With `constrain_actions` (and a codec that names its action ids) the action span is decoded
        under the codec's per-position id constraints, so it always decodes: when acting first, from
        the start; after reasoning, only if the free continuation did not end in a valid span — the
        span is then generated again after the reasoning, constrained, and the prediction is marked
        `forced` (the reasoning never reached a valid action by itself)."""
        span = self.codec.span_length
        constraint = self.action_constraint() if constrain_actions else None
        forced = False
        if reasoning and order == "reason_then_act":
            opening = self.reasoning_ids(reasoning_opening) if reasoning_opening else []
            new = self.generate_ids(image, instruction, max_new_tokens, prefix_ids=opening)
            reasoning_ids, action_ids = self.split_generated(new)
            reasoning_ids, ids = opening + reasoning_ids, opening + list(new)
            if constraint is not None and not self.decodes(action_ids):
                action_ids = self.generate_ids(image, instruction, span, prefix_ids=reasoning_ids,
                                               allowed=constraint)
                ids, forced = reasoning_ids + action_ids, True
        else:  # the action span comes first: stop as soon as it is complete
            ids = self.generate_ids(image, instruction, span or max_new_tokens, allowed=constraint)
            reasoning_ids, action_ids = [], list(ids[:span] if span else ids)
        text = self.tokenizer.decode(reasoning_ids,
                                     skip_special_tokens=True).strip() if reasoning_ids else None
        try:
            actions = self.codec.decode(action_ids)
            error = None
        except ActionDecodeError as exc:
            actions, error = None, str(exc)
        return Prediction(actions=actions, reasoning=text, generated_ids=list(ids), action_ids=action_ids,
                          error=error, forced=forced)

    def action_constraint(self) -> AllowedIds | None:
        """`allowed` for generate_ids over an action span, when the codec and backbone support it."""
        span = self.codec.span_length
        if not span or self.codec.allowed_ids_at(0) is None:
            return None
        if "allowed" not in inspect.signature(self.generate_ids).parameters:
            return None  # a third-party backbone written before constrained decoding existed
        table = [self.codec.allowed_ids_at(i) for i in range(span)]
        return lambda i: table[i] if i < span else None

    def decodes(self, action_ids: Sequence[int]) -> bool:
        """Whether `action_ids` decode to an action chunk under the attached codec."""
        try:
            self.codec.decode(action_ids)
        except ActionDecodeError:
            return False
        return True

    # -- persistence --------------------------------------------------------------------------
    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write a directory `from_pretrained`-style loading can read back (safetensors)."""
