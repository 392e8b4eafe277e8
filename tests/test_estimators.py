"""scikit-learn estimators: API conventions, units, convergence, bias of the sampling schemes."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from zipsgd import baseline
from zipsgd.estimators import SGDClassifier, SGDRegressor


def _expected_failures(estimator):
    """The checks scikit-learn's own SGD estimators are expected to fail, for the same reason."""
    why = ("stochastic: a weight scales one sample's step, a repeated sample takes steps of its own "
           "(scikit-learn's SGDRegressor and SGDClassifier are marked the same)")
    return {f"check_sample_weight_equivalence_on_{kind}_data": why for kind in ("dense", "sparse")}


@parametrize_with_checks([SGDRegressor(), SGDClassifier(), SGDClassifier(loss="hinge")],
                         expected_failed_checks=_expected_failures)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _ls(n=400, d=8, seed=0, noise=0.3):
    rng = np.random.default_rng([seed, n, d])
    X = rng.normal(size=(n, d)) * rng.uniform(1, 10, d) + rng.normal(size=d)
    w = rng.normal(size=d) / rng.uniform(1, 10, d)
    y = 3.0 + X @ w + noise * rng.normal(size=n)
    return X, y


def _job(est, X, y):
    """The estimator's job with its data (a fitted estimator keeps none): the same seed, the same job."""
    return est.make_job(X, y)


def _final_loss(est, X, y):
    job, res = _job(est, X, y), est.engine_result_
    return baseline.objective(job.loss, job.X_scaled, job.y_scaled, job.model_float(res.model))


def _float64_loss(est, X, y):
    return baseline.sgd(_job(est, X, y)).final_loss


def test_coef_and_intercept_in_user_units():
    X, y = _ls()
    est = SGDRegressor(bits=8, max_iter=3, step=2 ** -4).fit(X, y)
    assert est.coef_.shape == (8,) and isinstance(est.intercept_, float)
    # the engine's own output on the scaled data, mapped back, equals predict on raw data
    job = _job(est, X, y)
    engine_out = job.X_scaled @ job.model_float(est.engine_result_.model) * job.y_scale + job.y_center
    assert np.allclose(est.predict(X), engine_out, rtol=1e-9, atol=1e-9)
    assert np.allclose(est.predict(X), X @ est.coef_ + est.intercept_)
    assert est.score(X, y) > 0.9
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3 and all(isinstance(v, float) for v in est.loss_curve_)
    assert est.hw_stats_ == {"saturated": est.engine_result_.saturated} and est.bits_per_feature_ == job.bits_per_feature
    assert est.n_features_in_ == 8


def test_classifier_units_and_proba():
    X, y = _ls()
    labels = np.where(y > np.median(y), "hi", "lo")
    clf = SGDClassifier(max_iter=4, step=2 ** -3).fit(X, labels)
    assert list(clf.classes_) == ["hi", "lo"]
    d = clf.decision_function(X)
    assert np.allclose(d, X @ clf.coef_[0] + clf.intercept_[0])
    job = _job(clf, X, labels)
    assert np.allclose(d, job.X_scaled @ job.model_float(clf.engine_result_.model), rtol=1e-9, atol=1e-9)
    proba = clf.predict_proba(X)
    assert np.allclose(proba.sum(1), 1) and np.all(clf.predict(X) == clf.classes_[(proba[:, 1] > 0.5).astype(int)])
    assert clf.score(X, labels) > 0.85
    hinge = SGDClassifier(loss="hinge", max_iter=4, step=2 ** -3).fit(X, labels)
    assert not hasattr(hinge, "predict_proba")
    assert hinge.score(X, labels) > 0.85


