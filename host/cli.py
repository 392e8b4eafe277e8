"""The ``zipsgd`` command line.

Subcommands
-----------
``zipsgd train DATA [options]``
    Train a linear model on DATA (see :func:`zipsgd.datasets.load_data`) on a backend,
    compare it with float64 SGD on the same schedule, print a summary, optionally
    write ``--json`` results and a ``--plot`` PNG.
``zipsgd bench convergence [--quick] [--out DIR]``
    The convergence benchmark (:mod:`zipsgd.bench_convergence`); ``bench all`` runs
    every registered benchmark.
``zipsgd info`` / ``zipsgd demo``
    What this machine offers (:mod:`zipsgd.info`) / the end-to-end demo (:mod:`zipsgd.demo`).
``zipsgd notebook [DIR] [--force]``
    Copy the shipped Jupyter notebook(s) into DIR (default: the current directory), e.g.
    into the Jupyter folder of a PYNQ board; existing files are kept unless ``--force``.

Every user error (bad data, unsupported mode, capacity, unreadable file, bad
option) prints one line ``zipsgd: error: ...`` on stderr and exits with status 2;
nothing is written on error (``--json``/``--plot`` go through a temporary file and
an atomic rename at the very end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROG = "zipsgd"


class UsageError(Exception):
    """A command-line error (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


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
        # called when epoch `epoch` starts (and with `total` at the end): epochs before it are done
        done = min(int(epoch), self.total)
        if done <= self.done:
            return
        if self.bar is not None:
            self.bar.update(done - self.done)
        elif not self.quiet:
            print(f"epoch {done}/{self.total}", file=sys.stderr, flush=True)
        self.done = done

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# Atomic outputs
# --------------------------------------------------------------------------------------
def _temp_beside(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _temp_beside(path, ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plot_curves(path: str | os.PathLike, curves: dict, title: str, ylabel: str = "mean training loss") -> Path:
    """Render ``{label: per-epoch values}`` to a temporary PNG beside ``path``; returns the temp file."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError(f"--plot needs matplotlib (pip install 'zipsgd[plot]'): {exc}") from None
    path = Path(path)
    tmp = _temp_beside(path, ".png")
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["o-", "k--", "s-", "^-", "v-", "d-"]
    positive = True
    for (label, ys), st in zip(curves.items(), styles * 4):
        ys = list(ys)
        positive &= all(v > 0 for v in ys)
        ax.plot(range(1, len(ys) + 1), ys, st, label=label, markersize=3)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return tmp


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------
def _quantization_args(p):
    p.add_argument("--bits", type=int, default=8, help="1, 2, 4, 8 or 32 (default 8)")
    p.add_argument("--sampling", default="double", help="double, single or nearest (default double)")
    p.add_argument("--levels", default="uniform", help="uniform, optimal, log or weibull (default uniform)")


def _data_side_args(p):
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--word-bits", type=int, default=64)
    p.add_argument("--scale", default="feature", help="feature or global scaling into [-1, 1]")
    p.add_argument("--no-intercept", action="store_true", help="fit without an intercept")


def _train_parser(sub):
    p = sub.add_parser("train", help="train a linear model on DATA and compare with float64 SGD",
                       description="Train on DATA: sklearn:NAME (diabetes, breast_cancer, digits, iris), "
                                   "a .csv/.tsv (target column --target, default last), a .npz with X and y, "
                                   "an svmlight/libsvm file, or a packed .zsgd file (zipsgd pack: its "
                                   "quantization is fixed, --bits/--sampling/--levels/--copies/--seed/--scale "
                                   "are not used, and there is no float64 baseline).")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--target", default=None, help="CSV target column (name or index; default: last)")
    p.add_argument("--loss", default=None,
                   help="squared, logistic or hinge (default: by dataset; two-valued targets: logistic)")
    _quantization_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--step", type=float, default=2.0 ** -6, help="learning rate (default 2**-6)")
    p.add_argument("--decay", type=int, default=0, help="halve the step every DECAY epochs (0: never)")
    p.add_argument("--alpha", type=float, default=0.0, help="L2 strength (default 0)")
    p.add_argument("--copies", type=int, default=None, help="quantized copies (default min(epochs, 4))")
    p.add_argument("--backend", default="cpu", help="cpu (reference engine), sim or pynq")
    _data_side_args(p)
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", dest="plot_path", default=None, metavar="PATH", help="write a PNG of the curves")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=cmd_train)
    return p


def train(args) -> dict:
    """Run ``zipsgd train`` and return the results dict (what --json writes)."""
    from . import baseline
    from .datasets import load_data
    from .backends import check_backend, run_job
    from .job import job_from_packed, prepare_job
    from .packfile import SUFFIX, open_packed

    t0 = time.perf_counter()
    check_backend(args.backend)
    packed = str(args.data).endswith(SUFFIX)
    if packed:
        data = open_packed(args.data)
        if args.loss and args.loss != data.header["loss"]:
            raise ValueError(f"{args.data} was packed for loss={data.header['loss']!r}, not {args.loss!r}: pack it "
                             f"again with --loss {args.loss}")
        job = job_from_packed(data, epochs=args.epochs, batch_size=args.batch_size, step=args.step,
                              decay=args.decay, alpha=args.alpha)
        name = str(args.data)
    else:
        ds = load_data(args.data, target=args.target)
        loss = args.loss or ds.default_loss
        job = prepare_job(ds.X, ds.y, loss=loss, bits=args.bits, sampling=args.sampling, levels=args.levels,
                          epochs=args.epochs, batch_size=args.batch_size, step=args.step, decay=args.decay,
                          alpha=args.alpha, copies=args.copies, seed=args.seed, word_bits=args.word_bits,
                          scale=args.scale, fit_intercept=not args.no_intercept)
        name = ds.name
    t_prep = time.perf_counter()
    bar = _Progress(job.epochs, args.quiet)
    try:
        res = run_job(job, args.backend, progress=bar)
    finally:
        bar.close()
    t_run = time.perf_counter()
    w = job.model_float(res.model)
    curve = [float(v) for v in res.loss_curve(job.n_samples)]
    if packed:        # a packed file holds no full-precision data: no exact objective, no baseline
        final, base_final, base_curve = None, None, []
    else:
        final = baseline.objective(job.loss, job.X_scaled, job.y_scaled, w)
        base = baseline.sgd(job)
        base_final, base_curve = base.final_loss, [float(v) for v in base.loss_curve]
    coef, intercept = job.unscale(res.model)
    seconds = t_run - t0
    out = {
        "data": name, "loss": job.loss, "n_samples": job.n_samples, "n_features": job.n_features,
        "packed_file": packed,
        "final_loss": final,
        "loss_curve": curve,
        "baseline_float64_final_loss": base_final,
        "baseline_float64_loss_curve": base_curve,
        "ratio_to_float64": final / base_final if base_final else None,
        "bits": job.bits, "sampling": job.sampling, "levels": job.levels, "backend": args.backend,
        "bits_per_feature": job.bits_per_feature,
        "seconds": seconds, "prepare_seconds": t_prep - t0, "run_seconds": t_run - t_prep,
        "job": job.summary(),
        "coef": [float(v) for v in coef], "intercept": intercept,
        "hw_stats": {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                     for k, v in (res.stats or {}).items()},
    }
    return out


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
        ("final loss", "n/a (packed data: the engine's per-epoch loss below is on the quantized data)"
         if out["final_loss"] is None else
         f"{out['final_loss']:.6g}  (exact objective of the engine's model, scaled units)"),
        ("float64 SGD", "n/a" if out["baseline_float64_final_loss"] is None else
         f"{out['baseline_float64_final_loss']:.6g}"),
        ("ratio", "n/a" if out["ratio_to_float64"] is None else f"{out['ratio_to_float64']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append(f"{'epoch':>5}  {'engine loss':>12}  {'float64 loss':>12}")
    curve, bcurve = out["loss_curve"], out["baseline_float64_loss_curve"]
    idx = list(range(len(curve)))
    if len(idx) > 12:
        idx = idx[:5] + [None] + idx[-5:]
    for e in idx:
        b = f"{bcurve[e]:>12.6g}" if e is not None and e < len(bcurve) else f"{'-':>12}"
        lines.append("  ..." if e is None else f"{e + 1:>5}  {curve[e]:>12.6g}  {b}")
    return "\n".join(lines)


def _pack_parser(sub):
    p = sub.add_parser("pack", help="quantize and pack DATA once into a .zsgd file to train from",
                       description="Quantize and pack DATA into FILE.zsgd in chunks of rows (bounded memory): "
                                   "done once on a workstation; copy the file to the board and run "
                                   "`zipsgd train FILE.zsgd` there. DATA as for `zipsgd train`, or X.npy "
                                   "(memory-mapped, never loaded whole) with --labels y.npy.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", required=True, metavar="FILE.zsgd")
    p.add_argument("--labels", default=None, metavar="Y.npy", help="targets, when DATA is an X.npy")
    p.add_argument("--target", default=None, help="CSV target column (name or index; default: last)")
    p.add_argument("--loss", default=None, help="squared, logistic or hinge (default: by dataset)")
    _quantization_args(p)
    p.add_argument("--copies", type=int, default=4, help="quantized copies (default 4)")
    _data_side_args(p)
    p.add_argument("--chunk-rows", type=int, default=None, help="rows packed at a time (default 65536)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pack)
    return p


def cmd_pack(args) -> int:
    import numpy as np

    from . import packfile
    from .datasets import load_data

    t0 = time.perf_counter()
    if str(args.data).endswith(".npy"):
        if not args.labels:
            raise ValueError("an X.npy needs its targets: --labels y.npy")
        X, y = np.load(args.data, mmap_mode="r"), np.load(args.labels)
        name, loss = args.data, args.loss or "squared"
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


def cmd_train(args) -> int:
    out = train(args)
    tmp_png = None
    try:
        if args.plot_path:
            tmp_png = plot_curves(args.plot_path, {
                f"{out['bits']}-bit {out['sampling']} ({out['backend']})": out["loss_curve"],
                "float64 SGD": out["baseline_float64_loss_curve"]},
                title=f"{out['data']}: {out['loss']} loss, {out['levels']} levels")
        if args.json_path:
            write_json_atomic(args.json_path, out)
        if tmp_png is not None:
            os.replace(tmp_png, args.plot_path)
            tmp_png = None
    finally:
        if tmp_png is not None and Path(tmp_png).exists():
            Path(tmp_png).unlink()
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


def _bench_packing(args) -> int:
    from .bench_packing import main as bench_main
    bench_main(["--n", "20000"] if args.quick else [])
    return 0


def _bench_codebook(args) -> int:
    from .bench_codebook import main as bench_main
    bench_main(["--n", "100000"] if args.quick else [])
    return 0


#: Benchmark name -> callable(args) -> exit status. ``bench all`` runs them in order.
BENCHES = {"packing": _bench_packing, "codebook": _bench_codebook,
           "engine": _bench_engine, "streaming": _bench_streaming, "convergence": _bench_convergence}


def _bench_parser(sub):
    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=_Parser)
    bsub.required = True
    for name in list(BENCHES) + ["all"]:
        b = bsub.add_parser(name, help=("every benchmark" if name == "all" else f"the {name} benchmark"))
        b.add_argument("--quick", action="store_true", help="a smaller, faster run")
        b.add_argument("--out", default="results", help="output directory (default ./results)")
        b.add_argument("--seeds", type=int, default=None, help="seeds per configuration")
        b.add_argument("--quiet", action="store_true")
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
    print(json.dumps(data, indent=2) if args.json else info.format_info(data))
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
    parser = _Parser(prog=PROG, description="Low-precision, double-sampled SGD for linear models on FPGAs.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _train_parser(sub)
    _pack_parser(sub)
    _bench_parser(sub)
    p = sub.add_parser("info", help="board, bitstreams, simulators and tool versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="train diabetes on the engine and show what it did")
    p.add_argument("--backend", default=None)
    p.add_argument("--out", default="results/demo.png")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("notebook", help="copy the zipsgd Jupyter notebook into DIR (default: here)",
                       description="Copy the notebooks shipped with zipsgd into DIR (default: the current "
                                   "directory), e.g. the Jupyter folder of a PYNQ board.")
    p.add_argument("dir", metavar="DIR", nargs="?", default=".")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_notebook)
    return parser


def main(argv=None) -> int:
    """Entry point; returns the exit status (0 ok, 2 user error)."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
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
