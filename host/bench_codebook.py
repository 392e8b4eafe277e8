"""Codebook placement time and stochastic-rounding variance of every codebook kind.

    zipsgd bench codebook   (python -m zipsgd.bench_codebook [--n 1000000])

Prints the seconds ``make_codebook`` takes on ``n`` values (target: "optimal" under
2 s for every b), then the mean rounding variance ``(a - l_j)(l_{j+1} - a)`` of each
codebook on normal, exponential and uniform data scaled to [-1, 1].
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zipsgd import quant
from zipsgd.contract import BITS_ALLOWED

TARGET_S = 2.0


def distributions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Test data in [-1, 1]: normal (clipped at 4 sigma), exponential and uniform."""
    rng = np.random.default_rng(seed)
    scale = quant.Scaler("global")
    return {
        "normal": np.clip(rng.normal(0.0, 0.25, n), -1.0, 1.0),
        "exponential": scale.fit_transform(rng.exponential(1.0, (n, 1))).ravel(),
        "uniform": rng.uniform(-1.0, 1.0, n),
    }


def run(n: int = 1_000_000, variance_bits=(2, 4, 8), seed: int = 0) -> list[dict]:
    """Benchmark rows.

    Parameters
    ----------
    n : int
        Values per data set.
    variance_bits : sequence of int
        Bits of the variance comparison.
    seed : int
        Data seed.

    Returns
    -------
    list of dict
        ``{"bench": "time", "kind", "bits", "seconds", "pass"}`` (placement on the
        normal data) and ``{"bench": "variance", "data", "bits", "<kind>": mean variance}``.
    """
    data = distributions(n, seed)
    rows = []
    for kind in ("optimal", "weibull"):
        for bits in BITS_ALLOWED:
            t = time.perf_counter()
            quant.make_codebook(kind, bits, data["normal"], rng=np.random.default_rng(seed))
            dt = time.perf_counter() - t
            rows.append({"bench": "time", "kind": kind, "bits": bits, "n": n, "seconds": dt,
                         "pass": dt < TARGET_S})
    for name, a in data.items():
        for bits in variance_bits:
            row = {"bench": "variance", "data": name, "bits": bits, "n": n}
            for kind in quant.KINDS:
                levels = quant.make_codebook(kind, bits, a, rng=np.random.default_rng(seed))
                row[kind] = float(quant.rounding_variance(a, levels).mean())
            rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    a = ap.parse_args(argv)
    rows = run(a.n)
    print(f"make_codebook on {a.n} normal values (target < {TARGET_S:g} s)")
    print(f"{'kind':<8} {'bits':>4} {'seconds':>8}")
    for r in rows:
        if r["bench"] == "time":
            print(f"{r['kind']:<8} {r['bits']:>4} {r['seconds']:>8.3f}  {'PASS' if r['pass'] else 'MISS'}")
    print(f"\nmean stochastic-rounding variance on {a.n} values")
    print(f"{'data':<12} {'bits':>4} " + " ".join(f"{k:>10}" for k in quant.KINDS))
    for r in rows:
        if r["bench"] == "variance":
            print(f"{r['data']:<12} {r['bits']:>4} " + " ".join(f"{r[k]:>10.3e}" for k in quant.KINDS))
    return rows


if __name__ == "__main__":
    main()
