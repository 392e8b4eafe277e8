"""``make timing``: the ECP5 timing estimate of ``zipsgd_top`` and its text report.

Yosys ``synth_ecp5`` of the engine, a fit check against the LFE5U-85F, nextpnr-ecp5 place
and route out of context (or, when it does not fit or is not asked for, the unplaced
estimate of :mod:`.analysis`), and the blocks of :data:`TIMING_BLOCKS` placed and routed
alone. The report gives the Fmax of the engine clock, the utilisation and the critical
paths with the ``hw/*.py`` lines they come from; it is written to
``build/timing/report.txt``.

A relative proxy: the engine fills most of that die, and the target is the Zynq, where
Vivado gives the real numbers. ``make timing`` keeps reporting it; it is not a sign-off.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from zipsgd import contract as c
from zipsgd.hw.verilog import BUILD_DIR, cached_verilog, source_hash

from .analysis import ECP5_DELAYS, estimate_paths, wire_culprits
from .ecp5 import ECP5, ECP5_BELS, ecp5_overflow, place_and_route, synth_ecp5

#: Blocks placed and routed alone by ``timing`` (a measured Fmax even when the whole engine
#: does not place): name -> (module maker, what it is).
TIMING_BLOCKS = {
    "scalar": (lambda params: _scalar(), "scalar unit (z, residual, r', loss; on the batch-boundary loop)"),
}


def _scalar():
    from zipsgd.hw.scalar import Scalar
    return registered(Scalar())


def registered(block):
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
            if not route:
                say("the nets behind the failing paths (rough analysis of the placement)")
                res["pnr"]["wires"] = wire_culprits(res["pnr"]["placed"], period=1000.0 / freq)
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
