"""Token-by-token decoding over a preallocated KV cache, replayed as a CUDA graph on GPUs.

transformers' dynamic cache runs every decode step through Python: for OpenVLA-7B in bf16 on an
H100 that is ~36 ms per token, almost all of it launch overhead (the GPU work is ~5 ms). With a
static cache the step has fixed shapes, so it is captured once as a CUDA graph and replayed: ~9 ms
per token (perf/cuda_full_size.py). On the CPU the same static cache runs eagerly.

Model-agnostic: any transformers causal LM that accepts `inputs_embeds`, `cache_position` and
`position_ids`. The caller supplies the prompt's embeddings (e.g. with image patches inserted) and,
where its attention is not causal over the prompt, the prefill's mask; `embed` turns new tokens into
input embeddings where the model does more than a table lookup (it runs inside the graph, so it
must not synchronise with the host); `position_offset` shifts positions (1-indexed models).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import numpy as np
import torch

from refine_core.backbone import AllowedIds, StopRow

CACHE_BUCKET = 256  # cache lengths are rounded up to this, so nearby prompt lengths share one graph


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The KV cache as `model`'s forward takes it: `cache` from transformers 5.24 on (where
    `past_key_values` is deprecated, with a warning, and goes in 5.40), `past_key_values` before."""
    return {_cache_argument(type(model)): cache}


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned, under either name (see `cache_kwargs`)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


class StaticDecoder:
    """One batch size and cache length; `prefill` then `step` per new token.

    The CUDA graph holds the addresses of the model's weights and the cache: `matches` tells a
    caller whether this decoder still fits the model (weights moved, re-wrapped or converted
    invalidate it)."""

    def __init__(self, language_model: Any, batch: int, cache_len: int, graph: bool,
                 embed: Callable[[torch.Tensor], torch.Tensor] | None = None, position_offset: int = 0):
        from transformers import StaticCache

        self.lm, self.embed, self.position_offset = language_model, embed, position_offset
        self.batch, self.cache_len = batch, cache_len
        self.fingerprint = weights_fingerprint(language_model)
        device = next(language_model.parameters()).device
        self.cache = StaticCache(config=full_attention_config(language_model.config, cache_len),
                                 max_cache_len=cache_len)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph, self.logits = None, None
        if graph:
            self._capture()

    def matches(self, language_model: Any, batch: int, needed_len: int) -> bool:
        return (language_model is self.lm and batch == self.batch and needed_len <= self.cache_len
                and weights_fingerprint(language_model) == self.fingerprint)

    def _run_step(self) -> torch.Tensor:
        positions = (self.position + self.position_offset)[None].expand(self.batch, 1)
        inputs = (
            {"input_ids": self.tokens} if self.embed is None else {"inputs_embeds": self.embed(self.tokens)}
        )
        out = self.lm(**inputs, **cache_kwargs(self.lm, self.cache), cache_position=self.position,
                      position_ids=positions, use_cache=True)
        return out.logits[:, -1]

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (allocator, lazy kernels)
            for _ in range(2):
                self._run_step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._run_step()

    def prefill(self, attention_mask: Any = None, **inputs: Any) -> torch.Tensor:
        """Fills the cache with the prompt; returns the logits of its last position [B, V].
        `inputs`: `inputs_embeds`, or what the model merges itself (`input_ids`, `pixel_values`, …);
        `attention_mask`: None (the model's own), or a mask with `cache_len` key columns."""
        self.cache.reset()  # also clears what the capture's warm-up steps wrote
        length = inputs["inputs_embeds" if "inputs_embeds" in inputs else "input_ids"].shape[1]
        slots = torch.arange(length, device=self.position.device)
        positions = (slots + self.position_offset)[None].expand(self.batch, length)
        out = self.lm(**inputs, **cache_kwargs(self.lm, self.cache), cache_position=slots,
                      position_ids=positions, attention_mask=attention_mask, use_cache=True)
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Feeds `tokens` [B] at `position`; returns the next logits [B, V]."""
        self.tokens.copy_(tokens[:, None])
        self.position.fill_(position)
        if self.graph is None:
            return self._run_step()
        self.graph.replay()
        return self.logits.clone()  # the graph overwrites its output buffer on the next replay


def full_attention_config(config: Any, cache_len: int) -> Any:
    """The config the cache is built from: sliding-window layers (Gemma-2) as full ones.

    While every key is within the window the attention is the same, and transformers' sliding
    static layers keep their fill level in a Python int, which a CUDA graph freezes at capture (on
    an H100 their logits were off by 0.05-0.3; with full layers graph and eager agree exactly)."""
    import copy

    window = sliding_window(config)
    if window is None:
        return config
    if cache_len > window:
        raise ValueError(f"a static cache of {cache_len} tokens exceeds the sliding window ({window}); "
                         "decode with the dynamic cache")
    config = copy.deepcopy(config)
    text = config.get_text_config(decoder=True)  # the config itself, or a VLM's language part
    text.layer_types = ["full_attention"] * len(text.layer_types)
    return config


def sliding_window(config: Any) -> int | None:
    """The window of a config (or its language part) with sliding-window layers, else None."""
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None) or []
    return getattr(text, "sliding_window", None) if "sliding_attention" in layer_types else None


def weights_fingerprint(module: Any) -> int:
    """Changes when a parameter is replaced, moved or re-wrapped (peft), not when updated in place."""
    return hash(tuple((name, p.data_ptr(), p.dtype) for name, p in module.named_parameters()))


def choose_decoder(requested: str | None, on_cuda: bool, config: Any, needed_len: int) -> str:
    """The decoder a generation uses: "auto" (or None) is "graph" on CUDA and "dynamic" elsewhere; a
    static one falls back to "dynamic" when its cache would outgrow a sliding window; "graph"
    runs eagerly off CUDA."""
    decoder = requested if requested not in (None, "auto") else ("graph" if on_cuda else "dynamic")
    window = sliding_window(config)
    if decoder != "dynamic" and window is not None and cache_length(needed_len) > window:
        return "dynamic"
    return decoder


def cache_length(needed_len: int) -> int:
    return -(-needed_len // CACHE_BUCKET) * CACHE_BUCKET


def static_decoder(owner: Any, language_model: Any, batch: int, needed_len: int, graph: bool,
                   **options: Any) -> StaticDecoder:
    """The decoder kept on `owner` (one at a time, so its cache memory is bounded), rebuilt when it
    no longer fits the model, the batch or the length. `options` go to StaticDecoder (the same on
    every call from one owner)."""
    current = getattr(owner, "_static_decoder", None)
    if current is not None and current.matches(language_model, batch,
                                               needed_len) and (current.graph is not None) == graph:
        return current
    owner._static_decoder = None  # free the old cache and graph before allocating the new ones
    owner._static_decoder = StaticDecoder(language_model, batch, cache_length(needed_len), graph, **options)
    return owner._static_decoder


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    """(ids [B, L], attention mask [B, L]) of id lists of any lengths, padded on the left so every
    row's last token is at the end (where generation continues)."""
    length = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (length - len(row)) + list(row) for row in rows], device=device)
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows], device=device)
    return ids, mask


