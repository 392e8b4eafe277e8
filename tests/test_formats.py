"""Number formats and their rounding (zipsgd.formats): exact codes computed by hand,
unbiasedness measured, saturation, denormals, the counter-based random bits."""

import math

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import formats as f

R_UP = np.uint32(0xFFFFFFFF)   # the largest random word: rounds up whenever the fraction is not 0
R_DOWN = np.uint32(0)          # never rounds up


# --------------------------------------------------------------------------------------
# Random bits
# --------------------------------------------------------------------------------------
def slow_mix32(x):
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = x * 0x7FEB352D % 2**32
    x ^= x >> 15
    x = x * 0x846CA68B % 2**32
    return x ^ (x >> 16)


def slow_bits(seed, ctr, i):
    key = slow_mix32(slow_mix32(seed) ^ ctr)
    return slow_mix32((key + 0x9E3779B9 * (i + 1)) % 2**32)


def test_random_bits_golden_and_slow_model():
    assert f.mix32([0, 1, 2, 0xFFFFFFFF]).tolist() == [0, 1753845952, 3507691905, 1734902346]
    assert f.random_bits(12345, f.counter(7, 1), np.arange(4)).tolist() == \
        [3853894036, 1712466654, 31763996, 579540714]
    rng = np.random.default_rng(0)
    for _ in range(20):
        seed, ctr = int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))
        idx = rng.integers(0, 5000, size=7)
        assert f.random_bits(seed, ctr, idx).tolist() == [slow_bits(seed, ctr, int(i)) for i in idx]
    assert f.counter(7, f.STREAM_MODEL) == 29 and f.counter(2**30, 2) == 2
    rb = f.RandomBits(99, 50)
    assert np.array_equal(rb(3, f.STREAM_GRAD), f.random_bits(99, f.counter(3, 0), np.arange(50)))


def test_random_bits_look_uniform():
    r = np.concatenate([f.random_bits(1, f.counter(t, 0), np.arange(4096)) for t in range(64)]).astype(np.float64)
    u = r / 2**32
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    counts = np.bincount((u * 16).astype(int), minlength=16)
    chi2 = float(((counts - u.size / 16) ** 2 / (u.size / 16)).sum())
    assert chi2 < 50            # 15 degrees of freedom: p ~ 1e-5
    # neighbouring lanes and neighbouring counters are not correlated
    a = f.random_bits(1, 0, np.arange(1 << 16)).astype(np.float64)
    b = f.random_bits(1, 4, np.arange(1 << 16)).astype(np.float64)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02 and abs(np.corrcoef(a, b)[0, 1]) < 0.02


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, name, bits, top", [
    ("fixed8", "fixed8.6", 8, 127 / 64),
    ("fixed16", "fixed16.12", 16, 32767 / 4096),
    ("fixed16.10", "fixed16.10", 16, 32767 / 1024),
    ("fixed4:frac=1", "fixed4.1", 4, 3.5),
    ("fixed32", "fixed32.24", 32, (2**31 - 1) / 2**24),
    ("float:e4m3", "float:e4m3:bias=7", 8, 480.0),
    ("float:e5m2:bias=12", "float:e5m2:bias=12", 8, 7 * 2**17),
    ("float:e5m10", "float:e5m10:bias=15", 16, (2**11 - 1) * 2**6),   # no inf codes: to 2**16
    ("log8", "log8:top=1", 8, 2.0),
    ("log6:top=-3", "log6:top=-3", 6, 0.125),
])
def test_parse(spec, name, bits, top):
    fmt = f.parse(spec)
    assert fmt.name == name and fmt.bits == bits and fmt.max_value == top
    assert f.parse(fmt.name) == fmt and f.parse(fmt) is fmt


def test_fixed32_is_the_engine_model():
    fmt = f.parse("fixed32")
    assert fmt == f.ENGINE_MODEL and fmt.is_engine_model
    assert (fmt.code_min, fmt.code_max, fmt.frac) == (c.MODEL.min, c.MODEL.max, c.MODEL.frac)
    v = np.random.default_rng(1).standard_normal(10000) * 40
    v[:4] = [1000.0, -1000.0, 0.5 / c.MODEL.one, -0.5 / c.MODEL.one]
    assert np.array_equal(fmt.codes(v), c.MODEL.to_fixed(v))
    G = np.random.default_rng(2).integers(-2**46, 2**46, size=10000)
    assert np.array_equal(f.round_shift(G, 16), c.rshift_round(G, 16))


@pytest.mark.parametrize("bad", ["fixed0", "fixed33", "fixed8.70", "float:e0m3", "float:e9m3", "float:e4m24",
                                 "log1", "log10", "int8", "fixed8:bias=3", "float:e4m3:bias=x", 8])
def test_parse_refuses(bad):
    with pytest.raises(ValueError):
        f.parse(bad)