@pytest.mark.parametrize("bits", [32, 8])
def test_reaches_float64_loss(bits):
    X, y = _ls()
    est = SGDRegressor(bits=bits, sampling="double", max_iter=8, step=2 ** -4, decay=2).fit(X, y)
    ratio = _final_loss(est, X, y) / _float64_loss(est, X, y)
    assert 0.97 < ratio < 1.02, ratio
    # and float64 SGD itself is near the least-squares optimum of the scaled problem
    job = _job(est, X, y)
    w_opt, *_ = np.linalg.lstsq(job.X_scaled, job.y_scaled, rcond=None)
    assert _float64_loss(est, X, y) < 1.05 * baseline.objective("squared", job.X_scaled, job.y_scaled, w_opt)


def test_double_sampling_unbiased_single_and_nearest_biased():
    # 2-bit codebook: single sampling feeds Q (Q . x) whose mean adds the rounding variance
    # (a ridge-like pull to 0), nearest rounding fits the rounded data; double sampling does neither.
    ratios = {"double": [], "single": [], "nearest": []}
    for seed in range(3):
        X, y = _ls(seed=seed)
        for sampling in ratios:
            est = SGDRegressor(bits=2, sampling=sampling, levels="uniform", max_iter=10, step=2 ** -7, decay=2,
                               random_state=seed).fit(X, y)
            ratios[sampling].append(_final_loss(est, X, y) / _float64_loss(est, X, y))
    med = {k: float(np.median(v)) for k, v in ratios.items()}
    assert med["double"] < 1.15, med
    assert med["single"] > med["double"] + 0.5, med
    assert med["nearest"] > med["double"] + 0.25, med


def test_seeds():
    X, y = _ls(n=150)
    a = SGDRegressor(bits=4, max_iter=3, random_state=7).fit(X, y)
    b = SGDRegressor(bits=4, max_iter=3, random_state=7).fit(X, y)
    c = SGDRegressor(bits=4, max_iter=3, random_state=8).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_) and a.intercept_ == b.intercept_
    assert not np.array_equal(a.coef_, c.coef_)


def test_pynq_backend_without_board_explains_deployment():
    X, y = _ls(n=20)
    with pytest.raises(NotImplementedError, match="backend='pynq' needs a PYNQ board.*make bitstream"):
        SGDRegressor(backend="pynq", max_iter=1).fit(X, y)


@pytest.mark.xdist_group("verilator")
def test_sim_backend_matches_reference_exactly():
    X, y = _ls(n=60)
    kw = dict(bits=4, max_iter=3, batch_size=4, random_state=3)
    sim = SGDRegressor(backend="sim", **kw).fit(X, y)
    cpu = SGDRegressor(backend="cpu", **kw).fit(X, y)
    assert np.array_equal(sim.coef_, cpu.coef_) and sim.intercept_ == cpu.intercept_
    assert sim.loss_curve_ == cpu.loss_curve_
    st = sim.hw_stats_
    assert st["beats"] == cpu.engine_result_.beats and st["samples"] == 3 * 60
    assert st["cycles"] >= st["beats"] + st["stalls"] and 0 < st["efficiency"] <= 1


def test_fit_errors():
    X, y = _ls(n=30)
    with pytest.raises(ValueError, match="bits=9"):
        SGDRegressor(bits=9).fit(X, y)
    with pytest.raises(ValueError, match="supports loss"):
        SGDRegressor(loss="logistic").fit(X, y)
    with pytest.raises(ValueError, match="at least two"):
        SGDClassifier().fit(X, np.zeros(30))
    from zipsgd.contract import EngineParams
    with pytest.raises(ValueError, match="capacity"):
        SGDRegressor(engine_params=EngineParams(dim_max=8), max_iter=1).fit(X, y)


def test_package_exports_are_lazy():
    import zipsgd
    assert zipsgd.SGDRegressor is SGDRegressor and zipsgd.SGDClassifier is SGDClassifier
    code = "import sys, zipsgd; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_without_intercept_passes_through_origin():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3)) * [1.0, 5.0, 0.2]
    y = X @ [2.0, -0.5, 4.0] + 0.05 * rng.normal(size=200)
    est = SGDRegressor(bits=8, max_iter=6, step=2 ** -3, decay=2, fit_intercept=False).fit(X, y)
    assert est.intercept_ == 0.0 and est.job_.dim == 3
    assert np.allclose(est.predict(np.zeros((1, 3))), 0.0)
    assert est.score(X, y) > 0.95


