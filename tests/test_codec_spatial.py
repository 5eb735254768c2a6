"""The SpatialVLA spatial codec: layout, bins, round trips, the official tokenizer, embedding re-gridding."""
from __future__ import annotations

import json
import math
from statistics import NormalDist
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refine_core import ActionDecodeError, Statistics, UsageError
from refine_core.registry import Registry
from refine_plugins.action_codecs.spatial import (
    ACTION_TOKENS, SpatialCodec, fit_gaussian, gaussian_bin_policy, gaussian_from_statistics,
    spatial_embedding_adaption, statistics_from_processor_config, to_spherical, uniform_bin_policy,
)

from conftest import SPATIALVLA_FIXTURE as FIXTURE, require_fixture

Q01 = np.array([-0.02, -0.05, -0.01, -0.1, -0.2, -0.3, 0.0])
Q99 = np.array([0.03, 0.04, 0.02, 0.15, 0.1, 0.25, 1.0])
EOS, PAD, BOS = 1, 0, 2
# μ/σ upstream fitted on fractal20220817_data (SpatialVLA statistic/fractal20220817_data.json, rounded)
FRACTAL = {"theta": (1.6157, 0.5977), "phi": (0.0151, 1.1927), "r": (0.4558, 0.3248),
           "roll": (-0.1598, 0.3054), "pitch": (0.0714, 0.3152), "yaw": (-0.0109, 0.3019)}
FRACTAL_GAUSSIAN = {k: {"mu": mu, "sigma": s} for k, (mu, s) in FRACTAL.items()}


