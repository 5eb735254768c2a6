"""Action codecs: the contract, OpenVLA bins, VLM2VLA text, VLM2VLA-AT least-likely ids.

Tokenizers are built in-process (a word-level one over digits, punctuation and filler words, and a
byte-level BPE trained on action strings), so nothing is downloaded.
"""
from __future__ import annotations

import functools
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_core import ActionCodec, ActionDecodeError, RefineError, Statistics, UsageError
from refine_core.action_codec import default_action_mask
from refine_core.registry import Registry

from conftest import OPENVLA_FIXTURE, require_fixture

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
EOS = 2
Q01 = np.array([-0.02, -0.05, -0.01, -0.1, -0.2, -0.3, 0.0])
Q99 = np.array([0.03, 0.04, 0.02, 0.15, 0.1, 0.25, 1.0])


# -- fixtures --------------------------------------------------------------------------------
def word_tokenizer(size: int, tail_special: bool = False, digits: bool = True):
    """WordLevel tokenizer of `size` base ids: specials first, digits/punctuation, filler words;
    `<image>` added after the base vocabulary (as Llama-2's pad is); optionally `<eot>` as the
    last base id, a special token where least-used ids are usually taken from."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + (list("0123456789") if digits else []) + list("[],.-") + ["what", "action", "robot"]
    words += [f"w{i}" for i in range(size - len(words) - int(tail_special))]
    words += ["<eot>"] if tail_special else []
    model = models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    extra = ["<image>"] + (["<eot>"] if tail_special else [])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=extra)


@pytest.fixture(scope="module")
def words():
    return word_tokenizer(600)


@pytest.fixture(scope="module")
def bpe():
    """Byte-level BPE trained on action strings: numbers split into multi-digit merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = ["[[" + ", ".join(f"{rng.uniform(-1, 1):.3f}" for _ in range(7)) + "]]" for _ in range(300)]
    corpus += ["what action should the robot take to pick up the block"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def stats():
    return Statistics(mean=np.zeros(7), std=np.ones(7), min=Q01 - 1, max=Q99 + 1, q01=Q01, q99=Q99)


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """One registry for the module: hypothesis builds codecs hundreds of times."""
    return Registry()


def build(name: str, tokenizer, stats, **options) -> ActionCodec:
    return registry().build("codec", name, options).bind(tokenizer, stats)


def chunk_strategy(steps: int, gripper=st.sampled_from([0.0, 1.0])):
    """[steps, 7] actions inside q01..q99: drawn as normalised values, mapped to real units."""
    row = st.tuples(*[st.floats(-1, 1)] * 6, gripper)

    def to_actions(rows):
        values = np.array(rows, dtype=np.float64)
        values[:, :6] = 0.5 * (values[:, :6] + 1) * (Q99[:6] - Q01[:6]) + Q01[:6]
        return values

    return st.lists(row, min_size=steps, max_size=steps).map(to_actions)


def printed(values: np.ndarray, decimals: int) -> np.ndarray:
    return np.array([[float(f"{v:.{decimals}f}") for v in row] for row in values])


# -- registration and options ---------------------------------------------------------------
def test_codecs_are_registered_and_buildable():
    registry = Registry()
    assert {"bins", "text", "least-likely"} <= set(registry.names("codec"))
    codec = registry.build("codec", "bins", {"n_bins": 128, "chunk_size": 2})
    assert isinstance(codec, ActionCodec) and codec.options.n_bins == 128 and codec.chunk_size == 2
    assert registry.build("codec", "text", {}).options.decimals == 3
    assert registry.build("codec", "least-likely", {"dims": [0, 1, 2, 6]}).options.dims == [0, 1, 2, 6]


@pytest.mark.parametrize("name, options, field", [
    ("bins", {"nbins": 3}, "nbins"),
    ("text", {"decimal": 2}, "decimal"),
    ("text", {"dims": [0, 1, 2]}, "dims"),
    ("text", {"dims": [2, 1, 6]}, "dims"),
    ("least-likely", {"token_ids": [1, 2, 3]}, "token_ids"),
    ("bins", {"n_bins": 1}, "n_bins"),
])
def test_bad_options_fail_with_usage_error_naming_the_field(name, options, field):
    with pytest.raises(UsageError, match=field):
        Registry().build("codec", name, options)


def test_contract_basics(words, stats):
    codec = Registry().build("codec", "bins", {})
    with pytest.raises(UsageError, match="not bound"):
        codec.encode(np.zeros(7))
    with pytest.raises(UsageError, match="7"):
        codec.bind(words, Statistics.from_array(np.zeros((4, 6))))
    codec.bind(words, stats)
    assert codec.is_bound and codec.action_dim == 7 and codec.new_tokens() == []
    assert stats.mask is None and codec.stats.mask.tolist() == default_action_mask().tolist() == [
        True
    ] * 6 + [False]
    explicit = Statistics(**{**stats.__dict__, "mask": [True] * 7})
    assert codec.bind(words, explicit).stats.mask.all()  # an explicit mask is kept
    assert issubclass(ActionDecodeError, RefineError)
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros((2, 7)))


