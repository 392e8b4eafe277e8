"""The data pipeline: validation, scaling, quantized copies, step registers, backends."""

import math

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import backends as B
from zipsgd import job as J
from zipsgd import packing, reference


def _regression(n=120, d=5, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, size=d) + rng.normal(size=d) * 3
    w = rng.normal(size=d)
    y = X @ w + 7.0 + noise * rng.normal(size=n)
    return X, y


# --------------------------------------------------------------------------------------
# Step registers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("step", [1.9, 1.0, 0.75, 2 ** -6, 0.3e-3, 1 / 3, 2 ** -40, 1e-9])
def test_step_registers_normalised_and_close(step):
    k, m = J.step_registers(step)
    assert 0 <= k <= c.STEP_SHIFT_MAX
    assert 1 <= m <= c.STEP_MULT.max
    if k < c.STEP_SHIFT_MAX:
        assert 2 ** 15 <= m < 2 ** 16
    eff = m * 2.0 ** -(c.STEP_MULT.frac + k)
    assert abs(eff - step) / step <= 2.0 ** -15


def test_step_registers_rounding_up_to_next_power():
    # a step just under 2**-5 rounds m to 2**16: normalisation must move to the next k
    step = 2 ** -5 * (1 - 2 ** -20)
    k, m = J.step_registers(step)
    assert (k, m) == (5, 2 ** 15)


@pytest.mark.parametrize("bad", [0.0, -1.0, 2.0, 5.0, float("nan"), float("inf"), 1e-30])
def test_step_registers_refuse(bad):
    with pytest.raises(ValueError, match="step"):
        J.step_registers(bad)


def test_l2_shift():
    assert J.l2_shift_for(0.1, 0.0) == 0
    assert J.l2_shift_for(2 ** -4, 2 ** -6) == 10
    assert J.l2_shift_for(1.0, 10.0) == 1            # clamped
    assert J.l2_shift_for(2 ** -20, 2 ** -20) == c.L2_SHIFT_MAX


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mutate, match", [
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 7, np.nan, X), y), "NaN"),
    (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 3, np.inf, X), y), "infinity"),
    (lambda X, y: (X[:, 0], y), "2-D"),
    (lambda X, y: (X, y[:-1]), "different numbers of samples"),
    (lambda X, y: (X[:0], y[:0]), "empty"),
    (lambda X, y: (X[:, :0], y), "empty"),
    (lambda X, y: (X, np.where(np.arange(y.size) == 2, np.nan, y)), "y contains NaN"),
])
def test_prepare_job_rejects_bad_data(mutate, match):
    X, y = _regression()
    X, y = mutate(X, y)
    with pytest.raises(ValueError, match=match):
        J.prepare_job(X, y, epochs=1)


