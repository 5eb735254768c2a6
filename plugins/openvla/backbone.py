"""OpenVLABackbone: OpenVLA (DINOv2 + SigLIP → projector → Llama-2) as a refine backbone.

Loads an upstream-layout directory (config.json + safetensors + tokenizer, read as written by
`refine_core.toolkit.weights.read_tokenizer`) or builds the `tiny` preset. Prompt (upstream's):
`In: What action should the robot take to {instruction}?\\nOut: ` with BOS, plus id 29871 when
the tokenizer did not end on it. The 256 patch embeddings sit after BOS inside the model, so
`input_ids`, labels and the logits this backbone returns never contain them.

Action statistics (config.json `norm_stats`, see `norm_stats.py`):
- `predict_action(image, instruction, unnorm_key)` is upstream's `predict_action`: 7 greedy ids,
  decoded by the `bins` codec bound to the statistics of `unnorm_key` (option `unnorm_key`; the
  only entry when there is one), i.e. `0.5·(a+1)·(q99−q01)+q01` where `mask`, the bin centre
  elsewhere. Out-of-range ids clip to the nearest bin, as upstream.
- Gripper: OpenVLA's data pipeline standardises every dataset to 1 = open, 0 = closed
  (openvla `prismatic/vla/datasets/rlds/oxe/transforms.py`) and leaves it unnormalised (mask
  False), so upstream returns the raw bin centre: ≈0.996 open, 0.0 closed. That is refine's
  sense already; refine snaps it to {0, 1} at 0.5 (the codec's `binarize_gripper`). Robot-side
  conventions (−1/+1, inverted) are the benchmark's business, as upstream's eval scripts do.
- Training never reads the checkpoint's norm_stats: the codec attached for training is bound to
  the training dataset's statistics, so fine-tuning on a new dataset normalises with that
  dataset's q01/q99. The checkpoint's entries are carried along unchanged, and `norm_stats()` /
  `save()` add the attached codec's statistics under `statistics_key` (refine sets it to the
  dataset's name; an existing entry of that name is replaced). The saved directory therefore
  decodes correctly with `unnorm_key=<dataset name>`, here or in upstream code; an old entry
  (e.g. `bridge_orig`) would un-normalise the fine-tuned model with the wrong ranges.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from refine_core import (AllowedIds, StopRow, Backbone, Statistics, UsageError, left_padded, model_dtype,
    read_tokenizer, resolve_checkpoint_dir, to_pixel_values)

from .norm_stats import entry_from_statistics, resolve_unnorm_key, statistics_from_entry

PROMPT = "In: What action should the robot take to {instruction}?\nOut: "
SPACE_ID = 29871  # Llama-2's "▁": upstream appends it so the action tokens follow the prompt's space
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2 tower
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # SigLIP tower
FALLBACK_STATS_KEY = (
    "refine_dataset"  # norm_stats key of an attached codec's statistics when no dataset name is known
)


class OpenVLABackbone(Backbone):
    name = "openvla"

    def __init__(self, options) -> None:
        super().__init__(options)
        self.image_size = int(self.model.config.image_sizes[0])

    def load(self, path: str) -> None:
        from .model import OpenVLAForActionPrediction

        path = resolve_checkpoint_dir(path)
        if not (path / "config.json").is_file():
            raise UsageError(f"backbone.path {path} has no config.json: point it at an OpenVLA checkpoint "
                             "directory (config.json + model.safetensors)")
        self.tokenizer = read_tokenizer(path, "LlamaTokenizer")
        if self.tokenizer is None:
            raise UsageError(f"{path} has no tokenizer (tokenizer.json or tokenizer.model); copy the "
                             "checkpoint's tokenizer files next to config.json")
        try:
            self.model = OpenVLAForActionPrediction.from_pretrained(path, model_dtype(self.options.dtype),
                                                                    self.attention())
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(f"Cannot load OpenVLA from {path}: {exc}") from None

    def build_preset(self, preset: str) -> None:
        from .config import OpenVLAConfig
        from .model import OpenVLAForActionPrediction
        from .tiny import TINY_CONFIG, build_tokenizer

        self.model = OpenVLAForActionPrediction(OpenVLAConfig.from_dict(TINY_CONFIG), self.attention())
        self.model.to(model_dtype(self.options.dtype))
        self.tokenizer = build_tokenizer()

    # -- data -----------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.model.config.pad_token_id)

    def prompt_ids(self, instruction: str) -> list[int]:
        text = PROMPT.format(instruction=instruction.strip().lower())
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if ids[0] != self.tokenizer.bos_token_id:  # patches go after position 0, which must be BOS
            ids = [int(self.tokenizer.bos_token_id)] + ids
        return ids if ids[-1] == SPACE_ID else ids + [SPACE_ID]

    def image_inputs(self, frames: Sequence[np.ndarray]) -> dict[str, Any]:
        """[B, 6, H, W]: the resized frame normalised for DINOv2, then for SigLIP (resize-naive)."""
        dino = to_pixel_values(frames, self.image_size, IMAGENET_MEAN, IMAGENET_STD)
        siglip = to_pixel_values(frames, self.image_size, SIGLIP_MEAN, SIGLIP_STD)
        return {"pixel_values": torch.cat([dino, siglip], dim=1).to(self.model.dtype)}

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions of the patches in the model's sequence (right after BOS), patch order."""
        return torch.arange(1, 1 + self.model.num_patches)

    # -- model ----------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], output_attentions: bool = False) -> Any:
        device = self.model.device
        input_ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device) if "attention_mask" in batch else None
        n = self.model.num_patches
        if output_attentions:
            out = self.model(input_ids, batch["pixel_values"].to(device), attention_mask=mask,
                             output_attentions=True, use_cache=False)
            # query rows realigned with input_ids (patch rows dropped); key columns keep the patches,
            # found by image_token_positions
            out.attentions = tuple(torch.cat([a[:, :, :1], a[:, :, 1 + n:]], dim=2) for a in out.attentions)
            return out
        embeds, mask = self.model.multimodal_inputs(input_ids, batch["pixel_values"].to(device), mask)
        hidden = self.model.language_model.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        hidden = hidden.last_hidden_state
        # the LM head only on positions that have labels: logits never cover the 256 patches
        return self.model.language_model.lm_head(torch.cat([hidden[:, :1], hidden[:, 1 + n:]], dim=1))

    def blocks(self) -> list[tuple[str, torch.nn.Module]]:
        layers = self.model.language_model.model.layers
        return [(f"language_model.model.layers.{i}", layer) for i, layer in enumerate(layers)]

    def vision_modules(self) -> list[tuple[str, torch.nn.Module]]:
        towers = self.model.vision_backbone
        return [("vision_backbone.featurizer", towers.featurizer),
                ("vision_backbone.fused_featurizer", towers.fused_featurizer)]

    def embedding_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [("language_model.model.embed_tokens", self.model.get_input_embeddings())]

    def lora_recipe(self) -> dict[str, Any]:
        # OpenVLA's fine-tuning recipe (vla-scripts/finetune.py): α = min(r, 16), no dropout,
        # gaussian init; pair with lora.r=32 for its rank
        return {"alpha": 16.0, "dropout": 0.0, "init": "gaussian"}

    def lora_targets(self) -> str:
        # OpenVLA's recipe is peft's "all-linear": every linear layer but the output head
        return "all-linear"

    def lora_scope(self) -> list[tuple[str, torch.nn.Module]]:
        return self.vision_modules() + [("projector", self.model.projector)] + self.blocks()

    # -- inference ------------------------------------------------------------------------------
    def greedy_continuation(self, images: list[np.ndarray], instructions: list[str], max_new_tokens: int,
                            prefix_ids: list[list[int]], allowed: AllowedIds | None,
                            stop: StopRow | None) -> list[list[int]]:
        device = self.model.device
        # prompt + prefix per row, left-padded: one forward per new token for the whole batch
        rows = [self.prompt_ids(text) + prefix for text, prefix in zip(instructions, prefix_ids)]
        ids, mask = left_padded(rows, self.pad_id, device)
        pixels = self.image_inputs(images)["pixel_values"].to(device)
        return self.model.generate(ids, pixels, max_new_tokens, eos_token_id=self.eos_id, attention_mask=mask,
                                   allowed=allowed, decoder=self.options.decoder, stop=stop).tolist()

    # -- action statistics (upstream norm_stats) --------------------------------------------------
    def _codec_key(self) -> str | None:
        if self.codec is None or not self.codec.is_bound:
            return None
        return self.statistics_key or FALLBACK_STATS_KEY

    def norm_stats(self) -> dict[str, Any]:
        """Upstream-layout norm_stats: the checkpoint's entries, plus the attached codec's
        statistics under `statistics_key` (the training dataset's name) when a codec is bound."""
        stats = dict(self.model.config.norm_stats or {})
        key = self._codec_key()
        if key is not None:
            stats[key] = entry_from_statistics(self.codec.stats)
        return stats

    def action_statistics(self, unnorm_key: str | None = None) -> Statistics:
        """The action Statistics (with upstream's mask) of `unnorm_key` (default: the option, else the
        only entry); UsageError listing the keys when it is unknown or ambiguous."""
        norm_stats = self.norm_stats()
        key = resolve_unnorm_key(norm_stats, unnorm_key or self.options.unnorm_key)
        if key == self._codec_key():
            return self.codec.stats
        return statistics_from_entry(norm_stats[key], where=f"norm_stats['{key}']")

    def action_codec(self, unnorm_key: str | None = None):
        """A `bins` codec (config.n_action_bins, out-of-range ids clipped as upstream) bound to the
        tokenizer and the statistics of `unnorm_key`."""
        from refine_plugins.action_codecs.bins import BinsCodec

        options = BinsCodec.options_model(n_bins=int(self.model.config.n_action_bins), clip_out_of_range=True)
        return BinsCodec(options).bind(self.tokenizer, self.action_statistics(unnorm_key))

    def decode_action_ids(self, ids: Sequence[int], unnorm_key: str | None = None) -> np.ndarray:
        """float32 (7,) in refine's convention from 7 action ids (ActionDecodeError otherwise)."""
        return self.action_codec(unnorm_key).decode(ids)[0]

    def predict_action(self, image: np.ndarray, instruction: str,
                       unnorm_key: str | None = None) -> np.ndarray:
        """Upstream's `predict_action`: 7 greedy ids after the prompt, un-normalised with the
        statistics of `unnorm_key`; float32 (7,), gripper 1 = open, 0 = closed."""
        codec = self.action_codec(unnorm_key)  # resolve the key before spending a generation
        return codec.decode(self.generate_ids(image, instruction, codec.span_length))[0]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Upstream layout; config.json `norm_stats` = `self.norm_stats()`, so upstream-style code
        decodes the saved model with `unnorm_key=<training dataset's name>`."""
        directory = Path(directory)
        config = self.model.config
        carried = config.norm_stats
        config.norm_stats = self.norm_stats() or carried
        try:
            self.model.save_pretrained(directory)
        finally:
            config.norm_stats = carried
        self.tokenizer.save_pretrained(directory)
