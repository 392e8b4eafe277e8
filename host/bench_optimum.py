"""Convergence against the true optimum: ZipML's double sampling, Li & De Sa's low-precision
models, HALP's bit centring (issue 16, part 4 a, d, e).

Every row reports the final objective divided by the true optimum ``L*`` of the job's
training objective (:func:`zipsgd.solvers.optimum`: closed form for least squares, a
converged L-BFGS for logistic), float64 SGD on the same schedule as a second column
(:func:`zipsgd.baseline.sgd`), the claim it tests and PASS or MISS (with the reason).

a. **ZipML** (least squares, d = 10 and 100): at 1 and 2 bits, double sampling with a
   fresh copy every epoch ends within 2 % of L*; single (one stochastic rounding used
   twice) and nearest rounding stall at their predicted biased points, printed beside:
   nearest: the optimum of the nearest-rounded data; single: the optimum of
   ``(X^T X + D) w = X^T y``, ``D`` the diagonal of the rounding variances (the bias of
   ``E[Q Q^T]``). PASS: double <= 1.02 L*, and single/nearest within 25 % of their
   predicted excess (and above double). Schedule: 2000 samples, 48 epochs (48 fresh
   copies), step 2**-9 halving every 8 epochs, batch 1.
d. **Li & De Sa** (least squares, 32-bit data, L2 1e-3, constant automatic step): the
   final objective / L* of low-precision SGD with fixed, float and log models at 8 and
   16 bits (``fixed8`` ``float:e4m3`` ``log8``; ``fixed16`` ``float:e5m10``; base-2 log has
   no 16-bit row: its extra bits add range, not resolution) against d = 10 ... 10,000 at
   a fixed data scale (features in [-1, 1], target in [-1, 1]). Reported: how the
   format's floor — its final objective over float64 SGD's on the same schedule, minus 1
   — moves with d (flat: within 2x over the sweep) and which format wins at each width.
e. **HALP** (least squares and logistic with L2, constant step): the gap ``F/L* - 1``
   after every pass for float64 SGD, the engine's SGD (fixed32), low-precision SGD
   (``fixed8``), SVRG (fixed32 anchor and iterate) and HALP (``fixed8`` offset), on
   32-bit, 8-bit and 4-bit double-sampled data. PASS: HALP's final gap is at most
   ``max(1e-6, 2 x floor)`` while low-precision SGD's is at least 10x HALP's. ``floor``
   is the predicted point of the data the engine sees: the mean gap of the fixed points
   of the engine's update on each packed copy (``Q2^T rho(Q1 w, y) / n + lambda w = 0``,
   ``rho`` the engine's residual: exact for least squares, the PLAN sigmoid for logistic),
   which no solver on those copies can beat.

Entry point: :func:`main` (``argv``: ``--quick``, ``--out DIR``, ``--parts a,d,e``,
``--plot``), or :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import baseline
from . import contract as c
from . import solvers as S
from .job import prepare_job
from .reference import decode

ZIPML_TARGET = 1.02
ZIPML_STEP = 2 ** -9
ZIPML_PREDICTED_TOL = 0.25
HALP_TARGET = 1e-6
HALP_FLOOR_FACTOR = 2.0
HALP_SGD_FACTOR = 10.0
FLAT_FACTOR = 2.0


def synthetic(n: int, d: int, seed: int = 0, noise: float = 0.3):
    """``X ~ N(0, I)``, ``w* ~ N(0, I/d)``, ``y = X w* + noise N(0, 1)``: the target's scale
    does not depend on d."""
    rng = np.random.default_rng([seed, d, n])
    X = rng.standard_normal((n, d))
    y = X @ (rng.standard_normal(d) / np.sqrt(d)) + noise * rng.standard_normal(n)
    return X, y


def _copies_float(job):
    for k in range(job.copies):
        q1, q2, y = decode(job.layout, job.streams[k], job.codebook)
        yield c.FEAT.to_float(q1), c.FEAT.to_float(q2), c.MODEL.to_float(y)


def _sigmoid_hat(z):
    """The contract's PLAN sigmoid, in float."""
    u = np.abs(z)
    s = np.where(u >= 5.0, 1.0, np.where(u >= 2.375, u / 32 + 0.84375, np.where(u >= 1.0, u / 8 + 0.625,
                                                                                 u / 4 + 0.5)))
    return np.where(z >= 0, s, 1.0 - s)


