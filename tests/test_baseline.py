"""The float64 baseline, the exact objective and the batched engine of the convergence benchmark."""

import math

import numpy as np
import pytest

from zipsgd import baseline as B
from zipsgd import bench_convergence as BC
from zipsgd import backends
from zipsgd import job as J
from zipsgd import reference


def _ls(n=200, d=4, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, d))
    w = rng.normal(size=d)
    return X, X @ w + 0.5 + noise * rng.normal(size=n)


def test_objective_by_hand():
    Xs = np.array([[1.0, 0.5], [0.0, -1.0]])
    w = np.array([2.0, 1.0])                               # z = [2.5, -1]
    assert B.objective("squared", Xs, [0.5, 0.0], w) == pytest.approx((0.5 * 4 + 0.5 * 1) / 2)
    lg = (math.log1p(math.exp(2.5)) - 2.5 + math.log1p(math.exp(-1.0))) / 2
    assert B.objective("logistic", Xs, [1.0, 0.0], w) == pytest.approx(lg)
    assert B.objective("hinge", Xs, [1.0, 1.0], w) == pytest.approx((0 + 2.0) / 2)


def test_losses_stable_for_large_margins():
    z = np.array([-800.0, 800.0])
    r, lo = B.residual_and_loss("logistic", z, np.array([0.0, 1.0]))
    assert np.all(np.isfinite(lo)) and np.allclose(lo, 0) and np.allclose(r, 0)
    r, lo = B.residual_and_loss("logistic", z, np.array([1.0, 0.0]))
    assert np.allclose(lo, 800) and np.allclose(r, [-1, 1])
    r, lo = B.residual_and_loss("hinge", np.array([0.5, 2.0]), np.array([1.0, -1.0]))
    assert np.allclose(r, [-1, 1]) and np.allclose(lo, [0.5, 3.0])


def _naive_sgd(loss, Xs, ys, perms, steps, b, l2):
    w = np.zeros(Xs.shape[1])
    curve = []
    for e, step in enumerate(steps):
        p = perms[e % len(perms)]
        tot = 0.0
        for s in range(0, len(p), b):
            idx = p[s:s + b]
            g = np.zeros_like(w)
            for i in idx:
                z = float(Xs[i] @ w)
                if loss == "squared":
                    r, lo = z - ys[i], 0.5 * (z - ys[i]) ** 2
                elif loss == "logistic":
                    r, lo = 1 / (1 + math.exp(-z)) - ys[i], math.log1p(math.exp(z)) - ys[i] * z
                else:
                    r, lo = (-ys[i] if ys[i] * z < 1 else 0.0), max(0.0, 1 - ys[i] * z)
                tot += lo
                g += r * Xs[i]
            w = w - step * g - l2 * w
        curve.append(tot / len(p))
    return w, np.array(curve)


@pytest.mark.parametrize("loss, b, l2", [("squared", 1, 0.0), ("squared", 3, 2 ** -9), ("logistic", 1, 0.0),
                                         ("logistic", 4, 0.0), ("hinge", 2, 2 ** -8)])
def test_sgd_raw_matches_a_naive_loop(loss, b, l2):
    rng = np.random.default_rng(1)
    Xs = rng.uniform(-1, 1, (23, 3))
    ys = rng.normal(size=23) if loss == "squared" else (
        (rng.random(23) < 0.5).astype(float) * (1 if loss == "logistic" else 2) - (0 if loss == "logistic" else 1))
    perms = [rng.permutation(23) for _ in range(2)]
    steps = [0.1, 0.1, 0.05]
    w, curve = B.sgd_raw(loss, Xs, ys, perms, steps, b, l2)
    w2, curve2 = _naive_sgd(loss, Xs, ys, perms, steps, b, l2)
    assert np.allclose(w, w2, rtol=1e-12, atol=1e-12) and np.allclose(curve, curve2, rtol=1e-12)


