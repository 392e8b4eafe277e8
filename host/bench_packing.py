"""Packing throughput: features per second on one core, for every mode (target >= 20 M/s).

    zipsgd bench packing   (python -m zipsgd.bench_packing [--n 200000] [--d 100])
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from zipsgd import contract as c
from zipsgd import packing as p

TARGET = 20e6


def run(n: int = 200_000, d: int = 100, word_bits: int = c.WORD_BITS_DEFAULT, repeats: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    labels = np.zeros(n, dtype=np.int64)
    for enc, bits in c.valid_modes():
        layout = c.Layout(word_bits, enc, bits, d)
        if enc == c.Encoding.FULL:
            job = {"values": rng.integers(-c.FEAT.one, c.FEAT.one + 1, (n, d), dtype=np.int32)}
        else:
            j = rng.integers(0, (1 << bits) - 1, (n, d), dtype=np.uint8)
            job = {"codes1": j + rng.integers(0, 2, (n, d), dtype=np.uint8)}
            if enc != c.Encoding.SINGLE:
                job["codes2"] = j + rng.integers(0, 2, (n, d), dtype=np.uint8)
        best = min(_timed(p.pack, layout, labels, **job) for _ in range(repeats))
        rate = n * d / best
        rows.append({"mode": f"{enc.name} b={bits}", "bits_per_feature": layout.bits_per_feature_effective,
                     "seconds": best, "features_per_s": rate, "pass": rate >= TARGET})
    return rows


def _timed(fn, *a, **k):
    t = time.perf_counter()
    fn(*a, **k)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=100)
    a = ap.parse_args(argv)
    rows = run(a.n, a.d)
    print(f"packing {a.n} x {a.d} features, one core (target {TARGET / 1e6:.0f} M features/s)")
    print(f"{'mode':<14} {'bits/feat':>9} {'seconds':>8} {'M feat/s':>9}  target")
    for r in rows:
        print(f"{r['mode']:<14} {r['bits_per_feature']:>9.2f} {r['seconds']:>8.3f} "
              f"{r['features_per_s'] / 1e6:>9.1f}  {'PASS' if r['pass'] else 'MISS'}")
    return rows


if __name__ == "__main__":
    main()
