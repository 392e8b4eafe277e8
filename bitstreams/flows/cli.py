"""Generate, synthesise, time and build ``zipsgd_top``: ``python -m zipsgd.flows COMMAND``.

    python -m zipsgd.flows verilog   --word-bits 64 --dim-max 4096 -o build/zipsgd_top_w64.v
    python -m zipsgd.flows synth     --word-bits 64 --dim-max 4096
    python -m zipsgd.flows timing    --word-bits 64 --dim-max 4096 [--no-route | --estimate-only]
    python -m zipsgd.flows bitstream --board pynq-z2 [--dry-run]

``verilog`` writes the engine's Verilog (:mod:`zipsgd.hw.verilog`). ``synth`` prints
Yosys' xc7 resource estimate (:mod:`.synth`). ``timing`` runs the ECP5 stand-in
(:mod:`.timing`); its exit status is 0 when the target clock is met, 1 when it is not (or
the design does not fit), 2 when a tool is missing. ``bitstream`` runs Vivado
(:mod:`.bitstream`); 2 without Vivado.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zipsgd import contract as c
from zipsgd.hw.verilog import BUILD_DIR, write_verilog


def _engine_args(ap: argparse.ArgumentParser):
    ap.add_argument("--word-bits", type=int, default=c.WORD_BITS_DEFAULT, choices=c.WORD_BITS_ALLOWED)
    ap.add_argument("--dim-max", type=int, default=c.EngineParams.dim_max)
    ap.add_argument("--batch-max", type=int, default=c.EngineParams.batch_max)
    ap.add_argument("--epochs-max", type=int, default=c.EngineParams.epochs_max)
    ap.add_argument("--lanes", type=int, default=None,
                    help="datapath lanes: W/2 (default; 1-bit single/nearest at half rate) or W")
    ap.add_argument("--core", default="engine", choices=("engine", "stub"), help=argparse.SUPPRESS)


def parser() -> argparse.ArgumentParser:
    from zipsgd.boards import BOARDS

    from .timing import ENGINE_PLACER

    ap = argparse.ArgumentParser(prog="python -m zipsgd.flows",
                                 description="Generate, synthesise, time and build zipsgd_top.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("verilog", help="write the Verilog of zipsgd_top")
    _engine_args(v)
    v.add_argument("-o", "--output", type=Path, default=None, help="output file")
    s = sub.add_parser("synth", help="Yosys synth_xilinx: resources against the xc7z020")
    _engine_args(s)
    s.add_argument("--log", type=Path, default=None, help="keep the Yosys log here")
    t = sub.add_parser("timing", help="ECP5 place and route (a relative proxy): Fmax, utilisation, paths")
    _engine_args(t)
    t.add_argument("-o", "--output", type=Path, default=None, help="output folder (default build/timing)")
    t.add_argument("--freq", type=float, default=125.0, help="target clock (MHz)")
    t.add_argument("--seed", type=int, default=1, help="nextpnr seed")
    t.add_argument("--placer", default=ENGINE_PLACER,
                   help=f"nextpnr placer for the engine (static, heap, sa; default {ENGINE_PLACER})")
    t.add_argument("--threads", type=int, default=None, help="nextpnr threads")
    t.add_argument("--no-route", action="store_true",
                   help="place the engine but do not route it (nextpnr's post-placement timing; "
                        "the nets behind the failing paths)")
    t.add_argument("--estimate-only", action="store_true",
                   help="skip the engine's place and route (unplaced estimate; blocks still placed)")
    b = sub.add_parser("bitstream", help="a PYNQ bitstream with Vivado (batch mode)")
    b.add_argument("--board", default="pynq-z2", choices=sorted(BOARDS))
    b.add_argument("--out", type=Path, default=None, help="output folder (default bitstreams/<board>)")
    b.add_argument("--dim-max", type=int, default=4096)
    b.add_argument("--dry-run", action="store_true", help="write the sources, do not run Vivado")
    return ap


def main(argv=None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.command == "bitstream":
        from .bitstream import build
        return build(a.board, a.out, a.dim_max, a.dry_run)
    try:
        params = c.EngineParams(word_bits=a.word_bits, dim_max=a.dim_max, batch_max=a.batch_max,
                                epochs_max=a.epochs_max, lanes=a.lanes)
    except ValueError as e:
        ap.error(str(e))
    if a.command == "verilog":
        out = a.output or BUILD_DIR / f"zipsgd_top_w{a.word_bits}.v"
        write_verilog(params, out, a.core)
        print(f"wrote {out} (module zipsgd_top, W={a.word_bits}, dim_max={a.dim_max}, lanes={params.lanes}, "
              f"BUILD_HASH=0x{c.build_hash(params):08X})")
        return 0
    if a.command == "synth":
        from .synth import report, synth
        print(report(synth(params, a.log, a.core)))
        return 0
    from .timing import timing, timing_report
    from .yosys import ToolMissing
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
    return 0 if res["pnr"]["fmax"] and all(ach >= tgt for ach, tgt in res["pnr"]["fmax"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