def test_baseline_replays_the_job_schedule_and_converges():
    X, y = _ls()
    job = J.prepare_job(X, y, bits=32, epochs=12, step=2 ** -3, decay=2, seed=4)
    base = B.sgd(job)
    assert base.loss_curve.shape == (12,)
    # the optimum of the scaled problem
    w_opt, *_ = np.linalg.lstsq(job.X_scaled, job.y_scaled, rcond=None)
    best = B.objective("squared", job.X_scaled, job.y_scaled, w_opt)
    assert base.final_loss <= best * 1.02
    # the 32-bit engine follows the float64 run epoch by epoch (same orders, same steps)
    res = backends.run_job(job)
    curve = res.loss_curve(job.n_samples)
    assert np.allclose(curve, base.loss_curve, rtol=2e-3)
    final = B.objective("squared", job.X_scaled, job.y_scaled, job.model_float(res.model))
    assert final == pytest.approx(base.final_loss, rel=1e-3)
    # and a different seed's shuffles give a different (but equally good) curve
    other = B.sgd(J.prepare_job(X, y, bits=32, epochs=12, step=2 ** -3, decay=2, seed=5))
    assert not np.allclose(other.loss_curve, base.loss_curve, rtol=1e-9)


def test_baseline_logistic_close_to_engine_at_32_bits():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 5))
    y = (X @ rng.normal(size=5) + 0.5 * rng.normal(size=300) > 0).astype(int)
    job = J.prepare_job(X, y, loss="logistic", bits=32, epochs=6, step=2 ** -3, decay=2)
    base = B.sgd(job)
    res = backends.run_job(job)
    final = B.objective("logistic", job.X_scaled, job.y_scaled, job.model_float(res.model))
    # the engine's sigmoid is a piecewise-linear approximation: close, not equal
    assert final == pytest.approx(base.final_loss, rel=0.05)
    assert np.allclose(res.loss_curve(job.n_samples), base.loss_curve, rtol=0.05)


def test_batched_engine_is_bit_exact():
    X, y = _ls(n=37, d=3)
    jobs = [J.prepare_job(X, y, bits=b, sampling=s, epochs=3, step=2 ** -2, decay=1, seed=sd, batch_size=bs,
                          alpha=a)
            for b, s in ((1, "double"), (2, "single"), (4, "nearest"), (8, "double"), (32, "double"))
            for sd in (0, 1) for bs in (1, 4) for a in (0.0, 0.01)]
    yc = (y > np.median(y)).astype(int)
    jobs += [J.prepare_job(X, yc, loss=loss, bits=b, epochs=2, step=0.5, seed=2)
             for loss in ("logistic", "hinge") for b in (2, 32)]
    for job, res in zip(jobs, BC.run_batched(jobs, mem_budget=4000)):   # tiny budget: many chunks
        ref = reference.run(job.config, job.streams, job.codebook)
        assert np.array_equal(res.model, ref.model)
        assert res.loss_sums == ref.loss_sums


def test_variance_inflation_matches_monte_carlo():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (200, 3)) * 0.3
    levels = np.array([-1.0, -0.25, 0.5, 1.0])
    j = np.clip(np.searchsorted(levels, x, side="right") - 1, 0, 2)
    lo, hi = levels[j], levels[j + 1]
    p = (x - lo) / (hi - lo)
    draws = np.where(rng.random((400,) + x.shape) < p, hi, lo)
    mc = float((draws ** 2).mean(axis=0).sum() / (x ** 2).sum())
    assert BC.variance_inflation(x, levels) == pytest.approx(mc, rel=0.02)
    assert BC.variance_inflation(x, np.linspace(-1, 1, 256)) < 1.01
    assert BC.stable_step(0.25, 1.1) == 0.25 and BC.stable_step(0.25, 4.0) == 0.25 / 16


def test_benchmark_rows_on_a_tiny_problem():
    X, y = _ls(n=60, d=3, noise=0.3)
    p = BC.Problem("tiny", "squared", X, y, epochs=4, step=2 ** -2, decay=2)
    rows = BC.run_problem(p, [0, 1])
    assert len(rows) == 1 + 4 * 3 * 2
    full = [r for r in rows if r["bits"] == 32][0]
    assert 0.97 < full["ratio"] < 1.03
    r8 = [r for r in rows if (r["bits"], r["sampling"], r["levels"]) == (8, "double", "uniform")][0]
    assert 0.9 < r8["ratio"] < 1.1 and r8["bits_per_feature"] < full["bits_per_feature"]
    chk = BC.checks(rows)
    assert {c["check"].split(" <=")[0] for c in chk} >= {"8-bit double uniform", "4-bit double optimal"}
    text = BC.format_compact(rows)
    assert "tiny" in text and "full precision" in text
