"""Load training data for the CLI and the benchmarks.

``load_data(spec)`` accepts:

* ``sklearn:NAME`` — a dataset bundled with scikit-learn (no download):
  ``diabetes`` (regression), ``breast_cancer`` (binary), ``digits`` (binary: digit >= 5
  vs < 5; ``digits:K`` for K-vs-rest), ``iris`` (binary: versicolor vs virginica;
  ``iris:K`` for class K vs rest), ``linnerud`` (regression on the first target).
* ``PATH.npz`` — arrays ``X`` and ``y``.
* ``PATH.csv`` / ``.tsv`` — numeric columns, optional header row; the target is the
  column named (or numbered) ``target``, the last column by default. Empty fields and
  ``nan`` stay NaN (and are refused by the job's validation).
* anything else — svmlight / libsvm text (:func:`sklearn.datasets.load_svmlight_file`).

Errors are :class:`DataError` (a ``ValueError``) with one readable line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """The data could not be read or does not have the expected shape."""


@dataclass
class Dataset:
    X: np.ndarray
    y: np.ndarray
    name: str
    task: str  # "regression", "binary" or "unknown"

    @property
    def default_loss(self) -> str:
        if self.task == "binary":
            return "logistic"
        if self.task == "regression":
            return "squared"
        return "logistic" if np.unique(self.y).size == 2 else "squared"


SKLEARN_DATASETS = ("diabetes", "breast_cancer", "digits", "iris", "linnerud")


def _sklearn(name: str) -> Dataset:
    from sklearn import datasets as skd

    base, _, arg = name.partition(":")
    if base == "diabetes":
        X, y = skd.load_diabetes(return_X_y=True)
        return Dataset(X, y, "sklearn:diabetes", "regression")
    if base == "linnerud":
        X, Y = skd.load_linnerud(return_X_y=True)
        return Dataset(np.asarray(X, float), np.asarray(Y[:, 0], float), "sklearn:linnerud", "regression")
    if base == "breast_cancer":
        X, y = skd.load_breast_cancer(return_X_y=True)
        return Dataset(X, y, "sklearn:breast_cancer", "binary")
    if base == "digits":
        X, y = skd.load_digits(return_X_y=True)
        if arg:
            k = _int_arg(name, arg, 0, 9)
            return Dataset(X, (y == k).astype(int), f"sklearn:digits:{k}", "binary")
        return Dataset(X, (y >= 5).astype(int), "sklearn:digits", "binary")
    if base == "iris":
        X, y = skd.load_iris(return_X_y=True)
        if arg:
            k = _int_arg(name, arg, 0, 2)
            return Dataset(X, (y == k).astype(int), f"sklearn:iris:{k}", "binary")
        keep = y > 0
        return Dataset(X[keep], y[keep], "sklearn:iris", "binary")
    raise DataError(f"unknown scikit-learn dataset {name!r}: choose one of {SKLEARN_DATASETS}")


def _int_arg(name, arg, lo, hi) -> int:
    try:
        k = int(arg)
    except ValueError:
        k = None
    if k is None or not lo <= k <= hi:
        raise DataError(f"{name!r}: the class after ':' must be an integer in [{lo}, {hi}]")
    return k


def _npz(path: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path}: .npz needs arrays 'X' and 'y' (has {', '.join(f.files) or 'none'})")
            X, y = np.asarray(f["X"]), np.asarray(f["y"])
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return Dataset(X, y, os.path.basename(path), "unknown")


def _float(s: str) -> float:
    s = s.strip()
    if s == "" or s.lower() in ("nan", "na", "null"):
        return float("nan")
    return float(s)


def _csv(path: str, target: str | int | None) -> Dataset:
    delim = "\t" if path.lower().endswith(".tsv") else ","
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=delim) if r and any(x.strip() for x in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise DataError(f"empty data: {path} has no rows")
    header = None
    try:
        [_float(x) for x in rows[0]]
    except ValueError:
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    if not rows:
        raise DataError(f"empty data: {path} has a header but no rows")
    width = len(header) if header else len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{path}: row {i + 1 + (header is not None)} has {len(r)} columns, expected {width}")
    if width < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column")
    col = width - 1
    if target is not None:
        if header and str(target) in header:
            col = header.index(str(target))
        else:
            try:
                col = int(target)
            except ValueError:
                raise DataError(f"{path}: no column named {target!r}"
                                + (f" (columns: {', '.join(header)})" if header else " (the file has no header)"))
            if not -width <= col < width:
                raise DataError(f"{path}: target column {col} out of range (the file has {width} columns)")
            col %= width
    try:
        data = np.array([[_float(x) for x in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value ({exc})") from None
    y = data[:, col]
    X = np.delete(data, col, axis=1)
    return Dataset(X, y, os.path.basename(path), "unknown")


def _svmlight(path: str) -> Dataset:
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as svmlight/libsvm: {exc}") from None
    return Dataset(X.toarray(), np.asarray(y), os.path.basename(path), "unknown")


def load_data(spec: str, target: str | int | None = None) -> Dataset:
    """Load ``spec`` (see the module docstring) as a :class:`Dataset`."""
    spec = str(spec)
    if spec.startswith("sklearn:"):
        return _sklearn(spec[len("sklearn:"):])
    if not os.path.exists(spec):
        raise DataError(f"cannot read {spec}: no such file")
    if os.path.isdir(spec):
        raise DataError(f"cannot read {spec}: it is a directory")
    low = spec.lower()
    if low.endswith(".npz"):
        return _npz(spec)
    if low.endswith((".csv", ".tsv")):
        return _csv(spec, target)
    return _svmlight(spec)
