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
   :func:`zipsgd.packing.pack`. Default copies (:func:`default_copies`): one per epoch while
   they fit :data:`COPIES_BUDGET_BYTES`, at least ``min(epochs, 4)`` (the engine cycles
   through them; reused copies bias double sampling where d/n is large).
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
#: Packed copies a default job keeps at least (fewer only when it has fewer epochs) ...
DEFAULT_COPIES_MIN = 4
#: ... and at most as many as fit this many bytes (one per epoch at most): a fresh copy for
#: every epoch on small data, where reused copies bias double sampling (see
#: docs/low-precision.md, "copies"), and 4 on large data, where packing time and memory matter.
COPIES_BUDGET_BYTES = 16 << 20


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


#: Above this dimension :func:`_top_eigenvalue` never forms the d x d matrix (at d =
#: 10,000 it is 800 MB and seconds to build); it multiplies by the rows instead.
EIG_MATRIX_DIM_MAX = 256


def _top_eigenvalue(q1, q2, iters: int = 30) -> float:
    """Largest eigenvalue of the symmetric part of ``q1^T q2 / m`` (power iteration: on the
    d x d matrix, formed once, up to :data:`EIG_MATRIX_DIM_MAX`; above it by products with
    the m x d rows, O(m d) memory). BLAS runs on one thread here: these products are small,
    and OpenBLAS's other threads would spin on after them, burning the CPU the engine loop
    needs next (0.1 s of a 0.3 s fit on 50,000 x 90, measured)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                       # (scikit-learn brings it; without it, as BLAS likes)
        return _power_iteration(q1, q2, iters)
    with threadpool_limits(limits=1, user_api="blas"):
        return _power_iteration(q1, q2, iters)


def _power_iteration(q1, q2, iters: int) -> float:
    m = q1.shape[0]
    q1, q2 = np.asarray(q1, dtype=np.float64), np.asarray(q2, dtype=np.float64)
    if q1.shape[1] > EIG_MATRIX_DIM_MAX:
        def sym_times(v):
            return (q1.T @ (q2 @ v) + q2.T @ (q1 @ v)) / (2 * m)
    else:
        cross = q1.T @ q2
        sym = (cross + cross.T) / (2 * m)

        def sym_times(v):
            return sym @ v
    v = np.ones(q1.shape[1]) / math.sqrt(q1.shape[1])
    lam = 0.0
    for _ in range(iters):
        w = sym_times(v)
        norm = float(np.linalg.norm(w))
        if norm == 0:
            return 0.0
        lam, v = norm, w / norm
    return lam


#: Values (rows x dim) the numpy path of :func:`pack_rows` quantizes at a time (its
#: temporaries: about 80 bytes per value).
PACK_BLOCK_VALUES = 1 << 16
#: Buckets of the compiled quantizer's first guess of a value's codebook interval.
GUESS_BUCKETS = 1 << 10
_PACK_MODES = {"double": 1, "single": 2, "nearest": 3}


def _fastpack():
    """The compiled packer (``zipsgd._fastpack``) where numba imports and the compiled
    kernels are in use (:func:`zipsgd.fastref.kernels`), else None (the numpy path)."""
    from . import fastref

    if fastref.kernels() is None:
        return None
    try:
        from . import _fastpack as fp
    except ImportError:  # pragma: no cover - numba imports for fastref, so here too
        return None
    return fp


def pack_plan(layout: c.Layout, sampling: str, levels) -> dict:
    """What :func:`pack_rows` needs of a layout, a sampling mode and a codebook (``levels``
    as floats; None for 32-bit FULL), computed once per job."""
    full = levels is None
    lv = np.zeros(2) if full else np.asarray(levels, dtype=np.float64)
    plan = {"layout": layout, "mode": 0 if full else _PACK_MODES[sampling], "levels": None if full else lv,
            "sq": (np.zeros(1, dtype=np.int64) if full else c.FEAT.to_fixed(lv) ** 2)}
    lay = layout
    plan["lay"] = np.array([int(lay.encoding), lay.bits, lay.dim, lay.feature_bits, lay.features_per_beat,
                            lay.beats_per_sample, lay.host_words_per_beat, lay.label_shift, c.HOST_WORD_BITS,
                            c.LABEL_BITS, int(c.Encoding.FULL), int(c.Encoding.SINGLE), int(c.Encoding.PAIR)],
                           dtype=np.int64)
    size = 256
    if not full and lv.size <= size:
        inv = GUESS_BUCKETS / (lv[-1] - lv[0])
        edges = lv[0] + np.arange(GUESS_BUCKETS) / inv
        plan["guess"] = np.maximum(np.searchsorted(lv, edges, side="right") - 1, 0).astype(np.int64)
        plan["inv"] = float(inv)
        plan["mids"] = np.concatenate(([-np.inf], (lv[:-1] + lv[1:]) / 2, np.full(size - lv.size, np.inf)))
    else:
        plan["guess"], plan["inv"] = np.zeros(1, dtype=np.int64), 0.0
        plan["mids"] = np.full(size + 1, np.inf)
    return plan


def pack_rows(outs, plan: dict, labels, xs, pos, keys, scaling=None, xs_out=None) -> float:
    """Quantize rows ``xs`` and pack them with their ``labels`` (MODEL integers) into every
    copy ``k``: row ``t`` becomes sample ``pos[k, t]`` of ``outs[k]`` (host words).
    ``plan``: :func:`pack_plan`. ``xs``: scaled rows (r, dim), intercept column included;
    or, with ``scaling = (scaler, fit_intercept)``, raw rows scaled here as
    :func:`scaled_matrix` does (then written to ``xs_out`` when given).

    Stochastic rounding takes its random bits from :func:`zipsgd.quant.counter_bits` with
    key ``keys[k]`` and counter ``pos[k, t] * dim + i`` (feature ``i``): double sampling
    rounds Q1 with the low 32 bits and Q2 with the high 32 bits of that word
    (:func:`zipsgd.quant.round_with_bits`), single sampling with the low 32 bits. So a copy's
    words depend on its key and on which row lands where, not on the order or the
    chunking in which rows arrive. Compiled (``zipsgd._fastpack``) where numba imports,
    else numpy (:mod:`zipsgd.quant`, :func:`zipsgd.packing.pack`): the same words.

    Returns the largest ``s1 * s2`` over the samples written, ``s1`` and ``s2`` a sample's
    sums of squared FEAT integers of Q1 and Q2 (exact), for :func:`data_smoothness`'s
    ``l_max = sqrt(s1 s2) / FEAT.one**2``."""
    layout = plan["layout"]
    xs = np.ascontiguousarray(xs, dtype=np.float64)
    pos = np.asarray(pos, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if scaling is None:
        center, half, icpt = np.zeros(layout.dim), np.ones(layout.dim), False
    else:
        center, half, icpt = scaling[0].center_, scaling[0].half_, bool(scaling[1])
    if xs.ndim != 2 or xs.shape[1] + int(icpt) != layout.dim or pos.shape != (keys.size, xs.shape[0]) \
            or labels.shape != (xs.shape[0],):
        raise ValueError(f"expected rows of shape (r, {layout.dim - int(icpt)}), labels (r,) and positions "
                         f"({keys.size}, r); got {xs.shape}, {labels.shape} and {pos.shape}")
    fp = _fastpack()
    arr = [np.asarray(o) for o in outs]
    ok = fp is not None and all(o.dtype == np.uint64 and o.ndim == 1 and o.flags.c_contiguous
                                and o.flags.writeable for o in arr) and len({o.size for o in arr}) == 1
    if ok:
        if isinstance(outs, np.ndarray) and outs.ndim == 2 and outs.flags.c_contiguous:
            o2 = outs
        elif len(arr) == 1:
            o2 = arr[0].reshape(1, -1)
        else:
            ok = False
    xo = np.zeros((0, layout.dim)) if xs_out is None else xs_out
    if ok and (xo.dtype != np.float64 or not xo.flags.c_contiguous):
        ok = False
    if ok:
        lv = plan["levels"] if plan["levels"] is not None else np.zeros(2)
        err, best = fp.pack_rows(xs, np.ascontiguousarray(center, dtype=np.float64),
                                 np.ascontiguousarray(half, dtype=np.float64), icpt, xo, pos, keys, labels, lv,
                                 plan["guess"], plan["inv"], plan["mids"], plan["sq"], plan["mode"], plan["lay"],
                                 c.FEAT.one, o2)
        if err:  # the numpy path raises its own error
            _pack_rows_numpy(arr, plan, labels, _scale_block(xs, center, half, icpt), pos, keys)
            raise AssertionError(f"_fastpack.pack_rows reported error {err}, which the numpy path does not raise")
        return float(best)
    scaled = _scale_block(xs, center, half, icpt) if scaling is not None else xs
    if xs_out is not None:
        xs_out[...] = scaled
    return _pack_rows_numpy(arr, plan, labels, scaled, pos, keys)


def _scale_block(X, center, half, icpt: bool) -> np.ndarray:
    """:func:`scaled_matrix` of a block of rows."""
    out = np.empty((X.shape[0], X.shape[1] + int(icpt)))
    _scale_into(X, center, half, out)
    return out


def _scale_into(src, center, half, out) -> None:
    """``out[:, :nf] = clip((src - center) / half)`` in place (:func:`zipsgd.quant.safe_affine`
    where that overflows), ``out[:, nf:] = 1.0`` (the intercept column, if any)."""
    from . import quant

    nf = src.shape[1]
    blk = out[:, :nf]
    np.subtract(src, center, out=blk)
    np.divide(blk, half, out=blk)
    if not math.isfinite(float(np.sum(blk))):
        blk[...] = quant.safe_affine(np.asarray(src, dtype=np.float64), center, half)
    np.clip(blk, -1.0, 1.0, out=blk)
    out[:, nf:] = 1.0


def _pack_rows_numpy(outs, plan: dict, labels, xs, pos, keys) -> float:
    """:func:`pack_rows` in numpy on scaled rows, :data:`PACK_BLOCK_VALUES` values at a time."""
    from . import quant

    layout, mode, lv, sq = plan["layout"], plan["mode"], plan["levels"], plan["sq"]
    d = layout.dim
    per = layout.beats_per_sample * layout.host_words_per_beat
    block = max(1, PACK_BLOCK_VALUES // d)
    best = 0.0
    for at in range(0, xs.shape[0], block):
        x, lab = xs[at:at + block], labels[at:at + block]
        if mode == 0:
            values = c.FEAT.to_fixed(x)
            packed = [packing.pack(layout, lab, values=values)] * len(keys)
            s12 = [np.einsum("ij,ij->i", values, values)] * 2 * len(keys)
        elif mode == 3:
            c1 = quant.nearest_round(x, lv)
            packed = [packing.pack(layout, lab, codes1=c1)] * len(keys)
            s12 = [sq[c1].sum(axis=1)] * 2 * len(keys)
        else:
            j, p = quant.interval(x, lv)
            packed, s12 = [], []
            for k, key in enumerate(keys):
                bits = quant.counter_bits(key, pos[k, at:at + block, None] * d + np.arange(d))
                c1 = quant.round_with_bits(j, p, bits)
                s1 = sq[c1].sum(axis=1)
                if mode == 1:
                    c2 = quant.round_with_bits(j, p, bits, high=True)
                    packed.append(packing.pack(layout, lab, codes1=c1, codes2=c2))
                    s12 += [s1, sq[c2].sum(axis=1)]
                else:
                    packed.append(packing.pack(layout, lab, codes1=c1))
                    s12 += [s1, s1]
        for k, out in enumerate(outs):
            out.reshape(-1, per)[pos[k, at:at + block]] = packed[k].reshape(-1, per)
            s1, s2 = s12[2 * k], s12[2 * k + 1]
            if s1.size:
                best = max(best, float(np.max(s1.astype(np.float64) * s2.astype(np.float64))))
    return best


def quantized_head(layout: c.Layout, stream, levels, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Q1 and Q2 (floats) of the first ``rows`` samples of a packed copy, read back."""
    from . import fastref

    per = layout.beats_per_sample * layout.host_words_per_beat
    return fastref.quantized(layout, np.asarray(stream[:rows * per]), levels)