def greedy_token(logits, allowed: AllowedIds | None = None, index: int = 0):
    """argmax over the last dimension of `logits` [B, V], restricted to `allowed(index)` when given."""
    ids = allowed(index) if allowed is not None else None
    if ids is None:
        return logits.argmax(-1)
    keep = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=logits.device)
    return keep[logits.index_select(-1, keep).argmax(-1)]


def greedy_decode(first_logits, next_logits: Callable[[Any, int], Any], max_new_tokens: int,
                  eos_token_id: int | None = None, allowed: AllowedIds | None = None,
                  stop: StopRow | None = None):
    """The KV-cached greedy loop backbones with their own models share: `first_logits` [B, V] come
    from the prompt, `next_logits(tokens [B], step)` feeds the previous tokens through the cache.
    Rows that emitted eos keep emitting it; stops when every row has. `stop(row, ids)` (with an
    eos id) ends a row early: it emits eos after the token that made `stop` true (a decoding guard,
    e.g. a repetition detector). Returns (ids [B, n], logits [B, n, V] in fp32)."""
    scores = [first_logits.float()]
    tokens = [greedy_token(scores[-1], allowed, 0)]
    finished = torch.zeros_like(tokens[0], dtype=torch.bool)
    rows: list[list[int]] = [[] for _ in range(tokens[0].shape[0])] if stop is not None else []
    for step in range(1, max_new_tokens):
        if eos_token_id is not None:
            finished |= tokens[-1] == eos_token_id
            if rows:  # the host looks at the ids only when a guard asks to
                for row, token in enumerate(tokens[-1].tolist()):
                    rows[row].append(token)
                    if not finished[row] and stop(row, rows[row]):
                        finished[row] = True
            if bool(finished.all()):
                break
        scores.append(next_logits(tokens[-1], step).float())
        token = greedy_token(scores[-1], allowed, step)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_token_id), token)
        tokens.append(token)
    return torch.stack(tokens, dim=1), torch.stack(scores, dim=1)
