"""Prompt layouts shared by backbones built on one model family."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class PaliGemmaPrompt:
    """PaliGemma's prompt layout, shared by the backbones built on it (hf_vlm, SpatialVLA): image
    placeholders × patches, bos, the lower-cased instruction and "\\n". Needs `tokenizer`,
    `image_token_id` and `num_image_tokens` on the backbone."""

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_id)

    def prompt_ids(self, instruction: str) -> list[int]:
        text = self.tokenizer(instruction.strip().lower() + "\n", add_special_tokens=False)["input_ids"]
        return [self.image_token_id] * self.num_image_tokens + [int(self.tokenizer.bos_token_id)] + list(text)

    def image_token_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Indices of the image placeholders in one sequence (patch order, row-major)."""
        return (input_ids == self.image_token_id).nonzero().flatten()
