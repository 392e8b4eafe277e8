"""Solvers (zipsgd.solvers): low-precision SGD equals the reference engine at the engine's own
format, the arithmetic of every format/solver/rounding is pinned, SVRG and HALP converge
linearly where low-precision SGD stalls, the optimum is the optimum."""

import dataclasses
import zlib

import numpy as np
import pytest

from zipsgd import baseline
from zipsgd import contract as c
from zipsgd import job as J
from zipsgd import reference
from zipsgd import solvers as S


def _data(n=200, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return X, y


def _job(loss="squared", bits=8, n=200, d=6, **kw):
    X, y = _data(n, d)
    yy = y if loss == "squared" else (y > 0).astype(int)
    opts = dict(loss=loss, bits=bits, epochs=4, batch_size=2, step=0.1, alpha=0.01, seed=3)
    opts.update(kw)
    return J.prepare_job(X, yy, **opts)


# --------------------------------------------------------------------------------------
# The engine's format is the engine
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["squared", "logistic", "hinge"])
@pytest.mark.parametrize("bits, sampling", [(8, "double"), (2, "single"), (1, "nearest"), (32, "double")])
def test_sgd_fixed32_is_the_reference_bit_for_bit(loss, bits, sampling):
    job = _job(loss, bits, sampling=sampling, epochs=3, batch_size=3, decay=1, copies=2)
    ref = reference.run(job.config, job.streams, job.codebook, job.params)
    for engine in (True, False):                         # fastref, and this module's own loop
        for record in (True, False):
            out = S.fit(job, engine=engine, record=record)
            assert np.array_equal(out.result.model, ref.model)
            assert out.result.loss_sums == ref.loss_sums
            assert out.rounding == "nearest" and out.model_format == "fixed32.24"
            assert np.array_equal(out.model, c.MODEL.to_float(ref.model))
    assert len(S.fit(job).objective) == 3


def test_sgd_other_epochs_than_the_job():
    job = _job(epochs=2)
    ref = reference.run(dataclasses.replace(job.config, epochs=5), job.streams, job.codebook, job.params)
    assert np.array_equal(S.fit(job, epochs=5, engine=False).result.model, ref.model)


# --------------------------------------------------------------------------------------
# Pinned arithmetic: a change in any format's or solver's arithmetic changes these
# --------------------------------------------------------------------------------------
GOLDEN = [
    ("sgd", "fixed8", None, "stochastic", "squared", 0x8DC7FC1E),
    ("sgd", "fixed8", None, "nearest", "squared", 0xFB1575F7),
    ("sgd", "fixed16", 'fixed8.12', "stochastic", "squared", 0x993BC2EF),
    ("sgd", "fixed16.8", 'fixed16.14', "stochastic", "logistic", 0xB7756D98),
    ("sgd", "float:e4m3", None, "stochastic", "squared", 0x986633BB),
    ("sgd", "float:e4m3", 'float:e5m2:bias=20', "nearest", "logistic", 0x0006D39E),
    ("sgd", "log8", None, "stochastic", "squared", 0x5C956E90),
    ("sgd", "fixed32", 'float:e4m3:bias=14', "stochastic", "hinge", 0xBE4A1B0F),
    ("sgd", "fixed32", None, "stochastic", "squared", 0x04E30C28),
    ("svrg", "fixed32", None, "nearest", "squared", 0x162C4134),
    ("svrg", "fixed16", None, "stochastic", "logistic", 0x0A96065A),
    ("halp", "fixed8", None, "stochastic", "squared", 0xDAF4105B),
    ("halp", "fixed8", None, "stochastic", "logistic", 0x182207F1),
    ("halp", "log8", None, "stochastic", "squared", 0x4427596B),
    ("halp", "fixed8", 'fixed8.12', "stochastic", "squared", 0xC1A42FEB),
    ("halp", "float:e4m3", None, "stochastic", "squared", 0xE4161148),
]


