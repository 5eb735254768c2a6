"""VLM2VLA's action representation: each step written as a list of text numbers.

`[[0.012, -0.004, 0.031, 0.0, 0.0, 0.0, 1.0], ...]` (one list per step of the chunk, the `dims`
chosen by the options, normalised to [-1, 1] by default, `decimals` digits, the gripper as 1.0/0.0)
tokenized with the backbone's own tokenizer. The whole encoded span is actions: no ids are reserved.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from refine_core import ACTION_DIM, ActionCodec, ActionDecodeError, GRIPPER, TokenizerLike, UsageError

from .options import TextOptions
from .textform import format_chunk, parse_chunk


class TextCodec(ActionCodec):
    name = "text"
    options_model = TextOptions
    options: TextOptions
    compact = False  # VLM2VLA separates numbers with ", "

    def _bind_vocabulary(self, tokenizer: TokenizerLike) -> None:
        # Every digit and symbol must survive tokenize → decode, or the model could never write actions.
        probe = "[[0.123, -4.567], [8.9, 1.0]]"
        ids = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if "".join(back.split()) != "".join(probe.split()):
            raise UsageError(
                f"{self.name}: the tokenizer cannot write action numbers: {probe!r} comes back as {back!r}"
            )

    # -- text form ------------------------------------------------------------------------
    def encode_text(self, actions: np.ndarray) -> str:
        """The text written for one action chunk."""
        self._require_bound()
        chunk = self._as_chunk(actions)
        values = self.normalize(chunk) if self.options.normalize else chunk
        dims = self.options.dims
        gripper_column = dims.index(GRIPPER) if self.options.binarize_gripper else None
        return format_chunk(values[:, dims], self.options.decimals, gripper_column, self.compact)

    def decode_text(self, text: str) -> np.ndarray:
        """Text → float32 [chunk_size, 7]; unwritten dimensions are 0. ActionDecodeError if malformed."""
        self._require_bound()
        written = parse_chunk(text, self.chunk_size, len(self.options.dims))
        values = np.zeros((self.chunk_size, ACTION_DIM), dtype=np.float64)
        values[:, self.options.dims] = written
        actions = self._finish(values, normalized=self.options.normalize)
        actions[:, [d for d in range(ACTION_DIM) if d not in self.options.dims]] = 0.0
        return actions

    def locate_actions(self, ids: Sequence[int]) -> int | None:
        """The first position from which the generated text reads as an action chunk ("[[...")."""
        if self.action_token_ids is not None:  # reserved ids (least-likely) mark the span themselves
            return super().locate_actions(ids)
        ids = list(ids)
        for start in range(len(ids)):
            if self.tokenizer.decode(ids[start:], skip_special_tokens=True).lstrip().startswith("[["):
                return start
        return None

    # -- ids ------------------------------------------------------------------------------
    def encode(self, actions: np.ndarray) -> list[int]:
        return list(self.tokenizer(self.encode_text(actions), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        self._require_bound()
        array = self._id_array(ids)
        size = len(self.tokenizer)
        outside = np.flatnonzero((array < 0) | (array >= size))
        if outside.size:
            where = int(outside[0])
            raise ActionDecodeError(
                f"id {int(array[where])} at position {where} is outside the vocabulary of {size} ids",
                text=str(array.tolist()), ids=array,
            )
        try:
            text = self.tokenizer.decode(array.tolist(), skip_special_tokens=False)
        except Exception as exc:  # a tokenizer's own failure must still reach the policy as a decode error
            raise ActionDecodeError(f"the tokenizer could not decode the ids ({exc})",
                                    text=str(array.tolist()),
                                    ids=array) from None
        return self.decode_text(text)
