"""OpenVLA (Prismatic DINOv2 + SigLIP → fused MLP projector → Llama-2) on transformers 5.x.

Module names equal upstream's (`vision_backbone.featurizer`, `vision_backbone.fused_featurizer`,
`projector.fc{1,2,3}`, `language_model` = LlamaForCausalLM), so the official `model.safetensors`
(single file or sharded with an index) loads strictly and `save_pretrained` writes the same keys.
The projected patch embeddings are inserted right after BOS, as upstream does.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refine_core import (AllowedIds, StopRow, cache_kwargs, choose_decoder, greedy_decode, returned_cache,
                         static_decoder, write_state_dict)
from refine_core import read_state_dict as read_weights

from .config import OpenVLAConfig
from .vision import PrismaticProjector, PrismaticVisionBackbone


def upstream_key(key: str) -> str:
    """Checkpoint key → ours. A timm-style export names LayerScale `gamma`; upstream and we use
    `scale_factor`, so both spellings load."""
    if key.startswith("vision_backbone.") and (key.endswith(".ls1.gamma") or key.endswith(".ls2.gamma")):
        return key[: -len("gamma")] + "scale_factor"
    return key


def leading_pads(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, 1]: how many masked-out slots precede each row's first token (0 unless left-padded)."""
    return (attention_mask.cumsum(-1) == 0).sum(-1, keepdim=True)


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Llama positions (0-based) counting each row's own tokens: left padding shifts a row's
    positions back to 0; unpadded and right-padded rows (training batches) keep 0, 1, 2…"""
    slots = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (slots - leading_pads(attention_mask)).clamp(min=0)


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    return read_weights(directory, rename=upstream_key)


class OpenVLAForActionPrediction(nn.Module):
    # peft asks transformers for weight-conversion rules of every model it adapts, which reads
    # this attribute; our wrapper is not a PreTrainedModel and has no base-model prefix
    base_model_prefix = ""

    def __init__(self, config: OpenVLAConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.llama_config = config.llama_config(attn_implementation)
        self.vision_backbone = PrismaticVisionBackbone(config.tower_arch(0), config.tower_arch(1))
        self.projector = PrismaticProjector(self.vision_backbone.embed_dim, self.llama_config.hidden_size)
        self.language_model = LlamaForCausalLM(self.llama_config)

    @property
    def num_patches(self) -> int:
        return self.vision_backbone.num_patches

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    # -- loading and saving ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None,
                        attn_implementation: str = "sdpa") -> "OpenVLAForActionPrediction":
        """Strict load of an upstream-layout directory (config.json + safetensors)."""
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        config = OpenVLAConfig.from_pretrained(directory)
        with torch.device("meta"):  # no random init of billions of parameters that are overwritten
            model = cls(config, attn_implementation)
        model.load_state_dict(read_state_dict(directory), strict=True, assign=True)
        # The rotary frequencies are a non-persistent buffer: not in the file, so rebuild them.
        model.language_model.model.rotary_emb = LlamaRotaryEmbedding(config=model.llama_config)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int = 5 * 1024**3) -> None:
        """config.json + model.safetensors (sharded with an index past `max_shard_bytes`), upstream names."""
        directory = Path(directory)
        write_state_dict(directory, self.state_dict(), max_shard_bytes)
        self.config.save(directory)
        generation = {"bos_token_id": self.llama_config.bos_token_id,
                      "eos_token_id": self.llama_config.eos_token_id,
                      "pad_token_id": self.config.pad_token_id}
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    # -- embeddings (the Backbone contract resizes them) ------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def resize_token_embeddings(self, size: int) -> nn.Embedding:
        embeddings = self.language_model.resize_token_embeddings(size)
        self.config.text_config["vocab_size"] = embeddings.num_embeddings
        return embeddings

    # -- forward ------------------------------------------------------------------------------------
    def project_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision_backbone(pixel_values.to(self.dtype)))

    def multimodal_inputs(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings with the projected patches inserted after each row's BOS: its first
        attended token (position 0 unless the row is left-padded, then the pads stay in front)."""
        embeds = self.get_input_embeddings()(input_ids)
        patches = self.project_patches(pixel_values)
        dtype = torch.promote_types(embeds.dtype, patches.dtype)  # what torch.cat gives (under autocast)
        embeds, patches = embeds.to(dtype), patches.to(dtype)
        batch, length, n = input_ids.shape[0], input_ids.shape[1], patches.shape[1]
        lead = leading_pads(attention_mask) if attention_mask is not None else input_ids.new_zeros(batch, 1)
        # a gather rather than per-row slicing: slot j of the merged row takes token j up to BOS, then
        # patch k (at length + k of the concatenation), then token j - n
        slot = torch.arange(length + n, device=input_ids.device).expand(batch, -1)
        after_bos = torch.where(slot <= lead + n, slot - lead - 1 + length, slot - n)
        source = torch.where(slot <= lead, slot, after_bos)
        merged = torch.cat([embeds, patches], dim=1)
        embeds = merged.gather(1, source.unsqueeze(-1).expand(-1, -1, merged.shape[-1]))
        if attention_mask is not None:
            ones = attention_mask.new_ones(batch, n)
            attention_mask = torch.cat([attention_mask, ones], dim=1).gather(1, source)
        return embeds, attention_mask

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The language model's output over [BOS, patches…, rest of the prompt] (or text only
        when `pixel_values` is None); kwargs go to LlamaForCausalLM (cache, attentions…).
        Left-padded rows (by `attention_mask`) get positions counting their own tokens from 0."""
        if pixel_values is None:
            inputs = {"input_ids": input_ids}
        else:
            embeds, attention_mask = self.multimodal_inputs(input_ids, pixel_values, attention_mask)
            inputs = {"inputs_embeds": embeds}
        if attention_mask is not None and "position_ids" not in kwargs:
            kwargs["position_ids"] = padded_positions(attention_mask)
        return self.language_model(**inputs, attention_mask=attention_mask, **kwargs)

    # -- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                 return_scores: bool = False, allowed: AllowedIds | None = None,
                 decoder: str | None = None,
                 stop: StopRow | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding with a KV cache. Returns the new ids [B, n] (and their logits [B, n, V]).

        Rows may be left-padded (`attention_mask` 0 on the pads; each row starts with BOS): the
        patches go after each row's BOS and positions count each row's own tokens, so every row
        gets the logits it has alone. Cached steps get explicit positions that count the inserted
        patch tokens; `allowed(i)` restricts the i-th new token (constrained action decoding),
        `stop(row, ids)` ends a row early. `decoder`: "dynamic" (transformers' DynamicCache),
        "static" (a preallocated cache, refine_core.toolkit.decoding) or "graph" (static, each step
        replayed as a CUDA graph on CUDA); default graph on CUDA, else dynamic. Padded rows always
        take the dynamic cache: the static decoder feeds one position to every row."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        decoder = choose_decoder(decoder, input_ids.is_cuda, self.language_model.config,
                                 input_ids.shape[1] + self.num_patches + max_new_tokens)
        if decoder == "dynamic" or padded:
            # unpadded rows keep transformers' own causal mask and positions (as upstream)
            embeds, mask = self.multimodal_inputs(input_ids, pixel_values, attention_mask if padded else None)
            positions = padded_positions(mask) if padded else None
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                      use_cache=True)
            state = {"cache": returned_cache(out), "mask": mask}
            first = out.logits[:, -1]
            # each row's next position is the number of its own tokens (patches included)
            length = mask.sum(-1, keepdim=True) if padded else embeds.shape[1]

            def next_logits(tokens: torch.Tensor, step: int) -> torch.Tensor:
                positions = torch.zeros_like(tokens[:, None]) + (length + step - 1)
                if state["mask"] is not None:  # the new token is a real one in every row
                    state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(tokens), 1)], dim=1)
                cache = cache_kwargs(self.language_model, state["cache"])
                step_out = self.language_model(input_ids=tokens[:, None], **cache,
                                               attention_mask=state["mask"], use_cache=True,
                                               position_ids=positions)
                state["cache"] = returned_cache(step_out)
                return step_out.logits[:, -1]
        else:
            embeds, _ = self.multimodal_inputs(input_ids, pixel_values)
            length = embeds.shape[1]
            cached = static_decoder(self, self.language_model, embeds.shape[0], length + max_new_tokens,
                                    graph=decoder == "graph" and input_ids.is_cuda)
            first = cached.prefill(inputs_embeds=embeds)

            def next_logits(tokens: torch.Tensor, step: int) -> torch.Tensor:
                return cached.step(tokens, length + step - 1)

        ids, scores = greedy_decode(first, next_logits, max_new_tokens, eos_token_id, allowed, stop)
        return (ids, scores) if return_scores else ids
