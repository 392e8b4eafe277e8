"""The ``zipsgd`` command line.

Subcommands
-----------
``zipsgd train DATA [options]``
    Train a linear model on DATA (see :func:`zipsgd.datasets.load_data`) on a backend,
    compare it with float64 SGD on the same schedule, print a summary (the training
    accuracy or R^2 of both, the classes of a classifier), optionally write ``--json``
    results and a ``--plot`` image (.png, .pdf or .svg).
``zipsgd bench convergence [--quick] [--out DIR]``
    The convergence benchmark (:mod:`zipsgd.bench_convergence`); ``bench all`` runs
    every registered benchmark.
``zipsgd info`` / ``zipsgd demo``
    What this machine offers (:mod:`zipsgd.info`) / the end-to-end demo (:mod:`zipsgd.demo`).
``zipsgd notebook [DIR] [--force]``
    Copy the shipped Jupyter notebook(s) into DIR (default: the current directory), e.g.
    into the Jupyter folder of a PYNQ board; existing files are kept unless ``--force``.

Every user error (bad data, unsupported mode, capacity, unreadable or damaged file,
bad option or output path) prints one line ``zipsgd: error: ...`` on stderr and exits
with status 2. ``--json``/``--plot`` paths are checked before any work; the files are
written to temporary files beside them and renamed into place at the very end, all or
none: on any error nothing is left behind (nor any directory made for them). They get
the permissions of a normal new file (``0666`` less the umask; an existing file keeps
its own). Warnings (``zipsgd: warning: ...``) go to stderr, also under ``--quiet``.

Epochs are numbered from 1 everywhere (progress, table, plot); ``loss_curve[i]`` of the
JSON is epoch ``i + 1``. A bare ``zipsgd`` prints the usage; every ``--help`` shows the
defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

PROG = "zipsgd"


class UsageError(Exception):
    """A command-line error (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(f"{message} (see '{self.prog} --help')")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except the uninformative ones (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _warn(message: str) -> None:
    """A warning line on stderr (printed under --quiet too)."""
    print(f"{PROG}: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------
class _Progress:
    """Per-epoch progress: tqdm when installed, else a plain line per epoch (stderr)."""

    def __init__(self, total: int, quiet: bool, desc: str = "epochs"):
        self.total, self.quiet, self.done = total, quiet, 0
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, unit="epoch", file=sys.stderr, leave=False)
            except ImportError:
                self.bar = None

    def __call__(self, epoch: int) -> None:
        # called with the number of epochs done (as epoch `epoch` + 1, counted from 1, starts; `total` at
        # the end): shown as "epoch k/N done", the same numbering as the table and the plot
        done = min(int(epoch), self.total)
        if done <= self.done:
            return
        if self.bar is not None:
            self.bar.update(done - self.done)
        elif not self.quiet:
            print(f"epoch {done}/{self.total} done", file=sys.stderr, flush=True)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# Outputs: checked first, written all or none
# --------------------------------------------------------------------------------------
#: Image formats ``--plot`` writes, by the path's suffix.
PLOT_FORMATS = ("png", "pdf", "svg")


def check_output_path(path, option: str = "output") -> Path:
    """Refuse (``UsageError`` naming ``option`` and ``path``) an output path that cannot
    be written: a directory, a read-only file, under a file, or in a directory this user
    cannot write. Missing parent directories are fine (they are made when writing)."""
    p = Path(path)
    if not str(path).strip():
        raise UsageError(f"{option}: empty path")
    if p.is_dir():
        raise UsageError(f"{option} {path}: is a directory, not a file")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and is not writable")
    anc = p.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UsageError(f"{option} {path}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {anc}")
    return p


def plot_format(path) -> str:
    """The image format of ``--plot path`` from its suffix, or ``UsageError``."""
    suffix = Path(path).suffix.lower()
    if suffix.lstrip(".") not in PLOT_FORMATS:
        what = f"'{suffix}' files" if suffix else "a name without a suffix"
        raise UsageError(f"--plot {path}: cannot write an image as {what}: name it "
                         + ", ".join(f".{f}" for f in PLOT_FORMATS[:-1]) + f" or .{PLOT_FORMATS[-1]}")
    return suffix.lstrip(".")


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError(f"--plot needs matplotlib (pip install 'zipsgd[plot]'): {exc}") from None
    return plt


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """An existing file's permissions, else a new file's (0666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def write_outputs(files) -> None:
    """Write ``files`` (``(option, path, write)``; ``write(tmp_path)`` writes the content)
    all or none: each to a temporary file beside its path, then every one renamed into
    place. On any error the temporary files, the files this call created and the
    directories it made are removed, and the error names the user's path."""
    made, temps, placed = [], [], []
    option = path = None
    try:
        for option, path, write in files:
            path = Path(path)
            missing = []
            d = path.absolute().parent
            while not d.exists():
                missing.append(d)
                d = d.parent
            for d in reversed(missing):
                d.mkdir()
                made.append(d)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
            os.close(fd)
            temps.append(Path(tmp))
            write(Path(tmp))
            os.chmod(tmp, _new_file_mode(path))
        for (option, path, _), tmp in zip(files, temps):
            path = Path(path)
            existed = path.exists()
            os.replace(tmp, path)
            placed.append((path, existed))
    except BaseException as exc:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for p, existed in placed:
            if not existed:
                with contextlib.suppress(OSError):
                    p.unlink()
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            raise OSError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
        raise


def _finite(obj):
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_writer(obj):
    """``write(path)`` for :func:`write_outputs`: ``obj`` as strict JSON (no NaN/Infinity)."""
    def write(path: Path):
        with open(path, "w") as f:
            json.dump(_finite(obj), f, indent=2, allow_nan=False)
            f.write("\n")
    return write


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    write_outputs([("--json", path, json_writer(obj))])


def plot_writer(curves: dict, title: str, fmt: str, ylabel: str = "mean training loss"):
    """``write(path)`` for :func:`write_outputs`: ``{label: per-epoch values}`` as a
    ``fmt`` image (epochs numbered from 1)."""
    plt = _pyplot()

    def write(path: Path):
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            styles = ["o-", "k--", "s-", "^-", "v-", "d-"]
            positive = True
            for (label, ys), st in zip(curves.items(), styles * 4):
                ys = [v if v is not None and math.isfinite(v) else float("nan") for v in ys]
                positive &= all(v > 0 for v in ys if v == v)
                ax.plot(range(1, len(ys) + 1), ys, st, label=label, markersize=3)
            if positive:
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=9)
            ax.legend()
            fig.tight_layout()
            fig.savefig(path, dpi=110, format=fmt)
        finally:
            plt.close(fig)
    return write


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------
def _float_or_auto(text: str):
    return text if text == "auto" else float(text)


def _int_or_auto(text: str):
    return text if text == "auto" else int(text)


def _quantization_args(p):
    p.add_argument("--bits", type=int, default=8, help="bits per feature: 1, 2, 4, 8 or 32 (32: full precision)")
    p.add_argument("--sampling", default="double", help="double, single or nearest")
    p.add_argument("--levels", default="uniform", help="uniform, optimal, log or weibull")


def _data_side_args(p):
    p.add_argument("--random-state", "--seed", dest="seed", type=int, default=0,
                   help="seed of the sample orders, quantization and codebook")
    p.add_argument("--word-bits", type=int, default=64, help="stream word width W of the engine: 64 or 128")
    p.add_argument("--scale", default="feature",
                   help="scaling into [-1, 1]: feature (each column's min..max), global (one map for all) or "
                        "quantile (each column's 0.1..99.9 percentiles, beyond them clipped: for outliers)")
    p.add_argument("--no-intercept", action="store_true", help="fit without an intercept")


def _train_parser(sub):
    p = sub.add_parser("train", help="train a linear model on DATA and compare with float64 SGD",
                       formatter_class=_HelpFormatter, description="Train on DATA: sklearn:NAME (diabetes, breast_cancer, digits, iris), "
                                   "a .csv/.tsv, also gzipped (target column --target, default last; numbers, "
                                   "or text class labels in the target), a .npz with X and y, "
                                   "an svmlight/libsvm file, or a packed .zsgd file (zipsgd pack: its "
                                   "quantization is fixed, --bits/--sampling/--levels/--copies/--seed/--scale "
                                   "are not used, and there is no float64 baseline).")
    p.add_argument("data", metavar="DATA", help="the training data (see above)")
    p.add_argument("--target", default=None,
                   help="CSV target column, a name or a number from 0 (default: the last column)")
    p.add_argument("--loss", default=None,
                   help="squared_error (or squared), log_loss (or logistic) or hinge (default: by dataset; "
                        "two-valued or text targets: log_loss, else squared_error)")
    _quantization_args(p)
    p.add_argument("--max-iter", "--epochs", dest="epochs", type=int, default=10, help="passes over the data (epochs)")
    p.add_argument("--batch-size", type=int, default=1, help="samples per model update")
    p.add_argument("--step", type=_float_or_auto, default="auto",
                   help="learning rate, or auto: chosen from the quantized data, the loss and the batch size")
    p.add_argument("--decay", type=_int_or_auto, default="auto",
                   help="halve the step every DECAY epochs (0: never); auto: every 2 for squared loss, never else")
    p.add_argument("--alpha", type=float, default=0.0, help="L2 strength")
    p.add_argument("--copies", type=int, default=None,
                   help="quantized copies (default: one per epoch while they fit 16 MiB, at least min(epochs, 4))")
    p.add_argument("--tol", type=float, default=None,
                   help="early stopping: stop when the engine's epoch loss has not fallen below the best by TOL "
                        "for --n-iter-no-change epochs (default: off, every epoch runs)")
    p.add_argument("--n-iter-no-change", type=int, default=5, help="epochs without improvement before stopping")
    p.add_argument("--solver", default="sgd", help="sgd (the engine's), svrg or halp (backend cpu)")
    p.add_argument("--model-format", default="fixed32",
                   help="number format of the model: fixed32 (the engine's), fixed16, fixed8, float:e4m3, "
                        "float:e5m10, log8, ... (others than fixed32: backend cpu)")
    p.add_argument("--grad-format", default=None, help="number format of the gradient (default: none)")
    p.add_argument("--rounding", default=None, choices=("stochastic", "nearest"),
                   help="the formats' rounding (default: nearest for fixed32, stochastic otherwise)")
    p.add_argument("--inner-epochs", type=int, default=2, help="svrg/halp: passes per outer epoch")
    p.add_argument("--mu", type=_float_or_auto, default="auto", help="halp: the strong-convexity constant, or auto")
    p.add_argument("--class-weight", default=None, metavar="balanced|CLASS=W,...",
                   help="classifiers: a step multiplier per class, 'balanced' or e.g. 0=1,1=3 (default: none)")
    p.add_argument("--backend", default=None,
                   help="cpu (the bit-exact reference engine), sim (the engine's RTL in Verilator), pynq (a PYNQ "
                        "board) or auto (what `zipsgd info` reports: pynq on a board with a bitstream, else sim "
                        "when installed, else cpu) (default: $ZIPSGD_BACKEND if set, else cpu, as the "
                        "estimators)")
    _data_side_args(p)
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="PATH",
                   help="write the loss curves as an image: PATH ends in .png, .pdf or .svg")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary (warnings still show)")
    p.set_defaults(func=cmd_train)
    return p


