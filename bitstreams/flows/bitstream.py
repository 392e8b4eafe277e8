"""Build a PYNQ bitstream with Vivado in batch mode.

    python -m zipsgd.hw.bitstream --board pynq-z2 [--out bitstreams/pynq-z2] [--dry-run]

Writes the engine's Verilog for the board's stream width, the block-design wrapper
and the board variables into ``<out>/src``, then runs ``bitstreams/build.tcl``, which
leaves ``<out>/zipsgd.bit`` and ``<out>/zipsgd.hwh`` when the routed design meets the
board's clock (``zipsgd.boards.BOARDS[...].clock_mhz``) and no bitstream when it does
not (Vivado exits with an error naming the slack). Without ``vivado`` on PATH it stops
at once and says what it would have done.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from zipsgd import contract as c
from zipsgd.boards import BD_MODULE, BOARDS, VIVADO_VERSION, board

from .vivado import bd_wrapper_verilog, board_tcl

ROOT = Path(__file__).resolve().parents[1]
TCL = ROOT / "bitstreams" / "build.tcl"


def prepare(board_name: str, out: Path, dim_max: int = 4096) -> Path:
    """Write the sources and the board variables; returns the variables file."""
    from .build import write_verilog

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zipsgd.hw.bitstream", description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="pynq-z2", choices=sorted(BOARDS))
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bitstreams/<board>)")
    ap.add_argument("--dim-max", type=int, default=4096)
    ap.add_argument("--dry-run", action="store_true", help="write the sources, do not run Vivado")
    a = ap.parse_args(argv)
    spec = board(a.board)
    out = a.out or ROOT / "bitstreams" / a.board
    clock = f"{spec.clock_mhz:g} MHz" + (" (assumed, not yet met by a routed build)" if spec.clock_assumed else "")
    plan = (f"build {a.board} ({spec.part}, {spec.ps}, W={spec.word_bits}, {clock}): "
            f"generate zipsgd_top.v + block-design wrapper, then `vivado -mode batch -source {TCL} -tclargs "
            f"<board_vars.tcl>` (Vivado {VIVADO_VERSION}), which stops without a bitstream if the routed design "
            f"misses that clock -> {out}/zipsgd.bit and zipsgd.hwh")
    vivado = shutil.which("vivado")
    if vivado is None and not a.dry_run:
        print(f"zipsgd: error: no `vivado` on PATH, so no bitstream can be built here.\n"
              f"It would {plan}.\nInstall Vivado {VIVADO_VERSION} (with the board files of the PYNQ boards), "
              f"source its settings64.sh and run `make bitstream BOARD={a.board}` again.", file=sys.stderr)
        return 2
    tcl_vars = prepare(a.board, out, a.dim_max)
    if a.dry_run:
        print(f"dry run: sources and variables in {tcl_vars.parent}; would {plan}")
        return 0
    cmd = [vivado, "-mode", "batch", "-nojournal", "-nolog", "-source", str(TCL), "-tclargs", str(tcl_vars)]
    print(" ".join(cmd))
    return subprocess.call(cmd, cwd=out)


if __name__ == "__main__":
    sys.exit(main())
