"""Build a PYNQ bitstream with Vivado in batch mode (``make bitstream``).

    python -m zipsgd.flows bitstream --board pynq-z2 [--out bitstreams/pynq-z2] [--dry-run]

Writes the engine's Verilog for the board's stream width, the block-design wrapper
and the board variables into ``<out>/src``, then runs ``bitstreams/build.tcl``, which
leaves ``<out>/zipsgd.bit`` and ``<out>/zipsgd.hwh`` when the routed design meets the
board's clock (``zipsgd.boards.BOARDS[...].clock_mhz``) and no bitstream when it does
not (Vivado exits with an error naming the slack). Without ``vivado`` on PATH it stops
at once and says what it would have done.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from zipsgd import contract as c
from zipsgd.boards import BD_MODULE, VIVADO_VERSION, board
from zipsgd.hw.verilog import ROOT, write_verilog

from .vivado import bd_wrapper_verilog, board_tcl

TCL = ROOT / "bitstreams" / "build.tcl"


def default_out(board_name: str) -> Path:
    """Where a board's bitstream goes unless told: ``bitstreams/<board>``."""
    return ROOT / "bitstreams" / board_name


def prepare(board_name: str, out: Path, dim_max: int = 4096) -> Path:
    """Write the sources and the board variables; returns the variables file."""
    spec = board(board_name)
    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    top_v = write_verilog(c.EngineParams(word_bits=spec.word_bits, dim_max=dim_max, lanes=spec.lanes),
                          src / "zipsgd_top.v")
    wrap_v = src / f"{BD_MODULE}.v"
    wrap_v.write_text(bd_wrapper_verilog(spec.word_bits))
    tcl_vars = src / "board_vars.tcl"
    tcl_vars.write_text(board_tcl(spec, [str(Path(top_v).resolve()), str(wrap_v.resolve())], str(out.resolve())))
    return tcl_vars


def build(board_name: str, out: Path | None = None, dim_max: int = 4096, dry_run: bool = False) -> int:
    """Build (or with ``dry_run`` only prepare) one board's bitstream; the exit status.

    0: built (or prepared); 2: no ``vivado`` on PATH (nothing written); else Vivado's status.
    """
    spec = board(board_name)
    out = Path(out) if out is not None else default_out(board_name)
    clock = f"{spec.clock_mhz:g} MHz" + (" (assumed, not yet met by a routed build)" if spec.clock_assumed else "")
    plan = (f"build {board_name} ({spec.part}, {spec.ps}, W={spec.word_bits}, {clock}): "
            f"generate zipsgd_top.v + block-design wrapper, then `vivado -mode batch -source {TCL} -tclargs "
            f"<board_vars.tcl>` (Vivado {VIVADO_VERSION}), which stops without a bitstream if the routed design "
            f"misses that clock -> {out}/zipsgd.bit and zipsgd.hwh")
    vivado = shutil.which("vivado")
    if vivado is None and not dry_run:
        print(f"zipsgd: error: no `vivado` on PATH, so no bitstream can be built here.\n"
              f"It would {plan}.\nInstall Vivado {VIVADO_VERSION} (with the board files of the PYNQ boards), "
              f"source its settings64.sh and run `make bitstream BOARD={board_name}` again.", file=sys.stderr)
        return 2
    tcl_vars = prepare(board_name, out, dim_max)
    if dry_run:
        print(f"dry run: sources and variables in {tcl_vars.parent}; would {plan}")
        return 0
    cmd = [vivado, "-mode", "batch", "-nojournal", "-nolog", "-source", str(TCL), "-tclargs", str(tcl_vars)]
    print(" ".join(cmd))
    return subprocess.call(cmd, cwd=out)