#: What ``zipsgd train`` runs on without ``--backend`` (and without ``$ZIPSGD_BACKEND``):
#: the bit-exact reference engine, as the estimators' ``backend="cpu"``.
TRAIN_BACKEND = "cpu"


def train_backend(choice: str | None = None) -> tuple[str, str]:
    """(backend, why) ``zipsgd train --backend choice`` runs on: ``choice``; ``auto``:
    :func:`zipsgd.backends.select_backend` (what ``zipsgd info`` reports); none:
    ``$ZIPSGD_BACKEND`` when set, else :data:`TRAIN_BACKEND`."""
    from .backends import select_backend

    if choice == "auto":
        return select_backend()
    if choice:
        return choice, "--backend"
    env = os.environ.get("ZIPSGD_BACKEND", "").strip()
    if env:
        return env, "set by ZIPSGD_BACKEND"
    return TRAIN_BACKEND, "the default of zipsgd train (--backend auto picks as zipsgd info reports)"


def _scores(job, X, y, models: dict) -> dict | None:
    """Training accuracy (classifiers) or R^2 (regression) of scaled models ``{name: w}``,
    with the predictions mapped back to the user's units (the target's units; the class
    labels): the model as trained, on the features as the engine saw them (scaled,
    clipped to the fitted range)."""
    import numpy as np

    Xs = job.X_scaled
    if Xs is None or X is None:
        return None
    out = {"metric": "r2" if job.loss == "squared" else "accuracy", "on": "training data"}
    for name, w in models.items():
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != Xs.shape[1]:
            out[name] = None
            continue
        with np.errstate(all="ignore"):
            z = Xs @ w
            if job.loss == "squared":
                yt = np.asarray(y, dtype=np.float64)
                pred = job.y_center + job.y_scale * z
                ss = float(np.sum((yt - yt.mean()) ** 2))
                out[name] = 1.0 - float(np.sum((yt - pred) ** 2)) / ss if ss > 0 else None
            else:
                classes = job.classes
                pred = np.where(z > 0, classes[1], classes[0])
                out[name] = float(np.mean(pred == np.asarray(y)))
    return out


