"""The `tiny` preset: a randomly initialised PaliGemma-2 (SigLIP + Gemma-2) small enough for CPU tests,
with a byte-level BPE tokenizer trained in-process on a fixed robot-language corpus (deterministic:
same corpus, same merges), so nothing is downloaded.

The vocabulary ends with `RESERVED_TOKENS` never produced from text (like Gemma's `<unusedN>`), so an
id codec that takes the last vocabulary ids (OpenVLA's bins) does not collide with words.
"""
from __future__ import annotations

import functools
import itertools
import json

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
RESERVED_TOKENS = 300
BPE_VOCAB = 2048
# 28-px patches: 8 x 8 = 64 image tokens (PaliGemma-224 has 14-px ones, 256 tokens); the demo draws a
# table cell as exactly one patch (plugins/demo/render.py), and every step is 4x cheaper in attention
IMAGE_SIZE, PATCH_SIZE = 224, 28

_COLOURS = "red blue green yellow orange purple black white pink brown gray".split()
_OBJECTS = ("block cube plate bowl cup can sponge spoon carrot eggplant towel drawer lid cloth banana apple "
            "bottle marker box basket pot pan table gripper arm robot object target").split()
_VERBS = ("put place pick move lift lower open close push pull grasp release approach descend rotate "
          "stack wipe slide reach align hold carry drop turn").split()
_WORDS = (
    "the a an on in into onto to from of with and then is are it its above below left right front "
    "behind near far up down forward backward toward away closer top bottom center side next "
    "still not yet already now first second next finally gripper open closed holding empty "
    "observation situation analysis spatial reasoning task planning logical steps sub action "
    "step phase motion scene camera view shows visible located position distance height aligned "
    "must should will needs robot arm end effector over under between task goal done complete "
    "remaining x y z roll pitch yaw translation rotation small large slightly quickly carefully"
).split()


def _corpus():
    """Deterministic sentences covering instructions, reasoning tags and numbers."""
    for verb, colour, obj, colour2, obj2 in itertools.islice(
        itertools.product(_VERBS, _COLOURS, _OBJECTS[:12], _COLOURS[:4], _OBJECTS[12:18]), 0, 6000, 7
    ):
        yield f"{verb} the {colour} {obj} on the {colour2} {obj2}"
    yield " ".join(_WORDS)
    for tag in ("<Observation>:", "<Situation Analysis>:", "<Spatial Reasoning>:", "<Task Planning>:",
                "<logical_steps>", "<sub_action>", "<1>", "<2>", "<3>", "<4>"):
        yield f"{tag} the gripper is open {tag}"
    for i in range(-1000, 1001, 7):
        yield f"[{i / 1000:.3f}, {-i / 1000:.3f}, {i}]"
    # Short per-phase reasoning (the scripted teacher's compact style), so its words are single tokens.
    phases = ("approach", "descend", "grasp", "lift", "move", "place", "release")
    moves = ("move forward", "move back", "move left", "move right", "move up", "move down", "hold position")
    for i, (colour, obj) in enumerate(itertools.product(_COLOURS[:6], _OBJECTS[:6])):
        phase, nxt, move = phases[i % 7], phases[(i + 1) % 7], moves[i % 7]
        yield (f"<Observation>: the gripper holds the {colour} {obj}; the {obj} is on the table, the "
               f"{colour} {obj} too; the gripper is open <Situation Analysis>: {phase} phase; next {nxt}; "
               f"last phase <Spatial Reasoning>: the {colour} {obj} is forward left down at the gripper "
               f"<Task Planning>: <logical_steps> <1> reach the {obj} <2> grasp the {obj} <3> carry it to "
               f"the {obj} <4> release it <3> lift the {obj} <sub_action> {phase}: {move} back right up")


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """The trained tokenizer, serialised. Training takes ~1.5 s and the tiny preset is built many
    times per process (train, checkpoint load, base-vs-fine-tuned attention), so it runs once."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    # Append the reserved ids to the model vocabulary itself (not as added tokens) so they count in
    # `vocab_size` and sit at its end.
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    start = len(vocab)
    for i in range(RESERVED_TOKENS):
        vocab[f"<unused{i}>"] = start + i
    return json.dumps(data)


def build_tokenizer():
    """A fresh tokenizer object each call (codecs may add tokens to it)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_json())
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens=["<image>"])


