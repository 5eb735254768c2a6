"""Gemma3Backbone: a Gemma-3 vision-language model (SigLIP → pooled projector → Gemma-3, as
VLM2VLA's Gemma-3-12B-IT) as an hf_vlm layout. Loads a local directory or hub id (safetensors), or
builds the `tiny-gemma3` preset.

Prompt: one Gemma-3 chat turn as its processor writes it — bos, `<start_of_turn>user\\n`, the image
(`\\n\\n<start_of_image>` + mm_tokens_per_image soft tokens + `<end_of_image>\\n\\n`), the instruction,
`<end_of_turn>\\n<start_of_turn>model\\n`. The answer (reasoning, actions) is the model turn and ends
with `<end_of_turn>`, which is therefore the eos of training and generation (as Gemma-3-IT stops).
`token_type_ids` mark the image tokens (1), which Gemma-3 attends bidirectionally; the text is causal.
Generation runs transformers' generate (dynamic cache).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from refine_core import AllowedIds, StopRow, TrainingSample, UsageError, left_padded, model_dtype

from .backbone import SIGLIP_MEAN, SIGLIP_STD, HFVLMBackbone

END_OF_TURN = "<end_of_turn>"


class Gemma3Backbone(HFVLMBackbone):
    # Gemma-3's image processor resizes bilinearly (PIL code 2), then SigLIP's 0.5/0.5 normalisation
    resample, pil_resample, image_processor_type = "bilinear", 2, "Gemma3ImageProcessor"

    def __init__(self, options) -> None:
        if options.decoder in ("static", "graph"):
            # the static decoder assumes a plain causal prefill; Gemma-3's bidirectional image blocks
            # over sliding/global layers are left to transformers' own mask code
            raise UsageError(f"backbone.decoder={options.decoder}: hf_vlm's Gemma-3 layout decodes with "
                             "transformers' generate only; use auto or dynamic")
        super().__init__(options)
        config = self.model.config
        self.num_image_tokens = int(config.mm_tokens_per_image)
        self.boi_id, self.eoi_id = int(config.boi_token_id), int(config.eoi_token_id)
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if end is None or end == self.tokenizer.unk_token_id:
            raise UsageError(f"the tokenizer has no {END_OF_TURN} token: not a Gemma-3 chat tokenizer")
        self.end_of_turn_id = int(end)

    # -- construction ---------------------------------------------------------------------------
    def build_preset(self, preset: str) -> None:
        from transformers import Gemma3ForConditionalGeneration

        from .tiny import build_gemma3_config, build_gemma3_tokenizer

        if preset != "tiny-gemma3":
            raise UsageError(f"hf_vlm's Gemma-3 layout has preset tiny-gemma3, not {preset!r}")
        self.tokenizer = build_gemma3_tokenizer()
        config = build_gemma3_config(self.tokenizer)
        if self.options.attn_implementation != "auto":
            config._attn_implementation = self.options.attn_implementation
        self.model = Gemma3ForConditionalGeneration(config).to(model_dtype(self.options.dtype))
        self.image_size = config.vision_config.image_size
        self.image_mean, self.image_std = SIGLIP_MEAN, SIGLIP_STD

    def load(self, path: str) -> None:
        from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

        from .layouts import read_model_config, unsupported

        config = read_model_config(path)
        if config.model_type != "gemma3":
            raise unsupported(path, config.model_type)
        attn = {} if self.options.attn_implementation == "auto" else {
            "attn_implementation": self.options.attn_implementation}
        self.model = Gemma3ForConditionalGeneration.from_pretrained(
            path, dtype=model_dtype(self.options.dtype), **attn)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.read_image_settings(path, config.vision_config)

    # -- data -----------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.end_of_turn_id

    def prompt_ids(self, instruction: str) -> list[int]:
        # Special tokens split the processor's text into independently tokenised pieces, so
        # tokenising the pieces apart gives the processor's ids.
        text = self.reasoning_ids

        image = [self.boi_id] + [self.image_token_id] * self.num_image_tokens + [self.eoi_id]
        return ([int(self.tokenizer.bos_token_id)] + text("<start_of_turn>user\n\n\n") + image
                + text(f"\n\n{instruction.strip()}<end_of_turn>\n<start_of_turn>model\n"))

    def image_types(self, input_ids):
        """Gemma-3's `token_type_ids`: 1 on image soft tokens (one bidirectional block), 0 elsewhere."""
        return (input_ids == self.image_token_id).long()

    def collate(self, samples: Sequence[TrainingSample], order="reason_then_act",
                drop_reasoning: Sequence[bool] | None = None) -> dict[str, Any]:
        batch = super().collate(samples, order, drop_reasoning)
        # the shared collate writes the prefix-LM's types (1 = suffix); Gemma-3 reads 1 as "image"
        batch["token_type_ids"] = self.image_types(batch["input_ids"])
        return batch

    # -- inference ------------------------------------------------------------------------------
    def greedy_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                            prefix_ids: list[list[int]], allowed: AllowedIds | None,
                            stop: StopRow | None) -> list[list[int]]:
        device = self.model.device
        prompts = [self.cached_prompt_ids(instruction) for instruction in instructions]
        ids, mask = left_padded([p + s for p, s in zip(prompts, prefix_ids)], self.pad_id, device)
        pixels = self.image_inputs(images)["pixel_values"].to(device)
        return self._generate_dynamic(ids, mask, self.image_types(ids), pixels, max_new_tokens, allowed, stop)