#: Largest n x d for which `zipsgd train` solves for the true optimum itself (a linear
#: program for the hinge loss grows with n).
OPTIMUM_HINGE_MAX_SAMPLES = 5000


def _optimum(job):
    """(L*, why not) for the job's objective (mean loss plus its L2 term) on the scaled
    data: closed form for least squares, a converged solver for logistic and hinge
    (:func:`zipsgd.solvers.optimum`); None with the reason where it is not computed."""
    from . import solvers

    if job.X_scaled is None:
        return None, "a packed file holds no full-precision data"
    if job.loss == "hinge" and job.n_samples > OPTIMUM_HINGE_MAX_SAMPLES:
        return None, f"the hinge optimum is a linear program in n variables: not solved above n = " \
                     f"{OPTIMUM_HINGE_MAX_SAMPLES}"
    try:
        return float(solvers.optimum(job)[1]), None
    except Exception as exc:                     # a solver that fails costs the key, not the run
        return None, f"the reference solver failed: {exc}"


def _low_precision(args) -> bool:
    """True when --solver/--model-format/--grad-format/--rounding ask for other arithmetic than
    the engine's (then zipsgd.solvers trains, on the cpu)."""
    from . import solvers
    return solvers.low_precision(args.solver, args.model_format, args.grad_format, args.rounding,
                                 spell=lambda name, value: f"--{name.replace('_', '-')} {value!r}")