# --------------------------------------------------------------------------------------
# Exact codes, by hand
# --------------------------------------------------------------------------------------
def test_fixed8_codes():
    F = f.parse("fixed8")               # step 1/64, codes -128..127
    v = [0.3, -0.3, 3 / 128, -3 / 128, 5.0, -5.0, 1 / 128, 0.0]
    # 0.3*64 = 19.2; +-1.5 rounds half up (2, -1); +-5 saturates
    assert F.codes(v).tolist() == [19, -19, 2, -1, 127, -128, 1, 0]
    assert F.encode([-1 / 64, -2.0]).tolist() == [255, 128]
    assert F.decode([255, 128, 127]).tolist() == [-1 / 64, -2.0, 127 / 64]
    # stochastic: 0.25 + 1/256 is code 16.25 -> up iff r >= 3 * 2**30
    x = 0.25 + 1 / 256
    assert F.codes(x, "stochastic", np.uint32(3 * 2**30 - 1)) == 16
    assert F.codes(x, "stochastic", np.uint32(3 * 2**30)) == 17
    # negative: -16.25 = -17 + 0.75 -> up (to -16) iff r >= 2**30
    assert F.codes(-x, "stochastic", np.uint32(2**30 - 1)) == -17
    assert F.codes(-x, "stochastic", np.uint32(2**30)) == -16
    # exact values on the grid never move, whatever r
    assert F.codes(0.5, "stochastic", R_UP) == 32 and F.codes(0.5, "stochastic", R_DOWN) == 32
    # saturation in both roundings
    assert F.codes([9.0, -9.0], "stochastic", R_UP).tolist() == [127, -128]


def test_fixed_from_integers_matches_from_floats():
    F = f.parse("fixed16.12")
    rng = np.random.default_rng(3)
    n = rng.integers(-2**45, 2**45, size=5000)
    n[:4] = [2**62, -2**62, 2**43, -2**43 - 1]
    r = rng.integers(0, 2**32, size=5000).astype(np.uint32)
    small = np.abs(n) < 2**52                        # exact as float64
    for rounding in ("nearest", "stochastic"):
        from_int = F.codes_from_int(n, 40, rounding, r)
        from_float = F.codes(np.ldexp(n.astype(np.float64), -40), rounding, r)
        assert np.array_equal(from_int[small], from_float[small])
        assert from_int[0] == F.code_max and from_int[1] == F.code_min
    # a coarser input grid (frac_in < frac) is exact
    assert F.codes_from_int(np.array([3, -3, 2**40]), 4).tolist() == [3 << 8, -3 << 8, F.code_max]


def test_float_e4m3_codes():
    E = f.parse("float:e4m3")           # bias 7: normals 2**-6 .. 480, denormal step 2**-9
    # 0.3: binade [1/4, 1/2), step 1/32: 9.6 -> 10 -> 0.3125 = 0 0101 010
    # 17: step 2: 8.5 -> 9 (half away from zero) -> 18 = 0 1011 001
    # -0.0029: denormal step 2**-9: 1.48 -> 1 -> 1 0000 001; +-1000 saturates to 480 = 0 1111 111
    v = [0.3, 17.0, -0.0029, 1000.0, -1000.0, 3 * 2**-10, 2**-10, 0.0]
    assert E.encode(v).tolist() == [42, 89, 129, 127, 255, 2, 1, 0]
    assert E.quantize(v).tolist() == [0.3125, 18.0, -2**-9, 480.0, -480.0, 2**-8, 2**-9, 0.0]
    assert E.decode([42, 89, 129, 127, 0x80]).tolist() == [0.3125, 18.0, -2**-9, 480.0, 0.0]
    # stochastic: 17 is half a step above 16 -> up iff r >= 2**31
    assert E.quantize(17.0, "stochastic", np.uint32(2**31 - 1)) == 16.0
    assert E.quantize(17.0, "stochastic", np.uint32(2**31)) == 18.0
    # sign and magnitude: -17 rounds its magnitude the same way
    assert E.quantize(-17.0, "stochastic", np.uint32(2**31)) == -18.0
    # a carry out of the mantissa lands on the next binade: 31 -> 32 (step 2 below 32)
    assert E.quantize(31.0, "stochastic", R_UP) == 32.0 and E.quantize(31.0) == 32.0
    # saturation: just below the top rounds up only to the top
    assert E.quantize(479.0, "stochastic", R_UP) == 480.0 and E.quantize(1e30, "stochastic", R_UP) == 480.0


def test_float_denormals():
    E = f.parse("float:e4m3")
    den = E.values()[(E.values() > 0) & (E.values() < 2**-6)]
    assert den.tolist() == [k * 2**-9 for k in range(1, 8)]          # 7 denormals, evenly spaced
    # between 0 and the smallest denormal: up with probability v / 2**-9
    v = 0.25 * 2**-9
    assert E.quantize(v, "stochastic", np.uint32(3 * 2**30 - 1)) == 0.0
    assert E.quantize(v, "stochastic", np.uint32(3 * 2**30)) == 2**-9
    assert E.quantize(v) == 0.0
    # the smallest normal binade shares the denormal step
    assert E.quantize(2**-6 + 2**-9) == 2**-6 + 2**-9