def test_divergence_warns_and_auto_step_does_not_diverge():
    """A step far too large warns with a ConvergenceWarning that names what happened; the
    automatic step on the same data does not; fitted estimators keep no training data."""
    import pickle
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(0)
    X = (rng.random((600, 60)) < 0.5).astype(float)
    y = X @ rng.normal(size=60) + 0.1 * rng.normal(size=600)
    with pytest.warns(ConvergenceWarning, match="diverged|saturated"):
        SGDRegressor(step=1.0, decay=0, max_iter=4).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = SGDRegressor(max_iter=6, tol=None).fit(X, y)   # step="auto", decay="auto"
    assert est.score(X, y) > 0.95 and 0 < est.step_ < 1 and est.decay_ == 2
    assert est.job_.streams == [] and est.job_.X_scaled is None
    assert len(pickle.dumps(est)) < 20_000                 # not the data: 600 x 61 floats alone are 290 kB


def test_values_near_the_float64_limit():
    """Scaling near 1.8e308 does not overflow: a column of huge values gets a finite model,
    a column spanning +-1.7e308 is not flattened to zeros, and a target whose model cannot
    be written in float64 is refused in one sentence."""
    X = np.array([[1.7e308], [1.6e308], [1.5e308]])
    m = SGDRegressor(max_iter=3).fit(X, np.array([1.0, 2.0, 3.0]))
    assert np.isfinite(m.intercept_) and np.all(np.isfinite(m.predict(X)))
    X2 = np.array([[1.7e308], [-1.7e308], [0.0], [1e308]])
    m2 = SGDRegressor(max_iter=8).fit(X2, np.array([1.0, -1.0, 0.0, 0.6]))
    assert m2.job_.scaler.half_[0] == 1.7e308
    assert np.corrcoef(m2.predict(X2), [1.0, -1.0, 0.0, 0.6])[0, 1] > 0.9      # the column was not zeroed
    with pytest.raises(ValueError, match="overflows float64.*rescale"):
        SGDRegressor(max_iter=3).fit(np.array([[1.0], [2.0], [3.0]]), np.array([1.7e308, 1.7e308, 1.0]))


def test_scikit_learn_names(capsys):
    """scikit-learn's parameter and loss names: max_iter, random_state (an int or a numpy
    generator), loss="squared_error"/"log_loss", verbose; the engine's names still work."""
    X, y = _ls(n=120)
    a = SGDRegressor(loss="squared_error", max_iter=3, random_state=5).fit(X, y)
    b = SGDRegressor(loss="squared", max_iter=3, random_state=5).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_) and a.n_iter_ == 3
    assert SGDRegressor().get_params()["loss"] == "squared_error"
    assert SGDClassifier().get_params()["loss"] == "log_loss"
    c = SGDRegressor(max_iter=2, random_state=np.random.RandomState(0)).fit(X, y)
    assert c.n_iter_ == 2
    labels = (y > np.median(y)).astype(int)
    p = SGDClassifier(loss="log_loss", max_iter=2).fit(X, labels).predict_proba(X)
    assert p.shape == (len(X), 2)
    SGDRegressor(max_iter=2, verbose=1).fit(X, y)
    assert capsys.readouterr().out.count("-- Epoch") == 2
    with pytest.raises(ValueError, match="supports loss"):
        SGDRegressor(loss="log_loss").fit(X, y)