def _with_class_weight(job, spec, y):
    """``--class-weight``: the job with a step multiplier per class."""
    import numpy as np

    if spec is None:
        return job
    if job.classes is None:
        raise ValueError("--class-weight applies to classifiers (log_loss, hinge), not to a regression")
    if spec == "balanced":
        if y is None:
            raise ValueError("--class-weight balanced needs the labels: train from the data, not a packed file")
        from sklearn.utils.class_weight import compute_class_weight
        w = compute_class_weight("balanced", classes=job.classes, y=np.asarray(y))
    else:
        given = {}
        for part in str(spec).split(","):
            key, sep, val = part.partition("=")
            try:
                given[key.strip()] = float(val)
            except ValueError:
                raise ValueError(f"--class-weight {spec!r}: expected 'balanced' or CLASS=WEIGHT pairs, e.g. "
                                 "0=1,1=3") from None
        names = [str(_json_value(v)) for v in job.classes]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ValueError(f"--class-weight names {unknown}, which are not classes ({', '.join(names)})")
        w = [given.get(n, 1.0) for n in names]
    return job.with_class_weights(w[1], w[0])


def _json_value(v):
    """numpy scalars as plain Python values (class labels for JSON)."""
    return v.item() if hasattr(v, "item") else v


def train(args) -> dict:
    """Run ``zipsgd train`` and return the results dict (what --json writes)."""
    import numpy as np

    from . import baseline
    from .datasets import load_data
    from .backends import BACKENDS, check_backend, run_job
    from .job import LOSS_ALIASES, diagnose, job_from_packed, prepare_job
    from .packfile import SUFFIX, open_packed

    t0 = time.perf_counter()
    backend, _ = train_backend(getattr(args, "backend", None))
    check_backend(backend)
    low = _low_precision(args)
    if low and backend != "cpu":
        raise ValueError(f"--solver {args.solver} / --model-format {args.model_format} / --grad-format "
                         f"{args.grad_format} / --rounding {args.rounding} run on backend cpu only (the engine runs "
                         "sgd with fixed32, nearest rounding)")
    packed = str(args.data).endswith(SUFFIX)
    if packed:
        data = open_packed(args.data)
        if args.loss and LOSS_ALIASES.get(args.loss, args.loss) != data.header["loss"]:
            raise ValueError(f"{args.data} was packed for loss={data.header['loss']!r}, not {args.loss!r}: pack it "
                             f"again with --loss {args.loss}")
        job = job_from_packed(data, epochs=args.epochs, batch_size=args.batch_size, step=args.step,
                              decay=args.decay, alpha=args.alpha)
        name, X, y = str(args.data), None, None
    else:
        ds = load_data(args.data, target=args.target)
        loss = LOSS_ALIASES.get(args.loss, args.loss) or ds.default_loss
        looks = ds.looks_like_classes() if loss == "squared" and not args.loss else None
        if looks is not None:
            shown = ", ".join(f"{v:g}" for v in looks[:6]) + (", ..." if looks.size > 6 else "")
            _warn(f"the target of {ds.name} takes {looks.size} whole values ({shown}), which look like class "
                  "labels: fitting a regression to them (squared loss); if they are classes, train a "
                  "classifier with --loss logistic or --loss hinge")
        X, y = ds.X, ds.y
        job = prepare_job(ds.X, ds.y, loss=loss, bits=args.bits, sampling=args.sampling, levels=args.levels,
                          epochs=args.epochs, batch_size=args.batch_size, step=args.step, decay=args.decay,
                          alpha=args.alpha, copies=args.copies, seed=args.seed, word_bits=args.word_bits,
                          scale=args.scale, fit_intercept=not args.no_intercept)
        name = ds.name
    if job.n_classes > 2:
        raise ValueError(f"{name}: the target has {job.n_classes} classes; zipsgd train fits two (the CLI reports a "
                         "binary model): use zipsgd.SGDClassifier from Python for one-vs-rest, or pick two classes")
    job = _with_class_weight(job, args.class_weight, y)
    stop = None
    if args.tol is not None:
        from .job import EarlyStopping
        if args.n_iter_no_change < 1:
            raise ValueError(f"--n-iter-no-change must be at least 1, not {args.n_iter_no_change}")
        stop = EarlyStopping(args.tol, args.n_iter_no_change, job.n_samples)
    t_prep = time.perf_counter()
    note = getattr(BACKENDS[backend], "progress_note", None)
    if note and not args.quiet:
        print(f"{PROG}: backend {backend}: {note}", file=sys.stderr, flush=True)
    bar = _Progress(job.epochs, args.quiet or low)
    try:
        if low:
            from . import solvers
            if job.config.step_mult_neg:
                raise ValueError("--class-weight is not supported with --solver/--model-format/--grad-format")
            fitted = solvers.fit(job, solver=args.solver, model_format=args.model_format,
                                 grad_format=args.grad_format, rounding=args.rounding,
                                 inner_epochs=args.inner_epochs, mu=args.mu, record=False, stop=stop)
            res, w = fitted.result, fitted.model
        else:
            res = run_job(job, backend, progress=bar, stop=stop)
            w = job.model_float(res.model)
    finally:
        bar.close()
    t_run = time.perf_counter()
    curve = [float(v) for v in res.loss_curve(job.n_samples)]
    if packed:        # a packed file holds no full-precision data: no exact objective, no baseline
        final, base_final, base_curve, base_w = None, None, [], None
    else:
        with np.errstate(all="ignore"):     # a diverging run is reported below, in one line each
            final = baseline.objective(job.loss, job.X_scaled, job.y_scaled, w)
            base = baseline.sgd(job)
        base_final, base_curve, base_w = base.final_loss, [float(v) for v in base.loss_curve], base.model
    if packed:
        opt, opt_note, final_reg = None, "a packed file holds no full-precision data", None
    else:
        from . import solvers
        opt, opt_note = _optimum(job)
        with np.errstate(all="ignore"):
            final_reg = solvers.objective(job, w)
    coef, intercept = job.unscale_float(w)
    problems = diagnose(job, res)
    for problem in problems:
        _warn(problem)
    base_ok = base_final is not None and math.isfinite(base_final) and base_final > 0
    if base_final is not None and not math.isfinite(base_final):
        _warn("float64 SGD on the same schedule diverged too: no ratio to it is reported")
    scores = _scores(job, X, y, {"engine": w, "baseline_float64": base_w} if base_w is not None
                     else {"engine": w})
    seconds = t_run - t0
    out = {
        "data": name, "loss": job.loss, "n_samples": job.n_samples, "n_features": job.n_features,
        "packed_file": packed,
        "classes": None if job.classes is None else [_json_value(v) for v in job.classes],
        "score": scores,
        "final_loss": final,
        # per epoch, epoch i + 1 at index i: the mean loss the engine measured during the epoch, on the
        # quantized data it streams (scaled units); the baseline's on the full-precision data
        "loss_curve": curve,
        "loss_curve_measured_on": "quantized data",
        "baseline_float64_final_loss": base_final,
        "baseline_float64_loss_curve": base_curve,
        "ratio_to_float64": final / base_final if base_ok and final is not None else None,
        # the true optimum L* of the same objective (mean loss + the L2 term), and the engine's
        # model's objective divided by it (None, with the reason, where it is not computed)
        "optimum_loss": opt,
        "ratio_to_optimum": (final_reg / opt if opt is not None and opt > 0 and final_reg is not None
                             and math.isfinite(final_reg) else None),
        "optimum_note": opt_note,
        "diverged": bool(problems), "warnings": problems,
        "epochs_run": len(curve), "stopped_early": bool(res.stopped), "saturated_batches": int(res.saturated),
        "solver": args.solver, "model_format": args.model_format, "grad_format": args.grad_format,
        "rounding": args.rounding,
        "bits": job.bits, "sampling": job.sampling, "levels": job.levels, "backend": backend,
        "scale": job.scale,
        "bits_per_feature": job.bits_per_feature,
        "seconds": seconds, "prepare_seconds": t_prep - t0, "run_seconds": t_run - t_prep,
        "job": job.summary(),
        "coef": [float(v) for v in coef], "intercept": intercept,
        "hw_stats": {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                     for k, v in (res.stats or {}).items()},
    }
    return out


