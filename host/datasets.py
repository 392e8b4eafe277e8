"""Load training data for the CLI and the benchmarks.

``load_data(spec)`` accepts:

* ``sklearn:NAME`` — a dataset bundled with scikit-learn (no download):
  ``diabetes`` (regression), ``breast_cancer`` (binary), ``digits`` (binary: digit >= 5
  vs < 5; ``digits:K`` for K-vs-rest), ``iris`` (binary: versicolor vs virginica;
  ``iris:K`` for class K vs rest), ``linnerud`` (regression on the first target).
* ``PATH.npz`` — arrays ``X`` and ``y``.
* ``PATH.csv`` / ``.tsv`` (also ``.csv.gz`` / ``.tsv.gz``; UTF-8, a byte-order mark
  skipped) — numeric feature columns, an optional header row; the target is the column
  named (or numbered, from 0) ``target``, the last column by default. The target may
  hold text class labels (kept as strings, as in an ``.npz``). Missing values (empty
  fields, ``nan``) are refused with their line number.
* ``.npy``, spreadsheets, Parquet, JSON, pickles, HDF5, ``.mat``, ``.zip`` — refused by
  name, with what to do instead (:data:`REFUSED`).
* anything else — svmlight / libsvm text (:func:`sklearn.datasets.load_svmlight_file`;
  also ``.gz`` / ``.bz2``).

Errors are :class:`DataError` (a ``ValueError``) with one readable line; messages about
a line of a text file give its 1-based line number.
"""

from __future__ import annotations

import csv
import gzip
import os
import zipfile
import zlib
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
        """``logistic`` for a binary task, two-valued or text labels; else ``squared``."""
        if self.task == "binary":
            return "logistic"
        if self.task == "regression":
            return "squared"
        if self.y.dtype.kind in "OUSb":
            return "logistic"
        return "logistic" if np.unique(self.y).size == 2 else "squared"

    def looks_like_classes(self, max_classes: int = 20) -> np.ndarray | None:
        """The distinct values of ``y`` when they look like class labels rather than a
        quantity (a task not known to be a regression; 3 to ``max_classes`` distinct
        whole numbers, each taken by at least two samples); else None."""
        if self.task == "regression" or self.y.dtype.kind not in "iuf" or self.y.size == 0:
            return None
        y = np.asarray(self.y, dtype=np.float64)
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            return None
        values, counts = np.unique(y, return_counts=True)
        if not 3 <= values.size <= max_classes or counts.min() < 2:
            return None
        return values


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
            if not hasattr(f, "files"):
                raise DataError(f"{path} holds one array, not the arrays 'X' and 'y' of an .npz "
                                "(numpy.savez(path, X=X, y=y) writes one)")
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path}: .npz needs arrays 'X' and 'y' (has {', '.join(f.files) or 'none'})")
            X, y = np.asarray(f["X"]), np.asarray(f["y"])
    except DataError:
        raise
    except zipfile.BadZipFile as exc:
        raise DataError(f"cannot read {path}: not a complete .npz (zip) file, truncated or damaged "
                        f"({_short(exc)})") from None
    except Exception as exc:    # zlib.error, EOFError, ValueError, OSError, ...: a damaged or odd file
        raise DataError(f"cannot read {path}: {_short(exc) or type(exc).__name__}") from None
    return Dataset(X, y, os.path.basename(path), "unknown")


def load_npy(path: str, mmap_mode: str | None = None) -> np.ndarray:
    """One array from an ``.npy`` (``zipsgd pack X.npy --labels y.npy``); a missing,
    truncated or damaged file is a :class:`DataError` naming it."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"cannot read {path}: " + ("it is a directory" if os.path.isdir(path) else "no such file"))
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except Exception as exc:    # EOFError, ValueError, OSError, ...
        raise DataError(f"cannot read {path}: not a complete .npy file ({_short(exc) or type(exc).__name__})") \
            from None


def _short(exc: BaseException, limit: int = 160) -> str:
    """An exception's text on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _float(s: str) -> float:
    s = s.strip()
    if s == "" or s.lower() in ("nan", "na", "null"):
        return float("nan")
    return float(s)