@pytest.mark.parametrize("solver, model_format, grad_format, rounding, loss, crc", GOLDEN)
def test_pinned_arithmetic(solver, model_format, grad_format, rounding, loss, crc):
    out = S.fit(_job(loss), solver=solver, model_format=model_format, grad_format=grad_format, rounding=rounding,
                epochs=5)
    got = zlib.crc32(out.model.tobytes() + np.array(out.result.loss_sums, dtype=np.int64).tobytes())
    assert got == crc, f"0x{got:08X}"
    assert np.all(np.isfinite(out.model)) and len(out.objective) == 5


def test_low_precision_model_lies_on_its_format():
    from zipsgd import formats as fm
    job = _job()
    for spec in ("fixed8", "float:e4m3", "log8", "fixed16.9"):
        out = S.fit(job, model_format=spec)
        fmt = fm.parse(spec)
        assert np.array_equal(fmt.quantize(out.model), out.model)
        assert out.rounding == "stochastic"
    # the seed drives the rounding, and only it
    a, b = S.fit(job, model_format="fixed8", seed=1), S.fit(job, model_format="fixed8", seed=2)
    assert not np.array_equal(a.model, b.model)
    assert np.array_equal(a.model, S.fit(job, model_format="fixed8", seed=1).model)


def test_full_gradient_is_the_exact_mean():
    job = _job("logistic", n=300, batch_size=1)
    a = c.MODEL.to_fixed(np.random.default_rng(1).standard_normal(job.dim))
    gbar, total = S._full_gradient(job, a, 0)
    q1, q2, y = reference.decode(job.layout, job.streams[0], job.codebook)
    z = c.MODEL.saturate(c.rshift_round(q1.astype(np.int64) @ a, c.FEAT.frac))
    r, lo = reference.residual_and_loss(job.config.loss, z, y)
    G = [sum(int(ri) * int(qi) for ri, qi in zip(r, q2[:, j])) for j in range(job.dim)]
    n = job.n_samples
    assert gbar.tolist() == [(2 * g + n) // (2 * n) for g in G]
    assert total == int(lo.sum())


# --------------------------------------------------------------------------------------
# Convergence: SVRG and HALP linear, low-precision SGD stalls
# --------------------------------------------------------------------------------------
def test_halp_converges_linearly_where_low_precision_sgd_stalls():
    X, y = _data(n=400, d=8, seed=2)
    job = J.prepare_job(X, y, loss="squared", bits=32, epochs=24, batch_size=1, step=2**-4, alpha=1e-2, seed=0)
    _, best = S.optimum(job)
    gap = {}
    for solver, fmt in (("sgd", "fixed8"), ("svrg", "fixed32"), ("halp", "fixed8")):
        out = S.fit(job, solver=solver, model_format=fmt, epochs=24)
        gap[solver] = (out.final_objective - best) / best
        if solver == "halp":
            frac = [int(s.split(".")[1]) for s in out.info["offset_formats"]]
            assert frac[-1] > frac[0] + 6                    # the grid shrinks with the gradient
    assert gap["sgd"] > 1e-3
    assert gap["svrg"] < 1e-6 and gap["halp"] < 1e-6, gap


def test_svrg_with_double_sampled_data_reaches_its_predicted_point():
    X, y = _data(n=400, d=8, seed=2)
    job = J.prepare_job(X, y, loss="squared", bits=4, epochs=30, batch_size=1, step=2**-4, alpha=1e-2, seed=0,
                        copies=1)
    q1, q2, yq = (c.FEAT.to_float(v) if k < 2 else c.MODEL.to_float(v)
                  for k, v in enumerate(reference.decode(job.layout, job.streams[0], job.codebook)))
    lam, n = S.l2_lambda(job), job.n_samples
    w_pred = np.linalg.solve(q2.T @ q1 / n + lam * np.eye(job.dim), q2.T @ yq / n)
    out = S.fit(job, solver="svrg", epochs=30)
    assert np.abs(out.model - w_pred).max() < 1e-5


# --------------------------------------------------------------------------------------
# Optimum
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, alpha", [("squared", 0.0), ("squared", 0.01), ("logistic", 0.01),
                                         ("logistic", 0.0), ("hinge", 0.0), ("hinge", 0.01)])
