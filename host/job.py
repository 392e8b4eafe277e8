"""The data pipeline every backend shares: validate, scale, quantize, pack, run, unscale.

:func:`prepare_job` turns user data ``(X, y)`` and training options into a
:class:`Job`: the engine's configuration registers (:class:`~zipsgd.contract.EngineConfig`),
the codebook, ``copies`` packed streams (epoch ``e`` streams copy ``e % copies``) and
everything needed to map the engine's model back to the user's units. :func:`run_job`
hands a job to a backend (``BACKENDS``: name -> callable(job) -> Result); the CPU
backend is the bit-exact reference engine, the simulated board and the PYNQ board
register themselves here when they are available, so estimators never change.

Pipeline
--------
1. Validation (``ValueError`` naming the problem): X 2-D, finite, non-empty, as many
   labels as rows; supported bits / sampling / levels / loss; dimension (plus one for
   the intercept) within ``params.dim_max``; classifier labels of exactly two classes.
2. Scaling: :class:`zipsgd.quant.Scaler` maps X affinely onto [-1, 1] (the FEAT range);
   with ``fit_intercept`` a constant 1.0 feature is appended (its weight is the
   intercept); without it X is only divided by ``max|x|`` (:class:`MaxAbsScaler`), so
   the model keeps passing through the origin in the user's units.
   Squared loss scales the target too: ``y' = (y - mean) / max|y - mean|``
   (no centring without an intercept). Logistic labels become {0, 1}, hinge {-1, +1}.
3. Codebook: ``bits < 32``: ``quant.make_codebook(levels, bits, data=X_scaled)`` (FEAT
   integers); 32 bits: FULL encoding, features rounded to the FEAT grid, no codebook.
4. Copies: ``copies`` independent quantizations (double: two stochastic roundings per
   feature; single: one stochastic rounding used for both dot product and gradient;
   nearest: deterministic rounding), each in its own random sample order, packed with
   :func:`zipsgd.packing.pack`. Default ``copies = min(epochs, 4)``: fresh randomness for
   the first epochs at bounded host memory (the engine cycles through the copies).
5. Step: the engine applies ``x -= step_eff * sum_batch g`` with
   ``step_eff = step / batch_size = m * 2**-(15 + k)``, ``m`` = STEP_MULT in
   [2**15, 2**16) (``m`` smaller only when ``k`` hits STEP_SHIFT_MAX). The step halves every
   ``decay`` epochs (0: constant). L2 ``alpha``: ``x -= x * 2**-l2_shift`` per batch with
   ``l2_shift = round(-log2(step * alpha))`` clamped to [1, L2_SHIFT_MAX] (0: off); the
   L2 shrink does not decay and also applies to the intercept weight.

Random streams: ``seed`` feeds independent generators for the sample orders
(``[seed, 1]``), the quantization (``[seed, 2]``) and the codebook (``[seed, 3]``), so jobs
with the same seed share their sample orders whatever the bits — the float64
baseline (:mod:`zipsgd.baseline`) replays exactly those orders.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import contract as c
from . import packing

LOSSES = {"squared": c.Loss.SQUARED, "logistic": c.Loss.LOGISTIC, "hinge": c.Loss.HINGE}
#: scikit-learn's names of the same losses.
LOSS_ALIASES = {"squared_error": "squared", "log_loss": "logistic"}
LEVELS = ("uniform", "optimal", "log", "weibull")
BITS_CHOICES = c.BITS_ALLOWED + (c.FULL_BITS,)
SCALE_MODES = ("feature", "global", "quantile")
DEFAULT_COPIES_MAX = 4


#: Rows scaled, quantized and packed at a time (bounds the packer's memory).
PACK_CHUNK_ROWS = 1 << 16
#: Rows a codebook that needs data is fitted on when X is not scaled whole (packed files).
CODEBOOK_ROWS = 1 << 17


#: Samples of a copy's start the mean curvature (``lam``) is estimated on.
LAM_ROWS = 4096


def pack_copy(out, layout: c.Layout, labels, rows, perm, sampling: str, levels, rng, chunk_rows: int,
              lam: bool = True) -> dict:
    """Pack one copy (samples in ``perm`` order) into ``out``, ``chunk_rows`` samples at a time.

    ``rows(idx)``: the scaled feature rows ``idx`` (intercept column included); ``levels``:
    the codebook as floats (None for 32-bit FULL); ``rng``: the quantization generator,
    drawn from chunk by chunk (one chunk when n <= chunk_rows).

    Returns what the automatic step needs of the data the engine will see (the quantized
    values, :func:`data_smoothness`): ``l_max``, the largest ``|q1_i| |q2_i|`` over the
    copy's samples, and (when ``lam``) the top eigenvalue of the mean ``q1 q2^T`` over its
    first :data:`LAM_ROWS` samples (a uniform sample: the copy is shuffled).
    """
    from . import fastref, quant

    words = layout.beats_per_sample * layout.host_words_per_beat
    # compiled where numba imports (zipsgd.fastref): the same words and generator state
    fast = fastref.pack_copy(out, layout, labels, rows, perm, sampling, levels, rng, chunk_rows)
    l_max, top = 0.0, 0.0
    for at in range(0, len(perm), chunk_rows):
        idx = perm[at:at + chunk_rows]
        if fast:  # packed already: the quantized values, read back from the words
            q1, q2 = fastref.quantized(layout, out[at * words:(at + len(idx)) * words], levels)
        else:
            Xs, y = rows(idx), labels[idx]
            if levels is None:
                values = c.FEAT.to_fixed(Xs)
                packed = packing.pack(layout, y, values=values)
                q1 = q2 = c.FEAT.to_float(values)
            elif sampling == "double":
                c1, c2 = quant.double_sample(Xs, levels, rng)
                packed = packing.pack(layout, y, codes1=c1, codes2=c2)
                q1, q2 = levels[c1], levels[c2]
            else:
                c1 = quant.stochastic_round(Xs, levels, rng) if sampling == "single" \
                    else quant.nearest_round(Xs, levels)
                packed = packing.pack(layout, y, codes1=c1)
                q1 = q2 = levels[c1]
            out[at * words:(at + len(idx)) * words] = packed
        l_max = max(l_max, float(np.max(np.sqrt(np.einsum("ij,ij->i", q1, q1) * np.einsum("ij,ij->i", q2, q2)))))
        if at == 0 and lam:
            top = _top_eigenvalue(q1[:LAM_ROWS], q2[:LAM_ROWS])
    return {"l_max": l_max, "lam": top if lam else 0.0}


def _top_eigenvalue(q1, q2, iters: int = 30) -> float:
    """Largest eigenvalue of the symmetric part of ``q1^T q2 / m`` (power iteration)."""
    m = q1.shape[0]
    v = np.ones(q1.shape[1]) / math.sqrt(q1.shape[1])
    lam = 0.0
    for _ in range(iters):
        w = (q1.T @ (q2 @ v) + q2.T @ (q1 @ v)) / (2 * m)
        norm = float(np.linalg.norm(w))
        if norm == 0:
            return 0.0
        lam, v = norm, w / norm
    return lam


#: The loss's curvature bound in the residual: squared 1, logistic 1/4 (sigmoid' <= 1/4),
#: hinge 1 (a subgradient step of the same size as squared's).
LOSS_SMOOTHNESS = {"squared": 1.0, "logistic": 0.25, "hinge": 1.0}


def data_smoothness(l_max: float, lam: float, n: int, batch: int) -> float:
    """Smoothness of a batch-mean gradient of ``batch`` of ``n`` samples, from the largest
    per-sample curvature ``l_max`` and the mean curvature ``lam`` (expected smoothness of
    minibatch SGD without replacement): ``L_b = (n-b)/(b(n-1)) l_max + n(b-1)/(b(n-1)) lam``."""
    if n <= 1:
        return l_max
    b = min(batch, n)
    return (n - b) / (b * (n - 1)) * l_max + n * (b - 1) / (b * (n - 1)) * lam


#: ``step="auto"`` takes this fraction of ``1 / (s L_b)`` per loss: the squared loss's
#: gradient grows with the residual (its noise at the optimum is the data's), the
#: classification losses' is bounded by the sample (|r| <= 1).
AUTO_STEP_FRACTION = {"squared": 0.5, "logistic": 1.0, "hinge": 1.0}
#: ``decay="auto"``: epochs per halving of the step, per loss (0: constant).
AUTO_DECAY = {"squared": 2, "logistic": 0, "hinge": 0}


def auto_step(stats: dict, loss: str, n: int, batch: int) -> float:
    """``step="auto"``: ``f / (s L_b)``, with ``s`` the loss's smoothness factor
    (:data:`LOSS_SMOOTHNESS`), ``L_b`` the batch-mean gradient's smoothness on the quantized
    data (:func:`data_smoothness`) and ``f`` :data:`AUTO_STEP_FRACTION` — the step SAG-style
    solvers take, for the batch size the engine runs (a larger batch averages the
    per-sample curvature down towards the data's mean curvature, and earns a larger step);
    at most the engine's largest step."""
    lb = data_smoothness(stats["l_max"], stats["lam"], n, batch) * LOSS_SMOOTHNESS[loss]
    return min(AUTO_STEP_FRACTION[loss] / max(lb, 1e-12), _engine_step_cap(batch))


def diagnose(job: "Job", res) -> list:
    """What went wrong in a finished job, each as one sentence with its remedy (empty when
    nothing did): a loss curve that ends above where it started or rose far from its
    minimum, a model at the engine's saturation limit, a model that is not finite. (Ten
    per cent of rise is noise, not divergence: an epoch's loss is measured while training.)"""
    out = []
    curve = [float(v) for v in res.loss_curve(job.n_samples)] if res.loss_sums else []
    remedy = (f"lower the step (it was {job.step:.3g}{' (auto)' if job.extras.get('step_auto') else ''}), "
              "use more bits or a larger batch")
    if curve and not all(math.isfinite(v) for v in curve):
        out.append(f"the loss is not finite: training diverged; {remedy}")
    elif len(curve) > 1 and curve[-1] > 1.1 * curve[0]:
        out.append(f"the loss grew from {curve[0]:.4g} (epoch 1) to {curve[-1]:.4g} (epoch {len(curve)}): "
                   f"training diverged; {remedy}")
    elif len(curve) > 2 and curve[-1] > 1.5 * min(curve):
        out.append(f"the loss rose to {curve[-1]:.4g} from its minimum {min(curve):.4g}: the step is too large "
                   f"for the end of training; {remedy}, or set decay")
    model = np.asarray(res.model, dtype=np.int64)
    sat = int(np.count_nonzero((model >= c.MODEL.max) | (model <= c.MODEL.min)))
    if sat:
        out.append(f"{sat} of {model.size} weights sit at the engine's limit (+-{c.MODEL.to_float(c.MODEL.max):.4g} "
                   f"in scaled units): the model saturated; {remedy}")
    w = job.model_float(model)
    coef, icpt = job.unscale_float(w)
    if not (np.all(np.isfinite(coef)) and math.isfinite(icpt)):
        out.append("the model is not finite in the data's units (the scaling overflows): rescale X or y")
    return out


def auto_decay(loss: str) -> int:
    """``decay="auto"``: :data:`AUTO_DECAY` for ``loss``."""
    if loss not in AUTO_DECAY:
        raise ValueError(f"unsupported loss={loss!r}: choose one of {tuple(AUTO_DECAY)}")
    return AUTO_DECAY[loss]


def memory_estimate(n: int, dim: int, copies: int, layout: c.Layout) -> int:
    """Bytes an in-memory job holds at its peak: the scaled matrix (float64), the packed
    copies, and one chunk's quantization temporaries (about 40 bytes per value)."""
    packed = n * layout.beats_per_sample * layout.host_words_per_beat * 8
    return n * dim * 8 + copies * packed + min(n, PACK_CHUNK_ROWS) * dim * 40


def check_memory(n: int, dim: int, copies: int, layout: c.Layout, available: int | None = None) -> None:
    """Refuse an in-memory job that would not fit the host's memory, before any work, with
    the numbers and the remedy (``zipsgd pack``: chunked, to a memory-mapped file)."""
    from .info import memory_available

    available = memory_available() if available is None else available
    need = memory_estimate(n, dim, copies, layout)
    if available is not None and need > available:
        raise MemoryError(f"this job needs about {need / 2**20:,.0f} MiB in memory ({n} x {dim} scaled values and "
                          f"{copies} packed copies), {available / 2**20:,.0f} MiB are available: pack it to a file "
                          "in chunks instead (`zipsgd pack DATA -o FILE.zsgd`, or zipsgd.packfile.write) and train "
                          "from that file")


def default_copies(epochs: int) -> int:
    """Packed copies when none are asked for: ``min(epochs, 4)``."""
    return max(1, min(int(epochs), DEFAULT_COPIES_MAX))


# --------------------------------------------------------------------------------------
# Job
# --------------------------------------------------------------------------------------
@dataclass
class Job:
    """A training job ready for any backend, plus what maps its results back.

    Attributes
    ----------
    config : EngineConfig
        The engine's configuration registers.
    params : EngineParams
        Build parameters the job was checked against.
    codebook : ndarray of int64 or None
        ``2**bits`` FEAT integers (None for 32-bit FULL encoding).
    streams : list of uint64 arrays
        Packed copies; epoch ``e`` streams ``streams[e % len(streams)]``.
    perms : list of int arrays
        Sample order of each copy (row ``i`` of copy ``k`` is sample ``perms[k][i]``).
    X_scaled : ndarray (n, dim)
        Scaled full-precision features (with the constant intercept column).
    y_scaled : ndarray (n,)
        Labels as the engine sees them, in float (scaled target, {0, 1} or {-1, +1}).
    """

    config: c.EngineConfig
    params: c.EngineParams
    codebook: np.ndarray | None
    streams: list
    perms: list
    X_scaled: np.ndarray
    y_scaled: np.ndarray
    loss: str
    bits: int
    sampling: str
    levels: str
    epochs: int
    batch_size: int
    step: float
    decay: int
    alpha: float
    seed: int
    scale: str
    fit_intercept: bool
    scaler: Any
    y_center: float = 0.0
    y_scale: float = 1.0
    classes: np.ndarray | None = None
    n_features: int = 0
    extras: dict = field(default_factory=dict)

    # -- derived -------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return self.config.n_samples

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def copies(self) -> int:
        return len(self.streams)

    @property
    def layout(self) -> c.Layout:
        return self.config.layout

    @property
    def bits_per_feature(self) -> float:
        """Stream bits per feature, padding and label included."""
        return self.layout.bits_per_feature_effective

    @property
    def levels_float(self) -> np.ndarray | None:
        return None if self.codebook is None else c.FEAT.to_float(self.codebook)

    @property
    def step_eff(self) -> float:
        """The per-sample step of epoch 0 as the engine applies it (m * 2**-(15+k))."""
        return self.epoch_step(0)

    def epoch_step(self, epoch: int) -> float:
        """Per-sample step the engine applies in ``epoch`` (the gradient is summed over the batch)."""
        return self.config.step_mult * 2.0 ** -(c.STEP_MULT.frac + self.config.epoch_shift(epoch))

    @property
    def l2_factor(self) -> float:
        """Fraction of the model the L2 term removes per batch (0: off)."""
        return 2.0 ** -self.config.l2_shift if self.config.l2_shift else 0.0

    def model_float(self, model_ints) -> np.ndarray:
        """The engine's model (MODEL integers) as floats in scaled units (length ``dim``)."""
        return c.MODEL.to_float(np.asarray(model_ints, dtype=np.int64))

    def unscale(self, model_ints) -> tuple[np.ndarray, float]:
        """(coef, intercept) in the user's units from the engine's model."""
        return self.unscale_float(self.model_float(model_ints))

    def unscale_float(self, w) -> tuple[np.ndarray, float]:
        """(coef, intercept) in the user's units from a scaled float model of length ``dim``."""
        w = np.asarray(w, dtype=np.float64)
        coef_s, icpt_s = (w[:-1], float(w[-1])) if self.fit_intercept else (w, 0.0)
        coef, icpt = self.scaler.unscale_coef(coef_s, icpt_s, y_center=self.y_center, y_scale=self.y_scale)
        return np.asarray(coef, dtype=np.float64), float(icpt)

    def slim(self) -> "Job":
        """The job without its data (packed copies, sample orders, scaled matrix, labels):
        what maps a result back to the user's units, and the settings. Fitted estimators
        keep this."""
        return dataclasses.replace(self, streams=[], perms=None, X_scaled=None, y_scaled=None)

    def with_step(self, step: float) -> "Job":
        """The same job (same streams) with another step; the L2 shift is recomputed."""
        step = _as_float("step", step)
        k, m = step_registers(step / self.batch_size)
        cfg = dataclasses.replace(self.config, step_shift=k, step_mult=m,
                                  l2_shift=l2_shift_for(step, self.alpha))
        return dataclasses.replace(self, config=cfg, step=step)

    def summary(self) -> dict:
        cfg = self.config
        return {
            "n_samples": cfg.n_samples, "dim": cfg.dim, "n_features": self.n_features, "loss": self.loss,
            "bits": self.bits, "sampling": self.sampling, "levels": self.levels,
            "encoding": c.Encoding(cfg.encoding).name, "epochs": self.epochs, "batch_size": self.batch_size,
            "step": self.step, "step_eff": self.step_eff, "step_shift": cfg.step_shift,
            "step_mult": cfg.step_mult, "decay": self.decay, "alpha": self.alpha, "l2_shift": cfg.l2_shift,
            "copies": self.copies, "seed": self.seed, "word_bits": cfg.word_bits,
            "bits_per_feature": self.bits_per_feature,
        }


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------
def _as_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) and not (
            isinstance(v, (float, np.floating)) and float(v).is_integer()):
        raise ValueError(f"{name} must be an integer, not {v!r}")
    v = int(v)
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, not {v}")
    return v


