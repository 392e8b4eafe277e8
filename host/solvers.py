"""Low-precision SGD, SVRG and HALP on a job's packed, double-sampled data (backend cpu).

:func:`fit` runs a :class:`~zipsgd.job.Job` — the engine's configuration, codebook and
packed copies, exactly what a backend receives — with a *model format* and a *gradient
format* (:mod:`zipsgd.formats`) and one of three solvers. Every pass over the data
streams the job's copies in turn (pass ``e`` reads copy ``e % copies``, as the engine
does) and uses double sampling as the engine does: ``Q1`` feeds the dot products, ``Q2``
the gradient. :func:`optimum` is the true optimum of the job's training objective, the
yardstick of :mod:`zipsgd.bench_optimum`.

The engine's arithmetic, generalised (per mini-batch of ``nb`` samples)
-----------------------------------------------------------------------
``m`` and ``k`` are the job's step registers (``step_eff = m 2**-(15+k)``), ``s`` its L2
shift, ``F`` the model format's fractional bits; FEAT, MODEL, ACC and ``rshift_round`` are
:mod:`zipsgd.contract`'s; ``round_F`` is :func:`zipsgd.formats.round_shift` with the fit's
rounding (random stream ``STREAM_GRAD`` for the gradient, ``STREAM_MODEL`` for the model;
counter = the update's index over the whole fit).

============== ==================================================================================
quantity       rule
============== ==================================================================================
dot ``z_i``    fixed model: ``sat_MODEL(rshift_round(Q1_i . x, 16 + F - 24))`` (exact int64 sum;
               a left shift when ``F < 8``); float/log model: ``Q1_i . x`` summed in float64
               (numpy's pairwise ``sum``, not BLAS: the same order everywhere), then rounded
               half up to MODEL
residual       ``r_i``, sample loss: :func:`zipsgd.reference.residual_and_loss` (MODEL ints:
               PLAN sigmoid, softplus table, hinge)
step           ``r'_i = sat_MODEL(rshift_round(r_i m, 15 + k))``
gradient G     ``sum_batch r'_i Q2_i`` exact (int64, 40 fractional bits: the step-scaled update)
L2             fixed: ``rshift_round(x, s)`` on the model's codes; float/log: ``x 2**-s`` (0 if off)
update, grad   ``x = sat_B(x - round_F(G 2**-40) - L2)`` (no gradient rounding beyond the
format None    model's grid: with ``fixed32`` and nearest this is the engine, bit for bit)
update, grad   ``u = Q_grad(G 2**-40)`` (saturating), then ``x = Q_model(x - u - L2)``: for
format g       fixed formats in integers (``round`` of the exact difference); with a float or
               log format anywhere, ``x - u - L2`` is formed in float64 and then rounded
============== ==================================================================================

What is exact: with fixed-point model and gradient formats, everything (integer numpy,
int64 holds every intermediate for ``B <= 32``, ``d <= 4096``); the float64 value of ``G``
that a float/log gradient format rounds is exact for ``|G 2**-40| < 2**13``; with a float
or log model, the float64 dot product and the float64 difference ``x - u - L2`` are
exact when their operands span at most 53 bits (e.g. ``float:e4m3`` with a fixed
gradient; not in general), after which the rounding onto the format is exact.

Solvers
-------
``"sgd"`` (Li & De Sa's low-precision SGD): ``x <- Q_model(x - Q_grad(step g))`` per batch,
as above. With ``model_format="fixed32"`` (the engine's MODEL), no gradient format and
nearest rounding it *is* :func:`zipsgd.reference.run` (run by :mod:`zipsgd.fastref`,
equal bit for bit; the tests run both).

``"svrg"``: outer epoch = one *full pass* at the anchor ``a`` (MODEL ints, the engine's
32-bit format): ``Gfull = sum_i r_i(a) Q2_i`` over the pass's copy, an exact integer sum
(split in 16-bit halves of ``r``), and the mean ``gbar = rshift-free round half up of
Gfull / n`` (40 fractional bits); then ``inner_epochs`` passes of variance-reduced steps
with ``r_i = r(z_i(x)) - r(z_i(a))`` (both dot products of the same sample's ``Q1``; for
least squares the label cancels and it is ``Q1_i . (x - a)``: the correction is
``Q2_i (Q1_i . (x - a))``), ``r'_i`` as above, and ``G = sum_batch r'_i Q2_i + nb
rshift_round(gbar m, 15 + k)``; ``x`` in the model format starts each outer epoch at the
anchor (rounded into the format) and becomes the next anchor (rounded to MODEL with
the fit's rounding, stream ``STREAM_ANCHOR``).

``"halp"`` (De Sa et al. 2018, bit centring): as SVRG, but the inner iterate is
``a + z`` with ``z`` an offset in the model format *rescaled* each outer epoch to the
radius ``rho = |g~| / mu`` (``g~`` the full regularised gradient at the anchor, float64):
``fixed<B>`` gets ``F = floor(log2((2**(B-1)-1) / rho))`` — the grid
``delta = rho / (2**(B-1)-1)`` rounded up to a power of two, so the engine shifts instead
of multiplying (clamped to ``F <= 40``); float/log formats move their bias the same way.
``z`` starts at 0, the dot product is ``sat(rshift_round(Q1.a, 16) + round(Q1.z))``, the
L2 term ``rshift_round(a 2**16 + z 2**(40-F), s)`` (40 fractional bits) joins ``G``, and
``z = Q_z(z - Q_grad(G))`` saturates on the offset grid; the anchor is re-centred
``a = sat(a + round(z))`` after the inner passes. ``mu``: the L2 term's strength
``lambda = 2**-s / (step_eff batch)`` when L2 is on, else (squared loss, d <= 2048) the
smallest eigenvalue of ``sym(Q1^T Q2) / m`` over copy 0's first 4096 samples; otherwise
give ``mu``. A ``mu`` too small coarsens the grid until the offset's rounding noise
swamps the steps (an 8-bit offset then diverges); too large, the grid may not reach the
optimum (HALP saturates). ``mu="auto"`` for the squared and logistic losses at d <= 2048
therefore sets the radius itself from the curvature sample: ``rho = 2 |(H + lambda I)^-1 g~|``
(:func:`newton_radius`, the optimum's distance under the quadratic model, twice), and
reports ``mu = |g~| / rho``.

The objective every solver reports per pass is ``F(w) = mean_i loss_i(w) + lambda/2 |w|^2``
on the job's scaled full-precision data (:func:`objective`; the loss in float64 with the
exact sigmoid, as :func:`zipsgd.baseline.objective`), ``lambda`` the engine's L2 above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from . import baseline
from . import contract as c
from . import formats as fm
from .reference import residual_and_loss
from .result import Result

SOLVERS = ("sgd", "svrg", "halp")
#: Values the sample chunks hold at most (decoded Q1 and Q2), whole batches.
CHUNK_VALUES = 1 << 22
#: Largest offset fractional bits of HALP (the gradient's own resolution).
HALP_FRAC_MAX = c.ACC.frac
#: Rows of copy 0 the automatic mu (no L2) is estimated on.
MU_ROWS = 4096
#: Largest dimension for the automatic mu without L2 (an eigendecomposition of d x d).
MU_DIM_MAX = 2048

_FEAT_F, _MODEL_F, _ACC_F = c.FEAT.frac, c.MODEL.frac, c.ACC.frac


# --------------------------------------------------------------------------------------
# Model states: a model in one format, its dot products and its update
# --------------------------------------------------------------------------------------
def _sat_model(v):
    return np.clip(v, c.MODEL.min, c.MODEL.max)


class _FixedState:
    """A model in a fixed-point format: int64 codes at ``fmt.frac``."""

    def __init__(self, fmt: fm.FixedFormat, grad, rounding: str, rbits: fm.RandomBits, x=None, d: int = 0):
        self.fmt, self.grad, self.rounding, self.rb = fmt, grad, rounding, rbits
        self.x = np.zeros(d, dtype=np.int64) if x is None else np.asarray(x, dtype=np.int64)
        self.saturated = 0                                  # updates that left the format's range

    def dot(self, q1):
        acc = q1 @ self.x                                   # frac 16 + F, exact
        s = _FEAT_F + self.fmt.frac - _MODEL_F
        if s >= 0:
            return _sat_model(c.rshift_round(acc, s))
        lim = (c.MODEL.max >> -s) + 1
        return _sat_model(np.clip(acc, -lim, lim) << np.int64(-s))

    def _rb(self, t, stream):
        return self.rb(t, stream) if self.rounding == "stochastic" else None

    def update(self, G, l2_shift: int, t: int):
        f = self.fmt
        x = self.x
        # the L2 shrink x 2**-s, rounded with the fit's rounding (stochastic: unbiased, so a
        # coarse grid keeps the shrink on average; nearest: the engine's rshift_round)
        l2 = fm.round_shift(x, l2_shift, self.rounding, self._rb(t, fm.STREAM_L2)) if l2_shift else 0
        g = self.grad
        if g is None:
            u = fm.round_shift(G, _ACC_F - f.frac, self.rounding, self._rb(t, fm.STREAM_GRAD))
            new = x - u - l2
        elif isinstance(g, fm.FixedFormat):
            u = g.codes_from_int(G, _ACC_F, self.rounding, self._rb(t, fm.STREAM_GRAD))
            if g.frac <= f.frac:
                new = x - l2 - (u << np.int64(f.frac - g.frac))
            else:   # round(x - l2 - u 2**-(Fg-F)) = x - l2 + round(-u 2**-(Fg-F)): x - l2 is an integer
                new = x - l2 + fm.round_shift(-u, g.frac - f.frac, self.rounding, self._rb(t, fm.STREAM_MODEL))
        else:
            u = g.quantize(np.ldexp(G.astype(np.float64), -_ACC_F), self.rounding, self._rb(t, fm.STREAM_GRAD))
            new = x - l2 + fm.round_float(np.ldexp(-u, f.frac), self.rounding, self._rb(t, fm.STREAM_MODEL))
        self.x = np.clip(new, f.code_min, f.code_max)
        self.saturated += bool(np.any(self.x != new))      # (the engine's SATURATED, in this format)

    def value(self) -> np.ndarray:
        return np.ldexp(self.x.astype(np.float64), -self.fmt.frac)

    def to_model(self, rounding: str, rbits) -> np.ndarray:
        """MODEL ints of the value (rounded when the grid is finer)."""
        return _sat_model(fm.round_shift(self.x, self.fmt.frac - _MODEL_F, rounding, rbits))

    @classmethod
    def from_model(cls, fmt, grad, rounding, rb, a, rbits):
        return cls(fmt, grad, rounding, rb, fmt.codes_from_int(a, _MODEL_F, rounding, rbits))


class _FloatState:
    """A model in a float or log format: float64 values on the format."""

    def __init__(self, fmt: fm.FloatFormat, grad, rounding: str, rbits: fm.RandomBits, x=None, d: int = 0):
        self.fmt, self.grad, self.rounding, self.rb = fmt, grad, rounding, rbits
        self.x = np.zeros(d) if x is None else np.asarray(x, dtype=np.float64)
        self.saturated = 0                                  # updates that left the format's range

    def dot(self, q1):
        acc = (q1 * self.x).sum(axis=-1)                    # units of 2**-16; numpy's pairwise sum
        return _sat_model(np.floor(np.clip(np.ldexp(acc, _MODEL_F - _FEAT_F), -2.0 ** 62, 2.0 ** 62) + 0.5)
                          .astype(np.int64))

    def _rb(self, t, stream):
        return self.rb(t, stream) if self.rounding == "stochastic" else None

    def update(self, G, l2_shift: int, t: int):
        x = self.x
        l2 = np.ldexp(x, -l2_shift) if l2_shift else 0.0
        g = self.grad
        if g is None:
            u = np.ldexp(G.astype(np.float64), -_ACC_F)
        elif isinstance(g, fm.FixedFormat):
            u = np.ldexp(g.codes_from_int(G, _ACC_F, self.rounding, self._rb(t, fm.STREAM_GRAD))
                         .astype(np.float64), -g.frac)
        else:
            u = g.quantize(np.ldexp(G.astype(np.float64), -_ACC_F), self.rounding, self._rb(t, fm.STREAM_GRAD))
        new = x - u - l2
        self.x = self.fmt.quantize(new, self.rounding, self._rb(t, fm.STREAM_MODEL))
        self.saturated += bool(np.any(np.abs(new) > self.fmt.max_value))

    def value(self) -> np.ndarray:
        return self.x.copy()

    def to_model(self, rounding: str, rbits) -> np.ndarray:
        return _sat_model(fm.round_float(np.clip(np.ldexp(self.x, _MODEL_F), -2.0 ** 40, 2.0 ** 40),
                                         rounding, rbits))

    @classmethod
    def from_model(cls, fmt, grad, rounding, rb, a, rbits):
        return cls(fmt, grad, rounding, rb, fmt.quantize(np.ldexp(a.astype(np.float64), -_MODEL_F), rounding, rbits))


def _state_class(fmt):
    return _FixedState if isinstance(fmt, fm.FixedFormat) else _FloatState


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model : ndarray (dim,)
        The final model in the job's scaled units (exact value of the last iterate).
    result : Result
        Engine-shaped: ``model`` as MODEL ints (rounded to nearest when the format is finer),
        ``loss_sums`` per pass (LOSS_ACC ints; progressive loss, as the engine measures).
    objective : list of float
        :func:`objective` after each pass (empty when the job holds no scaled data).
    passes : list of str
        What each pass was: ``"sgd"``, ``"full"`` (SVRG/HALP's full gradient) or ``"inner"``.
    info : dict
        Solver extras: ``mu``, HALP's offset format per outer epoch, the gradient norms.
    """

    model: np.ndarray
    result: Result
    objective: list = field(default_factory=list)
    passes: list = field(default_factory=list)
    solver: str = "sgd"
    model_format: str = ""
    grad_format: str | None = None
    rounding: str = "nearest"
    info: dict = field(default_factory=dict)

    @property
    def final_objective(self) -> float:
        return self.objective[-1] if self.objective else float("nan")