# -- bins ------------------------------------------------------------------------------------
def test_bins_ids_are_the_last_256_and_follow_openvla(words):
    scale = Statistics(mean=np.zeros(7), std=np.ones(7), min=-np.ones(7), max=np.ones(7),
                       q01=[-2.0] * 6 + [0.0], q99=[2.0] * 6 + [1.0])
    codec = build("bins", words, scale)
    V = words.vocab_size
    assert V == 600 and len(words) == 601  # `<image>` is added after the base vocabulary
    assert codec.action_token_ids.tolist() == list(range(V - 256, V)) and codec.span_length == 7
    # normalised x = -1, 0, 1, 0.5, -0.5, 0.1 and a raw gripper 1.0 sit at edge position
    # i = (x + 1)·255/2 = 0, 127.5, 255, 191.25, 63.75, 140.25; digitize d = floor(i) + 1; id = V - d
    ids = codec.encode(np.array([-2.0, 0.0, 2.0, 1.0, -1.0, 0.2, 1.0]))
    assert ids == [V - 1, V - 128, V - 256, V - 192, V - 64, V - 141, V - 256]
    centres = [-1 + (2 / 255) * (min(d, 255) - 0.5) for d in (1, 128, 256, 192, 64, 141)]  # d=256 → last
    expected = [2 * c for c in centres] + [1.0]
    np.testing.assert_allclose(codec.decode(ids)[0], expected, atol=1e-6)
    assert codec.decode(ids).shape == (1, 7) and codec.decode(ids).dtype == np.float32


@settings(max_examples=50, deadline=None)
@given(actions=chunk_strategy(steps=2), n_bins=st.sampled_from([256, 64]))
def test_bins_round_trip_within_half_a_bin(words, stats, actions, n_bins):
    codec = build("bins", words, stats, chunk_size=2, n_bins=n_bins)
    ids = codec.encode(actions)
    assert len(ids) == 14 and codec.action_span_mask(ids).all()
    decoded = codec.decode(ids)
    half = codec.bin_width / 2
    assert np.all(np.abs(codec.normalize(decoded)[:, :6] - codec.normalize(actions)[:, :6]) <= half + 1e-6)
    assert np.all(np.abs(decoded[:, :6] - actions[:, :6]) <= half * (Q99[:6] - Q01[:6]) / 2 + 1e-7)
    assert decoded[:, 6].tolist() == actions[:, 6].tolist()  # gripper stays 1 = open / 0 = closed


def test_bins_gripper_binarized_or_kept(words, stats):
    action = np.array([0.0] * 6 + [0.7])
    assert build("bins", words, stats).decode(build("bins", words, stats).encode(action))[0, 6] == 1.0
    raw = build("bins", words, stats, binarize_gripper=False)
    assert abs(raw.decode(raw.encode(action))[0, 6] - 0.7) <= raw.bin_width / 2