def engine_fixed_point(job, q1, q2, y) -> np.ndarray:
    """The point where the engine's expected update vanishes on one packed copy:
    ``Q2^T rho(Q1 w, y) / n + lambda w = 0`` (squared: a linear system; logistic: PLAN
    sigmoid, Newton on the piecewise-linear residual)."""
    n, d = q1.shape
    lam = S.l2_lambda(job)
    if job.loss == "squared":
        return np.linalg.solve(q2.T @ q1 / n + lam * np.eye(d), q2.T @ y / n)
    from scipy.optimize import root
    sol = root(lambda w: q2.T @ (_sigmoid_hat(q1 @ w) - y) / n + lam * w, np.zeros(d), method="hybr",
               options={"xtol": 1e-14})
    return sol.x


def data_floor(job, best: float) -> float:
    """Mean over the job's copies of ``F(fixed point) / L* - 1`` (:func:`engine_fixed_point`)."""
    gaps = [(S.objective(job, engine_fixed_point(job, *cp)) - best) / best for cp in _copies_float(job)]
    return float(max(np.mean(gaps), 0.0))


# --------------------------------------------------------------------------------------
# a. ZipML
# --------------------------------------------------------------------------------------
def _biased_points(job, X, y):
    """Predicted final models of single and nearest rounding (module docstring)."""
    from . import quant
    Xs, ys = job.X_scaled, job.y_scaled
    n = Xs.shape[0]
    lv = job.levels_float
    near = lv[quant.nearest_round(Xs, lv)]
    w_near = np.linalg.lstsq(near, ys, rcond=None)[0]
    D = np.diag(quant.rounding_variance(Xs, lv).sum(axis=0))
    w_single = np.linalg.solve(Xs.T @ Xs + D, Xs.T @ ys)
    return {"nearest": w_near, "single": w_single}


def part_a(quick: bool, log) -> list[dict]:
    rows = []
    dims = (10,) if quick else (10, 100)
    n = 1000 if quick else 2000
    epochs, decay = (24, 6) if quick else (48, 8)
    for d in dims:
        X, y = synthetic(n, d)
        for bits in (1, 2):
            # one schedule for every sampling: the step the 1-bit double-sampled gradient tolerates at d = 100
            jobs = {s: prepare_job(X, y, bits=bits, sampling=s, epochs=epochs, step=ZIPML_STEP, decay=decay,
                                   copies=epochs, seed=0) for s in ("double", "single", "nearest")}
            _, best = S.optimum(jobs["double"])
            f64 = baseline.sgd(jobs["double"])
            f64_ratio = S.objective(jobs["double"], f64.model) / best
            pred = _biased_points(jobs["double"], X, y)
            for sampling, job in jobs.items():
                out = S.fit(job, record=False)
                ratio = S.objective(job, out.model) / best
                p = 1.0 if sampling == "double" else S.objective(job, pred[sampling]) / best
                if sampling == "double":
                    ok = ratio <= ZIPML_TARGET
                    claim = f"double, fresh copies <= {ZIPML_TARGET} L*"
                    why = "" if ok else "needs more epochs or a smaller step at this many bits"
                else:
                    dbl = next(r for r in rows[::-1] if r["part"] == "a" and r["d"] == d and r["bits"] == bits
                               and r["sampling"] == "double")
                    ok = abs(ratio - p) <= ZIPML_PREDICTED_TOL * max(p - 1, 1e-12) and ratio > dbl["ratio"]
                    claim = f"{sampling} stalls at its predicted point (+-{ZIPML_PREDICTED_TOL:.0%} of the excess)"
                    why = "" if ok else ("ends away from the predicted point" if ratio > dbl["ratio"]
                                         else "no worse than double")
                rows.append({"part": "a", "loss": "squared", "d": d, "n": n, "bits": bits, "sampling": sampling,
                             "epochs": epochs, "step": job.step, "ratio": ratio, "predicted": p,
                             "float64_ratio": f64_ratio, "optimum": best, "claim": claim, "pass": bool(ok),
                             "why": why})
            if log:
                log(f"  a: d={d} bits={bits} done")
    return rows


