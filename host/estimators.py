"""scikit-learn estimators that train on the zipsgd engine (or its bit-exact reference).

:class:`SGDRegressor` (least squares) and :class:`SGDClassifier` (logistic or hinge,
binary) follow scikit-learn's conventions: every ``__init__`` argument is stored
unchanged, validation happens in ``fit``, fitted attributes end in ``_``. ``fit``
runs :func:`zipsgd.job.prepare_job` (scale, quantize, pack) and
:func:`zipsgd.backends.run_job` on ``backend``; ``coef_`` and ``intercept_`` are mapped
back to the caller's units, so ``X @ coef_ + intercept_`` is the model's output on
unscaled data.

Fitted attributes: ``coef_``, ``intercept_``, ``loss_curve_`` (the engine's mean
per-sample loss of each epoch, scaled units), ``n_iter_`` (epochs run: ``max_iter``, or
fewer when early stopping ended the job; the largest over the classes), ``t_`` (epochs
trained since the last cold ``fit``: warm fits and ``partial_fit`` calls add to it),
``n_features_in_``, ``classes_`` (classifier), ``bits_per_feature_`` (stream bits per
feature incl. padding), ``hw_stats_`` (backend counters: ``saturated`` on every backend,
cycles, beats and stalls on the engine's),
``engine_result_`` (the raw :class:`~zipsgd.reference.Result`) and ``job_``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import _check_sample_weight

from .backends import run_job
from .job import LOSS_ALIASES, EarlyStopping, diagnose, prepare_job
from .packfile import PackedData


def _estimator_init(default_loss: str):
    """The estimators' ``__init__``, its ``loss`` defaulting to ``default_loss``.

    scikit-learn reads an estimator's parameters (``get_params``, ``clone``, ``repr``) from
    the signature of its own ``__init__``, which must store every argument unchanged; the
    two estimators differ only in the default loss, so each takes one made here.
    """
    def __init__(self, loss=default_loss, *, bits=8, sampling="double", levels="uniform", max_iter=1000,
                 batch_size=1, step="auto", decay="auto", alpha=0.0, copies=None, random_state=0, backend="cpu",
                 word_bits=64, scale="feature", fit_intercept=True, engine_params=None, verbose=0, tol=1e-3,
                 n_iter_no_change=5, class_weight=None, warm_start=False, solver="sgd", model_format="fixed32",
                 grad_format=None, rounding=None, inner_epochs=2, mu="auto"):
        self.loss = loss
        self.bits = bits
        self.sampling = sampling
        self.levels = levels
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.step = step
        self.decay = decay
        self.alpha = alpha
        self.copies = copies
        self.random_state = random_state
        self.backend = backend
        self.word_bits = word_bits
        self.scale = scale
        self.fit_intercept = fit_intercept
        self.engine_params = engine_params
        self.verbose = verbose
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.solver = solver
        self.model_format = model_format
        self.grad_format = grad_format
        self.rounding = rounding
        self.inner_epochs = inner_epochs
        self.mu = mu
    return __init__




#: partial_fit warns when more than this fraction of a call's values lie outside the range
#: the first call fixed (they saturate).
PARTIAL_OUTSIDE_WARN = 0.01


def _seed(random_state) -> int | None:
    """An int seed from scikit-learn's ``random_state`` (int, None, or a numpy generator)."""
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ValueError(f"random_state must be an int, None, a numpy RandomState or Generator, not {random_state!r}")


