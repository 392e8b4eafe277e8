"""The Verilog of ``zipsgd_top``, generated once per design and build parameters.

The simulators, the Vivado flow and the synthesis flows (:mod:`zipsgd.flows`) read the
engine's Verilog from here. Generated files are cached under ``build/verilog/`` by a hash
of the gateware sources (every ``hw/**/*.py``, ``host/contract.py``; the stub core's file
for the stub) and the build parameters, so repeated test runs do not elaborate the engine
again. ``hw/`` holds only the design: any change to it is a new key.

``ZIPSGD_BUILD_DIR`` moves the build tree (default ``build/`` at the repository root).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from zipsgd import contract as c

ROOT = Path(__file__).resolve().parents[1]
HW_DIR = Path(__file__).resolve().parent
CONTRACT = Path(c.__file__).resolve()
BUILD_DIR = Path(os.environ.get("ZIPSGD_BUILD_DIR", ROOT / "build"))

#: Cached Verilog files kept per (W, core) when a new one is written.
KEEP_VERILOG = 4


def design_files() -> list:
    """The files that shape the generated Verilog: every Python file of ``hw/`` and the contract."""
    return sorted(HW_DIR.rglob("*.py")) + [CONTRACT]


def source_hash(params: c.EngineParams, core: str = "engine") -> str:
    """Hash of the gateware sources and the build parameters (the cache key).

    Parameters
    ----------
    params : EngineParams
        Build parameters.
    core : str
        Name of the engine core variant (``"engine"`` for the real one; tests use
        ``"stub"``); part of the key.
    """
    h = hashlib.sha256()
    for path in design_files():
        h.update((path.relative_to(HW_DIR).as_posix() if path.is_relative_to(HW_DIR) else path.name).encode())
        h.update(path.read_bytes())
    if core != "engine":
        stub = ROOT / "sim" / "stub_core.py"
        if stub.exists():
            h.update(stub.read_bytes())
    h.update(repr((core, params.word_bits, params.dim_max, params.batch_max, params.epochs_max,
                   getattr(params, "lanes", None))).encode())
    return h.hexdigest()[:16]


def _core_class(core: str):
    if core == "engine":
        return None
    if core == "stub":
        from zipsgd.sim.stub_core import StubEngine
        return StubEngine
    raise ValueError(f"unknown core {core!r}: 'engine' or 'stub'")


def cached_verilog(params: c.EngineParams, core: str = "engine", src: bool = False) -> Path:
    """Path of the (cached) Verilog of ``zipsgd_top`` for ``params``; generates it if needed.

    ``src=True`` keeps Amaranth's ``src`` attributes (``hw/*.py`` file and line of every
    signal), for the timing report; the simulators and Vivado get the plain file.
    """
    key = source_hash(params, core)
    tag = core + ("src" if src else "")
    name = (f"zipsgd_top_w{params.word_bits}_l{params.lanes}_d{params.dim_max}_b{params.batch_max}"
            f"_e{params.epochs_max}_{tag}_{key}.v")
    out = BUILD_DIR / "verilog" / name
    if out.exists():
        return out
    if src:
        from amaranth.back import verilog

        from .top import TOP_NAME, Top, _top_last

        text = _top_last(verilog.convert(Top(params, _core_class(core)), name=TOP_NAME, emit_src=True))
    else:
        from .top import convert

        text = convert(params, _core_class(core))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)          # atomic: parallel test workers never see half a file
    _prune(out)
    return out


def _prune(newest: Path):
    prefix = newest.name.rsplit("_", 1)[0] + "_"
    old = sorted((p for p in newest.parent.glob(prefix + "*.v") if p != newest),
                 key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[KEEP_VERILOG - 1:]:
        p.unlink(missing_ok=True)


def write_verilog(params: c.EngineParams, path, core: str = "engine") -> Path:
    """Write the Verilog of ``zipsgd_top`` for ``params`` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    src = cached_verilog(params, core)
    if path.resolve() != src.resolve():
        shutil.copyfile(src, path)
    return path