def _fmt(v, spec: str = ".6g") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _summary(out: dict) -> str:
    j = out["job"]
    rows = [
        ("data", f"{out['data']}  ({out['n_samples']} x {out['n_features']}, {out['loss']} loss)"),
        ("mode", f"{out['bits']}-bit {out['sampling']}, {out['levels']} levels ({j['encoding']}), "
                 f"{out['bits_per_feature']:.2f} stream bits/feature"),
        ("schedule", f"{j['epochs']} epochs, batch {j['batch_size']}, step {j['step']:g} (engine "
                     f"{j['step_eff']:.6g}/sample), decay {j['decay']}, alpha {j['alpha']:g}, copies {j['copies']}, "
                     f"seed {j['seed']}"),
        ("backend", f"{out['backend']}  ({out['seconds']:.2f} s)"),
    ]
    if out.get("stopped_early"):
        rows.append(("stopped", f"early, after {out['epochs_run']} of {j['epochs']} epochs (--tol)"))
    if out.get("classes") is not None:
        neg, pos = out["classes"][:2]
        rows.append(("classes", f"{neg} (negative), {pos} (positive)"))
    sc = out.get("score")
    if sc is not None:
        label = "accuracy" if sc["metric"] == "accuracy" else "R^2"
        where = ("on the training data, your labels" if sc["metric"] == "accuracy" else
                 "on the training data, predictions in the target's units")
        rows.append((label, f"{_fmt(sc.get('engine'), '.4f')}  {where} "
                            f"(float64 SGD {_fmt(sc.get('baseline_float64'), '.4f')})"))
    elif out.get("packed_file"):
        rows.append(("accuracy" if out["loss"] != "squared" else "R^2",
                     "n/a (a packed file holds only the quantized data)"))
    rows += [
        ("final loss", "n/a (packed data: the engine's per-epoch loss below is on the quantized data)"
         if out["final_loss"] is None else
         f"{out['final_loss']:.6g}  (exact objective of the engine's model, scaled units)"),
        ("float64 SGD", _fmt(out["baseline_float64_final_loss"])),
        ("ratio", _fmt(out["ratio_to_float64"], ".4f")),
        ("optimum L*", (f"{_fmt(out['optimum_loss'])}  (ratio to it {_fmt(out['ratio_to_optimum'], '.4f')}: the "
                        "objective with its L2 term over the true optimum)") if out.get("optimum_loss") is not None
         else f"n/a ({out.get('optimum_note')})"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append(f"{'epoch':>5}  {'engine loss*':>12}  {'float64 loss':>12}")
    curve, bcurve = out["loss_curve"], out["baseline_float64_loss_curve"]
    idx = list(range(len(curve)))
    if len(idx) > 12:
        idx = idx[:5] + [None] + idx[-5:]
    for e in idx:
        b = f"{bcurve[e]:>12.6g}" if e is not None and e < len(bcurve) else f"{'-':>12}"
        lines.append("  ..." if e is None else f"{e + 1:>5}  {curve[e]:>12.6g}  {b}")
    lines.append("* the mean loss of each epoch as the engine measured it, on the quantized data it streams; "
                 "float64 SGD's on the full-precision data (both in scaled units)")
    return "\n".join(lines)


def _pack_parser(sub):
    p = sub.add_parser("pack", help="quantize and pack DATA once into a .zsgd file to train from",
                       formatter_class=_HelpFormatter, description="Quantize and pack DATA into FILE.zsgd in chunks of rows (bounded memory): "
                                   "done once on a workstation; copy the file to the board and run "
                                   "`zipsgd train FILE.zsgd` there. DATA as for `zipsgd train`, or X.npy "
                                   "(memory-mapped, never loaded whole) with --labels y.npy.")
    p.add_argument("data", metavar="DATA", help="the data (as for zipsgd train), or an X.npy")
    p.add_argument("-o", "--output", required=True, metavar="FILE.zsgd", help="the packed file to write")
    p.add_argument("--labels", default=None, metavar="Y.npy", help="targets, when DATA is an X.npy")
    p.add_argument("--target", default=None,
                   help="CSV target column, a name or a number from 0 (default: the last column)")
    p.add_argument("--loss", default=None, help="squared, logistic or hinge (default: by dataset)")
    _quantization_args(p)
    p.add_argument("--copies", type=int, default=4, help="quantized copies")
    _data_side_args(p)
    p.add_argument("--chunk-rows", type=int, default=None, help="rows packed at a time (default: 65536)")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=cmd_pack)
    return p


def cmd_pack(args) -> int:
    from . import packfile
    from .datasets import load_data, load_npy

    t0 = time.perf_counter()
    if str(args.data).endswith(".npy"):
        if not args.labels:
            raise ValueError("an X.npy needs its targets: --labels y.npy")
        X, y = load_npy(args.data, mmap_mode="r"), load_npy(args.labels)
        name, loss = args.data, args.loss or "squared"      # (packfile.write takes scikit-learn's names too)
    else:
        ds = load_data(args.data, target=args.target)
        X, y, name, loss = ds.X, ds.y, ds.name, args.loss or ds.default_loss
    out = packfile.write(args.output, X, y, loss=loss, bits=args.bits, sampling=args.sampling, levels=args.levels,
                         copies=args.copies, seed=args.seed, word_bits=args.word_bits, scale=args.scale,
                         fit_intercept=not args.no_intercept, chunk_rows=args.chunk_rows)
    if not args.quiet:
        h = out.header
        print(f"packed {name}: {h['n_samples']} x {h['n_features']} ({loss} loss), {h['bits']}-bit {h['sampling']}, "
              f"{h['copies']} copies -> {args.output} ({out.nbytes / 2**20:.1f} MiB of packed words, "
              f"{time.perf_counter() - t0:.2f} s)")
    return 0


def _check_train_outputs(args) -> str | None:
    """Check --json and --plot before any work; returns the plot's format."""
    fmt = None
    if args.json_path:
        check_output_path(args.json_path, "--json")
    if args.plot_path:
        check_output_path(args.plot_path, "--plot")
        fmt = plot_format(args.plot_path)
        _pyplot()
    if args.json_path and args.plot_path and \
            Path(args.json_path).absolute().resolve() == Path(args.plot_path).absolute().resolve():
        raise UsageError(f"--json and --plot name the same file {args.plot_path}")
    return fmt


def cmd_train(args) -> int:
    fmt = _check_train_outputs(args)
    out = train(args)
    files = []
    if args.plot_path:
        files.append(("--plot", args.plot_path, plot_writer({
            f"{out['bits']}-bit {out['sampling']} ({out['backend']}, on the quantized data)": out["loss_curve"],
            "float64 SGD": out["baseline_float64_loss_curve"]},
            title=f"{out['data']}: {out['loss']} loss, {out['levels']} levels", fmt=fmt)))
    if args.json_path:
        files.append(("--json", args.json_path, json_writer(out)))
    write_outputs(files)
    if not args.quiet:
        print(_summary(out))
    return 0


# --------------------------------------------------------------------------------------
# bench, info, demo
# --------------------------------------------------------------------------------------
def _bench_convergence(args) -> int:
    from .bench_convergence import main as bench_main
    return bench_main(quick=args.quick, out=args.out, quiet=args.quiet, seeds=args.seeds)


def _bench_engine(args) -> int:
    from .bench_hw import main as bench_main
    return bench_main(quick=args.quick, out=args.out, quiet=args.quiet)


def _bench_streaming(args) -> int:
    from .bench_stream import main as bench_main
    return bench_main(quick=args.quick, out=args.out, quiet=args.quiet)


def _bench_accuracy(args) -> int:
    from .bench_accuracy import main as bench_main
    return bench_main(quick=args.quick, out=args.out, quiet=args.quiet)


def _bench_packing(args) -> int:
    from .bench_packing import main as bench_main
    bench_main(["--n", "20000"] if args.quick else [])
    return 0


def _bench_codebook(args) -> int:
    from .bench_codebook import main as bench_main
    bench_main(["--n", "100000"] if args.quick else [])
    return 0


def _bench_cpu(args) -> int:
    from .bench_cpu import main as bench_main
    return bench_main(quick=args.quick, out=args.out, quiet=args.quiet)


def _bench_optimum(args) -> int:
    from .bench_optimum import main as bench_main
    return bench_main(["--out", args.out] + (["--quick"] if args.quick else []) + (["--quiet"] if args.quiet else []))


#: Benchmark name -> callable(args) -> exit status. ``bench all`` runs them in order.
BENCHES = {"packing": _bench_packing, "codebook": _bench_codebook, "engine": _bench_engine,
           "streaming": _bench_streaming, "accuracy": _bench_accuracy, "convergence": _bench_convergence,
           "optimum": _bench_optimum, "cpu": _bench_cpu}


def _bench_parser(sub):
    p = sub.add_parser("bench", help="benchmarks", formatter_class=_HelpFormatter)
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bsub.required = True
    for name in list(BENCHES) + ["all"]:
        b = bsub.add_parser(name, help=("every benchmark" if name == "all" else f"the {name} benchmark"),
                            formatter_class=_HelpFormatter)
        b.add_argument("--quick", action="store_true", help="a smaller, faster run")
        b.add_argument("--out", default="results", help="output directory")
        b.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: the benchmark's)")
        b.add_argument("--quiet", action="store_true", help="less output")
        b.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args) -> int:
    names = list(BENCHES) if args.bench == "all" else [args.bench]
    status = 0
    for name in names:
        status = max(status, int(BENCHES[name](args) or 0))
    return status


