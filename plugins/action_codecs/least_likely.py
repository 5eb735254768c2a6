"""The VLM2VLA-AT ablation: the text form, with each of its symbols written as a reserved token.

The compact text form (`[[0.012,-0.004,1.0]]`, no spaces) uses 15 symbols, `0123456789-.,[]`.
Each maps one-to-one onto a vocabulary id the language model rarely produces: by default the
last 15 non-special ids of the base vocabulary (where BPE vocabularies keep their rarest merges),
or the ids given in `token_ids`. The whole span consists of those ids, so they are the action ids.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from refine_core import ActionDecodeError, TokenizerLike, UsageError

from .options import SYMBOLS, LeastLikelyOptions
from .text import TextCodec


class LeastLikelyCodec(TextCodec):
    name = "least-likely"
    options_model = LeastLikelyOptions
    options: LeastLikelyOptions
    compact = True  # a space is not one of the symbols

    def __init__(self, options: LeastLikelyOptions | None = None):
        super().__init__(options)
        self.symbol_ids: dict[str, int] = {}
        self._symbol_of: dict[int, str] = {}

    def _bind_vocabulary(self, tokenizer: TokenizerLike) -> None:
        special = set(getattr(tokenizer, "all_special_ids", None) or ())
        if self.options.token_ids is not None:
            ids = list(self.options.token_ids)
            size = len(tokenizer)
            bad = [i for i in ids if i >= size or i in special]
            if bad:
                raise UsageError(
                    f"least-likely: codec.token_ids {bad} are special tokens or outside the vocabulary of "
                    f"{size} ids"
                )
        else:
            size = int(tokenizer.vocab_size)
            ids = []
            for candidate in range(size - 1, -1, -1):
                if candidate not in special:
                    ids.append(candidate)
                    if len(ids) == len(SYMBOLS):
                        break
            if len(ids) < len(SYMBOLS):
                raise UsageError(
                    f"least-likely: a vocabulary of {size} ids has {len(ids)} non-special ids, "
                    f"fewer than the {len(SYMBOLS)} action symbols {SYMBOLS!r}"
                )
            ids.sort()
        self.symbol_ids = dict(zip(SYMBOLS, ids))
        self._symbol_of = {i: s for s, i in self.symbol_ids.items()}

    @property
    def action_token_ids(self) -> np.ndarray:
        self._require_bound()
        return np.asarray(sorted(self._symbol_of), dtype=np.int64)

    def encode(self, actions: np.ndarray) -> list[int]:
        return [self.symbol_ids[symbol] for symbol in self.encode_text(actions)]

    # VLM2VLA's action answers (`refine_core.data.vlm2vla.format_actions`) written with the symbol ids:
    # the AT ablation of the vlm2vla recipe (`Backbone.answer_ids` / `answer_text` call these)
    def encode_action_text(self, text: str) -> list[int]:
        """`[[dx, dy, dz, g], ...]` answer text → symbol ids (spaces dropped: the compact form)."""
        self._require_bound()
        compact = "".join(text.split())
        unknown = sorted(set(compact) - set(SYMBOLS))
        if unknown:
            raise ValueError(f"least-likely: the action text holds {unknown}, outside the symbols "
                             f"{SYMBOLS!r}")
        return [self.symbol_ids[symbol] for symbol in compact]

    def decode_action_text(self, ids: Sequence[int]) -> str:
        """Generated ids → the answer text they spell; an id that is no symbol ends it (it cannot parse)."""
        self._require_bound()
        symbols = []
        for token in ids:
            if int(token) not in self._symbol_of:
                break
            symbols.append(self._symbol_of[int(token)])
        return "".join(symbols)

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        self._require_bound()
        array = self._id_array(ids)
        symbols = []
        for position, token in enumerate(array.tolist()):
            if token not in self._symbol_of:
                raise ActionDecodeError(
                    f"id {token} at position {position} is not one of the {len(SYMBOLS)} action symbol ids "
                    f"(after {''.join(symbols)!r})",
                    text=str(array.tolist()), ids=array,
                )
            symbols.append(self._symbol_of[token])
        return self.decode_text("".join(symbols))