def _as_float(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, not {v!r}")
    return f


def check_X(X) -> np.ndarray:
    """X as a finite 2-D float64 array with at least one row and one column."""
    try:
        import scipy.sparse as sp
        if sp.issparse(X):
            X = X.toarray()
    except ImportError:  # pragma: no cover
        pass
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"X must be numeric: {exc}") from None
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (samples x features), got {X.ndim}-D shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("empty data: X has 0 samples")
    if X.shape[1] == 0:
        raise ValueError("empty data: X has 0 features")
    if not np.all(np.isfinite(X)):
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"X contains NaN or infinity (first at row {bad[0]}, column {bad[1]})")
    return X


def check_y(y, n: int, *, numeric: bool) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per sample), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"X and y have different numbers of samples: X has {n} rows, y has {y.shape[0]}")
    if numeric or y.dtype.kind in "fc":
        try:
            yf = y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError("y must be numeric for the squared loss") from None
        if not np.all(np.isfinite(yf)):
            raise ValueError(f"y contains NaN or infinity (first at index {int(np.argmax(~np.isfinite(yf)))})")
        if numeric:
            return yf
    return y


def step_registers(step_eff: float) -> tuple[int, int]:
    """(step_shift k, step_mult m) with ``m * 2**-(15+k)`` closest to ``step_eff``.

    ``m`` is normalised into [2**15, 2**16) unless ``k`` would leave [0, STEP_SHIFT_MAX].
    """
    if not (step_eff > 0) or not math.isfinite(step_eff):
        raise ValueError(f"step must be positive and finite, not {step_eff!r}")
    frac = c.STEP_MULT.frac
    k = math.ceil(-math.log2(step_eff))  # step_eff * 2**k in [1, 2)
    if k < 0:
        k = 0
    k = min(k, c.STEP_SHIFT_MAX)
    m = int(math.floor(step_eff * 2.0 ** (frac + k) + 0.5))
    if m > c.STEP_MULT.max:
        if k > 0:  # rounding reached 2**16
            k -= 1
            m = int(math.floor(step_eff * 2.0 ** (frac + k) + 0.5))
        if m > c.STEP_MULT.max:
            raise ValueError(f"step / batch_size = {step_eff:g} is too large: the engine's largest per-sample "
                             f"step is {c.STEP_MULT.max / c.STEP_MULT.one:g}")
    if m < 1:
        raise ValueError(f"step / batch_size = {step_eff:g} is too small: the engine's smallest per-sample step "
                         f"is 2**-{frac + c.STEP_SHIFT_MAX}")
    return k, m