def test_multiclass_one_vs_rest():
    """Several classes: one binary job per class against the rest, scikit-learn's shapes
    and normalised probabilities; each row of coef_ is the binary fit of its class."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = SGDClassifier(max_iter=10, random_state=1).fit(X, names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    assert clf.coef_.shape == (3, 4) and clf.intercept_.shape == (3,)
    d = clf.decision_function(X)
    assert d.shape == (150, 3) and np.allclose(d, X @ clf.coef_.T + clf.intercept_)
    p = clf.predict_proba(X)
    assert p.shape == (150, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert np.array_equal(clf.predict(X), clf.classes_[p.argmax(axis=1)])
    assert clf.score(X, names) > 0.85
    one = SGDClassifier(max_iter=10, random_state=1).fit(X, names == "virginica")
    assert np.array_equal(one.coef_[0], clf.coef_[2]) and one.intercept_[0] == clf.intercept_[2]
    assert len(clf.loss_curve_) == 3 and SGDClassifier(loss="hinge", max_iter=3).fit(X, y).coef_.shape == (3, 4)


def test_multiclass_packs_one_stream_for_every_class():
    """One packed stream (class-index labels) serves the K one-vs-rest jobs: each job is the
    same configuration but POS_CLASS, and equals the reference run of that configuration."""
    from sklearn.datasets import load_iris

    from zipsgd import reference

    X, y = load_iris(return_X_y=True)
    clf = SGDClassifier(max_iter=3, random_state=2).fit(X, y)
    job = clf.make_job(X, y)
    assert job.n_classes == 3 and job.config.pos_class == 0
    labels = {int(v) for s in job.streams for v in __import__("zipsgd").packing.decode(job.layout, s,
                                                                                     job.codebook)[2]}
    assert labels == {0, 1, 2}                                   # class indices, not +-1
    for k, res in enumerate(clf.engine_result_):
        want = reference.run(job.for_class(k).config, job.streams, job.codebook)
        assert res.model.tolist() == want.model.tolist() and res.loss_sums == want.loss_sums


def test_class_weight_sets_one_step_multiplier_per_class():
    from zipsgd import reference

    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 4))
    y = (X[:, 0] + 0.7 * rng.normal(size=600) > 1.3).astype(int)      # about 12 % positives
    plain = SGDClassifier(max_iter=5, random_state=0).fit(X, y)
    weighted = SGDClassifier(max_iter=5, random_state=0, class_weight={0: 1.0, 1: 4.0}).fit(X, y)
    job = weighted.make_job(X, y)
    cfg = weighted._class_jobs(job, y)[0].config
    assert cfg.step_mult == job.config.step_mult and abs(cfg.step_mult_neg / cfg.step_mult - 0.25) < 1e-3
    want = reference.run(cfg, job.streams, job.codebook)
    assert weighted.engine_result_.model.tolist() == want.model.tolist()
    # the minority class is found more often, as with scikit-learn's class_weight
    recall = [np.mean(m.predict(X)[y == 1] == 1) for m in (plain, weighted)]
    assert recall[1] > recall[0] + 0.1
    balanced = SGDClassifier(max_iter=5, random_state=0, class_weight="balanced").fit(X, y)
    assert np.mean(balanced.predict(X)[y == 1] == 1) > recall[0] + 0.1
    # one-vs-rest: class k's weight on its positives, 1 on the rest (scikit-learn's rule)
    from sklearn.datasets import load_iris
    Xi, yi = load_iris(return_X_y=True)
    ovr = SGDClassifier(max_iter=2, class_weight={0: 0.5, 2: 2.0})
    cfgs = [j.config for j in ovr._class_jobs(ovr.make_job(Xi, yi), yi)]
    assert [round(cf.step_mult_neg / cf.step_mult, 3) if cf.step_mult_neg else 1.0 for cf in cfgs] == [2.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="class_weight"):
        SGDClassifier(class_weight="heavy").fit(X, y)


def test_sample_weight_on_the_cpu_and_refused_by_the_engine():
    from zipsgd import reference

    X, y = _ls(n=120)
    base = SGDRegressor(max_iter=3, random_state=4).fit(X, y)
    same = SGDRegressor(max_iter=3, random_state=4).fit(X, y, sample_weight=np.full(120, 2.5))
    assert np.array_equal(base.coef_, same.coef_)                      # equal weights change nothing
    w = np.random.default_rng(0).integers(0, 4, size=120).astype(float)
    est = SGDRegressor(max_iter=3, random_state=4).fit(X, y, sample_weight=w)
    job = est.make_job(X, y)
    want = reference.run(job.config, job.streams, job.codebook, sample_mult=job.sample_multipliers(w))
    assert est.engine_result_.model.tolist() == want.model.tolist()
    assert not np.array_equal(est.coef_, base.coef_)
    # zero weight on a group of outliers: the fit ignores them
    yo = y.copy()
    yo[:20] += 200.0
    clean = SGDRegressor(max_iter=6, random_state=4).fit(X, yo, sample_weight=np.r_[np.zeros(20), np.ones(100)])
    dirty = SGDRegressor(max_iter=6, random_state=4).fit(X, yo)
    assert clean.score(X[20:], y[20:]) > dirty.score(X[20:], y[20:]) + 0.2
    with pytest.raises(ValueError, match="per-sample weight"):
        SGDRegressor(max_iter=1, backend="sim").fit(X, y, sample_weight=w)
    with pytest.raises(ValueError, match="sample_weight"):
        SGDRegressor(max_iter=1).fit(X, y, sample_weight=-w)


def test_warm_start_continues_from_the_last_model():
    X, y = _ls(n=300)
    est = SGDRegressor(max_iter=2, random_state=1, warm_start=True).fit(X, y)
    first = est.loss_curve_
    est.fit(X, y)                              # starts where the first fit ended
    cold = SGDRegressor(max_iter=2, random_state=1).fit(X, y)
    assert est.loss_curve_[0] < 0.5 * cold.loss_curve_[0] and est.t_ == 4
    assert est.loss_curve_[0] <= first[-1] * 1.5
    # the warm start's model is the last model, to the engine's resolution
    job = est.make_job(X, y)
    back, saturated = job.model_ints(*job.unscale(est.engine_result_.model))
    assert saturated == 0 and np.abs(back - est.engine_result_.model).max() <= 2
    # another number of features: a cold start (as scikit-learn's)
    est.fit(X[:, :5], y)
    assert est.coef_.shape == (5,)


def test_partial_fit_keeps_the_first_scaling_and_goes_on():
    X, y = _ls(n=1200, seed=3)
    est = SGDRegressor(random_state=0)
    for part in range(4):
        rows = slice(300 * part, 300 * (part + 1))
        est.partial_fit(X[rows], y[rows])
        if part == 0:
            half = est.job_.scaler.half_.copy()
    assert np.array_equal(est.job_.scaler.half_, half) and est.t_ == 4 and est.n_iter_ == 1
    assert est.score(X, y) > 0.9
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:10, :3], y[:10])
    # classifiers: classes at the first call; the labels of a call need not show them all
    from sklearn.datasets import load_iris
    Xi, yi = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(150)
    Xi, yi = Xi[order], yi[order]
    clf = SGDClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be given"):
        clf.partial_fit(Xi[:50], yi[:50])
    first = yi[:30] != 2
    clf.partial_fit(Xi[:30][first], yi[:30][first], classes=[0, 1, 2])
    for _ in range(5):
        clf.partial_fit(Xi, yi)
    assert list(clf.classes_) == [0, 1, 2] and clf.coef_.shape == (3, 4) and clf.score(Xi, yi) > 0.8
    with pytest.raises(ValueError, match="not among the classes"):
        clf.partial_fit(Xi[:5], np.array([0, 1, 2, 3, 1]))
    with pytest.raises(ValueError, match="partial_fit"):
        SGDClassifier(class_weight="balanced").partial_fit(Xi, yi, classes=[0, 1, 2])


def test_early_stopping_on_the_engine_loss():
    from zipsgd import reference
    from zipsgd.job import EarlyStopping

    X, y = _ls(n=300)
    est = SGDRegressor(max_iter=60, tol=1e-3, n_iter_no_change=3, random_state=0, decay=0).fit(X, y)
    res = est.engine_result_
    assert res.stopped and est.n_iter_ == len(est.loss_curve_) < 60
    # scikit-learn's rule on the per-epoch mean loss: the last n_iter_no_change epochs no better than best - tol
    curve = est.loss_curve_
    best = min(curve[:-3])
    assert all(v > best - 1e-3 for v in curve[-3:])
    job = est.make_job(X, y)
    want = reference.run(job.config, job.streams, job.codebook, stop=EarlyStopping(1e-3, 3, job.n_samples))
    assert want.model.tolist() == res.model.tolist()
    full = SGDRegressor(max_iter=12, random_state=0, decay=0, tol=None).fit(X, y)
    assert full.n_iter_ == 12 and not full.engine_result_.stopped
    with pytest.raises(ValueError, match="n_iter_no_change"):
        SGDRegressor(tol=1e-3, n_iter_no_change=0).fit(X, y)


def test_saturation_counter_warns():
    X, y = _ls(n=200)
    with pytest.warns(Warning, match="saturat"):
        est = SGDRegressor(step=1.9, decay=0, max_iter=3).fit(X, y)
    assert est.engine_result_.saturated > 0 and est.hw_stats_["saturated"] == est.engine_result_.saturated


@pytest.mark.xdist_group("verilator")
def test_sim_backend_warm_start_stop_and_classes_match_the_cpu():
    """The engine's model write path, STOP and POS_CLASS, on the RTL, bit for bit with the cpu."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    kw = dict(bits=4, max_iter=8, batch_size=2, random_state=3, tol=1e-2, n_iter_no_change=2, warm_start=True)
    sim, cpu = SGDClassifier(backend="sim", **kw), SGDClassifier(backend="cpu", **kw)
    for est in (sim, cpu):
        est.fit(X, y).fit(X, y)                   # a cold fit, then a warm one
    assert np.array_equal(sim.coef_, cpu.coef_) and np.array_equal(sim.intercept_, cpu.intercept_)
    assert sim.loss_curve_ == cpu.loss_curve_ and sim.n_iter_ == cpu.n_iter_
    assert [r.stopped for r in sim.engine_result_] == [r.stopped for r in cpu.engine_result_]
    assert [h["saturated"] for h in sim.hw_stats_] == [h["saturated"] for h in cpu.hw_stats_]