def build_config(vocab_size: int, image_token_id: int):
    from transformers import Gemma2Config, PaliGemmaConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2,
                                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64,
                                vision_use_head=False)  # as PaliGemma: features, not the pooled head
    text = Gemma2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                        max_position_embeddings=2048,
                        sliding_window=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    # Untied output layer: with the recipe's frozen embeddings a tied lm_head would freeze the
    # action-token rows too, and the tiny model could barely learn its actions.
    text.tie_word_embeddings = False
    return PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                           image_token_id=image_token_id,
                           projection_dim=64, hidden_size=64, pad_token_id=0, tie_word_embeddings=False)


# -- tiny-gemma3: the same tokenizer with Gemma-3's chat and image tokens, a small Gemma-3 ----------
GEMMA3_SPECIAL_TOKENS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                         "<image_soft_token>"]
GEMMA3_IMAGE_SIZE, GEMMA3_PATCH_SIZE, GEMMA3_IMAGE_TOKENS = 64, 8, 16  # 8x8 patches pooled to 4x4


def build_gemma3_tokenizer():
    """`build_tokenizer` plus Gemma-3's special tokens (added after the vocabulary, as Gemma's
    image soft token is, so `vocab_size` and the reserved ids at its end are unchanged)."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(GEMMA3_SPECIAL_TOKENS, special_tokens=True)
    return tokenizer


def build_gemma3_config(tokenizer):
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = dict(zip(GEMMA3_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(GEMMA3_SPECIAL_TOKENS)))
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, image_size=GEMMA3_IMAGE_SIZE,
                                patch_size=GEMMA3_PATCH_SIZE, vision_use_head=False)
    # Gemma-3 interleaves sliding-window and global layers (5:1 in the real models): keep one of each kind
    text = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            query_pre_attn_scalar=16, max_position_embeddings=2048, sliding_window=512,
                            layer_types=["sliding_attention"] * 3 + ["full_attention"],
                            pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    # untied output layer, for the reason given in `build_config`
    return Gemma3Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS, boi_token_index=ids["<start_of_image>"],
                        eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"],
                        tie_word_embeddings=False)


# -- tiny-qwen2_5_vl / tiny-qwen3_vl: the same tokenizer with Qwen's chat and vision tokens ---------
QWEN_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                       "<|video_pad|>"]
# 8-px patches merged 2x2: a 64x64 frame is 8x8 patches, 16 image tokens (Qwen2.5-VL: 14-px patches)
QWEN_IMAGE_SIZE, QWEN_PATCH_SIZE = 64, 8


def build_qwen_tokenizer():
    """`build_tokenizer` plus Qwen's special tokens, added after the vocabulary (as Qwen's are)."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(QWEN_SPECIAL_TOKENS, special_tokens=True)
    return tokenizer


def _qwen_token_ids(tokenizer) -> dict:
    ids = dict(zip(QWEN_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS)))
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _qwen_text(tokenizer, **extra) -> dict:
    # head_dim 16: 8 rotary frequencies split over (temporal, height, width) positions
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    return dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                rope_parameters={**rope, **extra.pop("rope", {})}, pad_token_id=0, tie_word_embeddings=False,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), **extra)


def build_qwen2_5_vl_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    # window_size 32 px = 2x2 merged tokens per window, so block 0 attends in windows and block 1
    # (fullatt_block_indexes) globally, as Qwen2.5-VL's vision tower interleaves them
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN_PATCH_SIZE,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=32, out_hidden_size=64,
                  fullatt_block_indexes=[1])
    # untied output layer, for the reason given in `build_config`
    return Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(tokenizer, bos_token_id=None),
                            tie_word_embeddings=False, **_qwen_token_ids(tokenizer))


def build_qwen3_vl_config(tokenizer):
    from transformers import Qwen3VLConfig

    # block 0's features also feed the language model (DeepStack), as Qwen3-VL's chosen blocks do
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=QWEN_PATCH_SIZE,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    text = _qwen_text(tokenizer, rope={"mrope_interleaved": True})
    return Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False,
                         **_qwen_token_ids(tokenizer))