def l2_shift_for(step: float, alpha: float) -> int:
    """L2 shift: ``x -= x * 2**-s`` per batch approximates ``x -= step * alpha * x`` (0: off)."""
    if alpha == 0:
        return 0
    s = round(-math.log2(step * alpha))
    return int(min(max(s, 1), c.L2_SHIFT_MAX))


def map_labels(y, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """(classes, labels in the engine's convention) for a classification loss."""
    classes = np.unique(y)
    if classes.size != 2:
        shown = ", ".join(map(str, classes[:5])) + (", ..." if classes.size > 5 else "")
        raise ValueError(f"classifier labels must take exactly two classes, got {classes.size} "
                         f"class{'es' if classes.size != 1 else ''} ({shown})")
    pos = (y == classes[1])
    if loss == "logistic":
        return classes, pos.astype(np.float64)
    return classes, np.where(pos, 1.0, -1.0)


class MaxAbsScaler:
    """Scaling without centring, ``x' = x / max|x|`` (per feature or global), used when
    ``fit_intercept`` is False: centring (as :class:`zipsgd.quant.Scaler` does) would
    turn a model through the origin into one with an intercept in the user's units.
    Same interface as ``quant.Scaler``."""

    def __init__(self, mode: str = "feature"):
        if mode not in SCALE_MODES:
            raise ValueError(f"unsupported scaling mode={mode!r}: choose one of {SCALE_MODES}")
        self.mode = mode

    def fit(self, X):
        X = np.asarray(X, dtype=np.float64)
        if self.mode == "quantile":
            from .quant import trimmed_abs_max
            m = trimmed_abs_max(X)
        else:
            m = np.abs(X).max(axis=0) if self.mode == "feature" else np.full(X.shape[1], np.abs(X).max())
        self.half_ = np.where(m > 0, m, 1.0)
        self.center_ = np.zeros_like(self.half_)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=np.float64) / self.half_, -1.0, 1.0)

    def fit_transform(self, X):
        return self.fit(X).transform(X)

    def unscale_coef(self, coef_scaled, intercept_scaled, y_center=0.0, y_scale=1.0):
        coef = y_scale * np.asarray(coef_scaled, dtype=np.float64) / self.half_
        return coef, float(y_center + y_scale * float(intercept_scaled))


