"""`zipsgd demo` (`make demo`): train a bundled dataset on the engine and show what it did.

Trains scikit-learn's diabetes regression at 4-bit double sampling and at 32 bits on
the chosen backend (the simulated board when it is available, else the CPU reference),
runs the same jobs on the bit-exact reference, and prints per epoch the engine's loss,
the reference's loss (identical: the reference is the spec), and the float64 SGD
baseline; then cycles, efficiency, data moved, the projected time on a PYNQ-Z2 at its
engine clock (``boards.BOARDS["pynq-z2"].clock_mhz``, the one figure every projection
uses) against the measured time of numpy float64 SGD on this machine; and
writes a PNG of the curves.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .boards import BOARDS


def _sim_available() -> bool:
    try:
        from .backends import BACKENDS
        return "sim" in BACKENDS and BACKENDS["sim"] is not None and getattr(BACKENDS["sim"], "available", True)
    except ImportError:
        return False


def run(backend: str | None = None, out: str | Path = "results/demo.png", epochs: int = 12, quiet: bool = False):
    from sklearn.datasets import load_diabetes

    from . import baseline
    from .estimators import SGDRegressor

    say = (lambda *a: None) if quiet else print
    X, y = load_diabetes(return_X_y=True)
    backend = backend or ("sim" if _sim_available() else "cpu")
    board = BOARDS["pynq-z2"]
    # a fixed schedule (early stopping off), the same as float64 SGD's beside it
    common = dict(max_iter=epochs, tol=None, step=2**-4, decay=4, batch_size=16, random_state=0, levels="optimal")
    say(f"zipsgd demo: diabetes ({X.shape[0]} x {X.shape[1]}), least squares, {epochs} epochs, "
        f"backend={backend!r}")
    runs = {}
    for bits in (4, 32):
        t = time.perf_counter()
        est = SGDRegressor(bits=bits, sampling="double", backend=backend, **common).fit(X, y)
        wall = time.perf_counter() - t
        ref = SGDRegressor(bits=bits, sampling="double", backend="cpu", **common).fit(X, y)
        same = np.array_equal(est.loss_curve_, ref.loss_curve_) and np.array_equal(est.coef_, ref.coef_)
        runs[bits] = (est, ref, same, wall)
    job = runs[32][0].make_job(X, y)       # the job with its data (a fitted estimator keeps none)
    t = time.perf_counter()
    base = baseline.sgd(job)
    numpy_seconds = time.perf_counter() - t

    say("\nper-epoch loss (engine-reported mean loss; float64 SGD on the same schedule)")
    say(f"{'epoch':>5} {'4-bit engine':>13} {'4-bit ref':>11} {'32-bit engine':>14} {'32-bit ref':>11} "
        f"{'float64':>10}")
    for e in range(epochs):
        say(f"{e + 1:>5} {runs[4][0].loss_curve_[e]:>13.6f} {runs[4][1].loss_curve_[e]:>11.6f} "
            f"{runs[32][0].loss_curve_[e]:>14.6f} {runs[32][1].loss_curve_[e]:>11.6f} {base.loss_curve[e]:>10.6f}")
    say("")
    for bits in (4, 32):
        est, ref, same, wall = runs[bits]
        st = est.hw_stats_ or {}
        lay = est.job_.layout
        stream_bytes = est.job_.n_samples * lay.beats_per_sample * lay.word_bits // 8 * epochs
        line = (f"{bits:>2}-bit: engine == reference: {'yes' if same else 'NO'}; R^2 {est.score(X, y):.4f}; "
                f"{est.bits_per_feature_:.2f} stream bits/feature; {stream_bytes / 1e3:.1f} kB streamed")
        if "projected_board_seconds" in st:      # (the engine's counters: sim and pynq)
            proj = st["projected_board_seconds"] * st["clock_mhz"] / board.clock_mhz
            line += (f"; {st['cycles']} cycles, {st['beats']} beats, {st['stalls']} stalls, efficiency "
                     f"{st['efficiency']:.3f}; projected {board.name} time at {board.clock_mhz:g} MHz "
                     f"{'(assumed clock) ' if board.clock_assumed else ''}{proj * 1e3:.3f} ms "
                     f"(simulated in {wall:.1f} s)")
        say(line)
    say(f"numpy float64 SGD on this machine: {numpy_seconds * 1e3:.1f} ms for the same job")
    if not all(r[2] for r in runs.values()):
        raise SystemExit("zipsgd demo: the engine and the reference disagree")
    out = Path(out)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("(matplotlib not installed: no plot)")
        return runs
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = np.arange(1, epochs + 1)                 # epochs numbered from 1, as everywhere
    ax.plot(ep, runs[4][0].loss_curve_, "o-", label="4-bit double (engine)")
    ax.plot(ep, runs[32][0].loss_curve_, "s-", label="32-bit (engine)")
    ax.plot(ep, base.loss_curve, "k--", label="float64 SGD")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (scaled units)")
    ax.set_yscale("log")
    ax.set_title("zipsgd demo: diabetes, least squares")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    say(f"wrote {out}")
    return runs