@pytest.mark.parametrize("kw, match", [
    (dict(bits=9), "bits=9"), (dict(bits=16), "bits"), (dict(sampling="triple"), "sampling"),
    (dict(levels="fancy"), "levels"), (dict(loss="huber"), "loss"), (dict(step=0), "step"),
    (dict(step=-0.1), "step"), (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
    (dict(word_bits=32), "word_bits"), (dict(alpha=-1), "alpha"), (dict(scale="minmax"), "scale"),
    (dict(epochs=5, params=c.EngineParams(epochs_max=4)), "capacity"),
    (dict(batch_size=8, params=c.EngineParams(batch_max=4)), "capacity"),
])
def test_prepare_job_rejects_bad_options(kw, match):
    X, y = _regression()
    with pytest.raises(ValueError, match=match):
        J.prepare_job(X, y, **{"epochs": 1, **kw})


def test_dimension_over_capacity_names_it():
    X, y = _regression(d=8)
    params = c.EngineParams(dim_max=8)
    with pytest.raises(ValueError, match=r"capacity.*dim_max=8"):
        J.prepare_job(X, y, epochs=1, params=params)          # 8 features + intercept = 9
    job = J.prepare_job(X, y, epochs=1, params=params, fit_intercept=False)
    assert job.dim == 8


def test_classifier_needs_two_classes():
    X, _ = _regression(n=30)
    for loss in ("logistic", "hinge"):
        with pytest.raises(ValueError, match="at least two classes, got 1 class"):
            J.prepare_job(X, np.full(30, 5), loss=loss, epochs=1)


def test_more_classes_pack_class_indices():
    """Three classes or more: the label words are class indices (POS_CLASS jobs); two: the
    loss's labels."""
    from zipsgd import packing
    X, _ = _regression(n=30)
    job = J.prepare_job(X, np.resize(["b", "a", "c"], 30), loss="hinge", epochs=1)
    assert list(job.classes) == ["a", "b", "c"] and job.n_classes == 3
    _, _, y = packing.decode(job.layout, job.streams[0], job.codebook)
    assert sorted(set(y.tolist())) == [0, 1, 2]
    assert np.array_equal(y, np.resize([1, 0, 2], 30)[job.perms[0]])
    assert job.for_class(2).config.pos_class == 3
    two = J.prepare_job(X, np.resize([3, 7], 30), loss="hinge", epochs=1)
    _, _, y2 = packing.decode(two.layout, two.streams[0], two.codebook)
    assert sorted(set(y2.tolist())) == [-c.MODEL.one, c.MODEL.one]
    with pytest.raises(ValueError, match="fewer than three"):
        two.for_class(0)


# --------------------------------------------------------------------------------------
# What the job holds
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, sampling", [(1, "double"), (2, "double"), (4, "double"), (8, "double"),
                                            (2, "single"), (4, "nearest"), (32, "double")])
def test_streams_hold_the_scaled_data(bits, sampling):
    X, y = _regression(n=60, d=7)
    job = J.prepare_job(X, y, bits=bits, sampling=sampling, epochs=3, seed=5)
    assert job.copies == 3 and len(job.perms) == 3
    assert job.dim == 8 and job.n_features == 7
    assert np.all(job.X_scaled[:, -1] == 1.0)
    assert np.abs(job.X_scaled).max() <= 1.0
    assert job.config.encoding == c.encoding_for(sampling, bits)
    assert job.bits_per_feature == job.layout.bits_per_feature_effective
    if bits == 32:
        assert job.codebook is None
    else:
        assert job.codebook.shape == (1 << bits,)
        assert np.all(np.diff(job.codebook) > 0)
        assert np.abs(job.codebook).max() <= c.FEAT.one
    for perm, stream in zip(job.perms, job.streams):
        assert sorted(perm) == list(range(60))
        q1, q2, lab = packing.decode(job.layout, stream, job.codebook)
        assert np.array_equal(lab, c.MODEL.to_fixed(job.y_scaled[perm]))
        xs = c.FEAT.to_fixed(job.X_scaled[perm])
        if bits == 32:
            assert np.array_equal(q1, xs) and np.array_equal(q2, xs)
            continue
        cb = job.codebook
        if sampling == "double":
            # both samples lie on the two ends of the interval holding the value
            idx1 = np.searchsorted(cb, q1)
            idx2 = np.searchsorted(cb, q2)
            assert np.abs(idx1 - idx2).max() <= 1
            lo = np.minimum(q1, q2)
            hi = np.maximum(q1, q2)
            inside = (xs >= cb[0]) & (xs <= cb[-1])
            assert np.all((lo[inside] <= xs[inside] + 1) & (xs[inside] <= hi[inside] + 1) | (lo == hi)[inside])
        else:
            assert np.array_equal(q1, q2)
    assert not all(np.array_equal(job.perms[0], p) for p in job.perms[1:])


def test_double_sampling_is_unbiased_over_copies():
    X, y = _regression(n=40, d=4)
    job = J.prepare_job(X, y, bits=2, sampling="double", epochs=1, copies=400, seed=1, levels="uniform")
    sums = np.zeros_like(job.X_scaled)
    sums2 = np.zeros_like(job.X_scaled)
    for perm, stream in zip(job.perms, job.streams):
        q1, q2, _ = packing.decode(job.layout, stream, job.codebook)
        inv = np.argsort(perm)
        sums[:] += c.FEAT.to_float(q1[inv])
        sums2[:] += c.FEAT.to_float(q2[inv])
    k = len(job.streams)
    spacing = np.diff(job.levels_float).max()
    # standard error of a mean of k draws is <= spacing / (2 sqrt(k)); allow 6 of them
    tol = 6 * spacing / (2 * math.sqrt(k))
    inside = (job.X_scaled >= job.levels_float[0]) & (job.X_scaled <= job.levels_float[-1])
    assert np.abs(sums / k - job.X_scaled)[inside].max() < tol
    assert np.abs(sums2 / k - job.X_scaled)[inside].max() < tol