def l2_lambda(job) -> float:
    """Strength ``lambda`` of the engine's L2 shrink as a regulariser ``lambda/2 |w|^2``:
    ``2**-l2_shift / (step_eff batch)`` (epoch 0's step; 0 when off)."""
    if not job.config.l2_shift:
        return 0.0
    return 2.0 ** -job.config.l2_shift / (job.epoch_step(0) * job.batch_size)


def objective(job, w) -> float:
    """``mean_i loss_i(w) + lambda/2 |w|^2`` on the job's scaled data (float64, exact losses)."""
    w = np.asarray(w, dtype=np.float64)
    lam = l2_lambda(job)
    return baseline.objective(job.loss, job.X_scaled, job.y_scaled, w) + 0.5 * lam * float(w @ w)


def optimum(job) -> tuple[np.ndarray, float]:
    """``(w*, F(w*))``: the minimiser of :func:`objective` on the job's scaled data.

    Squared loss: the normal equations ``(X^T X / n + lambda I) w = X^T y / n``
    (``numpy.linalg.lstsq`` when lambda = 0). Logistic: L-BFGS (scipy) on the exact
    objective to a gradient norm of 1e-11, started from the squared loss's solution.
    Hinge: a linear program (scipy HiGHS) when lambda = 0, else the dual solved by
    scikit-learn's LinearSVC to tol 1e-10.
    """
    if job.X_scaled is None:
        raise ValueError("optimum: the job holds no scaled data (a packed file)")
    X, y = np.asarray(job.X_scaled, dtype=np.float64), np.asarray(job.y_scaled, dtype=np.float64)
    n, d = X.shape
    lam = l2_lambda(job)
    if job.loss == "squared":
        if lam > 0:
            w = np.linalg.solve(X.T @ X / n + lam * np.eye(d), X.T @ y / n)
        else:
            w = np.linalg.lstsq(X, y, rcond=None)[0]
        return w, objective(job, w)
    if job.loss == "logistic":
        from scipy.optimize import minimize

        def fun(w):
            z = X @ w
            f = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * w @ w
            e = np.exp(-np.abs(z))
            sig = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            return f, X.T @ (sig - y) / n + lam * w

        w = np.zeros(d)
        for _ in range(3):
            res = minimize(fun, w, jac=True, method="L-BFGS-B",
                           options={"maxiter": 20000, "gtol": 1e-11, "ftol": 1e-16, "maxcor": 30})
            w = res.x
        return w, objective(job, w)
    if job.loss == "hinge":
        if lam == 0:
            from scipy.optimize import linprog
            # variables (w+, w-, xi): min mean xi, xi >= 1 - y x.w, xi >= 0
            A = np.hstack([-(y[:, None] * X), y[:, None] * X, -np.eye(n)])
            cost = np.concatenate([np.zeros(2 * d), np.full(n, 1.0 / n)])
            res = linprog(cost, A_ub=A, b_ub=-np.ones(n), bounds=(0, None), method="highs")
            w = res.x[:d] - res.x[d:2 * d]
            return w, objective(job, w)
        from sklearn.svm import LinearSVC
        svc = LinearSVC(C=1.0 / (n * lam), loss="hinge", dual=True, fit_intercept=False, tol=1e-10,
                        max_iter=1_000_000)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            svc.fit(X, y)
        w = svc.coef_.ravel().astype(np.float64)
        return w, objective(job, w)
    raise ValueError(f"unknown loss {job.loss!r}")


