"""QwenVLBackbone: a Qwen2.5-VL vision-language model (a windowed ViT over 2x2-merged patches → Qwen2
language model with multimodal rotary positions) as an hf_vlm layout; Qwen3VLBackbone the same for
Qwen3-VL. Loads a local directory or hub id (safetensors), or builds the `tiny-qwen2_5_vl` /
`tiny-qwen3_vl` preset.

Prompt: what Qwen-VL's chat template and processor write for one user turn holding an image, then the
text — `<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n` (Qwen2.5-VL's template adds
this system turn when none is given; Qwen3-VL's does not), `<|im_start|>user\\n<|vision_start|>` +
image pads + `<|vision_end|>`, the instruction, `<|im_end|>\\n<|im_start|>assistant\\n`. The answer
is the assistant turn and ends with `<|im_end|>`, the eos of training and generation.

Images: every frame is resized to one fixed square (a multiple of patch_size × spatial_merge_size), so
each sample has the same number of image tokens, t·h·w / merge² with t = 1. The pixels are flattened
into patches as Qwen2-VL's image processor does (a still frame fills both temporal slots of a patch):
`pixel_values` [frames · h · w, 3 · 2 · p · p] with `image_grid_thw` [frames, 3]. The language model is
causal throughout; `mm_token_type_ids` (1 on image pads) let the model place the image tokens' 3-D
rotary positions, in training and in generate. Generation runs transformers' generate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refine_core import (AllowedIds, Backbone, StopRow, TrainingSample, UsageError, left_padded, model_dtype,
    to_pixel_values)

from .backbone import HFVLMBackbone

END_OF_TURN = "<|im_end|>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2-VL's image processor defaults (OpenAI CLIP's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_SIDE = 224  # a frame's fixed side when the checkpoint's pixel limits allow it: 64 tokens at 14-px


def fixed_side(min_pixels: int, max_pixels: int, factor: int, wanted: int = DEFAULT_SIDE) -> int:
    """The multiple of `factor` nearest `wanted` whose square lies within the processor's pixel limits
    (integer arithmetic: min = max = S² of a saved model gives S back exactly)."""
    low = math.isqrt(max(min_pixels, 1) - 1) + 1  # ceil(sqrt(min_pixels))
    low = -(-low // factor) * factor
    high = max(factor, math.isqrt(max_pixels) // factor * factor)
    return min(max(round(wanted / factor) * factor, low), high)


class QwenVLBackbone(HFVLMBackbone):
    model_type = "qwen2_5_vl"
    model_class, processor_class = "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"
    system_prompt = "You are a helpful assistant."  # Qwen2.5-VL's template adds it when none is given
    default_mean, default_std = CLIP_MEAN, CLIP_STD
    vision_parts = ("patch_embed", "blocks")  # the ViT; its patch merger is the projector, which trains

    def __init__(self, options) -> None:
        if options.decoder in ("static", "graph"):
            # the static decoder feeds 1-D positions; Qwen's image tokens need the model's 3-D ones
            raise UsageError(f"backbone.decoder={options.decoder}: hf_vlm's Qwen-VL layout decodes with "
                             "transformers' generate only; use auto or dynamic")
        # HFVLMBackbone.__init__ counts SigLIP patches from vision_config.image_size, which Qwen's lacks
        Backbone.__init__(self, options)
        config = self.model.config
        self.image_token_id = int(config.image_token_id)
        config.use_cache = False
        self.num_image_tokens = (self.image_size // (self.patch_size * self.merge_size)) ** 2
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if end is None or end == self.tokenizer.unk_token_id:
            raise UsageError(f"the tokenizer has no {END_OF_TURN} token: not a Qwen chat tokenizer")
        self.end_of_turn_id = int(end)

    # -- construction ---------------------------------------------------------------------------
    def build_preset(self, preset: str) -> None:
        import transformers

        from . import tiny

        if preset != f"tiny-{self.model_type}":
            raise UsageError(f"hf_vlm's {self.model_type} layout has preset tiny-{self.model_type}, "
                             f"not {preset!r}")
        self.tokenizer = tiny.build_qwen_tokenizer()
        config = getattr(tiny, f"build_{self.model_type}_config")(self.tokenizer)
        if self.options.attn_implementation != "auto":
            config._attn_implementation = self.options.attn_implementation
        self.model = getattr(transformers, self.model_class)(config).to(model_dtype(self.options.dtype))
        self.set_patching(config.vision_config)
        self.image_size = tiny.QWEN_IMAGE_SIZE
        self.image_mean, self.image_std = self.default_mean, self.default_std

    def load(self, path: str) -> None:
        import transformers
        from transformers import AutoTokenizer

        from .layouts import read_model_config, unsupported

        config = read_model_config(path)
        if config.model_type != self.model_type:
            raise unsupported(path, config.model_type)
        attn = {} if self.options.attn_implementation == "auto" else {
            "attn_implementation": self.options.attn_implementation}
        self.model = getattr(transformers, self.model_class).from_pretrained(
            path, dtype=model_dtype(self.options.dtype), **attn)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.read_image_settings(path, config.vision_config)

    def set_patching(self, vision) -> None:
        self.patch_size, self.merge_size = int(vision.patch_size), int(vision.spatial_merge_size)
        self.temporal_patch_size = int(vision.temporal_patch_size)

    def read_image_settings(self, path: str, vision) -> None:
        """The checkpoint's preprocessor_config.json (Qwen2VLImageProcessor's keys): normalisation,
        and the fixed side from its pixel limits (min_pixels/max_pixels or size's edges)."""
        self.set_patching(vision)
        preprocessor = Path(path) / "preprocessor_config.json"
        spec = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
        self.image_mean = tuple(spec.get("image_mean", self.default_mean))
        self.image_std = tuple(spec.get("image_std", self.default_std))
        size = spec.get("size") if isinstance(spec.get("size"), dict) else {}
        low = int(spec.get("min_pixels", size.get("shortest_edge", 56 * 56)))
        high = int(spec.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)))
        self.image_size = fixed_side(low, high, self.patch_size * self.merge_size)

    # -- data -----------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.end_of_turn_id

    def prompt_ids(self, instruction: str) -> list[int]:
        # Special tokens split the processor's text into independently tokenised pieces, so
        # tokenising the pieces apart gives the processor's ids.
        text = self.reasoning_ids

        system = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n" if self.system_prompt else ""
        image = [self.image_token_id] * self.num_image_tokens
        return (text(f"{system}<|im_start|>user\n<|vision_start|>") + image
                + text(f"<|vision_end|>{instruction.strip()}<|im_end|>\n<|im_start|>assistant\n"))

    def image_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Qwen's `mm_token_type_ids`: 1 on image pads, 0 on text and padding."""
        return (input_ids == self.image_token_id).long()

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, C, S, S] → [N · gh · gw, C · T · p · p]: patches in merge-window order (each 2x2 window's
        patches adjacent, windows row-major), each patch's frame repeated over the T temporal slots."""
        n, c, height, width = pixels.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = height // p, width // p
        grid = pixels.reshape(n, c, gh // m, m, p, gw // m, m, p)
        grid = grid.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, window row, window col, row in, col in, c, py, px
        grid = grid.unsqueeze(6).expand(*grid.shape[:6], t, p, p)
        return grid.reshape(n * gh * gw, c * t * p * p)

    def image_inputs(self, frames: Sequence[np.ndarray]) -> dict[str, Any]:
        pixels = to_pixel_values(frames, self.image_size, self.image_mean, self.image_std, resample="bicubic")
        side = self.image_size // self.patch_size
        return {"pixel_values": self.patchify(pixels).to(self.model.dtype),
                "image_grid_thw": torch.tensor([[1, side, side]] * len(frames), dtype=torch.long)}

    def collate(self, samples: Sequence[TrainingSample], order="reason_then_act",
                drop_reasoning: Sequence[bool] | None = None) -> dict[str, Any]:
        batch = super().collate(samples, order, drop_reasoning)
        del batch["token_type_ids"]  # the prefix-LM's marker: Qwen is causal and takes none
        batch["mm_token_type_ids"] = self.image_types(batch["input_ids"])
        return batch

    # -- model ----------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        device = self.model.device
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
        inputs = {k: batch[k].to(device) for k in keys if k in batch}
        if "mm_token_type_ids" not in inputs:  # without them the model falls back to 1-D positions
            inputs["mm_token_type_ids"] = self.image_types(inputs["input_ids"])
        return inputs

    def vision_modules(self) -> list[tuple[str, torch.nn.Module]]:
        visual = self.model.model.visual
        return [(f"model.visual.{part}", getattr(visual, part)) for part in self.vision_parts]

    # -- inference ------------------------------------------------------------------------------
    def greedy_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                            prefix_ids: list[list[int]], allowed: AllowedIds | None,
                            stop: StopRow | None) -> list[list[int]]:
        device = self.model.device
        prompts = [self.cached_prompt_ids(instruction) for instruction in instructions]
        ids, mask = left_padded([p + s for p, s in zip(prompts, prefix_ids)], self.pad_id, device)
        inputs = {k: v.to(device) for k, v in self.image_inputs(images).items()}
        pixels = inputs.pop("pixel_values")
        return self._generate_dynamic(ids, mask, None, pixels, max_new_tokens, allowed, stop,
                                      extra_inputs={**inputs, "mm_token_type_ids": self.image_types(ids)})

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        pixels = self.image_size ** 2  # min = max: the processor keeps a square frame of this side as is
        (directory / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": self.processor_class,
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "size": {"shortest_edge": pixels, "longest_edge": pixels}, "min_pixels": pixels,
            "max_pixels": pixels, "patch_size": self.patch_size, "merge_size": self.merge_size,
            "temporal_patch_size": self.temporal_patch_size, "do_resize": True, "resample": 3,
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        }, indent=2))


class Qwen3VLBackbone(QwenVLBackbone):
    """Qwen3-VL: the same inputs and prompt, less the default system turn; its processor normalises with
    0.5/0.5, and its ViT adds learned position embeddings (vision) and DeepStack mergers (projectors)."""
    model_type = "qwen3_vl"
    model_class, processor_class = "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"
    system_prompt = None
    default_mean = default_std = (0.5, 0.5, 0.5)
    vision_parts = ("patch_embed", "pos_embed", "blocks")
