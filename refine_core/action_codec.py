"""The action-codec contract: continuous actions ⇄ the token ids a backbone supervises and generates.

A codec is built from its validated options, then bound once to the backbone's tokenizer and the
dataset's action statistics::

    codec = registry.build("codec", "bins", {"n_bins": 256})
    tokenizer.add_tokens(codec.new_tokens())        # only codecs that need new tokens list any;
    model.resize_token_embeddings(len(tokenizer))   # the backbone owns tokenizer and embeddings
    codec.bind(tokenizer, dataset.statistics().action)

    ids = codec.encode(chunk)            # [chunk_size, 7] (or [7]) → list[int], no bos/eos
    mask = codec.action_span_mask(ids)   # True where an id is an action token (loss action_mask)
    actions = codec.decode(generated)    # → float32 [chunk_size, 7], or ActionDecodeError

Conventions every codec keeps:
- Normalisation: `codec.stats.normalize` maps q01..q99 to [-1, 1] (clipped) on the dimensions in
  `stats.mask`. Statistics without a mask are bound with `default_action_mask()` — every
  dimension but the gripper — because the gripper is an open/closed command, not a distance.
- Gripper: refine's convention, 1 = open, 0 = closed, in and out. With `binarize_gripper` (the
  default) it is snapped to {0, 1} at 0.5 on encode and on decode, so a decoded chunk is always
  executable as a binary command.
- Tokens: a codec either reserves ids already in the vocabulary (picked in `bind`) or names the
  tokens it needs in `new_tokens()`, which the backbone adds before binding; a codec never
  mutates the tokenizer. `action_token_ids` lists the reserved ids (None for codecs that write
  actions with ordinary vocabulary, such as plain text numbers, whose whole span is actions).
- Decoding: trailing special tokens (eos, padding) after the span are ignored; anything else that
  is not a well-formed action raises `ActionDecodeError` carrying the offending text, never
  another exception type, so a policy can catch it and retry or hold.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from refine_core.episode import ACTION_DIM, GRIPPER
from refine_core.errors import RefineError, UsageError
from refine_core.statistics import Statistics

_SHOWN_CHARS = 200  # how much of an offending text an error message quotes


class ActionDecodeError(RefineError):
    """Token ids or text that do not decode to a valid action chunk.

    `reason` says what is wrong, `text` is the offending text (for id codecs, the ids written out),
    `ids` the offending ids when decoding started from ids.
    """

    def __init__(self, reason: str, text: str = "", ids: Sequence[int] | None = None):
        self.reason, self.text = reason, text
        self.ids = None if ids is None else tuple(int(i) for i in ids)
        shown = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
        super().__init__(f"cannot decode actions: {reason}" + (f"; got {shown!r}" if text else ""))


class TokenizerLike(Protocol):
    """What codecs use of a tokenizer (a transformers tokenizer satisfies it)."""

    vocab_size: int
    all_special_ids: list[int]

    def __len__(self) -> int: ...
    def __call__(self, text: str, add_special_tokens: bool = ...) -> Any: ...
    def decode(self, ids: Sequence[int], **kwargs: Any) -> str: ...
    def get_vocab(self) -> dict[str, int]: ...


class CodecOptions(BaseModel):
    """Options every codec shares; a codec's options model subclasses this one."""

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(1, ge=1,
                            description="Action steps per prediction (encode/decode [chunk_size, 7]).")
    binarize_gripper: bool = Field(
        True, description="Treat the gripper as a binary command: snap to 1 (open) / 0 (closed) at 0.5.",
    )


def default_action_mask(dim: int = ACTION_DIM) -> np.ndarray:
    """Which action dimensions are q01/q99-normalised by default: all but the gripper."""
    mask = np.ones(dim, dtype=bool)
    if dim == ACTION_DIM:
        mask[GRIPPER] = False
    return mask