# --------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------
def _decoder():
    from . import fastref
    return fastref.decode


def _batches(job, pass_index: int):
    """(q1, q2, y) int64 batches of pass ``pass_index`` (copy ``pass_index % copies``)."""
    lay = job.layout
    words = lay.beats_per_sample * lay.host_words_per_beat
    stream = job.streams[pass_index % len(job.streams)]
    n, d, b = job.n_samples, job.dim, job.batch_size
    if len(stream) != n * words:
        raise ValueError(f"pass {pass_index}: the stream holds {len(stream) / words:g} samples, the job says {n}")
    chunk = max(1, CHUNK_VALUES // max(d, 1) // b) * b
    decode = _decoder()
    for at in range(0, n, chunk):
        q1, q2, y = decode(lay, np.asarray(stream[at * words:(at + chunk) * words]), job.codebook)
        q1, q2, y = q1.astype(np.int64), q2.astype(np.int64), job.config.label_value(y.astype(np.int64))
        for s in range(0, q1.shape[0], b):
            yield q1[s:s + b], q2[s:s + b], y[s:s + b]


def _step_registers(job, pass_index: int) -> tuple[int, int]:
    return int(job.config.step_mult), c.STEP_MULT.frac + job.config.epoch_shift(pass_index)


# --------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------
def resolve_rounding(model_format, rounding) -> str:
    """``rounding=None``: nearest for the engine's own model format (``fixed32``, today's
    engine), stochastic for every other format."""
    if rounding is None:
        return "nearest" if fm.parse(model_format) == fm.ENGINE_MODEL else "stochastic"
    if rounding not in fm.ROUNDINGS:
        raise ValueError(f"unsupported rounding={rounding!r}: choose one of {fm.ROUNDINGS}")
    return rounding


def low_precision(solver: str = "sgd", model_format="fixed32", grad_format=None, rounding=None,
                  spell=lambda name, value: f"{name}={value!r}") -> bool:
    """Check a fit's arithmetic settings and say whether they differ from the engine's
    (``sgd``, ``fixed32``, no gradient format, nearest rounding): then this module trains,
    on the cpu. ``spell(name, value)`` names a setting in the caller's terms in errors (the
    estimators' ``model_format='x'``, the CLI's ``--model-format x``)."""
    if solver not in SOLVERS:
        raise ValueError(f"{spell('solver', solver)}: choose one of {', '.join(SOLVERS)}")
    if rounding is not None and rounding not in fm.ROUNDINGS:
        raise ValueError(f"{spell('rounding', rounding)}: choose one of {', '.join(fm.ROUNDINGS)} or none")
    parsed = {}
    for name, spec in (("model_format", model_format), ("grad_format", grad_format)):
        if spec is None and name == "grad_format":
            continue
        try:
            parsed[name] = fm.parse(spec)
        except ValueError as exc:
            raise ValueError(f"{spell(name, spec)}: {exc}") from None
    return (solver != "sgd" or parsed["model_format"] != fm.ENGINE_MODEL or grad_format is not None
            or rounding not in (None, "nearest"))


def fit(job, solver: str = "sgd", model_format="fixed32", grad_format=None, rounding: str | None = None,
        epochs: int | None = None, step: float | None = None, seed: int | None = None, inner_epochs: int = 2,
        mu="auto", record: bool = True, engine: bool = True, stop=None) -> FitResult:
    """Train ``job`` on the CPU with a solver and number formats (module docstring).

    Parameters
    ----------
    job : zipsgd.job.Job
        A prepared job (its copies, codebook, step registers, batch, L2 and loss are used).
    solver : {"sgd", "svrg", "halp"}
    model_format, grad_format : str or Format
        :func:`zipsgd.formats.parse` strings; ``grad_format=None``: the update is rounded
        once, onto the model's grid. HALP takes its offset's bits from ``model_format``.
    rounding : {"stochastic", "nearest"} or None
        Both formats' rounding; None: :func:`resolve_rounding`.
    epochs : int
        Passes over the data (SVRG/HALP: full passes included); default ``job.epochs``.
    step : float
        Overrides the job's step (:meth:`Job.with_step`: the L2 shift follows).
    seed : int
        Seed of the rounding's random bits (default ``job.seed``).
    inner_epochs : int
        SVRG/HALP: inner passes per outer epoch.
    mu : float or "auto"
        HALP's strong-convexity constant (module docstring).
    record : bool
        Evaluate :func:`objective` after every pass (needs ``job.X_scaled``).
    engine : bool
        Let the engine-equal case (sgd, fixed32, no gradient format, nearest) run on
        :func:`zipsgd.fastref.run` (equal bit for bit; False: this module's loop).
    stop : callable (pass, loss_sum) -> bool, optional
        Early stopping, as :func:`zipsgd.reference.run`'s: asked after each SGD pass (SVRG
        and HALP: each inner pass) but the last; true ends the fit there.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unsupported solver={solver!r}: choose one of {SOLVERS}")
    mfmt = fm.parse(model_format)
    gfmt = None if grad_format is None else fm.parse(grad_format)
    rounding = resolve_rounding(mfmt, rounding)
    if step is not None:
        job = job.with_step(step)
    epochs = job.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, not {epochs}")
    inner_epochs = int(inner_epochs)
    if solver != "sgd" and inner_epochs < 1:
        raise ValueError(f"inner_epochs must be >= 1, not {inner_epochs}")
    seed = job.seed if seed is None else int(seed)
    record = record and job.X_scaled is not None
    out = FitResult(model=np.zeros(job.dim), result=None, solver=solver, model_format=mfmt.name,
                    grad_format=None if gfmt is None else gfmt.name, rounding=rounding)
    rb = fm.RandomBits(seed, job.dim)
    if solver == "sgd":
        _fit_sgd(job, mfmt, gfmt, rounding, epochs, rb, record, engine, out, stop)
    else:
        _fit_vr(job, solver, mfmt, gfmt, rounding, epochs, inner_epochs, rb, mu, record, out, stop)
    return out


def _fit_sgd(job, mfmt, gfmt, rounding, epochs, rb, record, engine, out, stop=None):
    if engine and mfmt == fm.ENGINE_MODEL and gfmt is None and rounding == "nearest":
        from . import fastref
        cfg = dataclasses.replace(job.config, epochs=epochs)
        if not record:
            res = fastref.run(cfg, job.streams, job.codebook, job.params, stop=stop)
        else:   # one pass at a time (model0 carries over): the same bits, an objective per pass
            x, sums, sat = None, [], 0
            for e in range(epochs):
                one = dataclasses.replace(cfg, epochs=1, step_shift=cfg.epoch_shift(e), decay_epochs=0)
                r = fastref.run(one, [job.streams[e % len(job.streams)]], job.codebook, job.params, model0=x)
                x = r.model
                sums += r.loss_sums
                sat += r.saturated
                out.objective.append(objective(job, c.MODEL.to_float(x)))
                if stop is not None and e + 1 < epochs and stop(e, sums[-1]):
                    break
            res = Result(model=x, loss_sums=sums, beats=len(sums) * job.n_samples * job.layout.beats_per_sample,
                         samples=len(sums) * job.n_samples, stopped=len(sums) < epochs, saturated=sat)
        out.result, out.model = res, c.MODEL.to_float(res.model)
        out.passes = ["sgd"] * len(res.loss_sums)
        return
    st = _state_class(mfmt)(mfmt, gfmt, rounding, rb, d=job.dim)
    t, sums = 0, []
    loss = job.config.loss
    for e in range(epochs):
        m, shift = _step_registers(job, e)
        total = 0
        for q1, q2, y in _batches(job, e):
            z = st.dot(q1)
            r, lo = residual_and_loss(loss, z, y)
            total += int(lo.sum())
            rp = _sat_model(c.rshift_round(r * m, shift))
            st.update(rp @ q2, job.config.l2_shift, t)
            t += 1
        sums.append(min(total, c.LOSS_ACC.max))
        out.passes.append("sgd")
        if record:
            out.objective.append(objective(job, st.value()))
        if stop is not None and e + 1 < epochs and stop(e, sums[-1]):
            break
    out.model = st.value()
    out.result = Result(model=st.to_model("nearest", None), loss_sums=sums,
                        beats=len(sums) * job.n_samples * job.layout.beats_per_sample,
                        samples=len(sums) * job.n_samples, stopped=len(sums) < epochs, saturated=st.saturated)


def _full_gradient(job, a: np.ndarray, pass_index: int) -> tuple[np.ndarray, int]:
    """(gbar, loss sum): the mean gradient at the anchor ``a`` over pass ``pass_index``'s copy,
    ``round_half_up(sum_i r_i Q2_i / n)`` at 40 fractional bits, the sum exact (``r`` split
    into 16-bit halves so that no partial sum leaves int64)."""
    d, n = job.dim, job.n_samples
    hi, lo_sum = np.zeros(d, dtype=np.int64), np.zeros(d, dtype=np.int64)
    total = 0
    for q1, q2, y in _batches(job, pass_index):
        z = _sat_model(c.rshift_round(q1 @ a, _FEAT_F))
        r, lo = residual_and_loss(job.config.loss, z, y)
        total += int(lo.sum())
        hi += (r >> 16) @ q2
        lo_sum += (r & 0xFFFF) @ q2
    # G = hi 2**16 + lo_sum; gbar = floor((2 G + n) / (2 n)) without leaving int64
    qh, rh = np.divmod(hi, n)
    num = rh * (1 << 16) + lo_sum                      # |.| < n 2**16 + |lo_sum|
    gbar = qh * (1 << 16) + np.floor_divide(2 * num + n, 2 * n)
    return gbar, min(total, c.LOSS_ACC.max)


def _curvature_sample(job):
    """Copy 0's first :data:`MU_ROWS` samples as floats (Q1, Q2)."""
    q1s, q2s, got = [], [], 0
    for q1, q2, _ in _batches(job, 0):
        q1s.append(c.FEAT.to_float(q1))
        q2s.append(c.FEAT.to_float(q2))
        got += q1.shape[0]
        if got >= MU_ROWS:
            break
    return np.vstack(q1s)[:MU_ROWS], np.vstack(q2s)[:MU_ROWS]


#: The HALP offset's automatic radius is this many times the Newton step's length.
NEWTON_MARGIN = 2.0


def _curvature(job, anchor, sample):
    """``sym(Q1^T D Q2) / m`` on the curvature sample (D as in :func:`auto_mu`)."""
    q1, q2 = sample
    if job.loss == "logistic":
        a = np.zeros(job.dim) if anchor is None else np.asarray(anchor, dtype=np.float64)
        e = np.exp(-np.abs(q1 @ a))
        H = (q1 * (e / (1.0 + e) ** 2)[:, None]).T @ q2 / q1.shape[0]
    else:
        H = q1.T @ q2 / q1.shape[0]
    return 0.5 * (H + H.T)


def newton_radius(job, g, anchor, sample, lam: float) -> float:
    """HALP's automatic radius: :data:`NEWTON_MARGIN` times ``|(H + lambda I)^-1 g|``, the
    distance from the anchor to the optimum of the objective's quadratic model there (``H``
    the curvature on the sample, eigenvalues floored at 1e-9 of the largest). Far tighter
    than ``|g| / mu`` when ``g`` does not point along the flattest direction, which is what
    makes an 8-bit offset fine enough on ill-conditioned data."""
    ev, V = np.linalg.eigh(_curvature(job, anchor, sample))
    ev = ev + lam
    top = float(ev.max()) if ev.size else 0.0
    if not top > 0:
        return 0.0
    ev = np.maximum(ev, 1e-9 * top)
    return NEWTON_MARGIN * float(np.linalg.norm(V @ ((V.T @ g) / ev)))


def auto_mu(job, anchor=None, sample=None) -> float:
    """HALP's ``mu="auto"``: ``lambda`` (the L2 term) plus the data's curvature, the smallest
    eigenvalue of ``sym(Q1^T D Q2) / m`` over copy 0's first :data:`MU_ROWS` samples, with
    ``D = 1`` (squared) or ``D = sigmoid'(Q1 . anchor)`` (logistic, at the outer epoch's
    anchor); hinge: ``lambda`` alone. Without L2 it needs the curvature (d <= MU_DIM_MAX)."""
    lam = l2_lambda(job)
    if job.loss == "hinge" or job.dim > MU_DIM_MAX:
        if lam > 0:
            return lam
        raise ValueError("HALP needs mu: give mu=..., or an L2 term (alpha > 0) whose strength is then mu "
                         f"(the data's curvature is estimated for the squared and logistic losses at d <= "
                         f"{MU_DIM_MAX})")
    q1, q2 = _curvature_sample(job) if sample is None else sample
    if job.loss == "logistic":
        a = np.zeros(job.dim) if anchor is None else np.asarray(anchor, dtype=np.float64)
        e = np.exp(-np.abs(q1 @ a))
        wgt = e / (1.0 + e) ** 2
        H = (q1 * wgt[:, None]).T @ q2 / q1.shape[0]
    else:
        H = q1.T @ q2 / q1.shape[0]
    ev = np.linalg.eigvalsh(0.5 * (H + H.T))
    return lam + max(float(ev[0]), 0.0) if lam + max(float(ev[0]), 0.0) > 0 else 1e-12


def _fit_vr(job, solver, mfmt, gfmt, rounding, epochs, inner_epochs, rb, mu, record, out, stop=None):
    d = job.dim
    loss = job.config.loss
    l2 = job.config.l2_shift
    lam = l2_lambda(job)
    auto = isinstance(mu, str) and mu == "auto"
    sample = None
    if solver == "halp":
        if auto:
            if not (job.loss == "hinge" or job.dim > MU_DIM_MAX):
                sample = _curvature_sample(job)
            mu = auto_mu(job, None, sample)
        mu = float(mu)
        if not mu > 0:
            raise ValueError(f"mu must be positive, not {mu!r}")
        out.info.update(mu=[], offset_formats=[], grad_norms=[])
    a = np.zeros(d, dtype=np.int64)                      # the anchor, MODEL ints
    sums, t, p, stopped, saturated = [], 0, 0, False, 0
    cls = _state_class(mfmt)
    st = None

    def anchor_rbits(t):
        return rb(t, fm.STREAM_ANCHOR) if rounding == "stochastic" else None

    def current():
        if st is None:
            return c.MODEL.to_float(a)
        return c.MODEL.to_float(a) + st.value() if solver == "halp" else st.value()

    while p < epochs:
        m, shift = _step_registers(job, p)
        gbar, tot = _full_gradient(job, a, p)
        sums.append(tot)
        out.passes.append("full")
        st = None
        if record:
            out.objective.append(objective(job, c.MODEL.to_float(a)))
        p += 1
        if p >= epochs:
            break
        if solver == "halp":
            g = np.ldexp(gbar.astype(np.float64), -_ACC_F) + lam * c.MODEL.to_float(a)
            if auto and sample is not None:     # the Newton step's length: the optimum's distance
                radius = newton_radius(job, g, c.MODEL.to_float(a), sample, lam)
                mu = float(np.linalg.norm(g)) / radius if radius > 0 else auto_mu(job, c.MODEL.to_float(a), sample)
            else:
                radius = float(np.linalg.norm(g)) / mu
            out.info["mu"].append(mu)
            zf = mfmt.scaled_to(radius)
            if isinstance(zf, fm.FixedFormat) and zf.frac > HALP_FRAC_MAX:
                zf = fm.FixedFormat(zf.bits, HALP_FRAC_MAX)
            out.info["offset_formats"].append(zf.name)
            out.info["grad_norms"].append(float(np.linalg.norm(g)))
            st = _state_class(zf)(zf, gfmt, rounding, rb, d=d)
        else:
            st = cls.from_model(mfmt, gfmt, rounding, rb, a, anchor_rbits(t))
        for _ in range(inner_epochs):
            if p >= epochs:
                break
            m, shift = _step_registers(job, p)
            gstep = c.rshift_round(np.clip(gbar, -(1 << 46), 1 << 46) * m, shift)
            total = 0
            for q1, q2, y in _batches(job, p):
                za = _sat_model(c.rshift_round(q1 @ a, _FEAT_F))
                zx = _sat_model(za + st.dot(q1)) if solver == "halp" else st.dot(q1)
                r1, lo = residual_and_loss(loss, zx, y)
                r0, _ = residual_and_loss(loss, za, y)
                total += int(lo.sum())
                rp = _sat_model(c.rshift_round((r1 - r0) * m, shift))
                G = rp @ q2 + q1.shape[0] * gstep
                if solver == "halp":
                    if l2:
                        zf = st.fmt
                        if isinstance(zf, fm.FixedFormat):
                            w40 = (a << np.int64(_ACC_F - _MODEL_F)) + fm.round_shift(st.x, zf.frac - _ACC_F)
                        else:
                            w40 = (a << np.int64(_ACC_F - _MODEL_F)) + fm.round_float(np.ldexp(st.x, _ACC_F))
                        G = G + c.rshift_round(w40, l2)
                    st.update(G, 0, t)
                else:
                    st.update(G, l2, t)
                t += 1
            sums.append(min(total, c.LOSS_ACC.max))
            out.passes.append("inner")
            if record:
                out.objective.append(objective(job, current()))
            p += 1
            if stop is not None and p < epochs and stop(p - 1, sums[-1]):
                epochs, stopped = p, True                 # ends the fit after this pass
        final = current() if p >= epochs else None          # the last iterate, exact
        # re-centre: the next anchor
        if solver == "halp":
            a = _sat_model(a + st.to_model(rounding, anchor_rbits(t)))
        else:
            a = st.to_model(rounding, anchor_rbits(t))
        saturated += st.saturated
        st = None
        if final is not None:
            out.model = final
            out.result = Result(model=a, loss_sums=sums, beats=p * job.n_samples * job.layout.beats_per_sample,
                                samples=p * job.n_samples, stopped=stopped, saturated=saturated)
            return
    out.model = c.MODEL.to_float(a)
    out.result = Result(model=a, loss_sums=sums, beats=p * job.n_samples * job.layout.beats_per_sample,
                        samples=p * job.n_samples, stopped=stopped, saturated=saturated)
