"""Codebooks, stochastic rounding, double sampling and scaling (zipsgd.quant)."""

import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from zipsgd import quant as q
from zipsgd.contract import BITS_ALLOWED, FEAT

N_DRAWS = 200_000
Z_MAX = 5.0


def on_grid(levels):
    return np.array_equal(FEAT.to_float(FEAT.to_fixed(levels)), levels)


def total_cost(data, levels):
    return float(q.rounding_variance(data, levels).sum())


@functools.lru_cache(maxsize=None)
def _datasets():
    rng = np.random.default_rng(7)
    e = rng.exponential(1.0, 5000)
    return {
        "normal": np.clip(rng.normal(0.0, 0.3, 5000), -1, 1),
        "exponential": 2 * e / e.max() - 1,
        "sparse": np.where(rng.random(5000) < 0.7, 0.0, rng.uniform(-1, 1, 5000)),
        "uniform": rng.uniform(-1, 1, 5000),
    }


def datasets():
    """Test data sets in [-1, 1] (fresh copies of cached arrays)."""
    return {k: v.copy() for k, v in _datasets().items()}


@functools.lru_cache(maxsize=None)
def codebook(kind, bits, data="normal"):
    levels = q.make_codebook(kind, bits, _datasets()[data])
    levels.flags.writeable = False
    return levels


# --------------------------------------------------------------------------------------
# Codebook properties
# --------------------------------------------------------------------------------------
def check_codebook(levels, bits):
    assert isinstance(levels, np.ndarray) and levels.dtype == np.float64
    assert levels.shape == (1 << bits,)
    assert (np.diff(levels) > 0).all()
    assert on_grid(levels)
    assert levels[0] >= -1.0 and levels[-1] <= 1.0


@pytest.mark.parametrize("bits", BITS_ALLOWED)
@pytest.mark.parametrize("kind", q.KINDS)
def test_codebook_properties(kind, bits):
    for name, data in datasets().items():
        levels = q.make_codebook(kind, bits, data, rng=np.random.default_rng(0))
        check_codebook(levels, bits)
        if kind == "optimal":
            # the ends are the data's extremes rounded outwards onto the grid
            assert levels[0] == np.floor(data.min() * FEAT.one) / FEAT.one
            assert levels[-1] == np.ceil(data.max() * FEAT.one) / FEAT.one
        if kind == "weibull":
            if 0.0 not in levels:  # with 0 the mirrored set is one short, completed asymmetrically
                np.testing.assert_array_equal(levels, -levels[::-1])
            assert levels[-1] == np.ceil(np.abs(data).max() * FEAT.one) / FEAT.one


data_arrays = hnp.arrays(np.float64, st.integers(1, 60),
                         elements=st.one_of(st.floats(-1.5, 1.5), st.sampled_from([0.0, 1.0, -1.0, 0.25])))


@settings(max_examples=60, deadline=None)
@given(data=data_arrays, kind=st.sampled_from(q.KINDS), bits=st.sampled_from(BITS_ALLOWED))
def test_codebook_properties_any_data(data, kind, bits):
    check_codebook(q.make_codebook(kind, bits, data), bits)


def test_fixed_codebooks():
    np.testing.assert_array_equal(q.make_codebook("uniform", 1), [-1.0, 1.0])
    np.testing.assert_array_equal(q.make_codebook("uniform", 2), FEAT.to_float(FEAT.to_fixed([-1, -1 / 3, 1 / 3, 1])))
    np.testing.assert_array_equal(q.make_codebook("log", 1), [-1.0, 1.0])
    np.testing.assert_array_equal(q.make_codebook("log", 2), [-1.0, -0.5, 0.5, 1.0])
    log4 = q.make_codebook("log", 4)
    np.testing.assert_array_equal(log4[8:], 2.0 ** -np.arange(8)[::-1])
    log8 = q.make_codebook("log", 8)
    assert log8[128] == 2.0 ** -q.LOG_MIN_EXP and log8[-1] == 1.0
    np.testing.assert_array_equal(log8, -log8[::-1])
    assert 0.0 not in log8
    # data-independent kinds ignore (valid) data
    np.testing.assert_array_equal(q.make_codebook("log", 4, np.zeros(3)), log4)


