"""SpatialVLABackbone: SpatialVLA (SigLIP + Ego3D depth positions, Gemma-2, spatial action
tokens) as a refine backbone.

Loads an upstream-layout directory (config.json + safetensors + tokenizer + processor_config.json)
or builds the `tiny` preset. Batches carry `pixel_values` in [0, 1] and the camera `intrinsic`
besides the usual ids; the prompt is the prefix (token type 0, bidirectional) and reasoning,
action tokens and eos are the causal suffix, so reasoning sits between prompt and actions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refine_core import (AllowedIds, StopRow, Backbone, PaliGemmaPrompt, UsageError, left_padded, model_dtype,
    read_tokenizer, resolve_checkpoint_dir, to_pixel_values)


from .processor import ProcessorSettings

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
STATS_KEY = "refine_dataset"  # statistics of a fine-tune whose dataset has no name (as the OpenVLA backbone)


class SpatialVLABackbone(PaliGemmaPrompt, Backbone):
    name = "spatialvla"

    def __init__(self, options) -> None:
        super().__init__(options)
        # several datasets and none named is fine for fine-tuning (the data brings its statistics);
        # predicting with the checkpoint's own statistics asks for the key then
        self.unnorm_key = self.processor.resolve_key(options.unnorm_key, required=False)
        config = self.model.config
        self.image_size, self.num_image_tokens = config.image_size, config.num_image_tokens
        self.image_token_id = int(config.image_token_index)
        self.intrinsic = self.processor.intrinsic(self.unnorm_key, self.image_size)
        if self.processor.bin_policy and self.unnorm_key:  # a released checkpoint decodes with its own bins
            self.codec = self.checkpoint_codec()

    def load(self, path: str) -> None:
        from .model import SpatialVLAForConditionalGeneration

        path = resolve_checkpoint_dir(path)
        self._check_directory(path)
        self.tokenizer = read_tokenizer(path, "GemmaTokenizer")
        try:
            self.model = SpatialVLAForConditionalGeneration.from_pretrained(
                path, model_dtype(self.options.dtype), self.attention(),
                sync_spatial_embeddings=self.options.sync_spatial_embeddings)
        except ValueError as exc:  # config contents (model_type, sub-configs)
            raise UsageError(f"Cannot load SpatialVLA from {path}: {exc}") from None
        self.processor = ProcessorSettings.read(path)

    def build_preset(self, preset: str) -> None:
        from .config import SpatialVLAConfig
        from .model import SpatialVLAForConditionalGeneration
        from .tiny import build_config, build_tokenizer

        self.tokenizer = build_tokenizer()
        self.model = SpatialVLAForConditionalGeneration(
            SpatialVLAConfig.from_dict(build_config(self.tokenizer)), self.attention()
        )
        self.model.to(model_dtype(self.options.dtype))
        self.processor = ProcessorSettings()

    def checkpoint_codec(self):
        """The `spatial` codec exactly as the checkpoint's processor defines it: its bin policy,
        chunk size and the `unnorm_key` dataset's statistics."""
        from refine_plugins.action_codecs.options import SpatialOptions
        from refine_plugins.action_codecs.spatial import SpatialCodec

        key = self.unnorm_key or self.processor.resolve_key(None)  # names the keys when there are several
        if not self.processor.bin_policy or key is None:
            raise UsageError("spatialvla has no action codec: train it, or load a checkpoint whose "
                             "processor_config.json holds statistics and a bin policy")
        options = SpatialOptions(bin_policy=self.processor.bin_policy,
                                 chunk_size=self.processor.action_chunk_size)
        codec = SpatialCodec(options).bind(self.tokenizer, self.processor.action_statistics(key))
        self._check_action_range(codec)
        return codec

    def attach_codec(self, codec, action_stats):
        """Bind a codec for training. When a checkpoint's spatial bins give way to bins fitted on
        another robot's statistics, the spatial embeddings are re-gridded onto the new bins
        (upstream's `spatial_embedding_adaption`) rather than left meaning the old bins."""
        previous = self.codec
        super().attach_codec(codec, action_stats)
        self._check_action_range(codec)
        # the bins the spatial embeddings were trained on: the attached codec's, else the checkpoint's
        old = getattr(previous, "bin_policy", None) if previous is not None else self.processor.bin_policy
        new = getattr(codec, "bin_policy", None)
        if old is not None and new is not None and old != new and self.model.config.use_spatial_token:
            from refine_plugins.action_codecs.spatial import spatial_embedding_adaption

            with torch.no_grad():
                weight = spatial_embedding_adaption(old, new, self.model.spatial_embed_tokens.weight)
                self.model.spatial_embed_tokens.weight.copy_(weight)
                self.model.get_input_embeddings().weight[codec.action_token_ids] = weight.to(
                    self.model.get_input_embeddings().weight.dtype)
        return self

    def _check_action_range(self, codec) -> None:
        """SpatialVLA embeds its action ids from `spatial_embed_tokens`: a spatial codec must use exactly
        those."""
        config = self.model.config
        if getattr(codec, "name", "") == "spatial" and config.use_spatial_token:
            first = int(codec.action_token_ids[0])
            if (
                first != config.action_token_begin_idx
                or len(codec.action_token_ids) != config.spatial_token_num
            ):
                raise UsageError(f"the tokenizer's <ACTION…> tokens start at id {first}, but the model's "
                                 f"action_token_begin_idx is {config.action_token_begin_idx}; the "
                                 "checkpoint's "
                                 "tokenizer and config.json do not belong together")

    @staticmethod
    def _check_directory(path: Path) -> None:
        import json

        if not (path / "config.json").is_file():
            raise UsageError(f"backbone.path {path} has no config.json: point it at a SpatialVLA checkpoint "
                             "directory (config.json, safetensors, tokenizer)")
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except ValueError as exc:
            raise UsageError(f"{path / 'config.json'} is not valid JSON ({exc})") from None
        if model_type != "spatialvla":
            raise UsageError(f"{path} holds a {model_type!r} model, not SpatialVLA (model_type "
                             "'spatialvla'); "
                             "use the backbone made for it (refine list backbone)")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise UsageError(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); copy the "
                             "checkpoint's "
                             "tokenizer files next to config.json")

    # -- data -----------------------------------------------------------------------------------
    def image_inputs(self, frames: Sequence[np.ndarray]) -> dict[str, Any]:
        pixels = to_pixel_values(frames, self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        intrinsic = torch.from_numpy(self.intrinsic).unsqueeze(0).expand(len(frames), 3, 3).contiguous()
        return {"pixel_values": pixels.to(self.model.dtype), "intrinsic": intrinsic}

    # -- model ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], output_attentions: bool = False) -> Any:
        device = self.model.device
        get = lambda key: batch[key].to(device) if key in batch else None  # noqa: E731
        out = self.model(get("input_ids"), get("pixel_values"), get("intrinsic"),
                         attention_mask=get("attention_mask"),
                         token_type_ids=get("token_type_ids"), use_cache=False,
                         output_attentions=output_attentions)
        return out if output_attentions else out.logits

    def blocks(self) -> list[tuple[str, torch.nn.Module]]:
        layers = self.model.language_model.model.layers
        return [(f"language_model.model.layers.{i}", layer) for i, layer in enumerate(layers)]

    def vision_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [("vision_tower", self.model.vision_tower)]

    def frozen_modules(self) -> list[tuple[str, torch.nn.Module]]:
        # ZoeDepth only measures depth: upstream never trains it, whatever else is unfrozen
        return [("vision_zoe_model", self.model.vision_zoe_model)] if self.model.config.use_vision_zoe else []

    def embedding_modules(self) -> list[tuple[str, torch.nn.Module]]:
        modules = [("language_model.model.embed_tokens", self.model.get_input_embeddings())]
        if self.model.config.use_spatial_token:
            modules.append(("spatial_embed_tokens", self.model.spatial_embed_tokens))
        return modules

    def lora_targets(self) -> list[str]:
        # upstream's `linear` target set: language model, SigLIP, projector and the Ego3D head
        return ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2",
                "out_proj", "linear", "0", "3"]

    def lora_scope(self) -> list[tuple[str, torch.nn.Module]]:
        scope = self.blocks() + [("vision_tower", self.model.vision_tower),
                                 ("multi_modal_projector", self.model.multi_modal_projector)]
        if self.model.config.use_vision_zoe:  # never Zoe: it is frozen and its BEiT has q_proj/fc1 too
            scope.append(("position_embedding_3d.position_embedding_head",
                          self.model.position_embedding_3d.position_embedding_head))
        return scope

    # -- inference ------------------------------------------------------------------------------
    def greedy_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                            prefix_ids: list[list[int]], allowed: AllowedIds | None,
                            stop: StopRow | None) -> list[list[int]]:
        device = self.model.device
        # prompt + prefix per row, left-padded: one forward per new token for the whole batch; the
        # prompt is the prefix-LM's bidirectional part (type 0, pads too: the mask hides them)
        prompts = [self.prompt_ids(instruction) for instruction in instructions]
        ids, mask = left_padded([p + s for p, s in zip(prompts, prefix_ids)], self.pad_id, device)
        types = left_padded([[0] * len(p) + [1] * len(s) for p, s in zip(prompts, prefix_ids)], 0, device)[0]
        inputs = self.image_inputs(images)
        return self.model.generate(ids, inputs["pixel_values"].to(device), inputs["intrinsic"].to(device),
                                   max_new_tokens, eos_token_id=self.eos_id, token_type_ids=types,
                                   allowed=allowed, decoder=self.options.decoder, stop=stop,
                                   attention_mask=mask).tolist()

    def predict_action(self, image: np.ndarray, instruction: str, reasoning: bool = False) -> np.ndarray:
        """The next action chunk [chunk, 7] in refine's convention (gripper 1 = open), the action
        span decoded under the codec's constraints (see `Backbone.predict`)."""
        from refine_core import ActionDecodeError

        if self.codec is None:
            self.codec = self.checkpoint_codec()
        prediction = self.predict(image, instruction, reasoning=reasoning)
        if prediction.actions is None:  # only codecs without reserved ids (text) can get here
            raise ActionDecodeError(prediction.error or "no action span", ids=prediction.action_ids)
        return prediction.actions

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        if self.codec is not None and self.codec.is_bound:
            key = self.statistics_key or self.unnorm_key or STATS_KEY
            self.processor.set_action_statistics(key, self.codec.stats)
            policy = getattr(self.codec, "bin_policy", None)
            if policy is not None:
                self.processor.bin_policy = policy
            self.processor.action_chunk_size = self.codec.chunk_size
        self.processor.write(directory)
