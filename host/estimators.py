"""scikit-learn estimators that train on the zipsgd engine (or its bit-exact reference).

:class:`SGDRegressor` (least squares) and :class:`SGDClassifier` (logistic or hinge,
binary) follow scikit-learn's conventions: every ``__init__`` argument is stored
unchanged, validation happens in ``fit``, fitted attributes end in ``_``. ``fit``
runs :func:`zipsgd.job.prepare_job` (scale, quantize, pack) and
:func:`zipsgd.backends.run_job` on ``backend``; ``coef_`` and ``intercept_`` are mapped
back to the caller's units, so ``X @ coef_ + intercept_`` is the model's output on
unscaled data.

Fitted attributes: ``coef_``, ``intercept_``, ``loss_curve_`` (the engine's mean
per-sample loss of each epoch, scaled units), ``n_iter_`` (= epochs),
``n_features_in_``, ``classes_`` (classifier), ``bits_per_feature_`` (stream bits per
feature incl. padding), ``hw_stats_`` (backend counters; empty on the CPU),
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

from .backends import run_job
from .job import LOSS_ALIASES, diagnose, prepare_job
from .packfile import PackedData


def _estimator_init(default_loss: str):
    """The estimators' ``__init__``, its ``loss`` defaulting to ``default_loss``.

    scikit-learn reads an estimator's parameters (``get_params``, ``clone``, ``repr``) from
    the signature of its own ``__init__``, which must store every argument unchanged; the
    two estimators differ only in the default loss, so each takes one made here.
    """
    def __init__(self, loss=default_loss, *, bits=8, sampling="double", levels="uniform", max_iter=10,
                 batch_size=1, step="auto", decay="auto", alpha=0.0, copies=None, random_state=0, backend="cpu",
                 word_bits=64, scale="feature", fit_intercept=True, engine_params=None, verbose=0):
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
    return __init__




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

    def _fit_job(self, X, y, job=None):
        job = job or prepare_job(X, y, **self._job_kwargs())
        res = run_job(job, self.backend)
        coef, intercept = job.unscale(res.model)
        if not (np.all(np.isfinite(coef)) and np.isfinite(intercept)):
            raise ValueError(f"{type(self).__name__}: the model in the units of X and y overflows float64 (values "
                             f"near the float64 limit): rescale X or y, e.g. divide by 1e300")
        for problem in diagnose(job, res):
            warnings.warn(f"{type(self).__name__}: {problem}", ConvergenceWarning, stacklevel=3)
        self.step_, self.decay_ = job.step, job.decay
        self.job_ = job.slim()               # what maps results back; none of the training data
        self.engine_result_ = res
        self.loss_curve_ = [float(v) for v in res.loss_curve(job.n_samples)]
        self.n_iter_ = job.epochs
        self.bits_per_feature_ = float(job.bits_per_feature)
        self.hw_stats_ = dict(res.stats or {})
        if self.verbose:
            for e, v in enumerate(self.loss_curve_, 1):
                print(f"-- Epoch {e}, mean loss {v:.6g} (engine, quantized data), step {job.epoch_step(e - 1):.4g}"
                      f"/sample")
        return coef, intercept

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
    bits : {1, 2, 4, 8, 32}
        Codebook bits per feature; 32 streams full-precision FEAT values.
    sampling : {"double", "single", "nearest"}
        Double sampling (two independent stochastic roundings: unbiased gradients),
        one stochastic rounding used twice, or deterministic nearest rounding.
    levels : {"uniform", "optimal", "log", "weibull"}
        Codebook placement (:func:`zipsgd.quant.make_codebook`).
    max_iter : int
        Epochs (passes over the data), as scikit-learn's ``max_iter``; ``n_iter_`` reports them.
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
        Independent quantized copies streamed in turn (None: ``min(epochs, 4)``).
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
    """

    _losses = ("squared_error", "squared")

    __init__ = _estimator_init(default_loss="squared_error")

    def fit(self, X, y=None):
        """Train on ``X`` (n, d) and real targets ``y`` (n,), or on a packed file
        (:class:`zipsgd.packfile.PackedData`, its labels inside)."""
        self._check_loss()
        if isinstance(X, PackedData):
            coef, intercept = self._fit_packed(X, y)
            self.coef_, self.intercept_ = coef, float(intercept)
            return self
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc", "coo"), y_numeric=True,
                             dtype=np.float64)
        coef, intercept = self._fit_job(_dense(X), y)
        self.coef_ = coef
        self.intercept_ = float(intercept)
        return self

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

    def fit(self, X, y=None):
        """Train on ``X`` (n, d) and class labels ``y``, or on a packed file
        (:class:`zipsgd.packfile.PackedData`, two classes, its labels inside)."""
        self._check_loss()
        if isinstance(X, PackedData):
            coef, intercept = self._fit_packed(X, y)
            self.classes_ = self.job_.classes
            self.coef_, self.intercept_ = coef.reshape(1, -1), np.array([intercept])
            return self
        X, y = validate_data(self, X, y, accept_sparse=("csr", "csc", "coo"), dtype=np.float64)
        check_classification_targets(y)
        X = _dense(X)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(f"the target has {classes.size} class: a classifier needs at least two")
        if classes.size == 2:
            coef, intercept = self._fit_job(X, y)
            self.classes_ = self.job_.classes
            self.coef_, self.intercept_ = coef.reshape(1, -1), np.array([intercept])
            return self
        # one-vs-rest: class k against the rest, one binary job each (labels False/True)
        fits = []
        for cls in classes:
            coef, intercept = self._fit_job(X, y == cls)
            fits.append((coef, intercept, self.loss_curve_, self.step_, self.engine_result_, self.hw_stats_))
        self.classes_ = classes
        self.coef_ = np.vstack([f[0] for f in fits])
        self.intercept_ = np.array([f[1] for f in fits])
        self.loss_curve_ = [f[2] for f in fits]
        self.step_ = [f[3] for f in fits]
        self.engine_result_ = [f[4] for f in fits]
        self.hw_stats_ = [f[5] for f in fits]
        return self

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