def test_bins_decode_errors(words, stats):
    codec = build("bins", words, stats)
    good = codec.encode(np.zeros(7))
    np.testing.assert_array_equal(codec.decode(good + [EOS, 0]), codec.decode(good))  # trailing eos/pad cut
    cases = [
        (good[:5], "expected 7 action ids"),
        (good[:3] + [17] + good[4:], "id 17 at position 3 is not an action id"),
        (good[:3] + [EOS] + good[4:], "not an action id"),
        (["a", "b"], "integer token ids"),
        ([[1, 2], [3, 4]], "integer token ids"),
        ([0.5] * 7, "integer token ids"),
        (None, "integer token ids"),
    ]
    for ids, message in cases:
        with pytest.raises(ActionDecodeError, match=message) as info:
            codec.decode(ids)
        assert info.value.text
    mask = codec.action_span_mask([5, good[0], 7, good[1]])
    assert mask.tolist() == [False, True, False, True]


def test_bins_vocabulary_must_hold_the_bins(stats):
    with pytest.raises(UsageError, match="vocabulary of 200 ids cannot hold 256 action bins"):
        build("bins", word_tokenizer(200), stats)
    with pytest.raises(UsageError, match=r"special token ids \[299\]"):
        build("bins", word_tokenizer(300, tail_special=True), stats)
    assert build("bins", word_tokenizer(200), stats, n_bins=64).action_token_ids[0] == 136


@pytest.mark.parametrize("n_bins", [256, 64])
def test_bins_refuses_a_special_token_on_the_first_action_id_and_accepts_one_just_below(stats, n_bins):
    """The action bins take ids V − n_bins .. V − 1: a special token on the lowest of them (the
    boundary V − n_bins) is refused like one on the last; one at V − n_bins − 1 stays text."""
    vocab = 300
    first = vocab - n_bins
    for special in (first, first + 1, vocab - 1):
        tokenizer = SimpleNamespace(vocab_size=vocab, all_special_ids=[0, 1, special])
        with pytest.raises(UsageError, match=rf"last {n_bins} vocabulary ids \({first}\.\.{vocab - 1}\) "
                                             rf"include special token ids \[{special}\]"):
            build("bins", tokenizer, stats, n_bins=n_bins)
    below = SimpleNamespace(vocab_size=vocab, all_special_ids=[0, 1, first - 1])
    ids = build("bins", below, stats, n_bins=n_bins).action_token_ids
    assert ids[0] == first and ids[-1] == vocab - 1 and len(ids) == n_bins and first - 1 not in ids
    # special ids beyond the vocabulary (added tokens such as <image>) are no concern of the bins
    assert build("bins", SimpleNamespace(vocab_size=vocab, all_special_ids=[vocab, vocab + 1]), stats,
                 n_bins=n_bins).action_token_ids[0] == first


def test_bins_matches_upstream_openvla_decode():
    from safetensors.numpy import load_file

    require_fixture(OPENVLA_FIXTURE)
    reference = load_file(str(OPENVLA_FIXTURE / "reference_io.safetensors"))
    config = json.loads((OPENVLA_FIXTURE / "config.json").read_text())
    norm = config["norm_stats"]["bridge_orig"]["action"]
    stats = Statistics(mean=np.zeros(7), std=np.ones(7), min=norm["q01"], max=norm["q99"],
                       q01=norm["q01"], q99=norm["q99"], mask=norm["mask"])
    vocab = config["text_config"]["vocab_size"] - config["pad_to_multiple_of"]  # upstream's action vocabulary
    tokenizer = SimpleNamespace(vocab_size=vocab, all_special_ids=[0, 1, 2])
    ids = reference["decode_test_token_ids"][0]
    upstream = build("bins", tokenizer, stats, clip_out_of_range=True, binarize_gripper=False)
    np.testing.assert_allclose(upstream.decode(ids)[0], reference["decode_test_actions"], atol=1e-6)
    with pytest.raises(ActionDecodeError, match="not an action id"):  # ids 31743 and 32010 lie outside
        build("bins", tokenizer, stats).decode(ids)