def test_low_precision_formats_and_solvers_on_the_cpu():
    """solver/model_format/grad_format train through zipsgd.solvers on backend cpu; the
    defaults are the engine's job bit for bit; the engine backends refuse the others."""
    from zipsgd import solvers

    X, y = _ls(n=300)
    base = SGDRegressor(max_iter=4, tol=None, random_state=2).fit(X, y)
    same = SGDRegressor(max_iter=4, tol=None, random_state=2, model_format="fixed32", rounding="nearest").fit(X, y)
    assert np.array_equal(base.coef_, same.coef_)
    low = SGDRegressor(max_iter=4, tol=None, random_state=2, model_format="fixed16").fit(X, y)
    job = low.make_job(X, y)
    want = solvers.fit(job, model_format="fixed16", record=False)
    assert np.allclose(low.coef_, job.unscale_float(want.model)[0], rtol=0, atol=0)
    assert low.score(X, y) > 0.9 and not np.array_equal(low.coef_, base.coef_)
    for solver in ("svrg", "halp"):
        est = SGDRegressor(max_iter=7, tol=None, alpha=1e-3, solver=solver, model_format="fixed8",
                           random_state=2).fit(X, y)
        assert est.score(X, y) > 0.9 and len(est.loss_curve_) == 7
    # early stopping reaches the solvers too; multiclass labels too
    from sklearn.datasets import load_iris
    Xi, yi = load_iris(return_X_y=True)
    clf = SGDClassifier(model_format="float:e4m3", max_iter=200, random_state=0).fit(Xi, yi)
    assert clf.score(Xi, yi) > 0.8 and clf.n_iter_ < 200
    with pytest.raises(ValueError, match="backend='cpu' only"):
        SGDRegressor(backend="sim", solver="halp").fit(X, y)
    with pytest.raises(ValueError, match="solver"):
        SGDRegressor(solver="adam").fit(X, y)
    with pytest.raises(ValueError, match="class_weight is not supported"):
        SGDClassifier(model_format="fixed8", class_weight={0: 2.0}).fit(Xi[:100], yi[:100])