def word_tokenizer(action_tokens=()):
    """A small word-level tokenizer (pad 0, eos 1, bos 2 as Gemma), with `action_tokens` added after it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "pick", "up", "the", "cup"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>",
                                   unk_token="<unk>")
    fast.add_tokens(list(action_tokens))
    return fast


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(ACTION_TOKENS)


@pytest.fixture(scope="module")
def stats():
    return Statistics(mean=(Q01 + Q99) / 2, std=(Q99 - Q01) / 5, min=Q01 - 1, max=Q99 + 1, q01=Q01, q99=Q99)


@pytest.fixture(scope="module")
def identity_stats():
    """Normalisation that leaves [-1, 1] unchanged, so expected cells can be worked out by hand."""
    return Statistics(mean=np.zeros(7), std=np.ones(7), min=-np.ones(7), max=np.ones(7),
                      q01=[-1.0] * 6 + [0.0], q99=[1.0] * 6 + [1.0])


def build(tokenizer, stats, **options) -> SpatialCodec:
    return Registry().build("codec", "spatial", options).bind(tokenizer, stats)


@pytest.fixture(scope="module")
def codecs(tokenizer, stats):
    """Built once: hypothesis reuses them. Gaussian bins from the statistics, and uniform bins."""
    return {"gaussian": build(tokenizer, stats), "uniform": build(tokenizer, stats, distribution="uniform")}


def edges(codec, name):
    group = "translation" if name in ("theta", "phi", "r") else "rotation"
    return np.array(codec.bin_policy[group][f"{name}_bins"])


def cells(codec, ids):
    """Per step: (θ, φ, r) and (roll, pitch, yaw) bin indices, read from ids with upstream's layout."""
    steps = np.asarray(ids).reshape(-1, 3) - codec.action_token_ids[0]
    t, o = steps[:, 0], steps[:, 1] - 4096
    return np.stack([t // 256, t % 256 // 8, t % 8], 1), np.stack([o // 256, o % 256 // 16, o % 16], 1)


def actions_strategy(steps: int, lo=-1.0, hi=1.0):
    """[steps, 7] raw actions from normalised values in [lo, hi] (beyond ±1 = outside q01..q99)."""
    row = st.tuples(*[st.floats(lo, hi)] * 6, st.floats(0, 1))

    def to_actions(rows):
        values = np.array(rows, dtype=np.float64)
        values[:, :6] = 0.5 * (values[:, :6] + 1) * (Q99[:6] - Q01[:6]) + Q01[:6]
        return values

    return st.lists(row, min_size=steps, max_size=steps).map(to_actions)


# -- registration, options, vocabulary -------------------------------------------------------
def test_registered_with_upstream_shape():
    codec = Registry().build("codec", "spatial", {})
    assert isinstance(codec, SpatialCodec) and codec.chunk_size == 4 and codec.span_length == 12
    tokens = codec.new_tokens()
    assert len(tokens) == 8194 and tokens[0] == "<ACTION00000>" and tokens[-1] == "<ACTION08193>"
    assert Registry().build("codec", "spatial", {"chunk_size": 1}).span_length == 3


@pytest.mark.parametrize("options, field", [
    ({"bin_policy": {"translation": {"theta_bins": [0, 1]}}}, "bin_policy"),
    ({"bin_policy": {**uniform_bin_policy(), "gripper": {}}}, "bin_policy"),
    ({"bin_policy": {"translation": {**uniform_bin_policy()["translation"], "r_bins": [0.0] * 9},
                     "rotation": uniform_bin_policy()["rotation"]}}, "bin_policy"),
    ({"gaussian": {"theta": {"mu": 0, "sigma": 1}}}, "gaussian"),
    ({"gaussian": {**FRACTAL_GAUSSIAN, "roll": {"mu": 0, "sigma": -1}}}, "gaussian"),
    ({"distribution": "laplace"}, "distribution"),
    ({"min_sigma": -0.1}, "min_sigma"),
])
def test_bad_options_name_the_field(options, field):
    with pytest.raises(UsageError, match=field):
        Registry().build("codec", "spatial", options)


def test_binds_to_tokens_added_after_the_vocabulary(tokenizer, stats):
    codec = build(tokenizer, stats)
    assert codec.action_token_ids.tolist() == list(range(8, 8 + 8194))
    assert [(r.start, r.stop) for r in codec.group_ids()] == [(8, 4104), (4104, 8200), (8200, 8202)]


def test_missing_or_scattered_tokens_are_usage_errors(stats):
    codec = Registry().build("codec", "spatial", {})
    with pytest.raises(UsageError, match="lacks 8194 of the codec's tokens") as info:
        codec.bind(word_tokenizer(), stats)
    assert "\n" not in str(info.value)
    scattered = word_tokenizer(ACTION_TOKENS[:100] + ("<other>",) + ACTION_TOKENS[100:])
    with pytest.raises(UsageError, match=r"consecutive ids.*<ACTION00100> has id 109 after 107"):
        codec.bind(scattered, stats)
    assert not codec.is_bound
    with pytest.raises(UsageError, match="not bound"):
        codec.bin_policy  # derived from statistics: unknown until bound


def test_failed_bind_leaves_codec_unbound(tokenizer, stats):
    codec = build(tokenizer, stats)
    broken = Statistics(**{**stats.__dict__, "std": np.full(7, np.nan)})
    with pytest.raises(UsageError, match="must be finite"):
        codec.bind(tokenizer, broken)
    assert not codec.is_bound
    with pytest.raises(UsageError, match="not bound"):
        codec.bin_policy  # the previous binding's bins are gone with it


def test_statistics_fallback_copes_with_constant_and_skewed_dimensions(tokenizer, stats):
    # a constant dimension (σ = 0) and a mean past q99 still give usable, strictly increasing bins
    odd = Statistics(**{**stats.__dict__, "mean": np.array([*Q01[:3], 5.0, *Q99[4:]]), "std": np.zeros(7)})
    codec = build(tokenizer, odd)
    for group in codec.bin_policy.values():
        for values in group.values():
            assert np.all(np.diff(values) > 0)
    assert codec.decode(codec.encode(np.tile(odd.mean, (4, 1)))).shape == (4, 7)


# -- layout and conventions ---------------------------------------------------------------------
def test_ids_follow_upstream_layout(tokenizer, identity_stats):
    codec = build(tokenizer, identity_stats, distribution="uniform", chunk_size=2)
    begin = codec.action_token_ids[0]
    # step 1: θ = 0 → bin 0; φ = 0 is edge 16 of 33 → bin 16; r = 0.5 → bin ⌊0.5 / (√3/8)⌋ = 2;
    #         roll -1 → 0, pitch 0 → 8, yaw 0.99 → 15; gripper 1 = open → the last id
    # step 2: x = -0.6 → θ = π/2 (bin 8), φ = π (bin 31), r = 0.6 (bin 2); rotation 0.3, -0.3, 0 → bins
    #         ⌊1.3 / 0.125⌋ = 10, ⌊0.7 / 0.125⌋ = 5, 8; gripper 0.3 → closed
    actions = np.array([[0, 0, 0.5, -1, 0, 0.99, 1.0], [-0.6, 0, 0, 0.3, -0.3, 0, 0.3]])
    ids = codec.encode(actions)
    assert ids == [begin + (0 * 32 + 16) * 8 + 2, begin + 4096 + (0 * 16 + 8) * 16 + 15, begin + 8193,
                   begin + (8 * 32 + 31) * 8 + 2, begin + 4096 + (10 * 16 + 5) * 16 + 8, begin + 8192]
    decoded = codec.decode(ids)
    theta, phi, r = math.pi / 32, -math.pi + 16.5 * 2 * math.pi / 32, 2.5 * math.sqrt(3) / 8
    expected_xyz = [r * math.sin(theta) * math.cos(phi), r * math.sin(theta) * math.sin(phi),
                    r * math.cos(theta)]
    np.testing.assert_allclose(decoded[0, :3], expected_xyz, atol=1e-6)
    np.testing.assert_allclose(decoded[0, 3:], [-15 / 16, 1 / 16, 15 / 16, 1.0], atol=1e-6)
    assert decoded[1, 6] == 0.0 and decoded.dtype == np.float32 and decoded.shape == (2, 7)


def test_gripper_is_raw_and_binary_whatever_the_mask(tokenizer, stats):
    # were the gripper normalised (0..2 → -1..1), 0.8 would encode closed and "open" decode to 2
    masked = Statistics(**{**stats.__dict__, "q99": [*Q99[:6], 2.0], "mask": [True] * 7})
    for binarize in (True, False):
        codec = build(tokenizer, masked, chunk_size=1, distribution="uniform", binarize_gripper=binarize)
        for value, expected in [(0.0, 0.0), (0.49, 0.0), (0.5, 1.0), (0.8, 1.0), (1.0, 1.0)]:
            ids = codec.encode(np.array([0, 0, 0, 0, 0, 0, value]))
            assert ids[2] == codec.group_ids()[2][int(expected)]
            assert codec.decode(ids)[0, 6] == expected


def test_corner_cells_decode_onto_the_cube(tokenizer, identity_stats):
    codec = build(tokenizer, identity_stats, distribution="uniform", chunk_size=1)
    # the normalised corner (1, 1, 1) has r = √3: its cell centre lies outside the cube and is clipped
    decoded = codec.decode(codec.encode(np.array([1.0, 1, 1, 0, 0, 0, 1])))
    assert np.abs(decoded[0, :3]).max() == pytest.approx(1.0) and np.all(decoded[0, :3] > 0.5)


# -- bins ---------------------------------------------------------------------------------------
def test_gaussian_edges_are_equal_probability_quantiles():
    policy = gaussian_bin_policy(FRACTAL_GAUSSIAN)
    ranges = {"theta": (0, math.pi), "phi": (-math.pi, math.pi), "r": (0, math.sqrt(3)),
              "roll": (-1, 1), "pitch": (-1, 1), "yaw": (-1, 1)}
    for group in policy.values():
        for key, values in group.items():
            name = key[:-5]
            dist = NormalDist(*FRACTAL[name])
            assert (values[0], values[-1]) == pytest.approx(ranges[name])
            mass = np.diff([dist.cdf(v) for v in values])
            np.testing.assert_allclose(mass, mass.mean(), rtol=1e-9)  # every bin equally likely
    roll = gaussian_bin_policy({**FRACTAL_GAUSSIAN, "roll": {"mu": 0.0,
                                                             "sigma": 1.0}})["rotation"]["roll_bins"]
    # Φ⁻¹ at Φ(-1) + k/16·(Φ(1) - Φ(-1)), written with erf: symmetric, the middle edge at 0
    k4 = math.erf(-1 / math.sqrt(2)) * (1 - 4 / 8)  # erf of the k = 4 edge / √2
    assert roll[8] == pytest.approx(0, abs=1e-12) and roll[4] == pytest.approx(-roll[12])
    assert math.erf(roll[4] / math.sqrt(2)) == pytest.approx(k4)


def test_gaussian_that_misses_the_range_needs_min_sigma():
    far = {**FRACTAL_GAUSSIAN, "yaw": {"mu": 9.0, "sigma": 0.01}}
    with pytest.raises(UsageError, match="yaw range.*min_sigma"):
        gaussian_bin_policy(far)
    assert len(gaussian_bin_policy(far, min_sigma=2.0)["rotation"]["yaw_bins"]) == 17


def test_explicit_gaussian_and_policy_options_are_used_exactly(tokenizer, stats):
    from_gaussian = build(tokenizer, stats, gaussian=FRACTAL_GAUSSIAN)
    assert from_gaussian.bin_policy == gaussian_bin_policy(FRACTAL_GAUSSIAN)
    policy = gaussian_bin_policy(FRACTAL_GAUSSIAN)
    explicit = Registry().build("codec", "spatial", {"bin_policy": policy})
    assert explicit.bin_policy == policy  # known before bind: the checkpoint's own
    assert build(tokenizer, stats, distribution="uniform").bin_policy == uniform_bin_policy()


def test_fit_gaussian_known_answer(identity_stats):
    actions = np.array([[0, 0, 0.5, 0.2, 0, -1, 1], [0, 0, -0.5, 0.6, 0, 1, 0]])
    fit = fit_gaussian(actions, identity_stats)
    assert (fit["theta"]["mu"], fit["theta"]["sigma"]) == pytest.approx((math.pi / 2, math.pi / 2))
    assert (fit["r"]["mu"], fit["r"]["sigma"], fit["phi"]["mu"]) == pytest.approx((0.5, 0.0, 0.0))
    assert (fit["roll"]["mu"], fit["roll"]["sigma"], fit["yaw"]["sigma"]) == pytest.approx((0.4, 0.2, 1.0))


def test_gaussian_from_statistics_matches_a_fit_on_gaussian_samples():
    rng = np.random.default_rng(0)
    mean, std = np.array([0.01, -0.02, 0.0, 0.05, 0.0, -0.1, 0.5]), np.array([0.01, 0.02, 0.01, 0.05, 0.08,
                                                                              0.1, 0.5])
    actions = rng.normal(mean, std, size=(20000, 7))
    stats = Statistics.from_array(actions)
    estimated, fitted = gaussian_from_statistics(stats), fit_gaussian(actions, stats)
    for name in ("theta", "phi", "r", "roll", "pitch", "yaw"):
        assert estimated[name]["mu"] == pytest.approx(fitted[name]["mu"], abs=0.03), name
        assert estimated[name]["sigma"] == pytest.approx(fitted[name]["sigma"], abs=0.03), name
    # rotation: the raw mean/std pass through the q01/q99 map exactly
    span = stats.q99[3] - stats.q01[3]
    assert estimated["roll"]["mu"] == pytest.approx(2 * (stats.mean[3] - stats.q01[3]) / span - 1)
    assert estimated["roll"]["sigma"] == pytest.approx(2 * stats.std[3] / span)


# -- round trips --------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(actions=actions_strategy(steps=4), kind=st.sampled_from(["gaussian", "uniform"]))
def test_decode_of_encode_stays_in_the_bin(codecs, actions, kind):
    codec = codecs[kind]
    ids = codec.encode(actions)
    decoded = codec.decode(ids)
    original, got = codec.normalize(actions), codec.normalize(decoded)
    translation, rot = cells(codec, ids)
    theta_i, phi_i, r_i = translation.T
    # the original's spherical coordinates lie inside the cell its id names
    for name, index, value in zip(("theta", "phi", "r"), (theta_i, phi_i, r_i),
                                  to_spherical(original[:, :3])):
        e = edges(codec, name)
        assert np.all((e[index] <= value + 1e-12) & (value <= e[index + 1] + 1e-12)), name
    # translation error ≤ |Δr| + r·(|Δθ| + |Δφ|) at half the cell's widths (clipping only shrinks it)
    half = {n: np.diff(edges(codec, n))[i] / 2 for n, i in zip(("theta", "phi", "r"), (theta_i, phi_i, r_i))}
    r_centre = (edges(codec, "r")[r_i] + edges(codec, "r")[r_i + 1]) / 2
    bound = half["r"] + r_centre * (half["theta"] + half["phi"])
    assert np.all(np.linalg.norm(got[:, :3] - original[:, :3], axis=1) <= bound + 1e-5)
    # rotation: within half its bin, per component
    for column, name in enumerate(("roll", "pitch", "yaw")):
        width = np.diff(edges(codec, name))[rot[:, column]]
        assert np.all(np.abs(got[:, 3 + column] - original[:, 3 + column]) <= width / 2 + 1e-5)
    assert decoded[:, 6].tolist() == (actions[:, 6] >= 0.5).astype(float).tolist()


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_encode_of_decode_is_identity_for_every_id(tokenizer, stats, kind):
    """All 4096 translation and rotation ids and both gripper ids in one 4096-step chunk."""
    codec = build(tokenizer, stats, chunk_size=4096, distribution=kind)
    translation, rotation, gripper = (np.array(r) for r in codec.group_ids())
    ids = np.stack([translation, rotation, np.resize(gripper, 4096)], axis=1).reshape(-1)
    decoded = codec.decode(ids)
    again = np.array(codec.encode(decoded)).reshape(-1, 3)
    np.testing.assert_array_equal(again[:, 1:], ids.reshape(-1, 3)[:, 1:])
    # a translation cell whose centre lies outside the cube decodes onto the cube's surface, so only
    # cells with their centre inside map back to themselves (upstream clips the same way)
    surface = np.isclose(np.abs(codec.normalize(decoded)[:, :3]).max(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(again[~surface, 0], translation[~surface])
    assert 0.4 < (~surface).mean() < 1.0


@settings(max_examples=60, deadline=None)
@given(actions=actions_strategy(steps=4, lo=-3.0, hi=3.0), kind=st.sampled_from(["gaussian", "uniform"]))
def test_ids_always_land_in_their_group(codecs, actions, kind):
    codec = codecs[kind]
    ids = np.array(codec.encode(actions)).reshape(-1, 3)
    for column, allowed in enumerate(codec.group_ids()):
        assert np.all((ids[:, column] >= allowed.start) & (ids[:, column] < allowed.stop))
    assert codec.action_span_mask(ids.reshape(-1)).all() and np.isfinite(codec.decode(ids.reshape(-1))).all()


# -- decode errors ------------------------------------------------------------------------------
def test_malformed_ids_raise_decode_error(codecs):
    codec = codecs["gaussian"]
    good = codec.encode(np.zeros((4, 7)))
    np.testing.assert_array_equal(codec.decode(good + [EOS, PAD, PAD]), codec.decode(good))
    rotation_id = good[1]
    cases = [
        (good[:9], "expected 12 action ids"),
        (good + [BOS], "expected 12 action ids"),  # only eos / pad end a span
        (good[:3] + [rotation_id] + good[4:],
         f"id {rotation_id} at position 3 is not a translation action id"),
        (good[:5] + [good[0]] + good[6:], "position 5 is not a gripper action id"),
        (good[:4] + [EOS] + good[5:], f"id {EOS} at position 4 is not a rotation action id"),
        ([-5] + good[1:], "position 0"),
        ([10**6] + good[1:], "position 0"),
        (["a"] * 12, "integer token ids"),
        ([[1, 2], [3, 4]], "integer token ids"),
        ([0.5] * 12, "integer token ids"),
        (None, "integer token ids"),
    ]
    for ids, message in cases:
        with pytest.raises(ActionDecodeError, match=message) as info:
            codec.decode(ids)
        assert info.value.text
    with pytest.raises(ValueError, match="shape"):
        codec.encode(np.zeros(7))  # chunk_size 4 needs [4, 7]


def test_action_tokens_may_be_special_tokens(stats):
    """Only eos/pad are cut: a tokenizer that lists the action tokens among its special ids still decodes."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{t: 3 + i for i, t in enumerate(ACTION_TOKENS)}}
    special = SimpleNamespace(get_vocab=lambda: vocab, vocab_size=3, all_special_ids=list(range(3 + 8194)),
                              eos_token_id=1, pad_token_id=0)
    codec = build(special, stats)
    ids = codec.encode(np.zeros((4, 7)))
    assert ids[-1] in special.all_special_ids
    np.testing.assert_array_equal(codec.decode(ids + [1, 0]), codec.decode(ids))


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(-3, 12), st.integers(8190, 8210), st.integers(0, 8210)),
                    max_size=14))
def test_any_ids_decode_or_raise_decode_error(codecs, ids):
    codec = codecs["gaussian"]
    try:
        actions = codec.decode(ids)
    except ActionDecodeError as exc:
        assert exc.reason
    else:
        assert actions.shape == (4, 7) and np.isfinite(actions).all()


# -- the official tokenizer and checkpoint config -----------------------------------------------
def test_official_tokenizer_holds_the_tokens_at_upstream_ids(stats):
    from transformers import AutoTokenizer

    require_fixture(FIXTURE)
    official = AutoTokenizer.from_pretrained(str(FIXTURE))
    config = json.loads((FIXTURE / "config.json").read_text())
    codec = build(official, stats)
    begin = config["action_token_begin_idx"]
    assert codec.action_token_ids.tolist() == list(range(begin, begin + config["spatial_token_num"]))
    assert (begin, official.convert_ids_to_tokens(begin + 8193)) == (1168, "<ACTION08193>")
    ids = codec.encode(np.zeros((4, 7)))
    # the suffix a SpatialVLA prompt ends with: the action tokens then eos, as the tokenizer writes them
    text = "".join(official.convert_ids_to_tokens(ids)) + official.eos_token
    written = official(text, add_special_tokens=False)["input_ids"]
    assert written == ids + [official.eos_token_id]
    np.testing.assert_array_equal(codec.decode(written + [official.pad_token_id]), codec.decode(ids))


def processor_config(policy, chunk=4, bins=16):
    """A SpatialVLA processor_config.json's action part (upstream SpatialVLAProcessor's saved fields)."""
    num_bins = {"translation": {"theta_bins": bins, "phi_bins": 32, "r_bins": 8}, "gripper": 2,
                "rotation": {"roll_bins": 16, "pitch_bins": 16, "yaw_bins": 16}}
    action = {"q01": Q01.tolist(), "q99": Q99.tolist(), "mask": [True] * 6 + [False]}
    return {"action_chunk_size": chunk, "bin_policy": policy, "action_config": {"num_bins": num_bins},
            "statistics": {"fractal20220817_data/0.1.0": {"action": action}}}


def test_checkpoint_processor_config_decodes_with_its_own_bins(tokenizer, tmp_path):
    policy = gaussian_bin_policy(FRACTAL_GAUSSIAN)
    (tmp_path / "processor_config.json").write_text(json.dumps(processor_config(policy, chunk=2)))
    codec = SpatialCodec.from_processor_config(tmp_path)
    stats = statistics_from_processor_config(tmp_path)
    codec.bind(tokenizer, stats)
    assert codec.chunk_size == 2 and codec.bin_policy == policy
    begin = codec.action_token_ids[0]
    offset = (3 * 32 + 20) * 8 + 5  # θ bin 3, φ bin 20, r bin 5
    actions = codec.decode([begin + offset, begin + 4096 + 7 * 256 + 8 * 16 + 9, begin + 8193] * 2)
    centre = {n: (policy[g][f"{n}_bins"][i] + policy[g][f"{n}_bins"][i + 1]) / 2
              for g, n, i in [("translation", "theta", 3), ("translation", "phi", 20), ("translation", "r",
                                                                                        5),
                              ("rotation", "roll", 7), ("rotation", "pitch", 8), ("rotation", "yaw", 9)]}
    xyz = np.clip([centre["r"] * math.sin(centre["theta"]) * math.cos(centre["phi"]),
                   centre["r"] * math.sin(centre["theta"]) * math.sin(centre["phi"]),
                   centre["r"] * math.cos(centre["theta"])], -1, 1)
    normalised = [*xyz, centre["roll"], centre["pitch"], centre["yaw"]]
    expected = 0.5 * (np.array(normalised) + 1) * (Q99[:6] - Q01[:6]) + Q01[:6]  # upstream's un-normalisation
    np.testing.assert_allclose(actions[:, :6], [expected, expected], atol=1e-6)
    assert actions[:, 6].tolist() == [1.0, 1.0]


def test_processor_config_mismatches_are_usage_errors(tmp_path):
    policy = uniform_bin_policy()
    with pytest.raises(UsageError, match="32 theta bins"):
        SpatialCodec.from_processor_config(processor_config(policy, bins=32))
    with pytest.raises(UsageError, match="no 'bin_policy'"):
        SpatialCodec.from_processor_config({"action_chunk_size": 4})
    with pytest.raises(UsageError, match="bin_policy"):
        SpatialCodec.from_processor_config({"bin_policy": {"translation": {}}})
    with pytest.raises(UsageError, match="cannot read"):
        SpatialCodec.from_processor_config(tmp_path / "missing.json")
    two = processor_config(policy)
    two["statistics"]["bridge_orig/1.0.0"] = two["statistics"]["fractal20220817_data/0.1.0"]
    with pytest.raises(UsageError, match="Available: fractal20220817_data/0.1.0, bridge_orig/1.0.0"):
        statistics_from_processor_config(two)
    assert statistics_from_processor_config(two, "bridge_orig/1.0.0").mask.tolist() == [True] * 6 + [False]


# -- embedding re-gridding ---------------------------------------------------------------------------
def centre_features(policy):
    """[8194, 4] rows: each cell's (first, second, third) bin centre and a 1; gripper rows random."""
    rows = []
    for group in ("translation", "rotation"):
        axes = [np.array(e) for e in policy[group].values()]
        centres = [(e[:-1] + e[1:]) / 2 for e in axes]
        grid = np.stack(np.meshgrid(*centres, indexing="ij"), -1).reshape(-1, 3)
        rows.append(np.concatenate([grid, np.ones((len(grid), 1))], 1))
    return torch.tensor(np.concatenate(rows + [np.random.default_rng(0).normal(size=(2, 4))]))


def test_embedding_adaption_reads_rows_at_the_new_centres():
    old, new = uniform_bin_policy(), gaussian_bin_policy(FRACTAL_GAUSSIAN)
    weight = centre_features(old)
    before = weight.clone()
    adapted = spatial_embedding_adaption(old, new, weight)
    assert torch.equal(weight, before) and torch.equal(adapted[8192:], weight[8192:])
    # trilinear interpolation reproduces an affine function of the centres; beyond the outermost old
    # centres the edge row is kept, i.e. the new centre is clamped into the old centres' range
    expected = centre_features(new)
    for group, rows in (("translation", slice(0, 4096)), ("rotation", slice(4096, 8192))):
        for axis, e in enumerate(old[group].values()):
            centres = (np.array(e[:-1]) + np.array(e[1:])) / 2
            expected[rows, axis] = expected[rows, axis].clamp(float(centres[0]), float(centres[-1]))
    torch.testing.assert_close(adapted, expected, rtol=0, atol=1e-9)


def test_embedding_adaption_keeps_rows_when_bins_do_not_change():
    policy = gaussian_bin_policy(FRACTAL_GAUSSIAN)
    weight = torch.randn(8194, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    adapted = spatial_embedding_adaption(policy, policy, weight)
    assert adapted.dtype == torch.bfloat16 and torch.equal(adapted, weight)
    with pytest.raises(ValueError, match="8194, D"):
        spatial_embedding_adaption(policy, policy, torch.zeros(100, 8))