class _ZipSGD(BaseEstimator):
    """Shared fit machinery (not for direct use)."""

    _losses: tuple = ()

    def _job_kwargs(self) -> dict:
        return dict(loss=self._engine_loss(), bits=self.bits, sampling=self.sampling, levels=self.levels,
                    epochs=self.max_iter, batch_size=self.batch_size, step=self.step, decay=self.decay,
                    alpha=self.alpha, copies=self.copies, seed=_seed(self.random_state), word_bits=self.word_bits,
                    scale=self.scale, fit_intercept=self.fit_intercept, params=self.engine_params)

    def make_job(self, X, y):
        """The job ``fit(X, y)`` runs, with its data (scaled matrix, sample orders, packed
        copies): for baselines and diagnostics, since a fitted estimator keeps none of it."""
        return prepare_job(X, y, **self._job_kwargs())

    def _check_loss(self):
        if self.loss not in self._losses:
            raise ValueError(f"{type(self).__name__} supports loss in {self._losses}, not {self.loss!r}")

    def _engine_loss(self) -> str:
        return LOSS_ALIASES.get(self.loss, self.loss)

    # -- training ------------------------------------------------------------------------
    def _check_fit_params(self, partial: bool = False):
        if self.class_weight is not None and self._engine_loss() == "squared":
            raise ValueError("class_weight applies to classifiers; a regression has no classes (use sample_weight)")
        if (self.warm_start or partial) and self._low_precision():
            raise ValueError(f"{'partial_fit' if partial else 'warm_start'} is not supported with solver="
                             f"{self.solver!r}, model_format={self.model_format!r}, grad_format={self.grad_format!r}, "
                             f"rounding={self.rounding!r} (the low-precision solvers start from zero)")
        if self.tol is not None and not (isinstance(self.tol, (int, float, np.floating)) and np.isfinite(self.tol)):
            raise ValueError(f"tol must be a finite number or None, not {self.tol!r}")
        if isinstance(self.n_iter_no_change, bool) or not isinstance(self.n_iter_no_change, (int, np.integer)) \
                or self.n_iter_no_change < 1:
            raise ValueError(f"n_iter_no_change must be a positive integer, not {self.n_iter_no_change!r}")

    def _low_precision(self) -> bool:
        """True when the solver or the number formats are not the engine's: then
        :mod:`zipsgd.solvers` trains (:func:`zipsgd.solvers.low_precision`)."""
        from . import solvers
        return solvers.low_precision(self.solver, self.model_format, self.grad_format, self.rounding)

    def _fit_low_precision(self, job, mult, model0):
        """One job by :func:`zipsgd.solvers.fit` (backend cpu): (Result, scaled float model)."""
        from . import solvers
        what = (f"solver={self.solver!r}, model_format={self.model_format!r}, grad_format={self.grad_format!r}, "
                f"rounding={self.rounding!r}")
        if self.backend != "cpu":
            raise ValueError(f"backend={self.backend!r} runs the engine's arithmetic (solver='sgd', "
                             f"model_format='fixed32', nearest rounding); {what} runs on backend='cpu' only until "
                             "the engine implements it")
        for given, name in ((mult is not None, "sample_weight"), (job.config.step_mult_neg, "class_weight"),
                            (model0 is not None, "warm_start/partial_fit")):
            if given:
                raise ValueError(f"{name} is not supported with {what} (the low-precision solvers take the "
                                 "engine's plain job)")
        out = solvers.fit(job, solver=self.solver, model_format=self.model_format, grad_format=self.grad_format,
                          rounding=self.rounding, inner_epochs=self.inner_epochs, mu=self.mu, record=False,
                          stop=self._stopper(job))
        out.result.stats = {"saturated": out.result.saturated}   # updates that left the model format's range
        return out.result, out.model

    def _stopper(self, job):
        return None if self.tol is None else EarlyStopping(float(self.tol), int(self.n_iter_no_change), job.n_samples)

    def _sample_mult(self, job, sample_weight):
        """Per-sample multipliers for the backend (None for no weights or equal weights)."""
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.size and np.all(w == w.flat[0]) and w.flat[0] > 0:
            return None                       # equal weights: the step rule already normalises them
        return job.sample_multipliers(w)

    def _class_jobs(self, job, y=None, partial=False):
        """The binary jobs of a classification job (one, or one per class one-vs-rest), with
        the class weights' step multipliers."""
        K = job.n_classes
        jobs = [job] if K <= 2 else [job.for_class(k) for k in range(K)]
        cw = self.class_weight
        if cw is None:
            return jobs
        if partial and isinstance(cw, str):
            raise ValueError(f"class_weight={cw!r} is not supported for partial_fit (it needs every label): "
                             "give a dict")
        if isinstance(cw, str) and cw != "balanced":
            raise ValueError(f"class_weight must be a dict, 'balanced' or None, not {cw!r}")
        if isinstance(cw, str) and y is None:
            raise ValueError("class_weight='balanced' needs the labels: train from X and y, not a packed file")
        if not isinstance(cw, (str, dict)):
            raise ValueError(f"class_weight must be a dict, 'balanced' or None, not {cw!r}")
        if isinstance(cw, dict):
            unknown = [k for k in cw if k not in set(job.classes.tolist())]
            if unknown:
                raise ValueError(f"class_weight names {unknown}, which are not classes of y "
                                 f"({', '.join(map(str, job.classes.tolist()))})")
        w = compute_class_weight(cw, classes=job.classes, y=y) if isinstance(cw, str) else \
            np.array([float(cw.get(k, 1.0)) for k in job.classes])
        if K <= 2:
            return [job.with_class_weights(w[1], w[0])]
        return [jk.with_class_weights(w[k], 1.0) for k, jk in enumerate(jobs)]

    def _run_jobs(self, jobs, sample_weight=None, model0=None):
        """Run the binary jobs; set the fitted attributes; (coef, intercept) per job."""
        out, results = [], []
        mult = self._sample_mult(jobs[0], sample_weight)
        low = self._low_precision()
        for k, job in enumerate(jobs):
            if low:
                res, w = self._fit_low_precision(job, mult, None if model0 is None else model0[k])
                coef, intercept = job.unscale_float(w)
            else:
                res = run_job(job, self.backend, model0=None if model0 is None else model0[k],
                              stop=self._stopper(job), sample_mult=mult)
                coef, intercept = job.unscale(res.model)
            if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
                raise ValueError(f"{type(self).__name__}: the model in the units of X and y overflows float64 "
                                 "(values near the float64 limit): rescale X or y, e.g. divide by 1e300")
            for problem in diagnose(job, res):
                who = "" if len(jobs) == 1 else f" (class {job.classes[k]!r} against the rest)"
                warnings.warn(f"{type(self).__name__}{who}: {problem}", ConvergenceWarning, stacklevel=4)
            if self.tol is not None and not res.stopped and job.epochs > 1 and len(res.loss_sums) == job.epochs:
                who = "" if len(jobs) == 1 else f" (class {job.classes[k]!r} against the rest)"
                warnings.warn(f"{type(self).__name__}{who}: the maximum number of epochs (max_iter={job.epochs}) ran "
                              f"before the loss stopped improving by tol={self.tol:g}: consider increasing max_iter",
                              ConvergenceWarning, stacklevel=4)
            out.append((coef, intercept))
            results.append(res)
        job = jobs[0]
        self.step_, self.decay_ = job.step, job.decay
        self.job_ = job.slim()               # what maps results back; none of the training data
        self._models = [r.model.copy() for r in results]
        curves = [[float(v) for v in r.loss_curve(job.n_samples)] for r in results]
        one = len(results) == 1
        self.engine_result_ = results[0] if one else results
        self.loss_curve_ = curves[0] if one else curves
        self.n_iter_ = max(len(cv) for cv in curves)
        self.t_ = getattr(self, "t_", 0) + self.n_iter_
        self.bits_per_feature_ = float(job.bits_per_feature)
        stats = [dict(r.stats or {}) for r in results]
        self.hw_stats_ = stats[0] if one else stats
        if self.verbose:
            for k, curve in enumerate(curves):
                head = "" if one else f"class {job.classes[k]!r}: "
                for e, v in enumerate(curve, 1):
                    print(f"-- {head}Epoch {e}, mean loss {v:.6g} (engine, quantized data), step "
                          f"{job.epoch_step(e - 1):.4g}/sample")
        return out

    def _warm_models(self, job, n_jobs):
        """The engine models a warm start trains from (None for a cold start): the last
        fit's coef_/intercept_ in this job's scaling."""
        if not (self.warm_start and hasattr(self, "coef_")):
            return None
        coef = np.atleast_2d(self.coef_)
        icpt = np.atleast_1d(self.intercept_)
        if coef.shape != (n_jobs, job.n_features):
            return None                       # another shape of problem: a cold start, as scikit-learn's
        return [job.model_ints(coef[k], icpt[k])[0] for k in range(n_jobs)]

    def _fit_job(self, X, y, job=None, sample_weight=None):
        """Train (regression, binary, or one-vs-rest on one packed stream) and set the model."""
        self._check_fit_params()
        if not self.warm_start:
            self.t_ = 0                           # a cold fit starts the count again (scikit-learn's t_)
        job = job or prepare_job(X, y, **self._job_kwargs(), keep_scaled=False)   # (a fit keeps no data)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        jobs = self._class_jobs(job, y) if job.classes is not None else [job]
        fits = self._run_jobs(jobs, sample_weight, self._warm_models(job, len(jobs)))
        self._set_model(fits, job)
        return self

    def _set_model(self, fits, job):
        coef = np.vstack([f[0] for f in fits])
        intercept = np.array([f[1] for f in fits], dtype=np.float64)
        if job.classes is None:
            self.coef_, self.intercept_ = coef[0], float(intercept[0])
        else:
            self.classes_ = np.asarray(job.classes)
            self.coef_, self.intercept_ = coef, intercept

    def _partial_job(self, X, y, classes=None):
        """The job of one partial_fit call: one epoch at the step rule's step (the calls'
        sizes say nothing of the data's whole size, so no decay runs across them); the first
        call fixes the scaling and the classes, the next ones keep them."""
        kw = {**self._job_kwargs(), "epochs": 1, "copies": 1}
        if not hasattr(self, "_models"):
            return prepare_job(X, y, **kw, classes=classes, keep_scaled=False)
        sc = self.job_.scaler
        with np.errstate(all="ignore"):
            outside = float(np.mean(np.abs((np.asarray(X, dtype=np.float64) - sc.center_) / sc.half_) > 1.0))
        if outside > PARTIAL_OUTSIDE_WARN:
            warnings.warn(f"{type(self).__name__}.partial_fit: {outside:.1%} of this call's values lie outside the "
                          "range the first call fixed; they saturate at its ends (give the first call "
                          "representative data, or use scale='quantile')", UserWarning, stacklevel=4)
        return prepare_job(X, y, **kw, fixed_scaling=self.job_, keep_scaled=False)

    def _partial_fit(self, X, y, classes=None, sample_weight=None):
        self._check_loss()
        self._check_fit_params(partial=True)
        first = not hasattr(self, "_models")
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc", "coo"), dtype=np.float64, reset=first,
                             y_numeric=self._engine_loss() == "squared")
        if self._engine_loss() != "squared":
            check_classification_targets(y)
            if first and classes is None:
                raise ValueError("classes must be given at the first call of partial_fit (every class the "
                                 "labels may take)")
            if not first and classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes={list(classes)} differ from the first call's {list(self.classes_)}")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        job = self._partial_job(_dense(X), y, classes)
        jobs = self._class_jobs(job, y, partial=True) if job.classes is not None else [job]
        model0 = None if first else self._models
        fits = self._run_jobs(jobs, sample_weight, model0)
        self._set_model(fits, job)
        return self

    def _fit_packed(self, packed, y):
        """Train on a packed file (:func:`zipsgd.packfile.open_packed`): its labels, copies,
        codebook and scaling; this estimator's training settings (max_iter, batch_size, step,
        decay, alpha, backend). The file's quantization (bits, sampling, levels, copies,
        seed, scale, fit_intercept) replaces the estimator's; ``packed_settings_`` says which."""
        from .job import job_from_packed

        if y is not None:
            raise ValueError("a packed file holds its labels: call fit(packed) without y")
        h = packed.header
        if h["loss"] != self._engine_loss():
            raise ValueError(f"{packed.path} was packed for loss={h['loss']!r}; {type(self).__name__}(loss="
                             f"{self.loss!r}) needs a file packed with that loss (zipsgd pack --loss {self.loss})")
        job = job_from_packed(packed, epochs=self.max_iter, batch_size=self.batch_size, step=self.step,
                              decay=self.decay, alpha=self.alpha, params=self.engine_params)
        self.packed_settings_ = {k: h[k] for k in ("bits", "sampling", "levels", "copies", "seed", "scale",
                                                   "fit_intercept")}
        self.n_features_in_ = h["n_features"]
        return self._fit_job(None, None, job=job)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # densified (the engine streams dense samples)
        return tags