def _is_number(s: str) -> bool:
    try:
        _float(s)
    except ValueError:
        return False
    return True


#: Field separators a file might use instead of the expected one (for the hint).
_OTHER_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "bar", " ": "space"}


def _delimiter_hint(lines: list[str], delim: str) -> str:
    """`` (hint: ...)`` when the first lines split cleanly on another separator, else ``""``."""
    lines = [ln.strip() for ln in lines if ln.strip()][:3]
    if not lines:
        return ""
    absent = not any(delim in ln for ln in lines)
    uneven = len({len(ln.split(delim)) for ln in lines}) > 1
    for other, word in _OTHER_DELIMITERS.items():
        if other == delim or not (absent or uneven or other == ";"):
            continue
        widths = {len(ln.split() if other == " " else ln.split(other)) for ln in lines}
        if len(widths) == 1 and widths.pop() >= 2:
            fix = {"\t": "name it .tsv", ",": "name it .csv"}.get(
                other, "write it with commas (a .csv) or tabs (a .tsv)")
            return (f" (hint: its lines look separated by {word}s ({other!r}), not "
                    f"{_OTHER_DELIMITERS[delim]}s: {fix})")
    return ""


def _open_text(path: str):
    """A text stream of ``path`` (gzip-compressed when it ends in .gz), a UTF-8 BOM skipped."""
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _csv(path: str, target: str | int | None) -> Dataset:
    """Read a .csv/.tsv (optionally .gz). Messages name 1-based line numbers of the file."""
    low = path.lower().removesuffix(".gz")
    delim = "\t" if low.endswith(".tsv") else ","
    rows, lines, head = [], [], []       # rows, their line numbers, the first raw lines (for the hint)
    try:
        with _open_text(path) as f:
            def raw():
                for ln in f:
                    if len(head) < 4:
                        head.append(ln)
                    yield ln
            reader = csv.reader(raw(), delimiter=delim)
            for r in reader:
                if r and any(x.strip() for x in r):
                    rows.append(r)
                    lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: {_short(exc)}") from None
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as exc:
        what = ("not UTF-8 text (save it as UTF-8)" if isinstance(exc, UnicodeDecodeError) else _short(exc))
        raise DataError(f"cannot read {path}: {what}") from None
    hint = _delimiter_hint(head, delim)
    if not rows:
        raise DataError(f"empty data: {path} has no rows")
    # a header: the first row has a text field over a number (or is all text, or is alone)
    header = None
    first_text = [not _is_number(x) for x in rows[0]]
    if any(first_text):
        second = rows[1] if len(rows) > 1 else None
        if second is None or all(first_text) or any(
                t and j < len(second) and _is_number(second[j]) for j, t in enumerate(first_text)):
            header, rows, lines = [h.strip() for h in rows[0]], rows[1:], lines[1:]
    if not rows:
        raise DataError(f"empty data: {path} has a header but no rows{hint}")
    width = len(header) if header else len(rows[0])
    for r, ln in zip(rows, lines):
        if len(r) != width:
            raise DataError(f"{path} line {ln}: {len(r)} columns, expected {width}"
                            f"{' (as the header)' if header else ' (as line ' + str(lines[0]) + ')'}{hint}")
    if width < 2:
        raise DataError(f"{path}: needs at least one feature column and a target column, has one column{hint}")
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

    def name(j):
        return f"column {j + 1}" + (f" ({header[j]!r})" if header else "")

    feats = [j for j in range(width) if j != col]
    X = np.empty((len(rows), len(feats)))
    for i, (r, ln) in enumerate(zip(rows, lines)):
        for k, j in enumerate(feats):
            try:
                X[i, k] = v = _float(r[j])
            except ValueError:
                raise DataError(f"{path} line {ln}, {name(j)}: not a number: {_short(r[j].strip(), 40)!r}"
                                f"{hint}") from None
            if not np.isfinite(v):
                raise DataError(f"{path} line {ln}, {name(j)}: "
                                f"{'missing value (NaN)' if v != v else 'infinite value'}: "
                                "fill or drop it first")
    labels = [r[col].strip() for r in rows]
    if all(_is_number(v) for v in labels):
        y = np.array([_float(v) for v in labels])
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{path} line {lines[i]}, {name(col)} (the target): "
                            f"{'missing value (NaN)' if y[i] != y[i] else 'infinite value'}: fill or drop it first")
        y = y.astype(np.int64) if np.all(y == np.round(y)) and np.all(np.abs(y) < 2 ** 53) else y
    else:           # text class labels, as in an .npz: kept as strings
        empty = [ln for v, ln in zip(labels, lines) if v == ""]
        if empty:
            raise DataError(f"{path} line {empty[0]}, {name(col)} (the target): empty class label")
        y = np.array(labels)
    return Dataset(X, y, os.path.basename(path), "unknown")


