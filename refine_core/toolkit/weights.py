"""Safetensors checkpoint directories in the Hugging Face layout: `model.safetensors`, or shards
listed by `model.safetensors.index.json`. Model-agnostic: backbones that carry their own
architecture (OpenVLA, SpatialVLA) read and write their upstream layout through these calls, and
read the directory's tokenizer with `read_tokenizer`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from refine_core.errors import UsageError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


# what a checkpoint directory needs; the Hub download fetches only these (not .bin or .pt duplicates)
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.txt")


def resolve_checkpoint_dir(path: str) -> Path:
    """A local checkpoint directory for `backbone.path`: the directory itself, or the Hugging Face
    Hub snapshot of a repo id such as "openvla/openvla-7b" (downloaded once into the Hub cache;
    HF_HUB_OFFLINE=1 uses the cache only). UsageError with one line when neither works."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UsageError(f"backbone.path {path} is a file; point it at the checkpoint directory")
        return local
    if path.count("/") != 1 or path.startswith((".", "/", "~")):
        raise UsageError(f"backbone.path {path} does not exist (nor is it a Hub id such as org/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=path, allow_patterns=list(CHECKPOINT_PATTERNS)))
    except Exception as exc:  # offline, unknown repo, gated repo, no token: all one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"Cannot get {path} from the Hugging Face Hub ({reason}); download it and set "
                         "backbone.path to the local directory") from None


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint directory; UsageError naming what is missing."""
    directory = Path(directory)
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    index_path = directory / WEIGHTS_INDEX
    if not index_path.is_file():
        raise UsageError(f"{directory} has neither {WEIGHTS} nor {WEIGHTS_INDEX}: point backbone.path at a "
                         "checkpoint directory holding safetensors weights")
    try:
        names = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError):
        raise UsageError(f"{index_path} is not a safetensors index (no weight_map); re-download the "
                         "checkpoint") from None
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise UsageError(f"{directory} is missing {len(missing)} of the {len(names)} shards listed in "
                         f"{WEIGHTS_INDEX} (first: {missing[0]}); download the missing files")
    return [directory / name for name in names]


def read_state_dict(directory: str | Path, rename: Callable[[str], str] | None = None) -> dict:
    """Every tensor of the checkpoint (CPU), keys passed through `rename` when given."""
    from safetensors.torch import load_file

    state = {}
    for file in weight_files(directory):
        for key, tensor in load_file(str(file)).items():
            state[rename(key) if rename else key] = tensor
    return state


def write_state_dict(directory: str | Path, state: dict, max_shard_bytes: int = 5 * 1024**3) -> list[Path]:
    """`model.safetensors`, or numbered shards plus an index past `max_shard_bytes`. Stale weight
    files of an earlier save in the same directory are removed so the two never mix."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    shards: list[dict] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for stale in [
        directory / WEIGHTS,
        directory / WEIGHTS_INDEX,
        *directory.glob("model-*-of-*.safetensors"),
    ]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS), metadata={"format": "pt"})
        return [directory / WEIGHTS]
    weight_map, written = {}, []
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        written.append(directory / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / WEIGHTS_INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                                       "weight_map": weight_map},
                                                      indent=2) + "\n")
    return written


def read_tokenizer(directory: str | Path, sentencepiece_class: str):
    """The checkpoint's tokenizer, or None when the directory has none.

    `tokenizer.json` is read as written, because upstream's fast tokenizer encodes with exactly that
    file. AutoTokenizer is avoided on purpose: for a config.json whose model_type transformers does
    not know (openvla, spatialvla) it falls back to a generic backend which, given only
    `tokenizer.model`, drops Llama's leading "▁" ("In" becomes 797 instead of 512). A directory with
    only `tokenizer.model` is read by `sentencepiece_class` (e.g. "LlamaTokenizer")."""
    from importlib.util import find_spec

    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(directory)
    if not (directory / "tokenizer.model").is_file():
        return None
    if find_spec("sentencepiece") is None or find_spec("google.protobuf") is None:
        raise UsageError(f"{directory} has tokenizer.model but no tokenizer.json; reading it needs "
                         "sentencepiece "
                         "and protobuf: pip install sentencepiece protobuf (or add the checkpoint's "
                         "tokenizer.json)")
    import transformers

    return getattr(transformers, sentencepiece_class).from_pretrained(directory)