def _cmd_info(args) -> int:
    from . import info
    data = info.collect()
    name, why = train_backend(None)
    data["train_backend"] = {"name": name, "detail": why}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    lines = info.format_info(data).splitlines()
    auto = data.get("default_backend", {}).get("name")
    extra = (f"train:       {name} — zipsgd train and the estimators run on {name} unless told "
             f"(--backend / backend=); --backend auto runs on {auto}, as the line above")
    at = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("backend:")), len(lines))
    lines.insert(at, extra)
    print("\n".join(lines))
    return 0


def _cmd_demo(args) -> int:
    from . import demo
    demo.run(backend=args.backend, out=args.out, epochs=args.epochs, quiet=args.quiet)
    return 0


def shipped_notebooks() -> list[Path]:
    """The notebooks installed with zipsgd (``zipsgd/notebooks/*.ipynb``)."""
    return sorted((Path(__file__).resolve().parent / "notebooks").glob("*.ipynb"))


def _cmd_notebook(args) -> int:
    import shutil

    notebooks = shipped_notebooks()
    if not notebooks:
        raise OSError("no notebooks installed with zipsgd (zipsgd/notebooks/ is empty)")
    dest = Path(args.dir)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is not a directory")
    targets = [(nb, dest / nb.name) for nb in notebooks]
    if not args.force:
        exists = [str(t) for _, t in targets if t.exists()]
        if exists:
            raise UsageError(f"{', '.join(exists)} already exists (use --force to overwrite)")
    dest.mkdir(parents=True, exist_ok=True)
    for src, target in targets:
        shutil.copyfile(src, target)
        if not args.quiet:
            print(f"copied {src.name} to {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Low-precision, double-sampled SGD for linear models on FPGAs.",
                     epilog=f"'{PROG} COMMAND --help' shows a command's options and their defaults.",
                     formatter_class=_HelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _train_parser(sub)
    _pack_parser(sub)
    _bench_parser(sub)
    p = sub.add_parser("info", help="board, bitstreams, simulators, tool versions and the backends chosen",
                       formatter_class=_HelpFormatter)
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="train diabetes on the engine and show what it did",
                       formatter_class=_HelpFormatter)
    p.add_argument("--backend", default=None, help="cpu, sim or pynq (default: sim when installed, else cpu)")
    p.add_argument("--out", default="results/demo.png", help="the plot to write")
    p.add_argument("--epochs", type=int, default=12, help="passes over the data")
    p.add_argument("--quiet", action="store_true", help="no output but errors")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("notebook", help="copy the zipsgd Jupyter notebook into DIR (default: here)",
                       formatter_class=_HelpFormatter,
                       description="Copy the notebooks shipped with zipsgd into DIR (default: the current "
                                   "directory), e.g. the Jupyter folder of a PYNQ board.")
    p.add_argument("dir", metavar="DIR", nargs="?", default=".", help="where to copy them")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", action="store_true", help="no output but errors")
    p.set_defaults(func=_cmd_notebook)
    return parser


def main(argv=None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        if not argv:                # a bare `zipsgd`: the usage and the commands
            print(parser.format_help(), end="", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:         # e.g. `zipsgd ... | head`: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, NotImplementedError, MemoryError) as exc:
        if os.environ.get("ZIPSGD_DEBUG"):
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
