"""HFVLMBackbone: a PaliGemma-layout transformers model (SigLIP → projector → Gemma/Gemma-2) as a
refine backbone. Loads a local directory or hub id (safetensors), or builds the `tiny` preset.

Prompt (PaliGemma's): image tokens × num_patches, bos, lower-cased instruction, "\\n"; the suffix
(reasoning, action tokens, eos) is the prefix-LM's causal part (`token_type_ids` = 1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refine_core import (AllowedIds, Backbone, PaliGemmaPrompt, StopRow, UsageError, choose_decoder,
    greedy_decode, left_padded, model_dtype, static_decoder, to_pixel_values)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass
class Sampling:
    """How `_generate_dynamic` draws tokens instead of taking the argmax (`Backbone.sample_ids_batch`)."""

    temperature: float
    top_p: float
    seeds: list[int]  # one per row


def _row_sampler(sampling: Sampling, device):
    """A logits processor that draws each row's token from that row's own seeded generator and leaves
    only it possible (greedy generate then takes it). transformers' own sampling draws the whole
    batch from torch's global RNG, so a row's tokens would depend on the rows beside it."""
    from transformers import LogitsProcessor

    generators = [torch.Generator(device=device).manual_seed(seed) for seed in sampling.seeds]

    class RowSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            probs = torch.softmax(scores.float() / sampling.temperature, dim=-1)
            ranked, order = torch.sort(probs, dim=-1, descending=True, stable=True)
            # the nucleus: the most likely tokens until their mass reaches top_p (the first always kept)
            ranked = ranked.masked_fill(ranked.cumsum(-1) - ranked >= sampling.top_p, 0.0)
            out = torch.full_like(scores, float("-inf"))
            for row, generator in enumerate(generators):
                pick = torch.multinomial(ranked[row], 1, generator=generator)
                out[row, order[row, pick]] = 0.0
            return out

    return RowSampler()


class HFVLMBackbone(PaliGemmaPrompt, Backbone):
    name = "hf_vlm"
    # how frames are resized, and what save() writes as the image processor (PIL's resample codes)
    resample, pil_resample, image_processor_type = "bicubic", 3, "SiglipImageProcessor"
    _sampling: Sampling | None = None  # set while `sampled_continuation` runs a layout's continuation

    def __init__(self, options) -> None:
        super().__init__(options)
        vision = self.model.config.vision_config
        self.num_image_tokens = (vision.image_size // vision.patch_size) ** 2
        self.image_token_id = int(self.model.config.image_token_id)
        self.model.config.use_cache = False

    # -- construction ---------------------------------------------------------------------------
    def build_preset(self, preset: str) -> None:
        from transformers import PaliGemmaForConditionalGeneration

        from .tiny import build_config, build_tokenizer

        self.tokenizer = build_tokenizer()
        config = build_config(len(self.tokenizer), self.tokenizer.convert_tokens_to_ids("<image>"))
        self._check_attention(config)
        if self.options.attn_implementation != "auto":
            config._attn_implementation = self.options.attn_implementation
        self.model = PaliGemmaForConditionalGeneration(config).to(model_dtype(self.options.dtype))
        vision = config.vision_config
        self.image_size, self.image_mean, self.image_std = vision.image_size, SIGLIP_MEAN, SIGLIP_STD

    def _check_attention(self, config) -> None:
        """transformers 5 refuses SDPA for Gemma-2's soft-capped attention (PaliGemma 2) with a traceback."""
        text = getattr(config, "text_config", None)
        if self.options.attn_implementation == "sdpa" and getattr(text, "model_type", None) == "gemma2":
            raise UsageError("backbone.attn_implementation=sdpa: this model's Gemma-2 language model runs "
                             "eager "
                             "attention only (transformers has no SDPA path for it); use auto or eager")

    def load(self, path: str) -> None:
        from transformers import AutoTokenizer, PaliGemmaForConditionalGeneration

        from .layouts import read_model_config, unsupported

        config = read_model_config(path)
        if config.model_type != "paligemma":
            raise unsupported(path, config.model_type)
        self._check_attention(config)
        attn = {} if self.options.attn_implementation == "auto" else {
            "attn_implementation": self.options.attn_implementation}
        self.model = PaliGemmaForConditionalGeneration.from_pretrained(path,
                                                                       dtype=model_dtype(self.options.dtype),
                                                                       **attn)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.read_image_settings(path, config.vision_config)

    def read_image_settings(self, path: str, vision) -> None:
        """SigLIP's normalisation at the vision tower's size, unless the checkpoint's
        preprocessor_config.json says otherwise."""
        self.image_size, self.image_mean, self.image_std = vision.image_size, SIGLIP_MEAN, SIGLIP_STD
        preprocessor = Path(path) / "preprocessor_config.json"
        if preprocessor.is_file():
            spec = json.loads(preprocessor.read_text())
            self.image_mean = tuple(spec.get("image_mean", self.image_mean))
            self.image_std = tuple(spec.get("image_std", self.image_std))
            size = spec.get("size", {})
            self.image_size = int(size.get("height", self.image_size)) if isinstance(size,
                                                                                     dict) else int(size)

    # -- data -----------------------------------------------------------------------------------
    def image_inputs(self, frames: Sequence[np.ndarray]) -> dict[str, Any]:
        pixels = to_pixel_values(frames, self.image_size, self.image_mean, self.image_std,
                                 resample=self.resample)
        return {"pixel_values": pixels.to(self.model.dtype)}

    # -- model ----------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.model.device
        keys = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
        return {k: batch[k].to(device) for k in keys if k in batch}

    def forward(self, batch: dict[str, Any], output_attentions: bool = False) -> Any:
        out = self.model(**self._inputs(batch), use_cache=False, output_attentions=output_attentions)
        return out if output_attentions else out.logits

    def blocks(self) -> list[tuple[str, torch.nn.Module]]:
        layers = self.model.model.language_model.layers
        return [(f"model.language_model.layers.{i}", layer) for i, layer in enumerate(layers)]

    def vision_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [("model.vision_tower", self.model.model.vision_tower)]

    def embedding_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [("model.language_model.embed_tokens", self.model.model.language_model.embed_tokens)]

    def lora_targets(self) -> list[str]:
        # every linear of the language model (attention and MLP), as VLM2VLA's "all linear layers"
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    # -- inference ------------------------------------------------------------------------------
    def greedy_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                            prefix_ids: list[list[int]], allowed: AllowedIds | None,
                            stop: StopRow | None) -> list[list[int]]:
        device = self.model.device
        prompts = [self.prompt_ids(instruction) for instruction in instructions]
        ids, mask = left_padded([p + s for p, s in zip(prompts, prefix_ids)], self.pad_id, device)
        # token type 0 on the prompt (the prefix-LM's bidirectional part) and on padding, 1 on the suffix
        token_types = left_padded([[0] * len(p) + [1] * len(s) for p, s in zip(prompts, prefix_ids)], 0,
                                  device)[0]
        pixels = self.image_inputs(images)["pixel_values"].to(device)
        decoder = choose_decoder(self.options.decoder, device.type == "cuda", self.model.config,
                                 ids.shape[1] + max_new_tokens)
        if decoder == "dynamic" or not bool(mask.all()) or self._sampling is not None:
            # the static cache takes unpadded rows and decodes greedily
            return self._generate_dynamic(ids, mask, token_types, pixels, max_new_tokens, allowed, stop)
        cached = static_decoder(self.model, self.model, len(images), ids.shape[1] + max_new_tokens,
                                graph=decoder == "graph" and device.type == "cuda", position_offset=1)
        # PaliGemma merges the image and masks the prefix itself
        first = cached.prefill(input_ids=ids, pixel_values=pixels, token_type_ids=token_types)
        length = ids.shape[1]
        return greedy_decode(first, lambda tokens, step: cached.step(tokens, length + step - 1),
                             max_new_tokens, self.eos_id, allowed, stop)[0].tolist()

    def sampled_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                             temperature: float, top_p: float, seeds: list[int]) -> list[list[int]]:
        # every layout's own continuation (its prompt and inputs) ends in `_generate_dynamic`, which
        # samples while `_sampling` is set
        self._sampling = Sampling(temperature, top_p, seeds)
        try:
            return self.greedy_continuation(images, instructions, max_new_tokens, [[] for _ in images],
                                            None, None)
        finally:
            self._sampling = None

    def _generate_dynamic(self, ids, mask, token_types, pixels, max_new_tokens: int,
                          allowed: AllowedIds | None,
                          stop: StopRow | None, extra_inputs: dict | None = None,
                          sampling: Sampling | None = None) -> list[list[int]]:
        """transformers' generate (dynamic cache, left-padded rows); `allowed` through
        prefix_allowed_tokens_fn, `stop` as a stopping criterion (a stopped row is filled with eos).
        `token_types` None passes none; `extra_inputs` are further model inputs (Qwen's image_grid_thw).
        `sampling` (default: the one `sampled_continuation` set, else greedy) draws each token."""
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        start = ids.shape[1]
        constraint = None
        if allowed is not None:
            every = list(range(self.model.get_output_embeddings().out_features))

            def constraint(batch_id: int, sequence: torch.Tensor) -> list[int]:
                chosen = allowed(sequence.shape[-1] - start)
                return every if chosen is None else [int(i) for i in chosen]

        criteria = None
        if stop is not None:
            class Guard(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.tensor([stop(row,
                                              seq[start:].tolist()) for row, seq in enumerate(input_ids)],
                                        dtype=torch.bool, device=input_ids.device)
            criteria = StoppingCriteriaList([Guard()])
        sampling = sampling or self._sampling
        processors = LogitsProcessorList([_row_sampler(sampling, ids.device)]) if sampling else None
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, pixel_values=pixels, **(extra_inputs or {}),
            **({} if token_types is None else {"token_type_ids": token_types}),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos_id,
            pad_token_id=self.eos_id,  # what finished rows are filled with: cut there
            use_cache=True, prefix_allowed_tokens_fn=constraint, stopping_criteria=criteria,
            logits_processor=processors)
        return out[:, start:].tolist()

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": self.image_processor_type, "image_mean": list(self.image_mean),
            "image_std": list(self.image_std), "size": {"height": self.image_size, "width": self.image_size},
            "do_normalize": True, "do_rescale": True, "rescale_factor": 1 / 255,
            "resample": self.pil_resample,
        }, indent=2))
