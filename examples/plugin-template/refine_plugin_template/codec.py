"""A three-level action codec: the smallest complete `ActionCodec`.

Each of the 7 dimensions, normalised to [-1, 1] with the dataset's q01/q99, becomes one of three
reserved tokens (the last three ids of the vocabulary): below -deadband, within, above. Decoding
maps them to -0.5 / 0 / +0.5 in normalised units; the gripper uses the same three tokens for
closed / (unused) / open.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from refine_core import ActionCodec, ActionDecodeError, UsageError

LEVELS = np.array([-0.5, 0.0, 0.5])


class SignCodec(ActionCodec):
    name = "template-sign"

    def _bind_vocabulary(self, tokenizer) -> None:
        size = int(tokenizer.vocab_size)
        ids = np.arange(size - 3, size, dtype=np.int64)
        if size < 3 or set(ids.tolist()) & set(getattr(tokenizer, "all_special_ids", []) or []):
            raise UsageError(f"{self.name}: the last 3 of {size} vocabulary ids must be ordinary tokens")
        self._ids = ids

    @property
    def span_length(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def action_token_ids(self) -> np.ndarray:
        self._require_bound()
        return self._ids

    def encode(self, actions: np.ndarray) -> list[int]:
        chunk = self._as_chunk(actions)
        values = self.normalize(chunk)
        values[:, -1] = chunk[:, -1] * 2 - 1  # gripper 0/1 → -1/+1
        level = np.where(values < -self.options.deadband, 0, np.where(values > self.options.deadband, 2, 1))
        return self._ids[level.reshape(-1)].tolist()

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        self._require_bound()
        array = self._id_array(ids)
        if len(array) != self.span_length or not np.isin(array, self._ids).all():
            raise ActionDecodeError(f"expected {self.span_length} of the ids {self._ids.tolist()}",
                                    text=str(array.tolist()), ids=array)
        values = LEVELS[(array - self._ids[0]).reshape(self.chunk_size, self.action_dim)]
        values[:, -1] = (values[:, -1] > 0).astype(np.float64)  # back to gripper 0/1
        return self._finish(values)
