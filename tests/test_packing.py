"""Packing round trips, against a slow bit-by-bit packer written from the contract's words."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from zipsgd import contract as c
from zipsgd import packing as p
from zipsgd.testing import random_codes


def slow_pack(layout, labels, fields):
    """Obvious reference: place every field bit by bit into Python-int beats."""
    F, fb, B, W = layout.features_per_beat, layout.feature_bits, layout.beats_per_sample, layout.word_bits
    out = []
    for s_fields, lab in zip(fields, labels):
        beats = [0] * B
        for i, v in enumerate(s_fields):
            beats[i // F] |= int(v) << ((i % F) * fb)
        beats[-1] |= (int(lab) & 0xFFFFFFFF) << (W - 32)
        for beat in beats:
            for h in range(W // 64):
                out.append((beat >> (64 * h)) & 0xFFFFFFFFFFFFFFFF)
    return np.array(out, dtype=np.uint64)


modes = st.sampled_from(c.all_modes() + [(c.Encoding.PAIR, 4), (c.Encoding.PAIR, 8),
                                           (c.Encoding.COMPACT, 1), (c.Encoding.COMPACT, 2)])


@settings(max_examples=150, deadline=None)
@given(mode=modes, W=st.sampled_from(c.WORD_BITS_ALLOWED), n=st.integers(1, 7), d=st.integers(1, 200),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_and_bit_placement(mode, W, n, d, seed):
    enc, bits = mode
    rng = np.random.default_rng(seed)
    layout = c.Layout(W, enc, bits, d)
    job = random_codes(rng, enc, bits, n, d)
    labels = rng.integers(c.MODEL.min, c.MODEL.max + 1, n)
    stream = p.pack(layout, labels, **job)
    assert stream.dtype == np.uint64
    assert stream.size == n * layout.beats_per_sample * W // 64
    fields = p._slot_fields(layout, job.get("codes1"), job.get("codes2"), job.get("values"))
    np.testing.assert_array_equal(stream, slow_pack(layout, labels, fields))
    back = p.unpack(layout, stream)
    np.testing.assert_array_equal(back["labels"], labels)
    for key, v in job.items():
        np.testing.assert_array_equal(back[key], v)


@pytest.mark.parametrize("W", c.WORD_BITS_ALLOWED)
@pytest.mark.parametrize("mode", c.all_modes())
def test_label_never_overlaps_features(W, mode):
    enc, bits = mode
    for d in range(1, 300):
        L = c.Layout(W, enc, bits, d)
        F, B = L.features_per_beat, L.beats_per_sample
        in_last = max(0, d - (B - 1) * F)
        assert in_last <= L.label_beat_features            # features stay below the label
        assert in_last * L.feature_bits <= W - c.LABEL_BITS
        assert B == 1 or (B - 2) * F + L.label_beat_features < d   # and B is the least that works


def test_decode_maps_codes_to_levels():
    layout = c.Layout(64, c.Encoding.COMPACT, 4, 13)
    rng = np.random.default_rng(1)
    job = random_codes(rng, c.Encoding.COMPACT, 4, 5, 13)
    cb = np.sort(rng.integers(-c.FEAT.one, c.FEAT.one, 16))
    q1, q2, _ = p.decode(layout, p.pack(layout, np.zeros(5, dtype=np.int64), **job), cb)
    np.testing.assert_array_equal(q1, cb[job["codes1"]])
    np.testing.assert_array_equal(q2, cb[job["codes2"]])


@pytest.mark.parametrize("layout, bad, match", [
    (c.Layout(64, c.Encoding.PAIR, 2, 2), dict(codes1=[[0, 9]], codes2=[[0, 1]]), "codes must lie"),
    (c.Layout(64, c.Encoding.COMPACT, 4, 2), dict(codes1=[[0, 3]], codes2=[[0, 5]]), "one interval"),
    (c.Layout(64, c.Encoding.PAIR, 2, 2), dict(codes1=[[0, 3]]), "codes2"),
    (c.Layout(64, c.Encoding.FULL, 32, 2), dict(values=[[0, 1 << 20]]), "FULL values"),
    (c.Layout(64, c.Encoding.SINGLE, 4, 3), dict(codes1=[[0, 3]]), "shape"),
])
def test_bad_codes_are_refused(layout, bad, match):
    with pytest.raises(ValueError, match=match):
        p.pack(layout, np.zeros(1, dtype=np.int64), **bad)


def test_layout_refuses_bad_values():
    with pytest.raises(ValueError, match="word_bits"):
        c.Layout(96, c.Encoding.SINGLE, 4, 10)
    with pytest.raises(ValueError, match="bits=9"):
        c.Layout(64, c.Encoding.SINGLE, 9, 10)
    with pytest.raises(ValueError, match="dim"):
        c.Layout(64, c.Encoding.SINGLE, 4, 0)
