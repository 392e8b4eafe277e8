"""Default settings against scikit-learn's (``zipsgd bench accuracy``).

zipsgd's estimators with their defaults (``step="auto"``, ``decay="auto"``) at 8 and 4
bits and batch sizes 1, 16 and 64, beside scikit-learn's default ``SGDRegressor`` /
``SGDClassifier`` on standardized data, on scikit-learn's bundled data sets and a 3000 x
300 regression on 0/1 features: test R² or accuracy on a held-out quarter, and whether
zipsgd comes within 0.02 of scikit-learn (the target), in one run. Divergence warnings are
counted, not hidden.
"""

from __future__ import annotations

import warnings

import numpy as np

TOLERANCE = 0.02


def datasets():
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris

    rng = np.random.default_rng(0)
    X01 = (rng.random((3000, 300)) < 0.5).astype(float)
    y01 = X01 @ rng.normal(size=300) + 0.5 * rng.normal(size=3000)
    Xd, yd = load_digits(return_X_y=True)
    return {
        "diabetes": (*load_diabetes(return_X_y=True), "regression"),
        "0/1 features 3000x300": (X01, y01, "regression"),
        "breast_cancer": (*load_breast_cancer(return_X_y=True), "classification"),
        "digits (0 vs rest)": (Xd, (yd == 0).astype(int), "classification"),
        "digits (10 classes)": (Xd, yd, "classification"),
        "iris (3 classes)": (*load_iris(return_X_y=True), "classification"),
    }


def run(quick: bool = False) -> list[dict]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import SGDClassifier as SkC
    from sklearn.linear_model import SGDRegressor as SkR
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from .estimators import SGDClassifier, SGDRegressor

    rows = []
    batches = (1, 64) if quick else (1, 16, 64)
    for name, (X, y, kind) in datasets().items():
        Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0, stratify=y if kind == "classification" else None)
        sc = StandardScaler().fit(Xtr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = (SkR(random_state=0) if kind == "regression" else SkC(random_state=0)).fit(sc.transform(Xtr), ytr)
        ref = float(sk.score(sc.transform(Xte), yte))
        for bits in (8, 4):
            for batch in batches:
                est = (SGDRegressor if kind == "regression" else SGDClassifier)(bits=bits, batch_size=batch)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    est.fit(Xtr, ytr)
                score = float(est.score(Xte, yte))
                rows.append({"data": name, "kind": kind, "bits": bits, "batch": batch, "zipsgd": score,
                             "sklearn": ref, "pass": score >= ref - TOLERANCE,
                             "warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught)})
    return rows


#: Why a data set misses the target where it does (measured; printed under the table).
MISS_NOTES = {
    "breast_cancer": "143 test samples (one is 0.007 of accuracy): the misses are 2-4 samples. zipsgd scales "
                     "each feature by its min..max (scikit-learn's run is standardized) and runs batch 16/64 at "
                     "the full-batch stability limit: 0.93-0.94 whether early stopping ends it (55-82 epochs) "
                     "or 200 epochs run",
    "iris (3 classes)": "112 training samples at batch 64 are 2 updates per epoch: early stopping "
                        "(n_iter_no_change=5) ends the fit after about 66 epochs at 0.92; n_iter_no_change=10 "
                        "gives 0.947, tol=None with max_iter=200 gives 0.974",
}


def format_report(rows: list[dict]) -> str:
    lines = [f"test score (R² or accuracy), zipsgd defaults vs scikit-learn's default SGD on standardized data "
             f"(target: within {TOLERANCE})",
             f"{'data':<24} {'bits':>4} {'batch':>5} {'zipsgd':>8} {'sklearn':>8}  target  warnings"]
    for r in rows:
        lines.append(f"{r['data']:<24} {r['bits']:>4} {r['batch']:>5} {r['zipsgd']:>8.3f} {r['sklearn']:>8.3f}  "
                     f"{'PASS' if r['pass'] else 'MISS':<6}  {r['warnings']}")
    met = sum(r["pass"] for r in rows)
    lines.append(f"{met} of {len(rows)} within {TOLERANCE}")
    for name in dict.fromkeys(r["data"] for r in rows if not r["pass"]):
        lines.append(f"  miss, {name}: {MISS_NOTES.get(name, 'not explained yet')}")
    return "\n".join(lines)


def main(quick: bool = False, out: str = "results", quiet: bool = False) -> int:
    from .bench_hw import save_report

    rows = run(quick)
    return save_report(out, "accuracy", format_report(rows), {"rows": rows}, quiet)