# --------------------------------------------------------------------------------------
# d. Li & De Sa
# --------------------------------------------------------------------------------------
FORMATS_D = {8: ("fixed8", "float:e4m3", "log8"), 16: ("fixed16", "float:e5m10")}


def part_d(quick: bool, log) -> list[dict]:
    rows = []
    dims = (10, 100) if quick else (10, 100, 1000, 10000)
    n = 300 if quick else 1000
    epochs = 4 if quick else 6
    for d in dims:
        X, y = synthetic(n, d, noise=0.1)
        # a build with room for d = 10,000 (the reference itself has no dimension cap)
        job = prepare_job(X, y, bits=32, epochs=epochs, step="auto", decay=0, alpha=1e-3, copies=1, seed=0,
                          params=c.EngineParams(dim_max=1 << 14))
        _, best = S.optimum(job)
        f64 = baseline.sgd(job)
        f64_ratio = S.objective(job, f64.model) / best
        eng = S.objective(job, S.fit(job, record=False).model) / best
        for width, specs in FORMATS_D.items():
            for spec in specs:
                out = S.fit(job, model_format=spec, record=False)
                rows.append({"part": "d", "loss": "squared", "d": d, "n": n, "bits": width, "format": spec,
                             "epochs": epochs, "step": job.step, "ratio": S.objective(job, out.model) / best,
                             "float64_ratio": f64_ratio, "fixed32_ratio": eng, "optimum": best})
        if log:
            log(f"  d: d={d} done")
    return rows


def checks_d(rows: list[dict]) -> list[dict]:
    """Flat or not per format, and the winner per width and d."""
    out = []
    for width, specs in FORMATS_D.items():
        for spec in specs:
            rs = [r for r in rows if r["format"] == spec]
            # the format's own floor: its final objective over float64 SGD's on the same schedule
            ex = [max(r["ratio"] / r["float64_ratio"] - 1, 1e-6) for r in rs]
            flat = max(ex) <= FLAT_FACTOR * min(ex)
            out.append({"part": "d", "claim": f"{spec}: floor (final / float64 SGD's - 1) flat in d (within "
                                              f"{FLAT_FACTOR:g}x over d = {rs[0]['d']}..{rs[-1]['d']})",
                        "value": max(ex) / min(ex), "pass": bool(flat),
                        "why": "floor " + " -> ".join(f"{e:.2g}" for e in ex)})
        for d in dict.fromkeys(r["d"] for r in rows):
            rs = [r for r in rows if r["bits"] == width and r["d"] == d]
            win = min(rs, key=lambda r: r["ratio"])
            out.append({"part": "d", "claim": f"{width}-bit winner at d={d}", "value": win["ratio"],
                        "pass": None, "why": win["format"]})
    return out


# --------------------------------------------------------------------------------------
# e. HALP
# --------------------------------------------------------------------------------------
SOLVERS_E = (("sgd", "fixed32"), ("sgd", "fixed8"), ("svrg", "fixed32"), ("halp", "fixed8"))