def test_nearest_copies_differ_only_by_order():
    X, y = _regression(n=50, d=3)
    job = J.prepare_job(X, y, bits=2, sampling="nearest", epochs=4, seed=3)
    ref = None
    for perm, stream in zip(job.perms, job.streams):
        q1, _, _ = packing.decode(job.layout, stream, job.codebook)
        q = q1[np.argsort(perm)]
        ref = q if ref is None else ref
        assert np.array_equal(q, ref)


def test_default_copies_and_seeds():
    X, y = _regression(n=30, d=3)
    assert J.prepare_job(X, y, epochs=10).copies == 10          # small data: a fresh copy every epoch
    assert J.default_copies(10) == 4                                # size unknown: min(epochs, 4)
    assert J.default_copies(10, 4_000_000) == 4                     # 50,000 x 90 at 4 bits: the floor of 4
    assert J.default_copies(10, J.COPIES_BUDGET_BYTES // 6) == 6    # the budget between
    assert J.default_copies(3, 10**9) == 3                          # never more than epochs
    assert J.prepare_job(X, y, epochs=2).copies == 2
    a = J.prepare_job(X, y, bits=2, epochs=3, seed=11)
    b = J.prepare_job(X, y, bits=2, epochs=3, seed=11)
    d = J.prepare_job(X, y, bits=2, epochs=3, seed=12)
    assert all(np.array_equal(s, t) for s, t in zip(a.streams, b.streams))
    assert not all(np.array_equal(s, t) for s, t in zip(a.streams, d.streams))
    # the sample orders depend on the seed only, not on the mode
    e = J.prepare_job(X, y, bits=32, epochs=3, seed=11)
    assert all(np.array_equal(p, q) for p, q in zip(a.perms, e.perms))


def test_labels_by_loss():
    X, _ = _regression(n=20, d=2)
    y = np.array(["no", "yes"] * 10)
    lj = J.prepare_job(X, y, loss="logistic", epochs=1)
    hj = J.prepare_job(X, y, loss="hinge", epochs=1)
    assert list(lj.classes) == ["no", "yes"]
    assert set(lj.y_scaled) == {0.0, 1.0} and set(hj.y_scaled) == {-1.0, 1.0}
    assert np.array_equal(lj.y_scaled == 1.0, y == "yes")
    yr = np.linspace(-50, 150, 20)
    sj = J.prepare_job(X, yr, epochs=1)
    assert np.isclose(sj.y_center, yr.mean())
    assert np.isclose(np.abs(sj.y_scaled).max(), 1.0)
    assert np.allclose(sj.y_scaled * sj.y_scale + sj.y_center, yr)


def test_step_and_l2_registers_in_config():
    X, y = _regression(n=20, d=2)
    job = J.prepare_job(X, y, epochs=1, step=0.1, batch_size=4, alpha=0.01, decay=3)
    assert abs(job.step_eff - 0.025) / 0.025 < 2 ** -15
    assert job.config.l2_shift == round(-math.log2(0.1 * 0.01))
    assert job.config.decay_epochs == 3 and job.config.batch == 4
    j2 = job.with_step(0.05)
    assert abs(j2.step_eff - 0.0125) / 0.0125 < 2 ** -15 and j2.streams is job.streams


def test_unscale_maps_scaled_model_to_user_units():
    X, y = _regression(n=80, d=4)
    for fit_intercept in (True, False):
        job = J.prepare_job(X, y, epochs=1, fit_intercept=fit_intercept)
        rng = np.random.default_rng(0)
        model = c.MODEL.to_fixed(rng.uniform(-0.7, 0.7, job.dim))
        coef, icpt = job.unscale(model)
        scaled_pred = job.X_scaled @ job.model_float(model) * job.y_scale + job.y_center
        assert np.allclose(X @ coef + icpt, scaled_pred, rtol=1e-9, atol=1e-9 * np.abs(scaled_pred).max())


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------
def test_cpu_backend_is_the_reference_with_progress():
    X, y = _regression(n=50, d=3)
    job = J.prepare_job(X, y, bits=4, epochs=3, step=2 ** -4)
    seen = []
    res = B.run_job(job, "cpu", progress=seen.append)
    ref = reference.run(job.config, job.streams, job.codebook)
    assert np.array_equal(res.model, ref.model) and res.loss_sums == ref.loss_sums
    assert seen == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["pynq"])