class SGDRegressor(RegressorMixin, _ZipSGD):
    """Least-squares linear regression by low-precision SGD on the zipsgd engine.

    Parameters
    ----------
    loss : {"squared_error"}
        ("squared" is accepted too.)
    bits : int, 1 to 8, or 32
        Codebook bits per feature (engine builds decode 1, 2, 4 and 8; 3, 5, 6 and 7 run on
        backend "cpu"); 32 streams full-precision FEAT values.
    sampling : {"double", "single", "nearest"}
        Double sampling (two independent stochastic roundings: unbiased gradients),
        one stochastic rounding used twice, or deterministic nearest rounding.
    levels : {"uniform", "optimal", "log", "weibull"}
        Codebook placement (:func:`zipsgd.quant.make_codebook`).
    max_iter : int
        Largest number of epochs (passes over the data), as scikit-learn's ``max_iter``
        (default 1000, with early stopping); ``n_iter_`` reports the epochs run.
    batch_size : int
    step : float or "auto"
        Learning rate of the batch-mean gradient (the engine sums the batch and applies
        ``step / batch_size``). "auto" (default): chosen from the quantized data the engine
        will see, the loss and the batch size, as SAG-style solvers do
        (:func:`zipsgd.job.auto_step`: ``f / (s L_b)``, ``L_b`` the batch-mean gradient's
        smoothness); the step taken is ``step_``.
    decay : int or "auto"
        The step halves every ``decay`` epochs (0: constant). "auto" (default): every 2
        epochs for the squared loss, constant for the classification losses.
    alpha : float
        L2 strength (applied as a power-of-two shrink per batch).
    copies : int or None
        Independent quantized copies streamed in turn (None: one per epoch while they fit
        ``job.COPIES_BUDGET_BYTES``, at least ``min(epochs, 4)``: :func:`zipsgd.job.default_copies`).
    random_state : int, numpy RandomState/Generator or None
        Seed of the shuffles, the quantization and the codebook.
    backend : {"cpu", "sim", "pynq"}
        Where the job runs; "cpu" is the bit-exact reference engine.
    word_bits : {64, 128}
    scale : {"feature", "global"}
        Per-feature or global scaling of X into [-1, 1].
    fit_intercept : bool
    engine_params : EngineParams or None
        Engine build limits to check the job against (None: the default build).
    verbose : int
        Print the loss of each epoch after fitting (as scikit-learn's SGD estimators do).
    tol : float or None
        Early stopping (default 1e-3, scikit-learn's): stop when ``n_iter_no_change`` epochs in
        a row do not bring the engine's epoch loss (mean per sample, scaled units) below the
        best by ``tol``. None: every one of ``max_iter`` epochs runs. On the engine the job
        ends at an epoch boundary (its STOP bit).
    n_iter_no_change : int
        Epochs without improvement before stopping (default 5).
    class_weight : dict, "balanced" or None
        Classifiers: a step multiplier per class (scikit-learn's pos/neg rule; the heavier
        class keeps the step, only the weights' ratio matters).
    warm_start : bool
        ``fit`` starts from the last fit's model (mapped into the new scaling).
    solver : {"sgd", "svrg", "halp"}
        "sgd" (the engine's); "svrg" (variance-reduced: a full gradient at an anchor each
        outer epoch, then ``inner_epochs`` passes) and "halp" (SVRG with a low-precision
        offset around the anchor, re-centred each outer epoch: De Sa et al. 2018) run on
        backend "cpu" (:mod:`zipsgd.solvers`).
    model_format, grad_format : str or None
        Number formats of the model and of the gradient (:mod:`zipsgd.formats`): "fixed8",
        "fixed16", "fixed32" (the engine's, default), "float:e4m3", "float:e5m10", "log8"...;
        ``grad_format`` None: the update is rounded once, onto the model's grid. HALP takes
        its offset's bits from ``model_format``. Other than the default: backend "cpu".
    rounding : {"stochastic", "nearest"} or None
        Both formats' rounding; None: nearest for fixed32, stochastic (unbiased) otherwise.
    inner_epochs : int
        SVRG/HALP: passes per outer epoch (each outer epoch adds one full-gradient pass).
    mu : float or "auto"
        HALP's strong-convexity constant (its grid's scale); "auto": the L2 term plus the
        data's smallest curvature (:func:`zipsgd.solvers.auto_mu`).
    """

    _losses = ("squared_error", "squared")

    __init__ = _estimator_init(default_loss="squared_error")

    def fit(self, X, y=None, sample_weight=None):
        """Train on ``X`` (n, d) and real targets ``y`` (n,), or on a packed file
        (:class:`zipsgd.packfile.PackedData`, its labels inside). ``sample_weight``
        (n,): each sample's gradient weighted (backend "cpu"; equal weights anywhere)."""
        self._check_loss()
        if isinstance(X, PackedData):
            return self._fit_packed(X, y)
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc", "coo"), y_numeric=True,
                             dtype=np.float64)
        return self._fit_job(_dense(X), y, sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``X``, ``y``, from the model of the last call. The first call fixes
        the scaling of X and y: later values beyond its range saturate (at the ends of the
        scaled range [-1, 1]). Each call takes the step rule's step (no decay across calls:
        their sizes do not tell the data's); ``t_`` counts the epochs."""
        return self._partial_fit(X, y, sample_weight=sample_weight)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=("csr", "csc", "coo"), reset=False, dtype=np.float64)
        return np.asarray(_dense(X) @ self.coef_ + self.intercept_, dtype=np.float64)


