"""SpatialVLA (SigLIP + Ego3D depth positions → projector → Gemma-2 with spatial action tokens) on
transformers 5.x.

Module names equal upstream's (`vision_tower`, `multi_modal_projector.linear`, `language_model`
= Gemma2ForCausalLM with tied lm_head, `vision_zoe_model`, `position_embedding_3d`,
`spatial_embed_tokens`), so the official safetensors load strictly and `save_pretrained` writes the
same keys. Behaviour reproduced from upstream `model/modeling_spatialvla.py` (transformers 4.47):
- input embeddings of action ids [begin, begin + spatial_token_num) come from `spatial_embed_tokens`;
- image features = projector(SigLIP features + Ego3D(depth, intrinsic)) / √hidden, then every input
  embedding is multiplied by √hidden (Gemma scales inside its model in 4.x; in 5.x the scaling sits in
  the embedding module, so we apply it to the merged embeddings ourselves);
- positions start at 1 (PaliGemma); prefix-LM attention: with `token_type_ids` the prompt
  (type 0) is visible to every position and the suffix is causal; without them (inference) the
  whole prompt attends bidirectionally, as upstream's non-training mask;
- on load the last `spatial_token_num` rows of the (tied) token embedding are overwritten with
  `spatial_embed_tokens`, as upstream's `from_pretrained` does, so action logits score against them
  (`sync_spatial_embeddings`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refine_core import (AllowedIds, StopRow, cache_kwargs, choose_decoder, greedy_decode, read_state_dict,
                         returned_cache, static_decoder, write_state_dict)

from .config import SpatialVLAConfig
from .depth import (Ego3DPositionEmbedding, backproject_patches, metric_depth, patch_pixel_grid,
    scale_features, zoe_module)

SIGLIP_MEAN = SIGLIP_STD = 0.5


class SpatialVLAMultiModalProjector(nn.Module):
    def __init__(self, vision_hidden: int, projection_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_hidden, projection_dim, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class SiglipTower(nn.Module):
    """Holds transformers 5's SigLIP under `vision_model`, the level upstream's keys have."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import SiglipVisionModel

        self.vision_model = SiglipVisionModel(config)

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        return self.vision_model(pixel_values=pixel_values, **kwargs)