# --------------------------------------------------------------------------------------
# prepare_job
# --------------------------------------------------------------------------------------
def prepare_job(X, y, *, loss: str = "squared", bits: int = 8, sampling: str = "double",
                levels: str = "uniform", epochs: int = 10, batch_size: int = 1, step: float = 2.0 ** -6,
                decay: int = 0, alpha: float = 0.0, copies: int | None = None, seed: int | None = 0,
                word_bits: int = c.WORD_BITS_DEFAULT, scale: str = "feature", fit_intercept: bool = True,
                params: c.EngineParams | None = None, codebook=None, sink=None,
                chunk_rows: int | None = None) -> Job:
    """Validate, scale, quantize and pack a training job (see the module docstring).

    ``codebook`` (optional, bits < 32): ``2**bits`` increasing float levels in [-1, 1] to
    use instead of ``quant.make_codebook(levels, ...)`` (rounded to the FEAT grid).

    ``sink`` (optional): ``sink(k, words)`` returns the array copy ``k`` is packed into
    (e.g. a slice of a memory-mapped file, :mod:`zipsgd.packfile`); then X is read in
    chunks of ``chunk_rows`` rows (default :data:`PACK_CHUNK_ROWS`) and never scaled whole,
    ``X_scaled`` is None, and levels that need data are fitted on :data:`CODEBOOK_ROWS`
    rows drawn at random. The packed words do not depend on ``sink``.
    """
    chunk_rows = PACK_CHUNK_ROWS if chunk_rows is None else _as_int("chunk_rows", chunk_rows)
    from . import quant

    # ---- options ---------------------------------------------------------------------
    loss_name = loss.name.lower() if isinstance(loss, c.Loss) else LOSS_ALIASES.get(loss, loss)
    if loss_name not in LOSSES:
        raise ValueError(f"unsupported loss={loss!r}: choose one of {tuple(LOSSES)}")
    if isinstance(bits, bool) or bits not in BITS_CHOICES:
        raise ValueError(f"unsupported bits={bits!r}: choose one of {BITS_CHOICES}")
    bits = int(bits)
    if sampling not in c.SAMPLINGS:
        raise ValueError(f"unsupported sampling={sampling!r}: choose one of {c.SAMPLINGS}")
    if levels not in LEVELS:
        raise ValueError(f"unsupported levels={levels!r}: choose one of {LEVELS}")
    if scale not in SCALE_MODES:
        raise ValueError(f"unsupported scale={scale!r}: choose one of {SCALE_MODES}")
    if word_bits not in c.WORD_BITS_ALLOWED:
        raise ValueError(f"unsupported word_bits={word_bits!r}: choose one of {c.WORD_BITS_ALLOWED}")
    params = params or c.EngineParams(word_bits=word_bits)
    if params.word_bits != word_bits:
        raise ValueError(f"word_bits={word_bits} but the engine streams W={params.word_bits}")
    epochs = _as_int("epochs", epochs)
    if epochs > params.epochs_max:
        raise ValueError(f"epochs={epochs} is over the engine's capacity (epochs_max={params.epochs_max})")
    batch_size = _as_int("batch_size", batch_size)
    if batch_size > params.batch_max:
        raise ValueError(f"batch_size={batch_size} is over the engine's capacity "
                         f"(batch_max={params.batch_max})")
    decay = auto_decay(loss.name.lower() if isinstance(loss, c.Loss) else loss) if decay == "auto" \
        else _as_int("decay", decay, lo=0)
    auto = isinstance(step, str) and step == "auto"
    step = 1.0 if auto else _as_float("step", step)       # the automatic step is set after packing
    if step <= 0:
        raise ValueError(f"step must be positive, not {step!r}")
    alpha = _as_float("alpha", alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, not {alpha!r}")
    copies = default_copies(epochs) if copies is None else _as_int("copies", copies)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (1 << 63))
    seed = _as_int("seed", seed, lo=0)
    fit_intercept = bool(fit_intercept)
    closs = LOSSES[loss_name]

    # ---- data ------------------------------------------------------------------------
    X = check_X(X)
    n, n_features = X.shape
    dim = n_features + int(fit_intercept)
    if dim > params.dim_max:
        raise ValueError(f"dimension {n_features} features{' + 1 intercept' if fit_intercept else ''} = {dim} "
                         f"is over the engine's capacity (dim_max={params.dim_max})")
    y = check_y(y, n, numeric=(loss_name == "squared"))
    classes = None
    y_center, y_scale = 0.0, 1.0
    if loss_name == "squared":
        from .quant import safe_affine

        big = float(np.max(np.abs(y)))            # means and spans in units of max|y|: no overflow
        big = big if big > 0 else 1.0
        if fit_intercept:
            y_center = float(np.mean(y / big)) * big
        span = float(np.max(np.abs(y / big - y_center / big))) * big
        if not math.isfinite(span):
            raise ValueError(f"y spans more than float64 holds (max |y| = {big:.3g}): rescale y")
        y_scale = span if span > 0 else 1.0
        ys = np.clip(safe_affine(y, y_center, y_scale), -1.0, 1.0)
    else:
        classes, ys = map_labels(y, loss_name)

    if sink is None:
        check_memory(n, dim, copies, c.Layout(word_bits, c.encoding_for(sampling, bits), bits, dim))
    scaler = quant.Scaler(mode=scale) if fit_intercept else MaxAbsScaler(mode=scale)
    scaler.fit(X)

    def scaled(idx):
        """Rows ``idx`` of X scaled into [-1, 1], with the intercept column."""
        rows = np.clip(np.asarray(scaler.transform(X[idx]), dtype=np.float64), -1.0, 1.0)
        return np.hstack([rows, np.ones((rows.shape[0], 1))]) if fit_intercept else rows

    # in memory the scaled matrix is kept (baselines and metrics read it); a packed file
    # (``sink``) is written chunk by chunk from X, which may be memory-mapped
    Xs = scaled(slice(None)) if sink is None else None
    labels = c.MODEL.to_fixed(ys)

    # ---- step, L2 ----------------------------------------------------------------------
    step_shift, step_mult = step_registers(step / batch_size)
    l2_shift = l2_shift_for(step, alpha)

    # ---- codebook, copies --------------------------------------------------------------
    encoding = c.encoding_for(sampling, bits)
    cfg = c.EngineConfig(n_samples=n, dim=dim, bits=bits, encoding=encoding, loss=closs,
                         step_shift=step_shift, step_mult=step_mult, decay_epochs=decay, l2_shift=l2_shift,
                         batch=batch_size, epochs=epochs, copies=copies, word_bits=word_bits)
    err = c.check_config(cfg, params)
    if err != c.Error.NONE:
        raise ValueError(f"the engine would refuse this job: {err.name}: {c.ERROR_TEXT[err]}")
    layout = cfg.layout
    perm_rng = np.random.default_rng([seed, 1])
    q_rng = np.random.default_rng([seed, 2])
    cb_rng = np.random.default_rng([seed, 3])
    perms = [perm_rng.permutation(n) for _ in range(copies)]

    given = codebook
    codebook = lv = None
    if bits != c.FULL_BITS:
        if given is None:
            if Xs is not None or n <= CODEBOOK_ROWS:
                data = Xs if Xs is not None else scaled(slice(None))
            else:
                data = scaled(np.sort(cb_rng.choice(n, CODEBOOK_ROWS, replace=False)))
            lv = np.asarray(quant.make_codebook(levels, bits, data=data, rng=cb_rng), dtype=np.float64)
        else:
            lv = np.asarray(given, dtype=np.float64)
            if lv.ndim != 1 or not np.all(np.isfinite(lv)) or np.abs(lv).max(initial=0) > 1:
                raise ValueError("codebook must be a 1-D array of finite levels in [-1, 1]")
        codebook = c.FEAT.to_fixed(lv)
        if codebook.shape != (1 << bits,):
            raise ValueError(f"codebook for bits={bits} must have {1 << bits} levels, got {codebook.shape}")
        if np.any(np.diff(codebook) <= 0):
            raise ValueError("codebook levels must be strictly increasing on the FEAT grid")
        lv = c.FEAT.to_float(codebook)  # exactly what the engine holds

    rows = (lambda idx: Xs[idx]) if Xs is not None else scaled
    words = n * layout.beats_per_sample * layout.host_words_per_beat
    streams = []
    stats = {"l_max": 0.0, "lam": 0.0}
    for k, perm in enumerate(perms):
        out = np.empty(words, dtype=np.uint64) if sink is None else sink(k, words)
        got = pack_copy(out, layout, labels, rows, perm, sampling, lv, q_rng, chunk_rows, lam=k == 0)
        stats = {"l_max": max(stats["l_max"], got["l_max"]), "lam": stats["lam"] or got["lam"]}
        streams.append(out)

    job = Job(config=cfg, params=params, codebook=codebook, streams=streams, perms=perms, X_scaled=Xs,
               y_scaled=ys, loss=loss_name, bits=bits, sampling=sampling, levels=levels, epochs=epochs,
               batch_size=batch_size, step=step, decay=decay, alpha=alpha, seed=seed, scale=scale,
               fit_intercept=fit_intercept, scaler=scaler, y_center=y_center, y_scale=y_scale,
               classes=classes, n_features=n_features)
    job.extras["data_stats"] = stats
    if not auto:
        return job
    job = job.with_step(auto_step(stats, loss_name, n, batch_size))
    job.extras["step_auto"] = True
    return job