# -- text ------------------------------------------------------------------------------------
def test_text_form_is_vlm2vla_style(words, stats):
    codec = build("text", words, stats, dims=[0, 1, 2, 6], normalize=False)
    action = np.array([0.0123, -0.0041, 0.031, 0.5, 0.5, 0.5, 1.0])
    assert codec.encode_text(action) == "[[0.012, -0.004, 0.031, 1.0]]"
    assert codec.encode_text(np.array([-0.0001, 0.0, 0.0, 0, 0, 0, 0.2])) == "[[0.000, 0.000, 0.000, 0.0]]"
    decoded = codec.decode(codec.encode(action))
    np.testing.assert_array_equal(decoded, np.float32([[0.012, -0.004, 0.031, 0.0, 0.0, 0.0, 1.0]]))
    normalized = build("text", words, stats, dims=[0, 1, 2, 6], decimals=2)
    # unwritten dimensions decode to 0 in real units, not to the middle of q01..q99
    assert normalized.decode_text("[[0.5, -1, 1.0, 1.0]]")[0, 3:6].tolist() == [0.0, 0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(actions=chunk_strategy(steps=3), decimals=st.integers(1, 5), normalize=st.booleans(),
       use_bpe=st.booleans())
def test_text_round_trip_exact_to_printed_precision(words, bpe, stats, actions, decimals, normalize, use_bpe):
    codec = build("text", bpe if use_bpe else words, stats, chunk_size=3, decimals=decimals,
                  normalize=normalize)
    ids = codec.encode(actions)
    decoded = codec.decode(ids)
    written = codec.normalize(actions) if normalize else actions
    expected = printed(written[:, :6], decimals)
    got = codec.normalize(decoded)[:, :6] if normalize else decoded[:, :6]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # only float32 storage separates them
    assert decoded[:, 6].tolist() == actions[:, 6].tolist()
    assert codec.encode(decoded) == ids  # decoding loses nothing that was written
    assert codec.action_token_ids is None and codec.action_span_mask(ids).all()


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("[[0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 1.0", "text ended"),
    ("[[0.1, abc, 0.3, 0.1, 0.2, 0.3, 1.0]]", "expected a number"),
    ("[[0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 1.0]]]", "unexpected text after"),
    ("[[0.1, 0.2, 0.3, 0.1, 0.2, 0.3]]", "step 1 has 6 numbers, expected 7"),
    ("[[0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 1.0], [0, 0, 0, 0, 0, 0, 0]]", "expected 1 step"),
    ("[0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 1.0]", "opening a step"),
    ("[[0.1 0.2, 0.3, 0.1, 0.2, 0.3, 1.0]]", "expected ',' or ']'"),
    ("[[nan, 0.2, 0.3, 0.1, 0.2, 0.3, 1.0]]", "expected a number"),
    ("move left", "opening the action chunk"),
    ("[[" + "9" * 400 + ", 0, 0, 0, 0, 0, 1]]", "too large"),
])
def test_text_malformed_raises_decode_error_with_reason(words, stats, text, message):
    codec = build("text", words, stats)
    with pytest.raises(ActionDecodeError, match=message) as info:
        codec.decode_text(text)
    assert info.value.text == text
    if text.strip():
        with pytest.raises(ActionDecodeError):
            codec.decode(words(text, add_special_tokens=False)["input_ids"])


def test_text_decode_of_bad_ids(words, stats):
    codec = build("text", words, stats)
    ids = codec.encode(np.zeros(7))
    np.testing.assert_array_equal(codec.decode(ids + [EOS]), codec.decode(ids))
    for bad, message in [(ids + [5000], "outside the vocabulary of 601 ids"), ([-100] + ids, "id -100"),
                         (ids[:-3], "text ended"), (ids[:4] + [1] + ids[4:], "expected")]:
        with pytest.raises(ActionDecodeError, match=message):
            codec.decode(bad)


def test_text_values_beyond_the_range_saturate_and_gripper_snaps(words, stats):
    codec = build("text", words, stats)
    decoded = codec.decode_text("[[1.5, -3, 0, 0, 0, 0, 0.8]]")[0]
    np.testing.assert_allclose(decoded[:2], [Q99[0], Q01[1]], atol=1e-7)
    assert decoded[6] == 1.0
    raw = build("text", words, stats, binarize_gripper=False)
    assert raw.encode_text(np.array([0, 0, 0, 0, 0, 0, 0.25])).endswith(", 0.250]]")


