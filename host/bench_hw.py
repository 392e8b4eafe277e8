"""Engine throughput from cycle-accurate simulation (the simulated board, Verilator).

Efficiency = input beats / (beats + engine stall cycles) per job, read from the
engine's own counters, over b x d x batch size, with the boundary costs derived from
the stall counter (stalls per batch boundary), and the epoch-time speedup of each
b-bit mode over the 32-bit mode at the same clock (ideal: 32-bit beats / b-bit beats).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import contract as c
from .boards import BOARDS
from .packing import pack


def _job(rng, enc, bits, n, d, batch, epochs=2):
    layout = c.Layout(c.WORD_BITS_DEFAULT, enc, bits, d)
    if enc == c.Encoding.FULL:
        job, cb = {"values": rng.integers(-c.FEAT.one // 4, c.FEAT.one // 4, (n, d))}, None
    else:
        top = (1 << bits) - 1
        cb = c.FEAT.to_fixed(np.linspace(-1, 1, top + 1))
        j = rng.integers(0, top, (n, d))
        job = {"codes1": j + rng.integers(0, 2, (n, d))}
        if enc != c.Encoding.SINGLE:
            job["codes2"] = j + rng.integers(0, 2, (n, d))
    y = rng.integers(-c.MODEL.one // 4, c.MODEL.one // 4, n)
    cfg = c.EngineConfig(n_samples=n, dim=d, bits=bits, encoding=enc, step_shift=12, batch=batch, epochs=epochs)
    return cfg, [pack(layout, y, **job)], cb


def run(quick: bool = False, simulator: str = "verilator") -> list[dict]:
    from .sim.board import run_jobs

    rng = np.random.default_rng(0)
    modes = [(c.Encoding.FULL, 32), (c.Encoding.COMPACT, 8), (c.Encoding.COMPACT, 4), (c.Encoding.PAIR, 2),
             (c.Encoding.PAIR, 1)]
    dims = (10, 100, 1000) if not quick else (100,)
    batches = (1, 16, 64) if not quick else (16,)
    specs, jobs = [], []
    for d in dims:
        n = max(64, 20000 // d) if not quick else 64
        for batch in batches:
            for enc, bits in modes:
                jobs.append(_job(rng, enc, bits, n, d, batch))
                specs.append((enc, bits, d, batch, n))
    t = time.perf_counter()
    results = run_jobs(jobs, simulator=simulator)
    wall = time.perf_counter() - t
    rows, full_beats = [], {}
    for (enc, bits, d, batch, n), (cfg, _, _), r in zip(specs, jobs, results):
        st = r.stats
        boundaries = cfg.epochs * -(-n // batch)
        row = {"mode": f"{enc.name} b={bits}", "d": d, "batch": batch, "n": n,
               "beats_per_sample": cfg.layout.beats_per_sample, "beats": st["beats"], "stalls": st["stalls"],
               "cycles": st["cycles"], "efficiency": st["efficiency"],
               "stall_per_boundary": st["stalls"] / boundaries,
               "target_applies": batch * cfg.layout.beats_per_sample >= 240}
        rows.append(row)
        if bits == 32:
            full_beats[(d, batch)] = st["beats"] + st["stalls"]
    for row in rows:
        busy = row["beats"] + row["stalls"]
        row["speedup_vs_32"] = full_beats[(row["d"], row["batch"])] / busy
    total_cycles = sum(r["cycles"] for r in rows)
    return rows, {"simulator": simulator, "wall_seconds": wall, "cycles": total_cycles,
                  "cycles_per_second": total_cycles / wall}


def main(quick: bool = False, out: str = "results", quiet: bool = False) -> int:
    rows, meta = run(quick)
    clk = BOARDS["pynq-z2"].clock_mhz
    lines = [f"engine efficiency (cycle-accurate, {meta['simulator']}; stalls from the hardware counter)",
             f"{'mode':<13} {'d':>5} {'batch':>5} {'B/sample':>8} {'beats':>8} {'stalls':>7} {'stall/bnd':>9} "
             f"{'eff':>6} {'x vs 32b':>8}  target(>=0.95 when batch*B>=240)"]
    for r in rows:
        tgt = ("PASS" if r["efficiency"] >= 0.95 else "MISS") if r["target_applies"] else "-"
        lines.append(f"{r['mode']:<13} {r['d']:>5} {r['batch']:>5} {r['beats_per_sample']:>8} {r['beats']:>8} "
                     f"{r['stalls']:>7} {r['stall_per_boundary']:>9.2f} {r['efficiency']:>6.3f} "
                     f"{r['speedup_vs_32']:>8.2f}  {tgt}")
    lines.append(f"simulator speed: {meta['cycles_per_second']:,.0f} cycles/s end to end "
                 f"({meta['cycles']:,} cycles in {meta['wall_seconds']:.1f} s incl. start-up); "
                 f"projected at {clk:g} MHz on pynq-z2: cycles / {clk:g}e6 s")
    text = "\n".join(lines)
    if not quiet:
        print(text)
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    (p / "engine_efficiency.md").write_text("```\n" + text + "\n```\n")
    (p / "engine_efficiency.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    return 0
