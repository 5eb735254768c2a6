"""The `tiny` preset: the upstream tiny fixture's sizes (DINO 32/3/2, SigLIP 48/3/3, Llama 64 × 2
layers, vocab 32064) with random weights, and a Llama-2-compatible tokenizer built in-process
(nothing downloaded).

The tokenizer keeps the ids OpenVLA depends on: <unk> 0, <s> 1, </s> 2, a base vocabulary of
exactly 32000 (so the `bins` codec's action ids are 31744–31999 and id 29871 exists) and the
added <PAD> at 32000. Words come from a small BPE trained on a fixed corpus (deterministic);
the rest of the base vocabulary is filler never produced from text, as Llama's rare pieces are
for robot prompts.
"""
from __future__ import annotations

import itertools
import json
from typing import Any

BASE_VOCAB = 32000
BPE_VOCAB = 1500

TINY_CONFIG: dict[str, Any] = {
    "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "pad_token_id": 32000},
    "tiny_timm_overrides": {
        "vit_large_patch14_reg4_dinov2.lvd142m": {"embed_dim": 32, "depth": 3, "num_heads": 2},
        "vit_so400m_patch14_siglip_224": {"embed_dim": 48, "depth": 3, "num_heads": 3},
    },
}

_WORDS = ("in what action should the robot take to out put place pick move lift open close push pull "
          "grasp release stack wipe slide reach turn red blue green yellow orange black white block cube "
          "plate bowl cup can sponge spoon carrot towel drawer lid cloth banana bottle marker box pot pan "
          "table on into onto from of with and then is it left right front behind near up down top "
          "gripper arm open closed holding observation situation analysis spatial reasoning task "
          "planning logical steps sub action scene shows located above below next first finally").split()


def _corpus():
    yield "In: What action should the robot take to put the red block on the plate?\nOut: "
    yield " ".join(_WORDS)
    for a, b, c in itertools.islice(itertools.product(_WORDS, _WORDS[20:60], _WORDS[60:]), 0, 20000, 13):
        yield f"{a} the {b} {c}"
    for tag in ("<Observation>:", "<Situation Analysis>:", "<Spatial Reasoning>:", "<Task Planning>:",
                "<logical_steps>", "<sub_action>", "<1>", "<2>", "<3>", "<4>"):
        yield f"{tag} the gripper is open {tag}"
    for i in range(-1000, 1001, 7):
        yield f"[{i / 1000:.3f}, {-i / 1000:.3f}, {i}]"


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # SentencePiece-style "▁" word marks, as Llama's tokenizer
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), BASE_VOCAB):
        vocab[f"<filler{i}>"] = i
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<PAD>")