def part_e(quick: bool, log) -> list[dict]:
    rows = []
    n = 400 if quick else 1000
    epochs = 12 if quick else 30
    data_bits = (32, 8) if quick else (32, 8, 4)
    for loss in ("squared", "logistic"):
        X, y = synthetic(n, 10, seed=1)
        yy = y if loss == "squared" else (y > 0).astype(int)
        step = 2 ** -4 if loss == "squared" else 2 ** -2
        for bits in data_bits:
            job = prepare_job(X, yy, loss=loss, bits=bits, epochs=epochs, step=step, decay=0, alpha=1e-2, seed=0)
            _, best = S.optimum(job)
            floor = data_floor(job, best) if (bits != 32 or loss != "squared") else 0.0
            f64 = baseline.sgd(job)
            curves = {"float64 sgd": [(S.objective(job, w) - best) / best for w in _f64_models(job)]}
            f64_gap = curves["float64 sgd"][-1]
            for solver, fmt in SOLVERS_E:
                out = S.fit(job, solver=solver, model_format=fmt)
                curves[f"{solver} {fmt}"] = [(o - best) / best for o in out.objective]
            halp, lp = curves["halp fixed8"][-1], curves["sgd fixed8"][-1]
            target = max(HALP_TARGET, HALP_FLOOR_FACTOR * floor)
            ok = halp <= target and lp >= HALP_SGD_FACTOR * max(halp, 1e-300)
            why = ""
            if not ok:
                why = (f"HALP ends at {halp:.1e} > {target:.1e}" if halp > target else
                       f"low-precision SGD ({lp:.1e}) is not 10x above HALP")
            rows.append({"part": "e", "loss": loss, "d": 10, "n": n, "bits": bits, "epochs": epochs, "step": step,
                         "optimum": best, "floor": floor, "curves": curves, "float64_gap": f64_gap,
                         "final": {k: v[-1] for k, v in curves.items()}, "pass": bool(ok), "why": why,
                         "claim": f"HALP 8-bit gap <= max({HALP_TARGET:g}, {HALP_FLOOR_FACTOR:g} x floor); "
                                  f"LP-SGD >= {HALP_SGD_FACTOR:g}x HALP"})
            if log:
                log(f"  e: {loss} {bits}-bit data done")
            del f64
    return rows


def _f64_models(job):
    """Float64 SGD's model after each epoch (the job's schedule)."""
    w = None
    for e in range(job.epochs):
        w, _ = baseline.sgd_raw(job.loss, job.X_scaled, job.y_scaled, [job.perms[e % len(job.perms)]],
                                [job.epoch_step(e)], job.batch_size, job.l2_factor, w0=w)
        yield w


# --------------------------------------------------------------------------------------
# Tables, plots, main
# --------------------------------------------------------------------------------------
def _tag(ok) -> str:
    return "info" if ok is None else ("PASS" if ok else "MISS")


def format_a(rows) -> str:
    lines = ["| d | bits | sampling | final / L* | predicted / L* | float64 SGD / L* | claim | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['d']} | {r['bits']} | {r['sampling']} | {r['ratio']:.4f} | {r['predicted']:.4f} | "
                     f"{r['float64_ratio']:.4f} | {r['claim']} | {_tag(r['pass'])}{' ' + r['why'] if r['why'] else ''} |")
    return "\n".join(lines)


def format_d(rows, checks) -> str:
    fmts = [s for specs in FORMATS_D.values() for s in specs]
    lines = ["| d | float64 SGD / L* | fixed32 (engine) / L* | " + " | ".join(fmts) + " |",
             "|---|---|---|" + "---|" * len(fmts)]
    for d in dict.fromkeys(r["d"] for r in rows):
        rs = {r["format"]: r for r in rows if r["d"] == d}
        first = next(iter(rs.values()))
        lines.append(f"| {d} | {first['float64_ratio']:.4f} | {first['fixed32_ratio']:.4f} | "
                     + " | ".join(f"{rs[f]['ratio']:.4f}" for f in fmts) + " |")
    lines.append("")
    lines += [f"- {_tag(c_['pass'])} {c_['claim']}: {c_['value']:.3g}{' (' + c_['why'] + ')' if c_['why'] else ''}"
              for c_ in checks]
    return "\n".join(lines)


def format_e(rows) -> str:
    names = ["float64 sgd"] + [f"{s} {f}" for s, f in SOLVERS_E]
    lines = ["| loss | data bits | predicted floor | " + " | ".join(f"{n} gap" for n in names) + " | claim |",
             "|---|---|---|" + "---|" * len(names) + "---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['bits']} | {r['floor']:.1e} | "
                     + " | ".join(f"{r['final'][n]:.1e}" for n in names)
                     + f" | {_tag(r['pass'])}{' ' + r['why'] if r['why'] else ''} |")
    return "\n".join(lines)