def test_nearest_round_ties_go_low():
    levels = np.array([-1.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(q.nearest_round([-0.5, 0.25, 0.75, 0.2501, -0.4999], levels), [0, 1, 2, 2, 1])


def test_degenerate_data_fills_to_full_count():
    for data in ([0.5] * 10, [0.0], [0.0, 1.0] * 5, [0.1, 0.1 + 1e-7], [-1.0, 1.0]):
        for kind in ("optimal", "weibull"):
            for bits in BITS_ALLOWED:
                check_codebook(q.make_codebook(kind, bits, np.array(data)), bits)
    # few distinct values: they are all levels, so rounding them costs nothing
    data = np.array([-0.5, 0.0, 0.25, 0.75] * 3)
    for bits in (2, 4, 8):
        assert total_cost(data, q.make_codebook("optimal", bits, data)) == 0.0


def test_codebook_deterministic():
    data = datasets()["normal"]
    for kind in q.KINDS:
        a = q.make_codebook(kind, 4, data, rng=np.random.default_rng(3))
        b = q.make_codebook(kind, 4, data, rng=np.random.default_rng(3))
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Variance-optimal DP
# --------------------------------------------------------------------------------------
def grid_data(rng, n_unique, n):
    """n values drawn from n_unique random FEAT grid points."""
    vals = rng.choice(np.arange(-FEAT.one, FEAT.one + 1), n_unique, replace=False) / FEAT.one
    return rng.choice(vals, n)


@pytest.mark.parametrize("seed", range(6))
def test_optimal_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    data = np.r_[grid_data(rng, 12, 40), -0.5, 0.5]
    vals = np.unique(data)
    best_cost, best = np.inf, None
    for inner in itertools.combinations(vals[1:-1], 2):  # 4 levels, ends fixed at min and max
        levels = np.r_[vals[0], inner, vals[-1]]
        cost = total_cost(data, levels)
        if cost < best_cost - 1e-12:
            best_cost, best = cost, levels
    for exact in (True, False):
        levels = q.make_codebook("optimal", 2, data, exact=exact)
        assert total_cost(data, levels) == pytest.approx(best_cost, rel=1e-9, abs=1e-12)
        np.testing.assert_array_equal(levels[[0, -1]], best[[0, -1]])


def naive_dp(first, cost, m, s):
    """Plain O(s m^2) DP: best total cost with the last level at candidate m-1."""
    D = np.array(first, dtype=np.float64)
    for _ in range(1, s):
        D = np.array([min([D[i] + cost(i, k) for i in range(k)], default=np.inf) for k in range(m)])
    return D[m - 1]


@pytest.mark.parametrize("seed", range(8))
def test_divide_and_conquer_dp_equals_naive_dp(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(5, 40))
    s = int(rng.integers(2, min(m, 12) + 1))
    c = np.sort(rng.choice(np.arange(-FEAT.one, FEAT.one + 1), m, replace=False)) / FEAT.one
    x = rng.uniform(c[0], c[-1], 300)
    w = rng.exponential(1.0, 300)
    t = np.searchsorted(c, x, side="right") - 1
    P0, P1, P2 = q._prefix(t, m, x, w)

    def cost(i, k):
        inside = (x >= c[i]) & (x <= c[k])
        return float(np.sum(w[inside] * (x[inside] - c[i]) * (c[k] - x[inside])))

    for first in (None, rng.uniform(0, 5, m)):
        idx = q._interval_dp(c, P0, P1, P2, s, first=first)
        assert idx.shape == (s,) and (np.diff(idx) > 0).all() and idx[-1] == m - 1
        start = np.r_[0.0, np.full(m - 1, np.inf)] if first is None else first
        got = start[idx[0]] + sum(cost(i, k) for i, k in zip(idx[:-1], idx[1:]))
        assert got == pytest.approx(naive_dp(start, cost, m, s), rel=1e-9, abs=1e-12)


def test_fast_path_close_to_exact():
    rng = np.random.default_rng(11)
    data = np.round(np.clip(rng.normal(0, 0.3, 20000), -1, 1) * FEAT.one) / FEAT.one
    for bits in (2, 4):
        exact = total_cost(data, q.make_codebook("optimal", bits, data, exact=True))
        fast = total_cost(data, q.make_codebook("optimal", bits, data, max_candidates=256))
        assert exact <= fast * (1 + 1e-9)  # exact is the optimum over all codebooks
        assert fast <= exact * 1.01


@pytest.mark.parametrize("bits", BITS_ALLOWED[1:])
def test_optimal_beats_uniform_on_skewed_data(bits):
    rng = np.random.default_rng(5)
    data = q.Scaler("global").fit_transform(rng.exponential(1.0, (20000, 1))).ravel()
    opt = total_cost(data, q.make_codebook("optimal", bits, data))
    uni = total_cost(data, q.make_codebook("uniform", bits))
    assert opt < 0.7 * uni


# --------------------------------------------------------------------------------------
# Weibull
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, lam", [(0.6, 0.05), (1.0, 0.2), (2.5, 0.4)])
def test_fit_weibull_recovers_parameters(k, lam):
    x = lam * np.random.default_rng(1).weibull(k, 100_000)
    k_hat, lam_hat = q.fit_weibull(x)
    assert k_hat == pytest.approx(k, rel=0.03)
    assert lam_hat == pytest.approx(lam, rel=0.03)


@pytest.mark.parametrize("bits", BITS_ALLOWED[1:])
def test_weibull_beats_uniform_on_weibull_data(bits):
    rng = np.random.default_rng(9)
    x = rng.weibull(0.8, 50_000) * rng.choice([-1.0, 1.0], 50_000)
    x /= np.abs(x).max()
    wb = total_cost(x, q.make_codebook("weibull", bits, x))
    uni = total_cost(x, q.make_codebook("uniform", bits))
    assert wb < 0.5 * uni


# --------------------------------------------------------------------------------------
# Stochastic rounding: unbiasedness and variance (statistical)
# --------------------------------------------------------------------------------------
def probe_values(levels):
    """A level, and points at fractions 0.1 / 0.5 / 0.77 of three intervals."""
    j = np.unique([0, len(levels) // 2 - 1, len(levels) - 2])
    fr = np.array([0.1, 0.5, 0.77])
    inner = (levels[j, None] + fr * (levels[j + 1] - levels[j])[:, None]).ravel()
    return np.r_[levels[len(levels) // 2], inner]


def z_scores(levels, values, codes):
    """|mean - a| in standard errors of the exact rounding variance (inf if biased with 0 variance)."""
    means = levels[codes].reshape(len(values), -1).mean(axis=1)
    se = np.sqrt(q.rounding_variance(values, levels) / codes.size * len(values))
    err = np.abs(means - values)
    return np.where(se > 0, err / np.where(se > 0, se, 1), np.where(err == 0, 0.0, np.inf))


def unbiased(levels, values, codes):
    return bool((z_scores(levels, values, codes) <= Z_MAX).all())


CODEBOOKS = [(k, b) for k in q.KINDS for b in (1, 2, 4)]


@pytest.mark.parametrize("kind, bits", CODEBOOKS)
def test_stochastic_round_unbiased(kind, bits):
    levels = codebook(kind, bits)
    values = probe_values(levels)
    a = np.repeat(values, N_DRAWS)
    codes = q.stochastic_round(a, levels, np.random.default_rng(bits))
    assert unbiased(levels, values, codes)
    c1, c2 = q.double_sample(a, levels, np.random.default_rng(bits + 100))
    assert unbiased(levels, values, c1) and unbiased(levels, values, c2)
    # the check has teeth: nearest rounding is biased off the levels
    near = q.nearest_round(a, levels)
    z = z_scores(levels, values, near)
    assert z[0] == 0.0 and (z[1:] > Z_MAX).all()
    assert not unbiased(levels, values, near)


def test_variance_matches_formula():
    levels = codebook("optimal", 4, "exponential")
    values = probe_values(levels)[1:]
    codes = q.stochastic_round(np.repeat(values, N_DRAWS), levels, np.random.default_rng(0))
    emp = levels[codes].reshape(len(values), -1).var(axis=1)
    j = np.searchsorted(levels, values, side="right") - 1
    formula = (values - levels[j]) * (levels[j + 1] - values)
    np.testing.assert_allclose(q.rounding_variance(values, levels), formula, rtol=1e-12)
    np.testing.assert_allclose(emp, formula, rtol=0.03)


def test_double_sample_independent():
    levels = q.make_codebook("uniform", 2)
    values = np.array([-0.8, 0.1, 0.5])
    c1, c2 = q.double_sample(np.repeat(values, N_DRAWS), levels, np.random.default_rng(4))
    q1, q2 = levels[c1].reshape(3, -1), levels[c2].reshape(3, -1)
    cov = ((q1 - values[:, None]) * (q2 - values[:, None])).mean(axis=1)
    var = q.rounding_variance(values, levels)
    assert (np.abs(cov) <= Z_MAX * var / np.sqrt(N_DRAWS)).all()


# --------------------------------------------------------------------------------------
# Rounding: exact properties
# --------------------------------------------------------------------------------------
levels_st = st.sampled_from([(k, b) for k in q.KINDS for b in BITS_ALLOWED])


@settings(max_examples=80, deadline=None)
@given(kb=levels_st, a=hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 5)),
                                  elements=st.floats(-1.2, 1.2)), seed=st.integers(0, 2**32 - 1))
def test_rounding_codes_bracket_values(kb, a, seed):
    levels = codebook(*kb)
    c1 = q.stochastic_round(a, levels, np.random.default_rng(seed))
    d1, d2 = q.double_sample(a, levels, np.random.default_rng(seed))
    near = q.nearest_round(a, levels)
    for codes in (c1, d1, d2, near):
        assert codes.dtype == np.uint8 and codes.shape == a.shape
    np.testing.assert_array_equal(c1, d1)  # documented: codes1 is the first draw
    ac = np.clip(a, levels[0], levels[-1])
    j = np.clip(np.searchsorted(levels, ac, side="right") - 1, 0, len(levels) - 2)
    for codes in (c1, d1, d2, near):
        assert ((codes == j) | (codes == j + 1)).all()
    assert (np.abs(d1.astype(int) - d2.astype(int)) <= 1).all()
    # nearest: no level is closer; ties go to the lower level
    dist = np.abs(levels[near] - ac)
    assert (dist <= np.abs(levels[:, None, None] - ac).min(axis=0)).all()
    tie = ac == (levels[j] + levels[j + 1]) / 2
    assert (near[tie] == j[tie]).all()


@pytest.mark.parametrize("kind, bits", [(k, b) for k in q.KINDS for b in BITS_ALLOWED])
def test_levels_map_to_themselves(kind, bits):
    levels = codebook(kind, bits, "sparse")
    a = np.tile(levels, 50)
    want = np.tile(np.arange(len(levels)), 50)
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(q.stochastic_round(a, levels, rng), want)
    c1, c2 = q.double_sample(a, levels, rng)
    np.testing.assert_array_equal(c1, want)
    np.testing.assert_array_equal(c2, want)
    np.testing.assert_array_equal(q.nearest_round(a, levels), want)
    assert (q.rounding_variance(a, levels) == 0).all()
    # outside the range: clipped to the end levels
    out = np.array([-5.0, levels[0] - 1e-3, levels[-1] + 1e-3, 7.0])
    np.testing.assert_array_equal(q.stochastic_round(out, levels, rng), [0, 0, len(levels) - 1, len(levels) - 1])


def test_determinism():
    levels = q.make_codebook("log", 4)
    a = np.random.default_rng(0).uniform(-1, 1, (500, 7))
    same = [q.stochastic_round(a, levels, np.random.default_rng(42)) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    assert not np.array_equal(same[0], q.stochastic_round(a, levels, np.random.default_rng(43)))
    d = [q.double_sample(a, levels, np.random.default_rng(42)) for _ in range(2)]
    np.testing.assert_array_equal(d[0][0], d[1][0])
    np.testing.assert_array_equal(d[0][1], d[1][1])
    other = q.double_sample(a, levels, np.random.default_rng(43))
    assert not np.array_equal(d[0][1], other[1])
    assert not np.array_equal(d[0][0], d[0][1])  # the two samples are different draws


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(ValueError, match="kind='median'"):
        q.make_codebook("median", 4, np.zeros(3))
    for bits in (9, 0, 16, True, "4", 4.0):
        with pytest.raises(ValueError, match=f"bits={bits!r}"):
            q.make_codebook("uniform", bits)
    for kind in ("optimal", "weibull"):
        with pytest.raises(ValueError, match="needs data"):
            q.make_codebook(kind, 4)
    with pytest.raises(ValueError, match="NaN"):
        q.make_codebook("optimal", 4, np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="inf"):
        q.make_codebook("weibull", 4, np.array([0.1, -np.inf]))
    with pytest.raises(ValueError, match="NaN"):
        q.make_codebook("uniform", 4, np.array([np.nan]))
    with pytest.raises(ValueError, match="empty"):
        q.make_codebook("optimal", 4, np.array([]))
    with pytest.raises(ValueError, match="max_candidates"):
        q.make_codebook("optimal", 4, np.zeros(3), max_candidates=1)
    levels = q.make_codebook("uniform", 2)
    with pytest.raises(ValueError, match="NaN"):
        q.stochastic_round(np.array([np.nan]), levels, np.random.default_rng(0))
    with pytest.raises(ValueError, match="strictly increasing"):
        q.double_sample(np.zeros(2), levels[::-1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2"):
        q.nearest_round(np.zeros(2), [0.0])
    with pytest.raises(ValueError, match="no non-zero"):
        q.fit_weibull(np.zeros(5))


# --------------------------------------------------------------------------------------
# Scaler
# --------------------------------------------------------------------------------------
def check_unscale(scaler, X, rng):
    Xs = scaler.fit_transform(X)
    assert Xs.shape == X.shape and np.abs(Xs).max() <= 1.0
    w, b = rng.normal(size=X.shape[1]), float(rng.normal())
    y_center, y_scale = float(rng.normal() * 10), float(rng.uniform(0.1, 100))
    coef, icpt = scaler.unscale_coef(w, b, y_center=y_center, y_scale=y_scale)
    want = y_center + y_scale * (Xs @ w + b)
    got = X @ coef + icpt
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("mode", ["feature", "global"])
def test_scaler(mode):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)) * [1, 10, 1e3, 0.01, 1] + [0, -5, 1e4, 3, 0]
    X[:, 4] = 2.5  # constant column
    sc = q.Scaler(mode)
    Xs = sc.fit_transform(X)
    if mode == "feature":
        np.testing.assert_allclose(Xs[:, :4].min(axis=0), -1)
        np.testing.assert_allclose(Xs[:, :4].max(axis=0), 1)
        assert (Xs[:, 4] == 0).all()
    else:
        assert Xs.min() == pytest.approx(-1) and Xs.max() == pytest.approx(1)
        np.testing.assert_allclose(Xs, (X - (X.max() + X.min()) / 2) / ((X.max() - X.min()) / 2))
    check_unscale(sc, X, rng)
    # unseen data is clipped
    assert np.abs(sc.transform(X * 3 + 7)).max() <= 1.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), d=st.integers(1, 4), log_scale=st.floats(-3, 3), offset=st.floats(-10, 10),
       constant=st.booleans(), mode=st.sampled_from(["feature", "global"]), seed=st.integers(0, 1000))
def test_scaler_unscale_any_data(n, d, log_scale, offset, constant, mode, seed):
    rng = np.random.default_rng(seed)
    scale = 10.0 ** (log_scale + rng.uniform(-1, 1, d))
    X = (rng.uniform(-1, 1, (n, d)) + offset) * scale
    if constant:
        X[:, 0] = offset
    check_unscale(q.Scaler(mode), X, rng)


def test_scaler_errors():
    with pytest.raises(ValueError, match="mode='column'"):
        q.Scaler("column")
    with pytest.raises(RuntimeError, match="not fitted"):
        q.Scaler().transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        q.Scaler().fit(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        q.Scaler().fit(np.zeros(3))
    sc = q.Scaler().fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3"):
        sc.transform(np.zeros((2, 2)))


# ---- counter-based random bits and rounding with them (prepare_job's quantizer) ------------
def _splitmix64(seed, count):
    """SplitMix64 as published (a sequential reference)."""
    out, state, m = [], seed, (1 << 64) - 1
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & m
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        out.append(z ^ (z >> 31))
    return out


def test_counter_bits_is_splitmix64_addressed_by_counter():
    from zipsgd.quant import counter_bits

    for key in (0, 1, 2**64 - 1, 0x123456789ABCDEF):
        want = _splitmix64(key, 50)
        got = counter_bits(key, np.arange(50))
        assert [int(v) for v in got] == want
        assert int(counter_bits(key, [37])[0]) == want[37]          # any counter, any order


def test_round_with_bits_is_unbiased_and_keeps_levels():
    from zipsgd.quant import counter_bits, interval, round_with_bits

    lv = np.array([-1.0, -0.25, 0.5, 1.0])
    a = np.array([-1.0, -0.6, 0.1, 0.5, 0.9, 1.0, 1.7])
    j, p = interval(a, lv)
    bits = counter_bits(7, np.arange(200_000 * a.size)).reshape(-1, a.size)
    for high in (False, True):
        codes = round_with_bits(j, p, bits, high=high)
        assert set(np.unique(codes - j)) <= {0, 1}
        mean = lv[codes].mean(axis=0)
        assert np.allclose(mean, np.clip(a, -1, 1), atol=4e-3)
        assert np.all(lv[codes[:, [0, 3, 5, 6]]] == np.array([-1.0, 0.5, 1.0, 1.0]))   # on a level: that level
    lo, hi = round_with_bits(j, p, bits), round_with_bits(j, p, bits, high=True)
    assert abs(np.corrcoef(lo[:, 2], hi[:, 2])[0, 1]) < 0.01      # the two halves are independent draws