def test_review_cases_partial_fit_weights_classes_and_formats():
    """partial_fit on many small chunks keeps learning (no decay across calls); one heavy
    sample weight does not slow the rest (weights scale to a mean of 1); class_weight keys
    must be classes; a low-precision fit that saturates warns; the low-precision solvers
    refuse warm starts up front; a cold fit restarts t_."""
    import warnings

    from sklearn.datasets import load_diabetes, make_regression
    from sklearn.exceptions import ConvergenceWarning

    X, y = make_regression(4000, 10, noise=1.0, random_state=0)
    est = SGDRegressor(random_state=0)
    est.partial_fit(X[:500], y[:500])                  # the first call fixes the scaling: representative
    for at in range(500, 4000, 20):
        est.partial_fit(X[at:at + 20], y[at:at + 20])
    assert est.t_ == 176 and est.score(X, y) > 0.999
    small = SGDRegressor(random_state=0).partial_fit(X[:20], y[:20])
    with pytest.warns(UserWarning, match="outside the range the first call fixed"):
        small.partial_fit(X[20:520], y[20:520])
    w = np.ones(4000)
    w[7] = 100.0
    heavy = SGDRegressor(random_state=0, max_iter=20).fit(X, y, sample_weight=w)
    assert heavy.score(X, y) > 0.99
    Xd, yd = load_diabetes(return_X_y=True)
    labels = np.where(yd > 140, "high", "low")
    with pytest.raises(ValueError, match=r"class_weight names \[0, 1\]"):
        SGDClassifier(class_weight={0: 1, 1: 10}).fit(Xd, labels)
    with pytest.raises(ValueError, match="class_weight applies to classifiers"):
        SGDRegressor(class_weight={0: 2.0}).fit(Xd, yd)
    with pytest.warns(ConvergenceWarning, match="saturat"):
        est = SGDRegressor(model_format="fixed8", step=1.9, decay=0, max_iter=5, tol=None).fit(Xd, yd)
    assert est.hw_stats_["saturated"] > 0 and est.engine_result_.saturated == est.hw_stats_["saturated"]
    with pytest.raises(ValueError, match="warm_start is not supported"):
        SGDRegressor(solver="svrg", warm_start=True).fit(Xd, yd)
    with pytest.raises(ValueError, match="partial_fit is not supported"):
        SGDRegressor(model_format="fixed16").partial_fit(Xd, yd)
    est = SGDRegressor(max_iter=3, tol=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(Xd, yd).fit(Xd, yd)
    assert est.t_ == 3


def test_registers_that_do_not_fit_32_bits_are_refused():
    from zipsgd import contract as c, reference
    from zipsgd import testing

    rng = np.random.default_rng(0)
    cfg, streams, cb = testing.job_for(rng, c.EngineConfig(n_samples=4, dim=3, bits=4, encoding=c.Encoding.COMPACT,
                                                          pos_class=-1))
    with pytest.raises(ValueError, match="POS_CLASS = -1 does not fit its 32-bit register"):
        reference.run(cfg, streams, cb)