class SGDClassifier(ClassifierMixin, _ZipSGD):
    """Linear classification (logistic or hinge loss) by low-precision SGD; several
    classes one-vs-rest, as scikit-learn's ``SGDClassifier``.

    Same parameters as :class:`SGDRegressor`, with ``loss`` in {"log_loss", "hinge"}
    ("logistic" is accepted for "log_loss"). Two classes: one model, ``classes_[1]`` the
    positive class (logistic label 1, hinge label +1). K > 2 classes: K binary jobs, class
    k against the rest, on any backend; ``coef_`` has shape (K, d), ``decision_function``
    (n, K), ``predict`` the class of the largest score, ``predict_proba`` (logistic loss)
    each class's sigmoid normalised over the K classes, as scikit-learn's one-vs-rest.
    ``loss_curve_`` is the one job's curve (binary) or a list of K curves.
    """

    _losses = ("log_loss", "logistic", "hinge")

    __init__ = _estimator_init(default_loss="log_loss")

    def fit(self, X, y=None, sample_weight=None):
        """Train on ``X`` (n, d) and class labels ``y``, or on a packed file
        (:class:`zipsgd.packfile.PackedData`, its labels inside). ``sample_weight`` (n,):
        each sample's gradient weighted (backend "cpu"; equal weights anywhere)."""
        self._check_loss()
        if isinstance(X, PackedData):
            return self._fit_packed(X, y)
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc", "coo"), dtype=np.float64)
        check_classification_targets(y)
        return self._fit_job(_dense(X), y, sample_weight=sample_weight)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``X``, ``y``, from the model of the last call. ``classes`` (every
        class the labels may take) is required at the first call, which also fixes the
        scaling of X (later values beyond its range saturate). Each call takes the step
        rule's step (no decay across calls); ``t_`` counts the epochs."""
        return self._partial_fit(X, y, classes=classes, sample_weight=sample_weight)

    def decision_function(self, X):
        """Scores: of the positive class ``classes_[1]`` (shape (n,)) for two classes, of
        each class against the rest (n, K) for more."""
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=("csr", "csc", "coo"), reset=False, dtype=np.float64)
        d = np.asarray(_dense(X) @ self.coef_.T + self.intercept_, dtype=np.float64)
        return d[:, 0] if d.shape[1] == 1 else d

    def predict(self, X):
        d = self.decision_function(X)
        return self.classes_[(d > 0).astype(int) if d.ndim == 1 else d.argmax(axis=1)]

    def _is_logistic(self):
        return self._engine_loss() == "logistic"

    @available_if(_is_logistic)
    def predict_proba(self, X):
        """Class probabilities (logistic loss), columns following ``classes_``; one-vs-rest
        sigmoids normalised over the classes when there are more than two."""
        d = self.decision_function(X)
        p = _sigmoid(d)
        if d.ndim == 1:
            return np.column_stack([1.0 - p, p])
        total = p.sum(axis=1, keepdims=True)
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])

    @available_if(_is_logistic)
    def predict_log_proba(self, X):
        d = self.decision_function(X)
        if d.ndim == 1:
            return np.column_stack([-np.logaddexp(0.0, d), -np.logaddexp(0.0, -d)])
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


def _sigmoid(d):
    e = np.exp(-np.abs(d))
    return np.where(d >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else X


__all__ = ["SGDRegressor", "SGDClassifier"]
