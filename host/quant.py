"""Codebooks, stochastic rounding, double sampling and scaling onto [-1, 1].

Every feature the engine reads is an index into a *codebook*: ``2**b`` sorted levels in
[-1, 1] (``b`` in 1, 2, 4, 8), each exactly representable in the contract's FEAT format
(:data:`zipsgd.contract.FEAT`). A value ``a`` with ``l_j <= a <= l_{j+1}`` is rounded
*stochastically* to ``l_{j+1}`` with probability ``(a - l_j) / (l_{j+1} - l_j)`` and to
``l_j`` otherwise, so ``E[Q(a)] = a`` and ``Var[Q(a)] = (a - l_j)(l_{j+1} - a)``.
*Double sampling* (ZipML) draws two independent roundings of every value, one for the
dot product and one for the gradient, which keeps the least-squares gradient unbiased.
Both lie on the ends of the same interval, so they differ by at most one code (the
contract's COMPACT encoding relies on it).

Codebooks (:func:`make_codebook`)
---------------------------------
``"uniform"``
    ``2**b`` evenly spaced levels from -1 to 1.
``"optimal"``
    The variance-optimal levels of ZipML (Zhang, Li, Kara, Alistarh, Liu, Zhang,
    *ZipML: Training Linear Models with End-to-End Low Precision, and a Little Bit of
    Deep Learning*, ICML 2017): levels chosen among candidate points to minimise the
    total rounding variance ``sum_a (a - l_j)(l_{j+1} - a)`` over the data, the first
    level at the data's minimum and the last at its maximum. Solved exactly over the
    candidate set by dynamic programming; the interval cost is O(1) from prefix sums
    and, as it satisfies the quadrangle (Monge) inequality, each DP layer is solved by a
    vectorised divide-and-conquer in O(m log m) for ``m`` candidates.
``"log"``
    Symmetric logarithmic levels without zero, ``±r**-j`` for ``j < 2**(b-1)``
    (Li & De Sa, *Dimension-Free Bounds for Low-Precision Training*, NeurIPS 2019):
    base ``r = 2`` up to 4 bits, and for 8 bits the ratio whose smallest magnitude is
    ``2**-10`` so that the levels stay distinct on the FEAT grid.
``"weibull"``
    After TinyScript (Fu, Guo, Li, Lin, *Don't Waste Your Bits! Squeeze Activations
    and Gradients for Deep Neural Networks via TinyScript*, ICML 2020): a Weibull
    distribution is fitted to ``|a|`` (:func:`fit_weibull`), and symmetric levels whose
    largest magnitude is ``max |a|`` are chosen to minimise the expected rounding
    variance under the fitted density, by the same dynamic program on a fine grid
    weighted by the fitted probability mass. The magnitude set may include 0 (the DP
    decides); the mirrored set is then one level short and completed as below.
    Values that round to 0 are not fitted but kept as an atom at 0 (sparse data).

All codebooks end on the FEAT grid with exactly ``2**b`` strictly increasing levels:
when a data-driven codebook has fewer distinct levels (few distinct data values), the
widest gaps are split at their midpoints, deterministically, until the count is reached.

Scaling (:class:`Scaler`) maps each feature (or the whole matrix) affinely onto [-1, 1]
and maps a linear model fitted on the scaled data back to the original units.
"""

from __future__ import annotations

import math

import numpy as np

from .contract import BITS_ALLOWED, FEAT

__all__ = [
    "KINDS", "make_codebook", "fit_weibull", "stochastic_round", "nearest_round",
    "double_sample", "rounding_variance", "Scaler", "counter_bits", "interval", "round_with_bits",
]

#: Codebook kinds accepted by :func:`make_codebook`.
KINDS = ("uniform", "optimal", "log", "weibull")
#: Default number of DP candidate points of the fast path.
MAX_CANDIDATES = 2048
#: Data larger than this is subsampled (with the caller's ``rng``) to place a codebook.
MAX_SAMPLES = 4_000_000
#: Samples used to fit the Weibull shape.
WEIBULL_FIT_SAMPLES = 200_000
#: Range of the fitted Weibull shape ``k``.
WEIBULL_K_RANGE = (0.1, 20.0)
#: Smallest magnitude of the 8-bit logarithmic codebook is ``2**-LOG_MIN_EXP``.
LOG_MIN_EXP = 10
#: Sub-cells of each candidate interval on which the Weibull density is integrated.
_WEIBULL_SUBCELLS = 8