def scaled_matrix(X, scaler, fit_intercept: bool) -> np.ndarray:
    """``X`` scaled into [-1, 1] by a fitted ``quant.Scaler`` or :class:`MaxAbsScaler`
    (``clip((x - center) / half)``; :func:`zipsgd.quant.safe_affine` where that overflows),
    plus the intercept column: the values of ``scaler.transform``, computed in place a
    block of rows at a time (no temporaries beyond a block)."""
    n, nf = X.shape
    out = np.empty((n, nf + int(fit_intercept)))
    step = max(1, PACK_BLOCK_VALUES // max(nf, 1))
    for a in range(0, n, step):
        _scale_into(X[a:a + step], scaler.center_, scaler.half_, out[a:a + step])
    return out


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
    batches = -(-job.n_samples // job.batch_size) * max(1, len(res.loss_sums))
    if sat:
        out.append(f"{sat} of {model.size} weights sit at the engine's limit (+-{c.MODEL.to_float(c.MODEL.max):.4g} "
                   f"in scaled units): the model saturated; {remedy}")
    elif getattr(res, "saturated", 0):
        out.append(f"the model update saturated in {res.saturated} of {batches} batches (the engine's SATURATED "
                   f"counter): weights reached the engine's limit during training; {remedy}")
    w = job.model_float(model)
    coef, icpt = job.unscale_float(w)
    if not (np.all(np.isfinite(coef)) and math.isfinite(icpt)):
        out.append("the model is not finite in the data's units (the scaling overflows): rescale X or y")
    return out


@dataclass
class EarlyStopping:
    """``stop(epoch, loss_sum)`` for the backends (picklable): scikit-learn's rule on the
    engine's per-epoch loss. An epoch whose mean per-sample loss is not below the best so
    far minus ``tol`` counts; ``n_iter_no_change`` such epochs in a row stop the job."""

    tol: float
    n_iter_no_change: int
    n_samples: int
    best: float = math.inf
    count: int = 0

    def __call__(self, epoch: int, loss_sum: int) -> bool:
        mean = c.LOSS_ACC.to_float(loss_sum) / self.n_samples
        if mean > self.best - self.tol:
            self.count += 1
        else:
            self.count = 0
        self.best = min(self.best, mean)
        return self.count >= self.n_iter_no_change


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


def default_copies(epochs: int, bytes_per_copy: int | None = None) -> int:
    """Packed copies when none are asked for, from a memory budget:
    ``clamp(COPIES_BUDGET_BYTES // bytes_per_copy, DEFAULT_COPIES_MIN, epochs)`` — every
    epoch its own copy while the copies fit 16 MiB, never fewer than 4 (or ``epochs``).
    ``bytes_per_copy`` None (unknown): ``min(epochs, 4)``.

    E.g. at 4 bits, double sampling, W = 64: 50,000 x 90 (4.0 MB a copy) keeps 4 copies;
    2,000 x 10 (32 kB) one per epoch."""
    epochs = max(1, int(epochs))
    if not bytes_per_copy:
        return min(epochs, DEFAULT_COPIES_MIN)
    return min(epochs, max(DEFAULT_COPIES_MIN, COPIES_BUDGET_BYTES // int(bytes_per_copy)))


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

    # -- multiclass, class and sample weights, warm starts ------------------------------
    @property
    def n_classes(self) -> int:
        return 0 if self.classes is None else len(self.classes)

    def for_class(self, k: int) -> "Job":
        """The one-vs-rest job of class ``k`` (more than two classes): the same packed
        stream, POS_CLASS = k + 1."""
        if self.n_classes <= 2:
            raise ValueError("for_class: the job has fewer than three classes (its labels are the binary labels)")
        return dataclasses.replace(self, config=dataclasses.replace(self.config, pos_class=k + 1))

    def with_class_weights(self, w_pos: float, w_neg: float) -> "Job":
        """The job with a step multiplier per class (STEP_MULT for the positive class,
        STEP_MULT_NEG for the others) in the ratio ``w_pos : w_neg``. The heavier class
        keeps the job's step (the step rule's safe step) and the lighter one gets
        ``step * w_light / w_heavy`` (at least the engine's smallest multiplier, 1)."""
        w_pos, w_neg = float(w_pos), float(w_neg)
        if not (w_pos >= 0 and w_neg >= 0 and math.isfinite(w_pos) and math.isfinite(w_neg)) or w_pos == w_neg == 0:
            raise ValueError(f"class weights must be finite, >= 0 and not all 0, got {w_pos:g} and {w_neg:g}")
        if w_pos == w_neg:
            return dataclasses.replace(self, config=dataclasses.replace(self.config, step_mult_neg=0))
        m = self.config.step_mult
        light = max(1, int(math.floor(m * min(w_pos, w_neg) / max(w_pos, w_neg) + 0.5)))
        m_pos, m_neg = (m, light) if w_pos > w_neg else (light, m)
        return dataclasses.replace(self, config=dataclasses.replace(self.config, step_mult=m_pos,
                                                                    step_mult_neg=m_neg))

    def sample_multipliers(self, sample_weight) -> list:
        """Per-sample weights as the cpu backend's multipliers (STEP_MULT format, one array
        per packed copy in its sample order), scaled to a mean of 1.0: the average sample
        keeps the step rule's step, a sample of twice the mean weight takes twice the step
        (as scikit-learn's SGD multiplies its gradient by the weight)."""
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if w.shape != (self.n_samples,):
            raise ValueError(f"sample_weight has {w.size} values for {self.n_samples} samples")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError("sample_weight must be finite, >= 0 and not all 0")
        if self.perms is None:
            raise ValueError("sample_weight: this job has no sample orders (a packed file): pack without weights")
        mult = np.floor(w / w.mean() * c.STEP_MULT.one + 0.5).astype(np.int64)
        return [mult[perm] for perm in self.perms]

    def model_ints(self, coef, intercept: float = 0.0) -> tuple[np.ndarray, int]:
        """(MODEL integers of the scaled model, how many saturated) for a model
        ``X @ coef + intercept`` in the user's units: the inverse of :meth:`unscale` (a warm
        start). Words beyond the engine's range saturate."""
        coef = np.asarray(coef, dtype=np.float64).reshape(-1)
        if coef.shape != (self.n_features,):
            raise ValueError(f"the model has {coef.size} weights for {self.n_features} features")
        ws = coef / self.y_scale
        w = ws * self.scaler.half_
        if self.fit_intercept:
            icpt = (float(intercept) - self.y_center) / self.y_scale + float(ws @ self.scaler.center_)
            w = np.append(w, icpt)
        with np.errstate(over="ignore", invalid="ignore"):
            q = np.floor(np.nan_to_num(w) * c.MODEL.one + 0.5)
        sat = int(np.count_nonzero((q > c.MODEL.max) | (q < c.MODEL.min)))
        return np.clip(q, c.MODEL.min, c.MODEL.max).astype(np.int64), sat

    def summary(self) -> dict:
        cfg = self.config
        return {
            "n_samples": cfg.n_samples, "dim": cfg.dim, "n_features": self.n_features, "loss": self.loss,
            "bits": self.bits, "sampling": self.sampling, "levels": self.levels,
            "encoding": c.Encoding(cfg.encoding).name, "epochs": self.epochs, "batch_size": self.batch_size,
            "step": self.step, "step_eff": self.step_eff, "step_shift": cfg.step_shift,
            "step_mult": cfg.step_mult, "step_mult_neg": cfg.step_mult_neg, "decay": self.decay, "alpha": self.alpha,
            "l2_shift": cfg.l2_shift,
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
    if not np.isfinite(np.add.reduce(X, axis=None)) and not np.all(np.isfinite(X)):
        # (the sum is one pass without a temporary; only a sum that is not finite, which may
        # also be an overflow of finite values near the float64 limit, looks closer)
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


def map_labels(y, loss: str, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(classes, labels in the engine's convention) for a classification loss.

    Two classes: the positive class ``classes[1]`` is 1 (logistic: 0 and 1; hinge: -1 and
    +1). More: each label is its class's index (0 .. K-1), the label word of a POS_CLASS job
    (one packed stream serves every one-vs-rest job). ``classes`` (optional, sorted): the
    classes to expect (``partial_fit``); a label outside them is refused."""
    if classes is None:
        classes = np.unique(y)
    else:
        classes = np.asarray(classes)
        unknown = np.setdiff1d(np.unique(y), classes)
        if unknown.size:
            raise ValueError(f"labels {unknown[:5].tolist()} are not among the classes {classes.tolist()} given "
                             "(the first call of partial_fit fixes them)")
    if classes.size < 2:
        shown = ", ".join(map(str, classes[:5]))
        raise ValueError(f"classifier labels must take at least two classes, got {classes.size} "
                         f"class{'es' if classes.size != 1 else ''} ({shown})")
    if classes.size > 2:
        return classes, np.searchsorted(classes, y).astype(np.float64)
    pos = (y == classes[1])
    if loss == "logistic":
        return classes, pos.astype(np.float64)
    return classes, np.where(pos, 1.0, -1.0)


def label_words(ys, classes) -> np.ndarray:
    """The label words of a job: MODEL integers, or class indices (more than two classes)."""
    if classes is not None and len(classes) > 2:
        return np.asarray(ys, dtype=np.int64)
    return c.MODEL.to_fixed(ys)


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
                chunk_rows: int | None = None, fixed_scaling: "Job | None" = None, classes=None,
                keep_scaled: bool = True) -> Job:
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
    params = params or c.EngineParams(word_bits=word_bits).for_cpu()
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
    copies = None if copies is None else _as_int("copies", copies)
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
    given_classes, classes = classes, None
    y_center, y_scale = 0.0, 1.0
    if fixed_scaling is not None:
        if fixed_scaling.n_features != n_features or fixed_scaling.fit_intercept != fit_intercept:
            raise ValueError(f"X has {n_features} features, the fixed scaling was fitted on "
                             f"{fixed_scaling.n_features}")
        y_center, y_scale = fixed_scaling.y_center, fixed_scaling.y_scale
        if loss_name == "squared":
            from .quant import safe_affine
            ys = np.clip(safe_affine(y, y_center, y_scale), -1.0, 1.0)
        else:
            classes, ys = map_labels(y, loss_name, fixed_scaling.classes)
    elif loss_name == "squared":
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
        classes, ys = map_labels(y, loss_name,
                                 None if given_classes is None else np.unique(np.asarray(given_classes)))

    if copies is None:
        lay = c.Layout(word_bits, c.encoding_for(sampling, bits), bits, dim)
        copies = default_copies(epochs, n * lay.beats_per_sample * lay.host_words_per_beat * 8)
    if sink is None:
        check_memory(n, dim, copies, c.Layout(word_bits, c.encoding_for(sampling, bits), bits, dim))
    if fixed_scaling is not None:
        scaler = fixed_scaling.scaler
    else:
        scaler = quant.Scaler(mode=scale) if fit_intercept else MaxAbsScaler(mode=scale)
        scaler.fit(X)

    def scaled(idx):
        """Rows ``idx`` of X scaled into [-1, 1], with the intercept column."""
        rows = np.clip(np.asarray(scaler.transform(X[idx]), dtype=np.float64), -1.0, 1.0)
        return np.hstack([rows, np.ones((rows.shape[0], 1))]) if fit_intercept else rows

    # in memory the scaled matrix is kept (baselines and metrics read it); a packed file
    # (``sink``) is written chunk by chunk from X, which may be memory-mapped
    # scaled whole first when the codebook reads it; else on the way into the packer
    raw = None
    if sink is not None:
        Xs = None
    elif bits != c.FULL_BITS and codebook is None and levels not in ("uniform", "log"):
        Xs = scaled_matrix(X, scaler, fit_intercept)   # scaler.transform's values, in place, block by block
    else:
        Xs, raw = None, (X, scaler, fit_intercept)
    labels = label_words(ys, classes)

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
            if levels in ("uniform", "log"):
                data = None                         # fixed levels: no data to read
            elif Xs is not None or n <= CODEBOOK_ROWS:  # (in memory Xs is set: levels read data)
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

    streams, stats, Xs = pack_copies(layout, labels, Xs, scaled, perms, sampling, lv, q_rng, chunk_rows, sink,
                                     raw=raw, keep=keep_scaled)
    if not keep_scaled:
        Xs = None

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


def pack_copies(layout: c.Layout, labels, Xs, scaled, perms, sampling: str, levels, rng, chunk_rows: int,
                sink=None, raw=None, keep: bool = True) -> tuple[list, dict, np.ndarray | None]:
    """Quantize and pack every copy of a job (:func:`pack_rows`); returns (streams, data
    statistics for :func:`auto_step`, the scaled matrix).

    Copy ``k`` draws its random bits from key ``k`` of ``rng.bit_generator.random_raw``
    (one 64-bit key per copy; the quantization generator ``[seed, 2]``). In memory
    (``sink`` None) the copies are one ``(copies, words)`` array, filled in one pass over
    the rows in their own order, each row written to its place in every copy (its interval
    found once, sequential reads): rows of ``Xs`` (scaled), or with ``raw = (X, scaler,
    fit_intercept)`` rows of X scaled on the way into a new ``Xs`` (returned; not made when
    ``keep`` is false). With a
    ``sink`` (``sink(k, words)``, e.g. a memory-mapped file) each copy is filled
    ``chunk_rows`` samples at a time in its sample order from ``scaled(idx)``. Both give
    the same words. Statistics: ``l_max`` the largest ``|q1_i| |q2_i|`` over every sample
    of every copy, ``lam`` the top eigenvalue of the mean ``q1 q2^T`` over the first
    :data:`LAM_ROWS` samples of copy 0."""
    n = len(perms[0])
    copies = len(perms)
    words = n * layout.beats_per_sample * layout.host_words_per_beat
    plan = pack_plan(layout, sampling, levels)
    keys = np.asarray(rng.bit_generator.random_raw(copies), dtype=np.uint64).reshape(copies)
    best = 0.0
    if sink is None:
        block = np.empty((copies, words), dtype=np.uint64)
        where = np.empty((copies, n), dtype=np.int64)
        for k, perm in enumerate(perms):
            where[k, perm] = np.arange(n)                 # the sample position of row i in copy k
        step = max(chunk_rows, 1)
        if raw is not None:
            X, scaler, icpt = raw
            Xs = np.empty((n, layout.dim)) if keep else None
        for at in range(0, n, step):
            sl = slice(at, at + step)
            if raw is None:
                got = pack_rows(block, plan, labels[sl], Xs[sl], where[:, sl], keys)
            else:
                got = pack_rows(block, plan, labels[sl], X[sl], where[:, sl], keys, scaling=(scaler, icpt),
                                xs_out=None if Xs is None else Xs[sl])
            best = max(best, got)
        streams = list(block)
    else:
        rows = (lambda idx: Xs[idx]) if Xs is not None else scaled
        streams = []
        for k, perm in enumerate(perms):
            out = sink(k, words)
            for at in range(0, n, chunk_rows):
                idx = perm[at:at + chunk_rows]
                pos = np.arange(at, at + len(idx), dtype=np.int64)[None]
                best = max(best, pack_rows([out], plan, labels[idx], rows(idx), pos, keys[k:k + 1]))
            streams.append(out)
    q1, q2 = quantized_head(layout, streams[0], levels, LAM_ROWS)
    stats = {"l_max": math.sqrt(best) / float(c.FEAT.one) ** 2, "lam": _top_eigenvalue(q1, q2)}
    return streams, stats, Xs


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
    params = params or c.EngineParams(word_bits=word_bits).for_cpu()
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