def plot(rows_d, rows_e, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    if rows_e:
        fig, axes = plt.subplots(1, len(rows_e), figsize=(3.6 * len(rows_e), 3.2), squeeze=False)
        for ax, r in zip(axes[0], rows_e):
            for name, curve in r["curves"].items():
                ax.semilogy(range(1, len(curve) + 1), np.maximum(curve, 1e-12), label=name)
            if r["floor"] > 0:
                ax.axhline(r["floor"], color="k", ls=":", lw=0.8, label="predicted floor")
            ax.set_title(f"{r['loss']}, {r['bits']}-bit data", fontsize=9)
            ax.set_xlabel("pass")
        axes[0][0].set_ylabel("F / L* - 1")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "optimum_halp.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if rows_d:
        fig, ax = plt.subplots(figsize=(4.5, 3.4))
        for spec in dict.fromkeys(r["format"] for r in rows_d):
            rs = [r for r in rows_d if r["format"] == spec]
            ax.loglog([r["d"] for r in rs], [max(r["ratio"] - 1, 1e-12) for r in rs], "o-", label=spec)
        rs = [r for r in rows_d if r["format"] == rows_d[0]["format"]]
        ax.loglog([r["d"] for r in rs], [max(r["float64_ratio"] - 1, 1e-12) for r in rs], "k--", label="float64")
        ax.set_xlabel("d")
        ax.set_ylabel("F / L* - 1")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths.append(out / "optimum_formats.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def run(quick: bool = False, parts: str = "ade", log=None) -> dict:
    """Run the parts; a dict of rows per part and the checks."""
    res = {"quick": quick}
    t0 = time.perf_counter()
    if "a" in parts:
        res["a"] = part_a(quick, log)
    if "d" in parts:
        res["d"] = part_d(quick, log)
        res["d_checks"] = checks_d(res["d"])
    if "e" in parts:
        res["e"] = part_e(quick, log)
    res["seconds"] = time.perf_counter() - t0
    return res


def report(res: dict) -> str:
    out = []
    if "a" in res:
        out += ["a. ZipML: double sampling with fresh copies against single/nearest (least squares, "
                "final objective / L*)", "", format_a(res["a"]), ""]
    if "d" in res:
        out += ["d. Li & De Sa: low-precision SGD's final objective / L* by model format against d "
                "(32-bit data, least squares, L2)", "", format_d(res["d"], res["d_checks"]), ""]
    if "e" in res:
        out += ["e. HALP: final gap F/L* - 1 after the last pass (d = 10, L2; curves in the plot)", "",
                format_e(res["e"]), ""]
    checks = [r["pass"] for k in ("a", "e") for r in res.get(k, [])]
    checks += [c_["pass"] for c_ in res.get("d_checks", []) if c_["pass"] is not None]
    out.append(f"{sum(bool(x) for x in checks)}/{len(checks)} claims pass; {res['seconds']:.1f} s")
    return "\n".join(out)


def main(argv=None) -> int:
    """``zipsgd bench optimum``: print the tables; ``--out DIR`` writes JSON, Markdown and plots."""
    ap = argparse.ArgumentParser(prog="zipsgd bench optimum", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small problems, for tests (< 20 s)")
    ap.add_argument("--parts", default="ade", help="which parts to run (letters of a, d, e)")
    ap.add_argument("--out", default=None, help="directory for optimum.json, optimum.md and the plots")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    bad = set(args.parts) - set("ade")
    if bad:
        ap.error(f"unknown parts {''.join(sorted(bad))}: choose among a, d, e")
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    res = run(quick=args.quick, parts=args.parts, log=log)
    text = report(res)
    print(text, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = "optimum_quick" if args.quick else "optimum"
        (out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        (out / f"{stem}.md").write_text(f"# Convergence against the optimum ({'quick' if args.quick else 'full'})\n\n"
                                        f"{text}\n")
        try:
            for p in plot(res.get("d", []), res.get("e", []), out):
                print(f"wrote {p}")
        except ImportError:
            pass
        print(f"wrote {out / (stem + '.md')}, {out / (stem + '.json')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