def test_text_needs_a_tokenizer_that_writes_digits(stats):
    with pytest.raises(UsageError, match="cannot write action numbers"):
        build("text", word_tokenizer(100, digits=False), stats)


# -- least-likely ----------------------------------------------------------------------------
def test_least_likely_picks_last_non_special_ids(words, stats):
    codec = build("least-likely", words, stats)
    assert codec.action_token_ids.tolist() == list(range(585, 600))  # `<image>` (600) is added, not base
    assert codec.symbol_ids["0"] == 585 and codec.symbol_ids["]"] == 599
    tail = word_tokenizer(300, tail_special=True)
    assert build("least-likely", tail, stats).action_token_ids.tolist() == list(range(284, 299))
    explicit = build("least-likely", words, stats, token_ids=list(range(100, 115)), normalize=False,
                     decimals=1)
    assert explicit.symbol_ids["9"] == 109 and explicit.symbol_ids["["] == 113
    assert explicit.encode_text(np.array([0.5, -0.25, 0, 0, 0, 0, 1])) == "[[0.5,-0.2,0.0,0.0,0.0,0.0,1.0]]"


def test_least_likely_vocabulary_checks(stats):
    small = word_tokenizer(len(SPECIALS) + 10 + 5 + 3)  # 18 non-special ids is enough
    assert len(build("least-likely", small, stats).action_token_ids) == 15
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tiny = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(
            models.WordLevel({w: i for i, w in enumerate(SPECIALS + list("0123456789"))}, unk_token="<unk>")
        ),
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
    )
    with pytest.raises(UsageError, match="vocabulary of 14 ids has 10 non-special ids"):
        build("least-likely", tiny, stats)
    with pytest.raises(UsageError, match=r"\[2\]"):
        build("least-likely", small, stats, token_ids=[2] + list(range(5, 19)))


@settings(max_examples=50, deadline=None)
@given(actions=chunk_strategy(steps=2, gripper=st.floats(0, 1)), dims=st.sampled_from([[0, 1, 2, 6],
                                                                                       list(range(7))]))
def test_least_likely_round_trip_exact(words, stats, actions, dims):
    codec = build("least-likely", words, stats, chunk_size=2, dims=dims)
    text_codec = build("text", words, stats, chunk_size=2, dims=dims)
    ids = codec.encode(actions)
    assert len(ids) == len(codec.encode_text(actions)) and codec.action_span_mask(ids).all()
    assert codec.encode_text(actions) == text_codec.encode_text(actions).replace(" ", "")
    decoded = codec.decode(ids)
    np.testing.assert_array_equal(decoded, text_codec.decode(text_codec.encode(actions)))
    assert set(decoded[:, 6].tolist()) <= {0.0, 1.0}
    assert codec.encode(decoded) == ids


def test_least_likely_rejects_foreign_ids(words, stats):
    codec = build("least-likely", words, stats)
    ids = codec.encode(np.zeros(7))
    with pytest.raises(ActionDecodeError,
                       match=r"id 17 at position 3 is not one of the 15 action symbol ids"):
        codec.decode(ids[:3] + [17] + ids[3:])
    with pytest.raises(ActionDecodeError, match="text ended"):
        codec.decode(ids[:-1])


# -- no input crashes a decoder --------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.integers(-5, 700), max_size=30), name=st.sampled_from(["bins", "text",
                                                                              "least-likely"]))
def test_any_ids_decode_or_raise_decode_error(words, stats, ids, name):
    codec = build(name, words, stats)
    try:
        actions = codec.decode(ids)
    except ActionDecodeError as exc:
        assert exc.reason and isinstance(exc.text, str)
    else:
        assert actions.shape == (1, 7) and np.isfinite(actions).all()


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789-.,[] x\n")), max_size=60))
def test_any_text_decodes_or_raises_decode_error(words, stats, text):
    codec = build("text", words, stats, dims=[0, 6])
    try:
        actions = codec.decode_text(text)
    except ActionDecodeError:
        return
    assert actions.shape == (1, 7) and np.isfinite(actions).all()
