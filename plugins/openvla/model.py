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

from refine_core import AllowedIds, StopRow, choose_decoder, greedy_decode, static_decoder, write_state_dict
from refine_core import read_state_dict as read_weights

from .config import OpenVLAConfig
from .vision import PrismaticProjector, PrismaticVisionBackbone


def upstream_key(key: str) -> str:
    """Checkpoint key → ours. A timm-style export names LayerScale `gamma`; upstream and we use
    `scale_factor`, so both spellings load."""
    if key.startswith("vision_backbone.") and (key.endswith(".ls1.gamma") or key.endswith(".ls2.gamma")):
        return key[: -len("gamma")] + "scale_factor"
    return key


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
        """Token embeddings with the projected patches inserted after BOS (position 0)."""
        embeds = self.get_input_embeddings()(input_ids)
        patches = self.project_patches(pixel_values)
        embeds = torch.cat([embeds[:, :1], patches, embeds[:, 1:]], dim=1)
        if attention_mask is not None:
            ones = attention_mask.new_ones(attention_mask.shape[0], patches.shape[1])
            attention_mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        return embeds, attention_mask

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The language model's output over [BOS, patches…, rest of the prompt] (or text only
        when `pixel_values` is None); kwargs go to LlamaForCausalLM (cache, attentions…)."""
        if pixel_values is None:
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        embeds, attention_mask = self.multimodal_inputs(input_ids, pixel_values, attention_mask)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    # -- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
                 return_scores: bool = False, allowed: AllowedIds | None = None,
                 decoder: str | None = None,
                 stop: StopRow | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding with a KV cache. Returns the new ids [B, n] (and their logits [B, n, V]).

        The prompt must be unpadded: patches go after position 0, which must be BOS in every row.
        Cached steps get explicit positions that count the inserted patch tokens; `allowed(i)`
        restricts the i-th new token (constrained action decoding). `decoder`: "dynamic"
        (transformers' DynamicCache), "static" (a preallocated cache, refine_core.toolkit.decoding) or
        "graph" (static, each step replayed as a CUDA graph on CUDA); default graph on CUDA, else dynamic."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("OpenVLA generation takes unpadded prompts (BOS first in every row)")
        decoder = choose_decoder(decoder, input_ids.is_cuda, self.language_model.config,
                                 input_ids.shape[1] + self.num_patches + max_new_tokens)
        if decoder == "dynamic":
            out = self.forward(input_ids, pixel_values, use_cache=True)
            state = {"cache": out.past_key_values}
            first, length = out.logits[:, -1], out.logits.shape[1]  # prompt + patches

            def next_logits(tokens: torch.Tensor, step: int) -> torch.Tensor:
                positions = torch.full_like(tokens[:, None], length + step - 1)
                step_out = self.language_model(input_ids=tokens[:, None], past_key_values=state["cache"],
                                               use_cache=True, position_ids=positions)
                state["cache"] = step_out.past_key_values
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