def _svmlight(path: str) -> Dataset:
    from sklearn.datasets import load_svmlight_file

    try:
        X, y = load_svmlight_file(path)
    except Exception as exc:    # ValueError, UnicodeDecodeError, OSError, EOFError, ...
        raise DataError(f"cannot read {path} as svmlight/libsvm (the format of files not named .csv, .tsv, "
                        f".npz or .zsgd): {_short(exc) or type(exc).__name__}") from None
    return Dataset(X.toarray(), np.asarray(y), os.path.basename(path), "unknown")


#: Files refused by name (suffix -> what to do instead).
REFUSED = {
    ".npy": "an .npy holds one array, X or y, not both: save them together with numpy.savez(PATH.npz, X=X, y=y), "
            "or pack them with `zipsgd pack X.npy --labels y.npy -o data.zsgd` and train from data.zsgd",
    ".zsgd": "a packed file: train from it (`zipsgd train FILE.zsgd`, or open it with zipsgd.packfile.open_packed)",
    ".xlsx": "a spreadsheet: save it as CSV", ".xls": "a spreadsheet: save it as CSV",
    ".ods": "a spreadsheet: save it as CSV",
    ".parquet": "Parquet is not read: write it as CSV or .npz (e.g. pandas.read_parquet(...).to_csv(...))",
    ".feather": "Feather is not read: write it as CSV or .npz",
    ".json": "JSON is not read: write the data as CSV or .npz",
    ".pkl": "pickles are not read (unsafe): write the data as .npz",
    ".pickle": "pickles are not read (unsafe): write the data as .npz",
    ".h5": "HDF5 is not read: write the data as .npz", ".hdf5": "HDF5 is not read: write the data as .npz",
    ".mat": "MATLAB files are not read: write the data as .npz (scipy.io.loadmat, then numpy.savez)",
    ".zip": "unzip it first", ".npz.gz": "decompress it first (gunzip)",
}


def _refused(path: str) -> str | None:
    low = path.lower()
    for suffix in sorted(REFUSED, key=len, reverse=True):
        if low.endswith(suffix):
            return REFUSED[suffix]
    return None


def load_data(spec: str, target: str | int | None = None) -> Dataset:
    """Load ``spec`` (see the module docstring) as a :class:`Dataset`."""
    spec = str(spec)
    if spec.startswith("sklearn:"):
        return _sklearn(spec[len("sklearn:"):])
    if not os.path.exists(spec):
        raise DataError(f"cannot read {spec}: no such file")
    if os.path.isdir(spec):
        raise DataError(f"cannot read {spec}: it is a directory")
    refused = _refused(spec)
    if refused:
        raise DataError(f"cannot read {spec}: {refused}")
    low = spec.lower()
    if low.endswith(".npz"):
        return _npz(spec)
    if low.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        return _csv(spec, target)
    return _svmlight(spec)