_ONE = FEAT.one  # FEAT grid step is 1 / _ONE


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------
def _check_bits(bits) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or int(bits) not in BITS_ALLOWED:
        raise ValueError(f"unsupported bits={bits!r}: choose one of {BITS_ALLOWED}")
    return int(bits)


def _check_data(data, kind: str) -> np.ndarray:
    """Flattened float64 copy of ``data``, finite and clipped to [-1, 1]."""
    try:
        a = np.asarray(data, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"make_codebook({kind!r}): data is not numeric ({exc})") from None
    if a.size == 0:
        raise ValueError(f"make_codebook({kind!r}): data is empty")
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        raise ValueError(f"make_codebook({kind!r}): data contains {bad} values")
    return np.clip(a, -1.0, 1.0)


def _check_levels(levels) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.float64)
    if lv.ndim != 1 or lv.size < 2:
        raise ValueError(f"levels must be a 1-D array of at least 2 values, got shape {lv.shape}")
    if not np.isfinite(lv).all():
        raise ValueError("levels contain NaN or infinite values")
    if not (np.diff(lv) > 0).all():
        raise ValueError("levels must be strictly increasing")
    return lv


def _check_values(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        raise ValueError(f"values to round contain {bad}")
    return a


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng if rng is not None else 0)


# --------------------------------------------------------------------------------------
# Grid completion
# --------------------------------------------------------------------------------------
def _complete(grid_levels, count: int) -> np.ndarray:
    """Exactly ``count`` strictly increasing FEAT integers from ``grid_levels``.

    Levels are clipped to [-1, 1] on the grid and deduplicated; while too few remain,
    the widest gap (the lowest one on a tie) is split at its (floored) midpoint; with
    no gap of two grid steps or more left, -1 then +1 are added. Too many levels (never
    the case here) is an error.
    """
    g = np.unique(np.clip(np.asarray(grid_levels, dtype=np.int64), -_ONE, _ONE))
    if g.size > count:
        raise AssertionError(f"{g.size} levels for a codebook of {count}")
    g = g.tolist()
    while len(g) < count:
        gaps = np.diff(g) if len(g) > 1 else np.zeros(0, dtype=np.int64)
        if gaps.size and gaps.max() >= 2:
            j = int(np.argmax(gaps))
            g.insert(j + 1, (g[j] + g[j + 1]) // 2)
        elif g[0] > -_ONE:
            g.insert(0, -_ONE)
        else:
            g.append(_ONE)
    return np.asarray(g, dtype=np.int64)


# --------------------------------------------------------------------------------------
# Interval dynamic program
# --------------------------------------------------------------------------------------
def _interval_dp(c, P0, P1, P2, s: int, first=None) -> np.ndarray:
    """Indices of ``s`` candidates minimising the total stochastic-rounding variance.

    Parameters
    ----------
    c : ndarray, shape (m,)
        Sorted candidate points.
    P0, P1, P2 : ndarray, shape (m + 1,)
        Prefix sums over the cells ``[c_t, c_{t+1})`` of the weights, weighted values
        and weighted squared values of the data: ``P[t]`` sums cells ``0 .. t-1``.
    s : int
        Levels to choose (``s <= m``); the last is always ``c[m-1]``.
    first : ndarray, shape (m,), optional
        Cost of placing the first level at ``c[i]``. None: the first level is ``c[0]``.

    Returns
    -------
    ndarray of intp, shape (s,)
        Strictly increasing candidate indices.

    Notes
    -----
    ``cost(i, k) = sum_{c_i <= a <= c_k} (a - c_i)(c_k - a)`` is Monge, so in every layer
    the (leftmost) best predecessor is non-decreasing in ``k``; each layer is solved by
    divide and conquer, all segments of one recursion depth at once.
    """
    m = c.size
    if s == 1:
        return np.array([m - 1], dtype=np.intp)

    def cost(i, k):
        ci, ck = c[i], c[k]
        return (ci + ck) * (P1[k] - P1[i]) - (P2[k] - P2[i]) - ci * ck * (P0[k] - P0[i])

    D = np.full(m, np.inf)
    if first is None:
        D[0], lo, hi = 0.0, 0, 0
    else:
        lo, hi = 0, m - s
        D[: hi + 1] = first[: hi + 1]
    back = []
    for j in range(1, s):
        klo, khi = (m - 1, m - 1) if j == s - 1 else (j, m - s + j)
        newD = np.full(m, np.inf)
        arg = np.zeros(m, dtype=np.intp)
        a_lo, a_hi = np.array([klo]), np.array([khi])
        i_lo, i_hi = np.array([lo]), np.array([hi])
        while a_lo.size:
            mid = (a_lo + a_hi) // 2
            lens = np.minimum(i_hi, mid - 1) - i_lo + 1
            starts = np.cumsum(lens) - lens
            seg = np.repeat(np.arange(lens.size), lens)
            ii = np.arange(seg.size) - starts[seg] + i_lo[seg]
            vals = D[ii] + cost(ii, mid[seg])
            mins = np.minimum.reduceat(vals, starts)
            hit = np.flatnonzero(vals <= mins[seg])
            hseg = seg[hit]
            best = ii[hit[np.r_[True, hseg[1:] != hseg[:-1]]]]
            newD[mid], arg[mid] = mins, best
            left, right = a_lo < mid, mid < a_hi
            a_lo, a_hi = np.r_[a_lo[left], mid[right] + 1], np.r_[mid[left] - 1, a_hi[right]]
            i_lo, i_hi = np.r_[i_lo[left], best[right]], np.r_[best[left], i_hi[right]]
        D, lo, hi = newD, klo, khi
        back.append(arg)
    idx = np.empty(s, dtype=np.intp)
    k = m - 1
    for j in range(s - 1, 0, -1):
        idx[j] = k
        k = back[j - 1][k]
    idx[0] = k
    return idx


def _prefix(t, m: int, x, w=None):
    """Prefix sums (length m+1) of weight, weight*x, weight*x**2 per cell index t."""
    wx = x if w is None else w * x
    out = []
    for weights in (w, wx, wx * x):
        s = np.bincount(t, weights=weights, minlength=m).astype(np.float64)
        out.append(np.concatenate(([0.0], np.cumsum(s))))
    return out


# --------------------------------------------------------------------------------------
# Codebooks
# --------------------------------------------------------------------------------------
def _uniform(s: int) -> np.ndarray:
    return FEAT.to_fixed(np.linspace(-1.0, 1.0, s))


def _log(s: int) -> np.ndarray:
    M = s // 2
    if M == 1:
        mags = np.array([1.0])
    else:
        e_min = min(M - 1, LOG_MIN_EXP)
        mags = 2.0 ** (-e_min * np.arange(M) / (M - 1))
    g = FEAT.to_fixed(mags)  # decreasing magnitudes
    return np.concatenate((-g, g[::-1]))


def _optimal(a: np.ndarray, s: int, exact: bool, max_candidates: int) -> np.ndarray:
    lo = int(np.floor(a.min() * _ONE))
    hi = int(np.ceil(a.max() * _ONE))
    g = np.floor(a * _ONE).astype(np.int64)  # grid point at or below each value
    hist = np.bincount(g - lo, minlength=hi - lo + 1)
    present = np.flatnonzero(hist) + lo
    if exact or present.size + 2 <= max_candidates:
        cand = np.union1d(present, [lo, hi])
    else:
        nq = max_candidates // 2
        cdf = np.cumsum(hist)
        quant = np.searchsorted(cdf, (np.arange(nq) + 0.5) * (a.size / nq)) + lo
        even = np.round(np.linspace(lo, hi, max_candidates - nq - 2)).astype(np.int64)
        cand = np.unique(np.concatenate((quant, even, [lo, hi])))
    if cand.size <= s:
        return _complete(cand, s)
    # cell of each value: the last candidate at or below it (candidates are grid points)
    cell = np.searchsorted(cand, np.arange(lo, hi + 1), side="right") - 1
    P0, P1, P2 = _prefix(cell[g - lo], cand.size, a)
    idx = _interval_dp(cand / _ONE, P0, P1, P2, s)
    return _complete(cand[idx], s)


def fit_weibull(x, *, rng=None, max_samples: int = WEIBULL_FIT_SAMPLES) -> tuple[float, float]:
    """Maximum-likelihood Weibull fit of the magnitudes ``|x|`` (zeros ignored).

    Parameters
    ----------
    x : array_like
        Values; their non-zero magnitudes are fitted.
    rng : numpy.random.Generator, optional
        Subsamples more than ``max_samples`` magnitudes (default: seed 0).
    max_samples : int
        Largest number of magnitudes used.

    Returns
    -------
    k, lam : float
        Shape (clamped to ``WEIBULL_K_RANGE``) and scale of
        ``p(x) = (k/lam) (x/lam)**(k-1) exp(-(x/lam)**k)``.

    Notes
    -----
    The shape starts at the log-moment estimate ``k = pi / (sqrt(6) std(ln x))`` and is
    refined by safeguarded Newton steps on the likelihood equation
    ``sum x^k ln x / sum x^k - 1/k - mean(ln x) = 0`` (increasing in ``k``); then
    ``lam = mean(x^k)^(1/k)``.
    """
    x = np.abs(np.asarray(x, dtype=np.float64).ravel())
    x = x[x > 0]
    if x.size == 0:
        raise ValueError("fit_weibull: no non-zero values to fit")
    if not np.isfinite(x).all():
        raise ValueError("fit_weibull: values contain NaN or inf")
    if x.size > max_samples:
        x = x[_rng(rng).integers(0, x.size, max_samples)]
    xmax = x.max()
    lx = np.log(x / xmax)  # <= 0: x^k stays in (0, 1], the largest term is 1
    mu = lx.mean()

    def g(k):
        w = np.exp(k * lx)
        B, A, C = w.sum(), (w * lx).sum(), (w * lx * lx).sum()
        return A / B - 1.0 / k - mu, (C * B - A * A) / (B * B) + 1.0 / (k * k)

    kmin, kmax = WEIBULL_K_RANGE
    sd = lx.std()
    k = math.pi / (math.sqrt(6.0) * sd) if sd > 0 else kmax
    k = min(max(k, kmin), kmax)
    if g(kmin)[0] >= 0:
        k = kmin
    elif g(kmax)[0] <= 0:
        k = kmax
    else:
        a_, b_ = kmin, kmax
        for _ in range(60):
            v, dv = g(k)
            if v < 0:
                a_ = k
            else:
                b_ = k
            step = k - v / dv if dv > 0 else -1.0
            k_new = step if a_ < step < b_ else math.sqrt(a_ * b_)
            if abs(k_new - k) <= 1e-12 * k or b_ - a_ <= 1e-12 * k:
                k = k_new
                break
            k = k_new
    lam = xmax * float(np.mean(np.exp(k * lx))) ** (1.0 / k)
    return float(k), float(lam)


def _weibull(a: np.ndarray, s: int, rng, max_candidates: int) -> np.ndarray:
    M = s // 2
    mag = np.abs(a)
    top = int(np.ceil(mag.max() * _ONE))
    if top == 0:
        return _complete([0], s)
    if M == 1:
        return np.array([-top, top], dtype=np.int64)
    nonzero = mag[mag * _ONE >= 0.5]  # values that do not round to 0 on the grid
    if nonzero.size == 0:
        return _complete([-top, 0, top], s)
    p_zero = 1.0 - nonzero.size / mag.size  # an atom at 0 (sparse data), beside the fit
    k, lam = fit_weibull(nonzero, rng=rng)
    cand = np.unique(np.round(np.linspace(0, top, min(top + 1, max_candidates))).astype(np.int64))
    if cand.size <= M:
        return _complete(np.concatenate((-cand, cand)), s)
    c = cand / _ONE
    # probability mass of the fitted density on sub-cells of each candidate interval
    u = np.linspace(0.0, 1.0, _WEIBULL_SUBCELLS + 1)
    edges = c[:-1, None] + np.diff(c)[:, None] * u  # (m-1, r+1)
    cdf = -np.expm1(-((edges / lam) ** k))
    mass = (1.0 - p_zero) * np.diff(cdf, axis=1).ravel()
    mids = ((edges[:, 1:] + edges[:, :-1]) / 2).ravel()
    cell = np.repeat(np.arange(c.size - 1), _WEIBULL_SUBCELLS)
    P0, P1, P2 = _prefix(cell, c.size, mids, mass)
    # first magnitude q: the interval [-q, q] around zero costs sum (q^2 - x^2) below q
    first = c * c * (P0[:-1] + p_zero) - P2[:-1]
    idx = _interval_dp(c, P0, P1, P2, M, first=first)
    mags = cand[idx]
    return _complete(np.concatenate((-mags, mags)), s)


def make_codebook(kind: str, bits: int, data=None, *, rng=None, max_candidates: int = MAX_CANDIDATES,
                  exact: bool = False) -> np.ndarray:
    """Codebook of ``2**bits`` levels in [-1, 1] on the FEAT grid.

    Parameters
    ----------
    kind : {"uniform", "optimal", "log", "weibull"}
        Level placement (see the module docstring).
    bits : {1, 2, 4, 8}
        Bits per code.
    data : array_like, optional
        Values the codebook is for, expected in [-1, 1] (clipped); any shape. Needed by
        "optimal" and "weibull"; checked (finite) whenever given.
    rng : numpy.random.Generator or int, optional
        Subsamples data above ``MAX_SAMPLES`` values and the Weibull fit's sample
        (default: seed 0, so the result is deterministic).
    max_candidates : int
        "optimal": DP candidate points of the fast path (half data quantiles, half
        evenly spaced, all on the grid). Data with at most this many distinct grid
        values uses them all, which is exact. "weibull": candidate magnitudes.
    exact : bool
        "optimal": use every distinct grid value of the data as a candidate (the
        optimum over grid codebooks whose levels are data values; for small inputs).

    Returns
    -------
    ndarray of float64, shape (2**bits,)
        Strictly increasing levels, each exactly representable in FEAT.

    Raises
    ------
    ValueError
        Unknown ``kind``, unsupported ``bits``, missing or non-finite ``data``, bad
        ``max_candidates``.

    Notes
    -----
    "optimal": candidates are grid points (data values rounded down to the grid, and
    the data's minimum and maximum rounded outwards); the interval costs use the exact
    data values, so the DP result is optimal over the candidate set.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown codebook kind={kind!r}: choose one of {KINDS}")
    s = 1 << _check_bits(bits)
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, (int, np.integer)) or max_candidates < 4:
        raise ValueError(f"max_candidates={max_candidates!r} must be an integer >= 4")
    a = None if data is None else _check_data(data, kind)
    if kind == "uniform":
        g = _uniform(s)
    elif kind == "log":
        g = _log(s)
    else:
        if a is None:
            raise ValueError(f"make_codebook({kind!r}) needs data")
        if a.size > MAX_SAMPLES:
            ext = (a.min(), a.max())
            a = np.concatenate((a[_rng(rng).integers(0, a.size, MAX_SAMPLES)], ext))
        if kind == "optimal":
            g = _optimal(a, s, bool(exact), int(max_candidates))
        else:
            g = _weibull(a, s, rng, int(max_candidates))
    g = np.asarray(g, dtype=np.int64)
    assert g.shape == (s,) and (np.diff(g) > 0).all() and np.abs(g).max() <= _ONE, (kind, bits, g)
    return FEAT.to_float(g)


# --------------------------------------------------------------------------------------
# Rounding
# --------------------------------------------------------------------------------------
def _interval(a, lv):
    """Clipped values, interval index j and upper probability p for every value."""
    a = np.clip(a, lv[0], lv[-1])
    j = np.clip(np.searchsorted(lv, a, side="right") - 1, 0, lv.size - 2)
    lo = lv[j]
    p = (a - lo) / (lv[j + 1] - lo)
    return j, p


def _code_dtype(lv):
    return np.uint8 if lv.size <= 256 else np.uint16


def stochastic_round(a, levels, rng: np.random.Generator) -> np.ndarray:
    """Unbiased stochastic rounding of ``a`` onto ``levels``.

    Parameters
    ----------
    a : array_like
        Finite values; those outside ``[levels[0], levels[-1]]`` are clipped first.
    levels : array_like, shape (s,)
        Strictly increasing codebook (``s >= 2``).
    rng : numpy.random.Generator
        One uniform draw per value.

    Returns
    -------
    ndarray of uint8 (uint16 beyond 256 levels), shape of ``a``
        Codes ``c``: for ``l_j <= a <= l_{j+1}``, ``c = j+1`` with probability
        ``(a - l_j) / (l_{j+1} - l_j)``, else ``j``; a value equal to a level always
        gets that level. ``E[levels[c]] = a``.
    """
    lv = _check_levels(levels)
    a = _check_values(a)
    j, p = _interval(a, lv)
    return (j + (rng.random(a.shape) < p)).astype(_code_dtype(lv))


def double_sample(a, levels, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two independent stochastic roundings of ``a`` (ZipML double sampling).

    Parameters
    ----------
    a, levels, rng
        As for :func:`stochastic_round`.

    Returns
    -------
    codes1, codes2 : ndarray of uint8, shape of ``a``
        Both in ``{j, j+1}`` of the same interval ``j``, so ``|codes1 - codes2| <= 1``.
        ``codes1`` is drawn from ``rng.random`` first, so it equals
        ``stochastic_round(a, levels, same_rng)`` for an identically seeded generator.
    """
    lv = _check_levels(levels)
    a = _check_values(a)
    j, p = _interval(a, lv)
    dt = _code_dtype(lv)
    c1 = (j + (rng.random(a.shape) < p)).astype(dt)
    c2 = (j + (rng.random(a.shape) < p)).astype(dt)
    return c1, c2


#: SplitMix64's increment (2**64 / golden ratio, odd): counter ``t`` of key ``k`` is state
#: ``k + (t + 1) * SPLITMIX_GAMMA``, so :func:`counter_bits` of key ``k`` and counters
#: 0, 1, 2, ... is SplitMix64's output sequence seeded with ``k``.
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
#: Bits of the uniform that decides one stochastic rounding (:func:`round_with_bits`).
UNIFORM_BITS = 32


def counter_bits(key, counters) -> np.ndarray:
    """64 random bits for every counter: SplitMix64 (Steele, Lea and Flood, OOPSLA 2014)
    addressed by counter, ``mix(key + (counter + 1) * SPLITMIX_GAMMA)`` modulo 2**64.

    A counter-based stream: any value's bits are computed from its address alone, so a
    packer may visit the values in any order and any chunking and still draw the same
    bits; independent streams take independent keys. SplitMix64's output function is a
    bijection of 64-bit words whose outputs on a Weyl sequence pass BigCrush.

    Parameters
    ----------
    key : int
        Any 64-bit integer (the stream's seed).
    counters : array_like of int
        Non-negative counters, any shape.

    Returns
    -------
    ndarray of uint64, shape of ``counters``
    """
    with np.errstate(over="ignore"):
        z = np.asarray(counters, dtype=np.uint64) + np.uint64(1)
        z *= np.uint64(SPLITMIX_GAMMA)
        z += np.uint64(int(key) & 0xFFFFFFFFFFFFFFFF)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def interval(a, levels) -> tuple[np.ndarray, np.ndarray]:
    """Each value's codebook interval: ``a`` clipped to [levels[0], levels[-1]], ``j`` the
    last level at or below it (at most ``len(levels) - 2``) and the probability
    ``p = (a - l_j) / (l_{j+1} - l_j)`` of rounding it up."""
    lv = _check_levels(levels)
    return _interval(_check_values(a), lv)


def round_with_bits(j, p, bits, high: bool = False) -> np.ndarray:
    """Stochastic rounding decided by given random bits: ``j + (u < p * 2**32)`` with ``u``
    the low (``high``: the high) 32 bits of each word of ``bits`` (uint64, e.g.
    :func:`counter_bits`). ``u`` is uniform on {0, ..., 2**32 - 1}, so a value rounds up
    with probability ``ceil(p * 2**32) / 2**32``: unbiased up to ``2**-32`` of its interval's
    width (the float64 uniforms of :func:`stochastic_round`: ``2**-53``), far below the
    FEAT grid's resolution (``2**-16``); a value on a level (``p`` 0, or 1 at the top
    level) always gets that level."""
    b = np.asarray(bits, dtype=np.uint64)
    u = (b >> np.uint64(32)) if high else (b & np.uint64(0xFFFFFFFF))
    return np.asarray(j, dtype=np.int64) + (u.astype(np.float64) < np.asarray(p) * 4294967296.0)


def nearest_round(a, levels) -> np.ndarray:
    """Deterministic rounding to the nearest level (ties to the lower level).

    Parameters
    ----------
    a : array_like
        Finite values (outside values go to the end levels).
    levels : array_like, shape (s,)
        Strictly increasing codebook.

    Returns
    -------
    ndarray of uint8 (uint16 beyond 256 levels), shape of ``a``
    """
    lv = _check_levels(levels)
    a = _check_values(a)
    mids = (lv[:-1] + lv[1:]) / 2
    return np.searchsorted(mids, a, side="left").astype(_code_dtype(lv))


def rounding_variance(a, levels) -> np.ndarray:
    """Variance ``(a - l_j)(l_{j+1} - a)`` of stochastically rounding each value.

    Parameters
    ----------
    a : array_like
        Finite values (clipped to the codebook's range first).
    levels : array_like
        Strictly increasing codebook.

    Returns
    -------
    ndarray of float64, shape of ``a``
    """
    lv = _check_levels(levels)
    a = np.clip(_check_values(a), lv[0], lv[-1])
    j = np.clip(np.searchsorted(lv, a, side="right") - 1, 0, lv.size - 2)
    return np.maximum((a - lv[j]) * (lv[j + 1] - a), 0.0)


# --------------------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------------------
def safe_affine(v, center, half):
    """``(v - center) / half`` without overflow: where ``v - center`` leaves float64 (values
    near 1.8e308 of opposite signs), ``v / half - center / half`` instead."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (v - center) / half
        bad = ~np.isfinite(out)
        if np.any(bad):
            out = np.where(bad, v / half - center / half, out)
    return out


class Scaler:
    """Affine map of features onto [-1, 1].

    ``x' = (x - center) / half`` with ``center = (max + min) / 2`` and
    ``half = (max - min) / 2`` (a constant column gets ``half = 1`` and becomes 0).

    Parameters
    ----------
    mode : {"feature", "global", "quantile"}
        One map per column, or one map for the whole matrix; ``"quantile"``: one map per
        column between its 0.1 and 99.9 percentiles instead of its min and max
        (:func:`trimmed_range`), values beyond them clipped to -1 and 1, so that a few
        outliers do not squeeze every other value of their column onto one
        quantization level.

    Attributes
    ----------
    center_, half_ : ndarray, shape (n_features,)
        The fitted map (the same value in every column in global mode).
    n_features_in_ : int
    """

    MODES = ("feature", "global", "quantile")

    def __init__(self, mode: str = "feature"):
        if mode not in self.MODES:
            raise ValueError(f"unsupported scaling mode={mode!r}: choose one of {self.MODES}")
        self.mode = mode

    @staticmethod
    def _check_X(X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        if not np.isfinite(np.add.reduce(X, axis=None)) and not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinite values")   # (the sum first: one pass, no temporary)
        return X

    def fit(self, X) -> "Scaler":
        """Fit the map to ``X`` of shape (n_samples, n_features); returns self."""
        X = self._check_X(X)
        if X.shape[0] == 0:
            raise ValueError("X has no rows")
        if self.mode == "quantile":
            lo, hi = trimmed_range(X)
        else:
            axis = 0 if self.mode == "feature" else None
            hi, lo = X.max(axis=axis), X.min(axis=axis)
        # halves first: (hi + lo) and (hi - lo) overflow for values near the float64 limit
        center = np.broadcast_to(hi / 2 + lo / 2, X.shape[1:]).astype(np.float64)
        half = np.broadcast_to(hi / 2 - lo / 2, X.shape[1:]).astype(np.float64)
        self.center_, self.half_ = center.copy(), np.where(half > 0, half, 1.0)
        self.n_features_in_ = X.shape[1]
        return self

    def _check_fitted(self):
        if not hasattr(self, "center_"):
            raise RuntimeError("this Scaler is not fitted yet: call fit(X) first")

    def transform(self, X) -> np.ndarray:
        """Scaled copy of ``X``, clipped to [-1, 1] (values outside the fitted range)."""
        self._check_fitted()
        X = self._check_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the Scaler was fitted on {self.n_features_in_}")
        return np.clip(safe_affine(X, self.center_, self.half_), -1.0, 1.0)

    def fit_transform(self, X) -> np.ndarray:
        """``fit(X).transform(X)``."""
        return self.fit(X).transform(X)

    def unscale_coef(self, coef_scaled, intercept_scaled, y_center: float = 0.0,
                     y_scale: float = 1.0) -> tuple[np.ndarray, float]:
        """Map a linear model on scaled data back to the original units.

        Parameters
        ----------
        coef_scaled : array_like, shape (n_features,)
            Weights on the scaled features.
        intercept_scaled : float
            Intercept in scaled units.
        y_center, y_scale : float
            The target was scaled as ``y' = (y - y_center) / y_scale``.

        Returns
        -------
        coef : ndarray, shape (n_features,)
        intercept : float
            ``y_center + y_scale * (coef_scaled . x' + intercept_scaled) == coef . x + intercept``
            for every ``x`` inside the fitted range.
        """
        self._check_fitted()
        w = np.asarray(coef_scaled, dtype=np.float64)
        if w.shape != (self.n_features_in_,):
            raise ValueError(f"coef_scaled has shape {w.shape}, expected ({self.n_features_in_},)")
        ws = w / self.half_
        coef = y_scale * ws
        intercept = y_center + y_scale * (float(intercept_scaled) - float(ws @ self.center_))
        return coef, float(intercept)


#: ``scale="quantile"``: the fraction of each column's values left outside its range at
#: each end (0.1 %: the 0.1 and 99.9 percentiles).
QUANTILE_TRIM = 0.001


def trim_count(n: int, trim: float = QUANTILE_TRIM) -> int:
    """Values :func:`trimmed_range` leaves out at each end of a column of ``n``:
    ``floor(trim * n)``, at least one once ``n >= 4`` (so that a single outlier among
    fewer than 1000 rows is clipped too), none below."""
    return 0 if n < 4 else max(1, int(trim * n))


def trimmed_range(X, trim: float = QUANTILE_TRIM, block_values: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per column of ``X``: its range once the ``t = trim_count(n)`` smallest and
    the ``t`` largest values are left out (the ``trim`` and ``1 - trim`` quantiles
    rounded inwards). A column whose trimmed range is empty (all but a few values equal,
    e.g. a rare indicator) keeps its full min and max. Reads ``X`` a block of columns at
    a time (about ``block_values`` values: bounded memory for a memory-mapped X)."""
    n, d = X.shape
    k = trim_count(n, trim)
    lo, hi = np.empty(d), np.empty(d)
    step = max(1, block_values // max(n, 1))
    for j in range(0, d, step):
        cols = np.array(X[:, j:j + step], dtype=np.float64)
        full_lo, full_hi = cols.min(axis=0), cols.max(axis=0)
        if k:
            part = np.partition(cols, (k, n - 1 - k), axis=0)
            t_lo, t_hi = part[k], part[n - 1 - k]
            empty = t_hi <= t_lo
            lo[j:j + step] = np.where(empty, full_lo, t_lo)
            hi[j:j + step] = np.where(empty, full_hi, t_hi)
        else:
            lo[j:j + step], hi[j:j + step] = full_lo, full_hi
    return lo, hi


def trimmed_abs_max(X, trim: float = QUANTILE_TRIM) -> np.ndarray:
    """Per column of ``X``: its largest ``|x|`` once the ``trim_count(n)`` largest are left
    out (the full ``max|x|`` where that is 0). ``scale="quantile"`` without an intercept."""
    n, d = X.shape
    k = trim_count(n, trim)
    out = np.empty(d)
    step = max(1, (1 << 24) // max(n, 1))
    for j in range(0, d, step):
        a = np.abs(np.array(X[:, j:j + step], dtype=np.float64))
        full = a.max(axis=0)
        t = np.partition(a, n - 1 - k, axis=0)[n - 1 - k] if k else full
        out[j:j + step] = np.where(t > 0, t, full)
    return out