def test_float_matches_ieee_where_they_agree():
    rng = np.random.default_rng(4)
    v = rng.standard_normal(20000) * np.exp2(rng.integers(-20, 20, size=20000))
    e5m10 = f.parse("float:e5m10")
    ok = np.abs(v) < 60000
    assert np.array_equal(e5m10.quantize(v)[ok], v[ok].astype(np.float16).astype(np.float64))
    e8m23 = f.parse("float:e8m23")
    assert np.array_equal(e8m23.quantize(v), v.astype(np.float32).astype(np.float64))


def test_log8_codes():
    L = f.parse("log8")                 # 0 and +-2**(1 - j), j = 0..126 (= float:e7m0, bias 126)
    assert L == f.LogFormat(8, 1) and L.values().size == 2 * 127 + 1
    # 0.3 = 0.25 * 1.2: nearest 0.25 (linear distance), 0.4 = 0.25 * 1.6: 0.5
    v = [0.3, 0.4, -0.3, 2**-126, 0.74 * 2**-125, 5.0]
    assert L.encode(v).tolist() == [124, 125, 252, 1, 1, 127]
    assert L.quantize(v).tolist() == [0.25, 0.5, -0.25, 2**-125, 2**-125, 2.0]
    # stochastic between neighbouring powers: 0.3 goes up with probability 0.2
    t = math.floor(0.2 * 2**32)
    assert L.quantize(0.3, "stochastic", np.uint32(2**32 - t - 1)) == 0.25
    assert L.quantize(0.3, "stochastic", np.uint32(2**32 - t)) == 0.5
    assert np.array_equal(L.values(), np.unique(f.FloatFormat(7, 0, 126).values()))


# --------------------------------------------------------------------------------------
# Unbiasedness and nearest
# --------------------------------------------------------------------------------------
FORMATS = ["fixed8", "fixed4", "fixed16.10", "float:e4m3", "float:e2m1", "float:e5m2", "log8", "log4"]


@pytest.mark.parametrize("spec", FORMATS)
def test_stochastic_rounding_is_unbiased(spec):
    fmt = f.parse(spec)
    rng = np.random.default_rng(5)
    top = min(fmt.max_value, 4.0)
    v = rng.uniform(-top, top, size=40)
    v[:3] = [0.3 * top, -0.01 * top, 1e-3 * top]
    draws = 20000
    r = f.random_bits(11, 0, np.arange(v.size * draws)).reshape(draws, v.size)
    q = fmt.quantize(np.broadcast_to(v, (draws, v.size)), "stochastic", r)
    vals = fmt.values() if fmt.bits <= 16 else None
    lo = np.array([vals[vals <= x].max() for x in v])
    hi = np.array([vals[vals >= x].min() for x in v])
    assert np.all((q == lo) | (q == hi))                     # one of the two neighbours, always
    sd = np.sqrt(np.maximum((v - lo) * (hi - v), 1e-300) / draws)
    z = np.abs(q.mean(axis=0) - v) / sd
    assert np.all(z[(hi > lo)] < 5.5), z.max()


@pytest.mark.parametrize("spec", FORMATS)
def test_nearest_is_nearest(spec):
    fmt = f.parse(spec)
    vals = fmt.values()
    v = np.random.default_rng(6).uniform(-1.2 * fmt.max_value, 1.2 * fmt.max_value, size=3000)
    q = fmt.quantize(v)
    best = np.abs(v[:, None] - vals[None, :]).min(axis=1)
    assert np.allclose(np.abs(v - q), best, rtol=0, atol=1e-12 * fmt.max_value)
    assert np.all(np.isin(q, vals))


def test_rounding_needs_random_bits_and_a_known_mode():
    with pytest.raises(ValueError, match="random bits"):
        f.parse("fixed8").codes(0.3, "stochastic")
    with pytest.raises(ValueError, match="rounding"):
        f.parse("log8").quantize(0.3, "down")
    with pytest.raises(ValueError, match="NaN"):
        f.parse("float:e4m3").quantize(np.nan)


def test_scaled_to_covers_the_radius():
    for spec in ("fixed8", "fixed4", "float:e4m3", "log6"):
        fmt = f.parse(spec)
        for radius in (1e-5, 0.3, 1.0, 77.0):
            s = fmt.scaled_to(radius)
            assert s.bits == fmt.bits and type(s) is type(fmt)
            assert radius <= s.max_value < 2 * radius + 1e-300      # the smallest power-of-two scale
    assert f.parse("fixed8").scaled_to(1.0) == f.FixedFormat(8, 6)   # step 1/64 >= 1/127
    assert f.parse("fixed8").scaled_to(127 / 2**14) == f.FixedFormat(8, 14)
    assert f.parse("fixed8").scaled_to(1 / 127) == f.FixedFormat(8, 13)     # 127 / 2**14 < 1/127


def test_round_float_and_round_shift_agree():
    rng = np.random.default_rng(7)
    n = rng.integers(-2**50, 2**50, size=5000)
    r = rng.integers(0, 2**32, size=5000).astype(np.uint32)
    for s in (0, 5, 16, 31, 32, 33, 45):
        for rounding in ("nearest", "stochastic"):
            a = f.round_shift(n, s, rounding, r)
            b = f.round_float(np.ldexp(n.astype(np.float64), -s), rounding, r)
            assert np.array_equal(a, b), (s, rounding)