class ActionCodec(ABC):
    """Base class of every action codec, built-in or third-party.

    Subclasses set `options_model`, implement `encode`, `decode` and `_bind_vocabulary`, and
    override `action_token_ids` / `new_tokens` / `span_length` when they reserve ids.
    """

    name: ClassVar[str] = "codec"  # the registered name, for messages
    options_model: ClassVar[type[CodecOptions]] = CodecOptions
    action_dim: ClassVar[int] = ACTION_DIM

    def __init__(self, options: CodecOptions | None = None):
        self.options = options if options is not None else self.options_model()
        self._tokenizer: TokenizerLike | None = None
        self._stats: Statistics | None = None

    # -- shape ----------------------------------------------------------------------------
    @property
    def chunk_size(self) -> int:
        return self.options.chunk_size

    @property
    def span_length(self) -> int | None:
        """Number of ids in every encoded span, or None when it varies (text)."""
        return None

    def new_tokens(self) -> list[str]:
        """Tokens the backbone must add to its tokenizer (and embeddings) before `bind`."""
        return []

    # -- binding --------------------------------------------------------------------------
    def bind(self, tokenizer: TokenizerLike, stats: Statistics) -> "ActionCodec":
        """Attach the tokenizer and the dataset's action statistics; reserve the action ids.

        Raises UsageError when the statistics are not 7-D, a token from `new_tokens()` is missing,
        or the vocabulary cannot hold the codec's tokens. Rebinding replaces the previous binding;
        a failed bind leaves the codec unbound.
        """
        if stats.dim != self.action_dim:
            raise UsageError(
                f"{self.name}: action statistics have {stats.dim} dimensions, expected {self.action_dim}"
            )
        if stats.mask is None:
            stats = dataclasses.replace(stats, mask=default_action_mask(stats.dim))
        vocab = tokenizer.get_vocab() if self.new_tokens() else {}
        missing = [t for t in self.new_tokens() if t not in vocab]
        if missing:
            raise UsageError(
                f"{self.name}: the tokenizer lacks {len(missing)} of the codec's tokens (first "
                f"{missing[0]!r}); "
                f"add codec.new_tokens() to the tokenizer and resize the embeddings before bind"
            )
        self._tokenizer, self._stats = None, None
        self._bind_vocabulary(tokenizer)
        self._tokenizer, self._stats = tokenizer, stats
        return self

    @abstractmethod
    def _bind_vocabulary(self, tokenizer: TokenizerLike) -> None:
        """Pick or look up the codec's ids in `tokenizer`; UsageError if the vocabulary cannot hold them."""

    @property
    def is_bound(self) -> bool:
        return self._tokenizer is not None

    @property
    def tokenizer(self) -> TokenizerLike:
        self._require_bound()
        return self._tokenizer  # type: ignore[return-value]

    @property
    def stats(self) -> Statistics:
        """The statistics in use, with the effective normalisation `mask`."""
        self._require_bound()
        return self._stats  # type: ignore[return-value]

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (`tokenizer.vocab_size`, added tokens excluded)."""
        return int(self.tokenizer.vocab_size)

    def _require_bound(self) -> None:
        if self._tokenizer is None:
            raise UsageError(f"{self.name} is not bound: call codec.bind(tokenizer, action_statistics) first")

    # -- the contract ---------------------------------------------------------------------
    @abstractmethod
    def encode(self, actions: np.ndarray) -> list[int]:
        """Token ids of one action chunk ([chunk_size, 7], or [7] when chunk_size is 1), no bos/eos."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [chunk_size, 7] actions, un-normalised, gripper 1 = open; ActionDecodeError if
        malformed."""

    @property
    def action_token_ids(self) -> np.ndarray | None:
        """Sorted int64 ids reserved for actions (loss mask, constrained generation); None if none are."""
        return None

    def allowed_ids_at(self, position: int) -> np.ndarray | None:
        """Ids that may stand at `position` of an action span (constrained decoding), or None when
        the codec cannot say (text numbers). Id codecs: their action ids at every position."""
        return self.action_token_ids

    def action_span_mask(self, ids: Sequence[int]) -> np.ndarray:
        """bool per id: True where it is an action token. Codecs without reserved ids mark the whole span."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        reserved = self.action_token_ids
        if reserved is None:
            return np.ones(ids.shape, dtype=bool)
        return np.isin(ids, reserved)

    def locate_actions(self, ids: Sequence[int]) -> int | None:
        """Index where the action span starts in a generated reason-then-act continuation, or None.

        Codecs with reserved ids find their first action id; text codecs override this.
        """
        mask = self.action_span_mask(ids)
        return int(np.argmax(mask)) if mask.any() else None

    # -- helpers for implementations -----------------------------------------------------
    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Actions → the codec's [-1, 1] space (masked dimensions), float64."""
        return self.stats.normalize(actions)

    def unnormalize(self, values: np.ndarray) -> np.ndarray:
        return self.stats.unnormalize(values)

    def _as_chunk(self, actions: np.ndarray) -> np.ndarray:
        """Validated float64 [chunk_size, 7] copy, gripper snapped when `binarize_gripper`."""
        chunk = np.array(actions, dtype=np.float64)
        if chunk.shape == (self.action_dim,) and self.chunk_size == 1:
            chunk = chunk[None]
        if chunk.shape != (self.chunk_size, self.action_dim):
            raise ValueError(
                f"{self.name}: expected actions of shape ({self.chunk_size}, {self.action_dim}), got "
                f"{chunk.shape}"
            )
        if not np.isfinite(chunk).all():
            raise ValueError(f"{self.name}: actions contain NaN or infinite values")
        if self.options.binarize_gripper:
            chunk[:, GRIPPER] = self._snap_gripper(chunk[:, GRIPPER])
        return chunk

    def _finish(self, values: np.ndarray, normalized: bool = True) -> np.ndarray:
        """Codec-space [chunk, 7] → refine actions: un-normalised, gripper snapped, float32."""
        actions = np.array(values, dtype=np.float64)
        if normalized:
            # a model may write 1.2 where the codec only ever wrote [-1, 1]: saturate, as bins do
            actions = self.unnormalize(np.where(self.stats.mask, np.clip(actions, -1.0, 1.0), actions))
        if self.options.binarize_gripper:
            actions[:, GRIPPER] = self._snap_gripper(actions[:, GRIPPER])
        return actions.astype(np.float32)

    @staticmethod
    def _snap_gripper(values: np.ndarray) -> np.ndarray:
        return (np.asarray(values) >= 0.5).astype(np.float64)

    def _id_array(self, ids: Sequence[int]) -> np.ndarray:
        """`ids` (list, array or CPU tensor) as 1-D int64 with trailing special tokens cut off."""
        try:
            array = np.asarray(ids.tolist() if hasattr(ids, "tolist") else list(ids))
            if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise ValueError
            array = array.astype(np.int64)
        except (TypeError, ValueError, OverflowError):
            raise ActionDecodeError(
                "expected a flat sequence of integer token ids", text=repr(ids)[:_SHOWN_CHARS]
            ) from None
        trailing = self._trailing_ids()
        end = len(array)
        while end and int(array[end - 1]) in trailing:
            end -= 1
        return array[:end]

    def _trailing_ids(self) -> set[int]:
        """Ids cut off the end of a generated span before decoding: the tokenizer's special ids."""
        return {int(i) for i in getattr(self.tokenizer, "all_special_ids", None) or ()}
