"""OpenVLA's action tokenizer: uniform bins on [-1, 1] mapped onto the last ids of the vocabulary.

The mapping reproduces openvla `prismatic/vla/action_tokenizer.py`, with V = `tokenizer.vocab_size`
(the base vocabulary, added tokens such as Llama-2's pad excluded) and edges = linspace(-1, 1, n):
    encode  d = digitize(clip(a, -1, 1), edges) ∈ 1..n,  id = V - d
    decode  bin centre[clip(V - id - 1, 0, n - 2)]
so the n ids V-n..V-1 are action tokens and carry n-1 distinct values (ids V-n and V-n+1 both
decode to the last centre, because 1.0 digitizes past the last edge).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from refine_core import ActionCodec, ActionDecodeError, TokenizerLike, UsageError

from .options import BinsOptions


class BinsCodec(ActionCodec):
    name = "bins"
    options_model = BinsOptions
    options: BinsOptions

    def __init__(self, options: BinsOptions | None = None):
        super().__init__(options)
        self.edges = np.linspace(-1.0, 1.0, self.options.n_bins)
        self.centres = (self.edges[:-1] + self.edges[1:]) / 2.0
        self._vocab_size = 0

    @property
    def bin_width(self) -> float:
        """Width of one bin in the normalised [-1, 1] space (decode error ≤ half of it)."""
        return float(self.edges[1] - self.edges[0])

    @property
    def span_length(self) -> int:
        return self.chunk_size * self.action_dim

    def _bind_vocabulary(self, tokenizer: TokenizerLike) -> None:
        size, n_bins = int(tokenizer.vocab_size), self.options.n_bins
        if size <= n_bins:
            raise UsageError(
                f"bins: a vocabulary of {size} ids cannot hold {n_bins} action bins and any text; "
                f"use a larger vocabulary or set codec.n_bins below {size}"
            )
        special = sorted(i for i in (getattr(tokenizer, "all_special_ids",
                                             None) or ()) if size - n_bins <= i < size)
        if special:
            raise UsageError(
                f"bins: the last {n_bins} vocabulary ids ({size - n_bins}..{size - 1}) include special token "
                "ids "
                f"{special}; action bins would overwrite them. Use a smaller codec.n_bins or another codec"
            )
        self._vocab_size = size

    @property
    def action_token_ids(self) -> np.ndarray:
        self._require_bound()
        return np.arange(self._vocab_size - self.options.n_bins, self._vocab_size, dtype=np.int64)

    def encode(self, actions: np.ndarray) -> list[int]:
        self._require_bound()
        values = np.clip(self.normalize(self._as_chunk(actions)), -1.0, 1.0)  # unmasked dims too (gripper)
        bins = np.digitize(values, self.edges)
        return (self._vocab_size - bins).reshape(-1).tolist()

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        self._require_bound()
        array = self._id_array(ids)
        if len(array) != self.span_length:
            raise ActionDecodeError(
                f"expected {self.span_length} action ids ({self.chunk_size} step(s) × {self.action_dim}), "
                f"got {len(array)}",
                text=str(array.tolist()), ids=array,
            )
        first = self._vocab_size - self.options.n_bins
        outside = np.flatnonzero((array < first) | (array >= self._vocab_size))
        if outside.size and not self.options.clip_out_of_range:
            where = int(outside[0])
            raise ActionDecodeError(
                f"id {int(array[where])} at position {where} is not an action id "
                f"(action ids are {first}..{self._vocab_size - 1})",
                text=str(array.tolist()), ids=array,
            )
        index = np.clip(self._vocab_size - array - 1, 0, len(self.centres) - 1)
        return self._finish(self.centres[index].reshape(self.chunk_size, self.action_dim))