class SpatialVLAForConditionalGeneration(nn.Module):
    # peft asks transformers for weight-conversion rules of every model it adapts, which reads
    # this attribute; our wrapper is not a PreTrainedModel and has no base-model prefix
    base_model_prefix = ""

    def __init__(self, config: SpatialVLAConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import Gemma2ForCausalLM

        self.config = config
        # Gemma-2 soft-caps attention logits, which SDPA cannot do: transformers 5 refuses it, so the
        # language model is always eager; the option picks SigLIP's implementation.
        self.text_config = config.gemma2_config("eager")
        self.vision_tower = SiglipTower(config.siglip_config(attn_implementation))
        self.multi_modal_projector = SpatialVLAMultiModalProjector(config.vision_hidden_size,
                                                                   config.projection_dim)
        self.language_model = Gemma2ForCausalLM(self.text_config)
        if config.use_vision_zoe:
            reso = config.ego3d_patch_reso
            self.vision_zoe_model = zoe_module(config.zoe_config())
            self.position_embedding_3d = Ego3DPositionEmbedding(reso * reso * 3, config.vision_hidden_size,
                                                                config.n_freqs)
            self.register_buffer("uv_h", patch_pixel_grid(config.image_size, config.patch_size, reso),
                                 persistent=False)
        if config.use_spatial_token:
            self.spatial_embed_tokens = nn.Embedding(config.spatial_token_num, config.text_hidden_size)
        self.register_state_dict_post_hook(_drop_tied_head)

    @property
    def device(self) -> torch.device:
        return self.multi_modal_projector.linear.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.multi_modal_projector.linear.weight.dtype

    @property
    def tied(self) -> bool:
        return bool(self.text_config.tie_word_embeddings)

    # -- loading and saving -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None,
                        attn_implementation: str = "sdpa",
                        sync_spatial_embeddings: bool = True) -> "SpatialVLAForConditionalGeneration":
        """Strict load of an upstream-layout directory (config.json + safetensors, sharded or not).

        `sync_spatial_embeddings` copies `spatial_embed_tokens` into the last rows of the tied
        token embedding, as upstream's loader does (so action logits score against the spatial
        embeddings); False keeps the file's rows, e.g. to compare with a model that never went
        through upstream's loader."""
        config = SpatialVLAConfig.from_pretrained(directory)
        state = read_state_dict(directory)
        with torch.device("meta"):  # no random init of billions of parameters that are overwritten
            model = cls(config, attn_implementation)
        if model.tied:
            state.setdefault("language_model.lm_head.weight",
                             state["language_model.model.embed_tokens.weight"])
        model.load_state_dict(state, strict=True, assign=True)
        model._finish_load(sync_spatial_embeddings)
        if dtype is not None:
            model.to(dtype)
        return model.eval()

    def _finish_load(self, sync_spatial_embeddings: bool) -> None:
        from .buffers import rebuild_meta_buffers

        if self.tied:  # assign=True gave lm_head its own Parameter object: share the embedding again
            self.language_model.lm_head.weight = self.language_model.model.embed_tokens.weight
        rebuild_meta_buffers(self)
        if self.config.use_spatial_token and sync_spatial_embeddings:
            with torch.no_grad():
                n = self.config.spatial_token_num
                self.get_input_embeddings().weight[-n:] = self.spatial_embed_tokens.weight

    def save_pretrained(self, directory: str | Path, max_shard_bytes: int = 5 * 1024**3) -> None:
        directory = Path(directory)
        write_state_dict(directory, self.state_dict(), max_shard_bytes)
        self.config.save(directory)
        generation = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": self.config.pad_token_id,
                      "cache_implementation": "hybrid"}
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    # -- embeddings (the Backbone contract resizes them) --------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def resize_token_embeddings(self, size: int) -> nn.Embedding:
        embeddings = self.language_model.resize_token_embeddings(size, mean_resizing=False)
        self.config.text_config["vocab_size"] = self.config.vocab_size = embeddings.num_embeddings
        return embeddings

    # -- forward ------------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor, intrinsic: torch.Tensor | None) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] (not normalised: Zoe and SigLIP normalise themselves) → [B, N, hidden]."""
        pixel_values = pixel_values.to(self.dtype)
        features = self.vision_tower((pixel_values - SIGLIP_MEAN) / SIGLIP_STD).last_hidden_state
        if self.config.use_vision_zoe:
            if intrinsic is None:
                raise ValueError("SpatialVLA with use_vision_zoe needs the camera intrinsic matrix [B, 3, 3]")
            depth = metric_depth(self.vision_zoe_model, pixel_values)
            xyz = backproject_patches(intrinsic.to(self.device), depth, self.uv_h, self.config.patch_size,
                                      self.config.ego3d_patch_reso)
            features = features + self.position_embedding_3d(xyz).to(features.dtype)
        return scale_features(self.multi_modal_projector(features), self.config.text_hidden_size)

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, spatial action tokens from `spatial_embed_tokens`, √hidden-scaled; no
        host synchronisation, so a decode step that calls it can be captured as a CUDA graph."""
        embeds = nn.functional.embedding(input_ids, self.get_input_embeddings().weight)
        if self.config.use_spatial_token:
            begin = self.config.action_token_begin_idx
            spatial = (input_ids >= begin) & (input_ids < begin + self.config.spatial_token_num)
            replaced = self.spatial_embed_tokens((input_ids - begin).clamp(0,
                                                                           self.config.spatial_token_num - 1))
            embeds = torch.where(spatial.unsqueeze(-1), replaced.to(embeds.dtype), embeds)
        return embeds * self._embedding_scale(embeds.dtype)

    def _embedding_scale(self, dtype: torch.dtype) -> torch.Tensor:
        # rounded to the embeddings' dtype first, as Gemma does; a 0-dim CPU tensor is a launch
        # argument, so this stays capturable
        return torch.tensor(math.sqrt(self.config.text_hidden_size), dtype=dtype)

    def input_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                         intrinsic: torch.Tensor | None = None) -> torch.Tensor:
        """Merged, √hidden-scaled input embeddings (what Gemma-2's first block receives)."""
        embeds = self.token_embeddings(input_ids)
        if pixel_values is not None:
            image = input_ids == self.config.image_token_index
            features = self.image_features(pixel_values, intrinsic).to(embeds.dtype)
            if int(image.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(f"{int(image.sum())} image tokens in the text for {features.shape[0]} "
                                 "image(s) of "
                                 f"{features.shape[1]} patches")
            embeds = embeds.masked_scatter(image.unsqueeze(-1),
                                           features * self._embedding_scale(embeds.dtype))
        return embeds

    def attention_bias(self, attention_mask: torch.Tensor | None, token_type_ids: torch.Tensor | None,
                       length: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive [B, 1, T, T] mask: prefix-LM with token types, bidirectional prompt without."""
        device = self.device
        batch = attention_mask.shape[0] if attention_mask is not None else (
            token_type_ids.shape[0] if token_type_ids is not None else 1)
        if token_type_ids is None:
            visible = torch.ones(batch, length, length, dtype=torch.bool, device=device)
        else:
            causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            visible = causal.unsqueeze(0) | (token_type_ids.to(device) == 0).unsqueeze(1)
        if attention_mask is not None:
            visible = visible & attention_mask.to(device).bool().unsqueeze(1)
        bias = torch.zeros(visible.shape, dtype=dtype, device=device)
        return bias.masked_fill_(~visible, torch.finfo(dtype).min).unsqueeze(1)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                intrinsic: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The Gemma-2 causal-LM output over the merged sequence; kwargs go to Gemma2ForCausalLM.
        Left-padded rows (by `attention_mask`) get positions counting their own tokens from 1."""
        embeds = self.input_embeddings(input_ids, pixel_values, intrinsic)
        length = input_ids.shape[1]
        bias = self.attention_bias(attention_mask, token_type_ids, length, embeds.dtype)
        if attention_mask is None:
            positions = torch.arange(1, length + 1, device=self.device).unsqueeze(0)
        else:
            positions = padded_positions(attention_mask.to(self.device))
        return self.language_model(inputs_embeds=embeds, position_ids=positions,
                                   attention_mask={"full_attention": bias, "sliding_attention": bias},
                                   **kwargs)

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, intrinsic: torch.Tensor | None,
                 max_new_tokens: int, eos_token_id: int | None = None,
                 token_type_ids: torch.Tensor | None = None, allowed: AllowedIds | None = None,
                 decoder: str | None = None, return_scores: bool = False, stop: StopRow | None = None,
                 attention_mask: torch.Tensor | None = None):
        """Greedy decoding with a KV cache. Returns the new ids [B, n] (and their logits [B, n, V]);
        `allowed(i)` restricts the i-th new token (constrained action decoding), `stop(row, ids)`
        ends a row early. Rows may be left-padded (`attention_mask` 0 on the pads, which may sit
        before the image placeholders): each row keeps its own positions and prefix-LM mask, so it
        gets the logits it has alone. `decoder` as OpenVLA's: "dynamic", "static" or "graph"
        (default on CUDA); padded rows, and a cache longer than Gemma-2's sliding window, take the
        dynamic one."""
        length = input_ids.shape[1]
        padded = attention_mask is not None and not bool(attention_mask.all())
        decoder = choose_decoder(decoder, input_ids.is_cuda, self.language_model.config,
                                 length + max_new_tokens)
        if decoder == "dynamic" or padded:
            mask = attention_mask.to(self.device) if padded else None
            out = self.forward(input_ids, pixel_values, intrinsic, attention_mask=mask,
                               token_type_ids=token_type_ids, use_cache=True)
            state = {"cache": returned_cache(out), "mask": mask}
            first = out.logits[:, -1]
            # 1-indexed: a row's n tokens sit at 1..n, its first new one at n + 1
            count = mask.sum(-1, keepdim=True) if padded else length

            def next_logits(tokens: torch.Tensor, step: int) -> torch.Tensor:
                positions = torch.zeros_like(tokens[:, None]) + (count + step)
                if state["mask"] is not None:  # 2D: transformers derives the full and sliding-window masks
                    state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(tokens), 1)], dim=1)
                cache = cache_kwargs(self.language_model, state["cache"])
                step_out = self.language_model(inputs_embeds=self.token_embeddings(tokens[:, None]), **cache,
                                               use_cache=True,
                                               attention_mask=state["mask"], position_ids=positions)
                state["cache"] = returned_cache(step_out)
                return step_out.logits[:, -1]
        else:
            embeds = self.input_embeddings(input_ids, pixel_values, intrinsic)
            cached = static_decoder(self, self.language_model, embeds.shape[0], length + max_new_tokens,
                                    graph=decoder == "graph" and input_ids.is_cuda,
                                    embed=self.token_embeddings,
                                    position_offset=1)
            bias = self.attention_bias(None, token_type_ids, length,
                                       embeds.dtype)  # the prompt's prefix-LM mask
            bias = nn.functional.pad(bias, (0, cached.cache_len - length), value=torch.finfo(bias.dtype).min)
            first = cached.prefill({"full_attention": bias, "sliding_attention": bias}, inputs_embeds=embeds)

            def next_logits(tokens: torch.Tensor, step: int) -> torch.Tensor:
                return cached.step(tokens, length + step - 1)

        ids, scores = greedy_decode(first, next_logits, max_new_tokens, eos_token_id, allowed, stop)
        return (ids, scores) if return_scores else ids


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """PaliGemma positions (1-indexed) counting each row's own tokens: left padding shifts a row's
    positions back to 1; unpadded and right-padded rows (training batches) keep 1, 2, 3…"""
    lead = (attention_mask.cumsum(-1) == 0).sum(-1, keepdim=True)
    slots = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (slots - lead).clamp(min=0) + 1


def _drop_tied_head(module, state, prefix, local_metadata):
    """The tied lm_head is the embedding: upstream's checkpoint has no such key, nor do we write one."""
    if module.tied:
        state.pop(prefix + "language_model.lm_head.weight", None)