def test_optimum_is_optimal(loss, alpha):
    job = _job(loss, alpha=alpha)
    w, best = S.optimum(job)
    assert best == pytest.approx(S.objective(job, w))
    rng = np.random.default_rng(0)
    for _ in range(20):                                   # no nearby point is better
        v = w + 1e-3 * rng.standard_normal(w.size)
        assert S.objective(job, v) >= best - 1e-12
    if loss != "hinge":                                   # and float64 SGD does not beat it
        assert baseline.sgd(job).final_loss + 0.5 * S.l2_lambda(job) * float(
            baseline.sgd(job).model @ baseline.sgd(job).model) >= best - 1e-12


def test_objective_includes_the_engines_l2():
    job = _job(alpha=0.01)
    lam = 2.0 ** -job.config.l2_shift / (job.epoch_step(0) * job.batch_size)
    assert S.l2_lambda(job) == lam
    w = np.ones(job.dim)
    assert S.objective(job, w) == pytest.approx(baseline.objective("squared", job.X_scaled, job.y_scaled, w)
                                                + 0.5 * lam * job.dim)
    assert S.l2_lambda(_job(alpha=0.0)) == 0.0


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
def test_errors():
    job = _job("hinge", alpha=0.0)
    with pytest.raises(ValueError, match="solver"):
        S.fit(job, solver="adam")
    with pytest.raises(ValueError, match="rounding"):
        S.fit(job, rounding="down")
    with pytest.raises(ValueError, match="format"):
        S.fit(job, model_format="int8")
    with pytest.raises(ValueError, match="mu"):
        S.fit(job, solver="halp")
    with pytest.raises(ValueError, match="inner_epochs"):
        S.fit(job, solver="svrg", inner_epochs=0)
    assert S.fit(job, solver="halp", mu=0.1, epochs=3).passes == ["full", "inner", "inner"]


# --------------------------------------------------------------------------------------
# The benchmark, quick
# --------------------------------------------------------------------------------------
def test_bench_optimum_quick(tmp_path, capsys):
    import json

    from zipsgd import bench_optimum as B
    assert B.main(["--quick", "--out", str(tmp_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "a. ZipML" in text and "d. Li & De Sa" in text and "e. HALP" in text and "claims pass" in text
    res = json.loads((tmp_path / "optimum_quick.json").read_text())
    for r in res["a"]:                        # single and nearest end at their predicted biased points
        if r["sampling"] != "double":
            assert r["pass"], r
    for r in res["e"]:                        # SVRG/HALP far below low-precision SGD even in 12 passes
        assert r["final"]["halp fixed8"] < 0.01 * r["final"]["sgd fixed8"]
    assert (tmp_path / "optimum_quick.md").exists()
    with __import__("pytest").raises(SystemExit):
        B.main(["--parts", "x"])


def test_fixed_point_l2_shrink_is_unbiased():
    """The L2 shrink of a fixed-point model is rounded with the fit's rounding: stochastic
    keeps x 2**-s on average even where it is below half a code (nearest rounds it to 0,
    as the engine's rshift_round does)."""
    from zipsgd import formats as fm

    d = 4000
    shrinks = {}
    for rounding in ("stochastic", "nearest"):
        st = S._FixedState(fm.parse("fixed8"), None, rounding, fm.RandomBits(1, d), x=np.full(d, 3))
        got = []
        for t in range(20):
            st.x = np.full(d, 3, dtype=np.int64)
            st.update(np.zeros(d, dtype=np.int64), 4, t)
            got.append(3 - st.x)
        shrinks[rounding] = float(np.mean(got))
    assert abs(shrinks["stochastic"] - 3 / 16) < 0.01 and shrinks["nearest"] == 0.0