def test_unavailable_backends_say_so(name):
    X, y = _regression(n=10, d=2)
    job = J.prepare_job(X, y, epochs=1)
    with pytest.raises(NotImplementedError, match=rf"backend='{name}' .*use backend='cpu'"):
        B.run_job(job, name)
    assert not B.backend_available(name)


def test_unknown_backend_and_registry(monkeypatch):
    X, y = _regression(n=10, d=2)
    job = J.prepare_job(X, y, epochs=2)
    with pytest.raises(ValueError, match="unknown backend='gpu'"):
        B.run_job(job, "gpu")
    calls = []

    def fake(j):  # a backend without progress support
        calls.append(j)
        return reference.Result(model=np.zeros(j.dim, dtype=np.int64), loss_sums=[0] * j.epochs)

    monkeypatch.setitem(B.BACKENDS, "sim", fake)
    ticks = []
    res = B.run_job(job, "sim", progress=ticks.append)
    assert calls == [job] and ticks == [2] and res.loss_sums == [0, 0]


def test_no_intercept_means_no_intercept():
    X, y = _regression(n=40, d=3)
    job = J.prepare_job(X, y, epochs=1, fit_intercept=False)
    assert job.dim == 3 and job.y_center == 0.0
    coef, icpt = job.unscale(c.MODEL.to_fixed([0.1, -0.2, 0.3]))
    assert icpt == 0.0
    assert np.allclose(X @ coef, job.X_scaled @ c.MODEL.to_float(c.MODEL.to_fixed([0.1, -0.2, 0.3])) * job.y_scale)


def test_given_codebook_is_used_and_checked():
    X, y = _regression(n=30, d=3)
    lv = np.array([-1.0, -0.25, 0.5, 1.0])
    job = J.prepare_job(X, y, bits=2, epochs=1, codebook=lv)
    assert np.array_equal(job.levels_float, lv)
    for bad in (np.array([-1.0, 0.0, 1.0]), np.array([-1.0, 0.5, 0.25, 1.0]), np.array([-2.0, 0, 0.5, 1])):
        with pytest.raises(ValueError, match="codebook"):
            J.prepare_job(X, y, bits=2, epochs=1, codebook=bad)


def test_simulated_stats_are_projected_at_the_board_table_clock(monkeypatch):
    from zipsgd.boards import BOARDS

    def sim_result():    # what the driver reports at the simulator's own 50 MHz, say
        return reference.Result(model=np.zeros(2, dtype=np.int64), loss_sums=[0],
                                stats={"beats": 900, "stalls": 100, "clock_mhz": 50.0,
                                       "projected_board_seconds": 1000 / 50e6})

    monkeypatch.delenv("ZIPSGD_BOARD", raising=False)
    for word_bits, name in ((64, "pynq-z2"), (128, "zcu104")):
        st = B.on_board_clock(sim_result(), word_bits).stats
        assert st["board"] == name and st["clock_mhz"] == BOARDS[name].clock_mhz
        assert st["projected_board_seconds"] == pytest.approx(1000 / (BOARDS[name].clock_mhz * 1e6))
    monkeypatch.setenv("ZIPSGD_BOARD", "zcu104")
    assert B.on_board_clock(sim_result(), 64).stats["clock_mhz"] == BOARDS["zcu104"].clock_mhz
    assert B.on_board_clock(reference.Result(model=np.zeros(1), loss_sums=[]), 64).stats == {}


