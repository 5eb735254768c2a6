"""OpenVLA's prompt under the real Llama-2 tokenizer gives upstream's ids.

`data/openvla_prompt_tokenizer.json` holds Llama-2's tokenizer.json restricted to the pieces of
nine prompts, and the ids upstream's `predict_action` feeds the model for them, measured with
OpenVLA's pin (transformers 4.40.1) and the full tokenizer (`data/make_openvla_prompt_tokenizer.py`).
The directory below is laid out as the official openvla-7b checkpoint's: tokenizer.json,
tokenizer_config.json (LlamaTokenizer, legacy false, `<PAD>` = 32000), special_tokens_map.json.
"""
from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

DATA = json.loads((Path(__file__).parent / "data" / "openvla_prompt_tokenizer.json").read_text())
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>"}


@pytest.fixture(scope="module")
def registry():
    from refine_core.registry import Registry

    return Registry(entry_points=False)


@pytest.fixture(scope="module")
def weights_only(registry, tmp_path_factory):
    """A tiny OpenVLA checkpoint directory with its tokenizer files removed."""
    directory = tmp_path_factory.mktemp("openvla_weights")
    registry.build("backbone", "openvla", {"preset": "tiny"}).save(directory)
    for path in directory.iterdir():
        if path.name not in ("config.json", "model.safetensors", "generation_config.json"):
            path.unlink()
    return directory


def with_files(source: Path, target: Path, files: dict) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).symlink_to(path)
    for name, content in files.items():
        (target / name).write_text(json.dumps(content, ensure_ascii=False))
    return target


def llama2_files() -> dict:
    tokenizer = json.loads(json.dumps(DATA["tokenizer.json"]))
    vocab = tokenizer["model"]["vocab"]
    # ids the restriction left out get pieces no prompt contains, so every id keeps its place
    # (tokenizers would otherwise renumber the added <PAD> from 32000 down to the vocabulary's size)
    vocab.update({f"<absent_{i}>": i for i in set(range(32000)) - set(vocab.values())})
    decoder = {
        str(t["id"]): {k: v for k, v in t.items() if k != "id"}
        for t in DATA["tokenizer.json"]["added_tokens"]
    }
    config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder,
              "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 2048,
              "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", **SPECIAL}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config,
            "special_tokens_map.json": SPECIAL}


def test_prompt_ids_equal_upstream_ids_under_the_llama2_tokenizer(registry, weights_only, tmp_path):
    from refine_plugins.openvla.backbone import SPACE_ID

    checkpoint = with_files(weights_only, tmp_path / "openvla", llama2_files())
    backbone = registry.build("backbone", "openvla", {"path": str(checkpoint)})
    assert len(DATA["prompts"]) == 9
    for instruction, upstream_ids in DATA["prompts"].items():
        assert backbone.prompt_ids(instruction) == upstream_ids, instruction
        assert upstream_ids[0] == 1 and upstream_ids[-1] == SPACE_ID
    # instructions are lower-cased and stripped, as OpenVLA's training data pipeline does
    assert backbone.prompt_ids("  Pick Coke Can ") == DATA["prompts"]["pick coke can"]
    assert backbone.tokenizer.pad_token_id == backbone.pad_id == 32000


def test_a_checkpoint_without_a_tokenizer_is_refused_before_loading_weights(registry, weights_only):
    from refine_core.errors import UsageError

    with pytest.raises(UsageError, match=r"has no tokenizer \(tokenizer.json or tokenizer.model\)"):
        registry.build("backbone", "openvla", {"path": str(weights_only)})


@pytest.mark.skipif(find_spec("sentencepiece") is not None, reason="sentencepiece is installed here")
def test_a_sentencepiece_only_tokenizer_names_the_missing_package(registry, weights_only, tmp_path):
    from refine_core.errors import UsageError

    checkpoint = with_files(weights_only, tmp_path / "spm_only", {})
    (checkpoint / "tokenizer.model").write_bytes(b"\x0a\x00")
    with pytest.raises(UsageError, match="pip install sentencepiece protobuf"):
        registry.build("backbone", "openvla", {"path": str(checkpoint)})


def test_a_training_sequence_equals_upstream_training_ids(registry, weights_only, tmp_path):
    """Upstream trains on the tokenised text "In: …?\\nOut: " + the action's characters + "</s>";
    refine writes the same ids by concatenation, and only the 7 action ids and </s> carry loss."""
    import numpy as np

    from refine_core import Statistics
    from refine_core.backbone import TrainingSample
    from refine_core.data.collate import IGNORE

    reference = DATA["training"]
    checkpoint = with_files(weights_only, tmp_path / "openvla", llama2_files())
    backbone = registry.build("backbone", "openvla", {"path": str(checkpoint)})
    rng = np.random.default_rng(0)
    backbone.attach_codec(registry.build("codec", "bins", {}),
                          Statistics.from_array(rng.uniform(-1, 1, (64, 7))))
    actions = backbone.codec.decode(reference["action_ids"])
    sample = TrainingSample(images={"cam": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)},
                            primary_camera="cam",
                            instruction=reference["instruction"], actions=actions, reasoning=None)
    batch = backbone.collate([sample])
    assert batch["input_ids"][0].tolist() == reference["input_ids"]
    labels = batch["labels"][0]
    assert labels[labels != IGNORE].tolist() == reference["action_ids"] + [2]