def _engine_step_cap(batch_size: int) -> float:
    """The largest batch-mean step the engine applies (its per-sample step register's range)."""
    return c.STEP_MULT.max / c.STEP_MULT.one * batch_size * 0.999


def job_from_packed(packed, *, epochs: int = 10, batch_size: int = 1, step="auto", decay="auto",
                    alpha: float = 0.0, params: c.EngineParams | None = None) -> Job:
    """A training job on a packed file (:func:`zipsgd.packfile.open_packed`): the file's
    copies (memory-mapped), codebook and scaling, and this call's training settings.
    ``X_scaled`` and ``perms`` are None (the file holds packed data only)."""
    h = packed.header
    word_bits = h["word_bits"]
    params = params or c.EngineParams(word_bits=word_bits)
    if params.word_bits != word_bits:
        raise ValueError(f"{packed.path} is packed for W={word_bits}, the engine streams W={params.word_bits}")
    epochs, batch_size = _as_int("epochs", epochs), _as_int("batch_size", batch_size)
    decay = auto_decay(h["loss"]) if decay == "auto" else _as_int("decay", decay, lo=0)
    if isinstance(step, str) and step == "auto":
        if "data_stats" not in h:
            raise ValueError(f"{packed.path} holds no data statistics for step='auto': pack it again, or give a step")
        step = auto_step(h["data_stats"], h["loss"], h["n_samples"], batch_size)
    step, alpha = _as_float("step", step), _as_float("alpha", alpha)
    if step <= 0 or alpha < 0:
        raise ValueError(f"step must be positive and alpha >= 0 (got step={step}, alpha={alpha})")
    step_shift, step_mult = step_registers(step / batch_size)
    cfg = c.EngineConfig(n_samples=h["n_samples"], dim=h["dim"], bits=h["bits"], encoding=c.Encoding[h["encoding"]],
                         loss=LOSSES[h["loss"]], step_shift=step_shift, step_mult=step_mult, decay_epochs=decay,
                         l2_shift=l2_shift_for(step, alpha), batch=batch_size, epochs=epochs,
                         copies=h["copies"], word_bits=word_bits)
    err = c.check_config(cfg, params)
    if err != c.Error.NONE:
        raise ValueError(f"the engine would refuse this job: {err.name}: {c.ERROR_TEXT[err]}")
    cb = None if h["codebook"] is None else np.asarray(h["codebook"], dtype=np.int64)
    return Job(config=cfg, params=params, codebook=cb, streams=list(packed.streams), perms=None, X_scaled=None,
               y_scaled=None, loss=h["loss"], bits=h["bits"], sampling=h["sampling"], levels=h["levels"],
               epochs=epochs, batch_size=batch_size, step=step, decay=decay, alpha=alpha, seed=h["seed"],
               scale=h["scale"], fit_intercept=h["fit_intercept"], scaler=packed.scaler(), y_center=h["y_center"],
               y_scale=h["y_scale"], classes=packed.classes, n_features=h["n_features"],
               extras={"packed_file": str(packed.path), "data_stats": h.get("data_stats")})