# ---- prepare_job's packer: compiled and numpy, in memory and chunked, the same words --------
@pytest.mark.parametrize("bits,sampling,levels,intercept", [
    (4, "double", "uniform", True), (2, "single", "uniform", False), (8, "nearest", "uniform", True),
    (32, "double", "uniform", True), (1, "double", "uniform", True), (8, "double", "optimal", True),
    (2, "double", "log", False), (4, "double", "weibull", True)])
def test_packer_paths_give_the_same_words(bits, sampling, levels, intercept, monkeypatch, tmp_path):
    from zipsgd import fastref, packfile

    rng = np.random.default_rng(3)
    X = rng.normal(size=(700, 13))
    X[5, 3], X[6, 3] = 1e300, -1e300                               # the scaler's overflow path
    y = X[:, :4] @ rng.normal(size=4)
    kw = dict(bits=bits, sampling=sampling, levels=levels, epochs=3, step="auto", fit_intercept=intercept)
    fast = J.prepare_job(X, y, chunk_rows=128, **kw)
    pk = packfile.write(tmp_path / "a.zsgd", X, y, bits=bits, sampling=sampling, levels=levels, copies=3, seed=0,
                        chunk_rows=77, fit_intercept=intercept)
    monkeypatch.setattr(fastref, "_KERNELS", False)               # numpy: quant + packing.pack
    slow = J.prepare_job(X, y, chunk_rows=300, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(fast.streams, slow.streams))
    assert all(np.array_equal(a, b) for a, b in zip(fast.streams, pk.streams))
    want = fast.scaler.transform(X)
    want = np.hstack([want, np.ones((len(X), 1))]) if intercept else want
    assert np.array_equal(fast.X_scaled, want) and np.array_equal(slow.X_scaled, want)
    assert fast.extras["data_stats"] == slow.extras["data_stats"] and fast.step == slow.step
    # the words decode to the data: each value rounded to one of its interval's ends
    q1, q2, _ = packing.decode(fast.layout, fast.streams[1], fast.codebook)
    x = want[fast.perms[1]]
    if fast.codebook is None:
        assert np.array_equal(q1, c.FEAT.to_fixed(x))
    else:
        lv = fast.levels_float
        j = np.clip(np.searchsorted(lv, np.clip(x, lv[0], lv[-1]), side="right") - 1, 0, lv.size - 2)
        for q in (q1, q2):
            assert np.all((q == fast.codebook[j]) | (q == fast.codebook[j + 1]))


def test_prepare_job_memory_is_a_small_multiple_of_the_data():
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 40))
    y = X @ rng.normal(size=40)
    J.prepare_job(X[:100], y[:100], bits=4, epochs=10)         # compile / warm up
    tracemalloc.start()
    try:
        J.prepare_job(X, y, bits=4, epochs=10, copies=4)   # (the default would keep 10 copies: 16 MiB budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * X.nbytes          # the scaled matrix (1.0x), four packed copies and their orders (0.7x)


def test_top_eigenvalue_without_the_matrix_at_large_d():
    rng = np.random.default_rng(0)
    q1, q2 = rng.normal(size=(300, 400)), rng.normal(size=(300, 400))
    q2 = q1 + 0.1 * q2
    sym = (q1.T @ q2 + q2.T @ q1) / 600
    want = float(np.abs(np.linalg.eigvalsh(sym)).max())
    assert abs(J._top_eigenvalue(q1, q2, iters=200) - want) < 1e-6 * want


def test_keep_scaled_false_keeps_no_matrix_and_the_same_words():
    X, y = _regression(n=300)
    for levels in ("uniform", "optimal"):
        a = J.prepare_job(X, y, bits=4, levels=levels, epochs=3, seed=2)
        b = J.prepare_job(X, y, bits=4, levels=levels, epochs=3, seed=2, keep_scaled=False)
        assert a.X_scaled is not None and b.X_scaled is None
        assert all(np.array_equal(s, t) for s, t in zip(a.streams, b.streams))
        assert a.config == b.config and a.extras["data_stats"] == b.extras["data_stats"]
