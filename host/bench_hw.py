"""Engine throughput from cycle-accurate simulation (the simulated board).

``zipsgd bench engine`` measures, in one run, and prints and writes
``results/engine_efficiency.md`` / ``.json``:

1. **Efficiency** over b x d x batch size: input beats / (beats + engine stall
   cycles) per job, from the engine's own counters, and the stall cycles per batch
   boundary.
2. **Speed-up of each b-bit mode over the 32-bit mode** at the same clock (busy
   cycles of the 32-bit job / busy cycles of the b-bit job) against the ideal
   (32-bit beats / b-bit beats); target >= 0.95 of ideal.
3. **A PYNQ-Z2 projection** for a job of YearPredictionMSD's shape (50,000 x 90,
   synthetic values: the engine's timing does not depend on them), one epoch at
   batch 64 in every mode: samples/s bound by the engine (clock / cycles per sample)
   and by the board's DDR bandwidth (bytes/s / bytes per sample), the smaller of the
   two and which one binds; next to numpy float64 mini-batch SGD measured on this
   machine for the same job (:func:`zipsgd.baseline.sgd_raw`).
4. **Simulator speed**: Verilator end to end on the large jobs of (3) and on the
   table of (1); Icarus on one small job (it runs the engine's data path at some
   hundred cycles per second, so it gets a small subset only).

Every figure is measured in the run, except the published ones it is compared
with (cited, labelled as such): ZipML's up to 6.5x and ZipML-PYNQ's 2.8x.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import contract as c
from .boards import BOARDS

#: Published figures the measurements are compared with (not measured here).
PUBLISHED = {
    "zipml_speedup": {
        "value": 6.5,
        "text": "ZipML (Zhang et al., ICML 2017) reports up to 6.5x end-to-end speed-up of low-precision "
                "SGD on its FPGA engine over full precision",
    },
    "zipml_pynq_speedup": {
        "value": 2.8,
        "text": "ZipML-PYNQ measured 2.8x, 8-bit vs 32-bit float, on YearPredictionMSD (50,000 x 90) on a "
                "PYNQ board",
    },
    # (the 32-bit mode here is 32-bit fixed point: the same bytes per feature as float)
}
#: The projection job: YearPredictionMSD's shape (ZipML-PYNQ's benchmark).
PROJECTION_SHAPE = (50_000, 90)
PROJECTION_BATCH = 64
PROJECTION_BOARD = "pynq-z2"
#: Fraction of the ideal speed-up the engine must reach.
SPEEDUP_TARGET = 0.95
MODES = [(c.Encoding.FULL, 32), (c.Encoding.COMPACT, 8), (c.Encoding.COMPACT, 4), (c.Encoding.PAIR, 2),
         (c.Encoding.PAIR, 1)]
#: Also in the efficiency table: single/nearest 1-bit, which the engine takes at half
#: the beat rate (W features per beat, W/2 lanes; see docs/design.md, "Lanes").
TABLE_MODES = MODES + [(c.Encoding.SINGLE, 1)]


def _job(rng, enc, bits, n, d, batch, epochs=2, word_bits=c.WORD_BITS_DEFAULT):
    """A job of ``n`` random samples (:mod:`zipsgd.testing`) in one mode, with a uniform
    codebook and a small step."""
    from .testing import job_for

    cfg = c.EngineConfig(n_samples=n, dim=d, bits=bits, encoding=enc, step_shift=12, batch=batch, epochs=epochs,
                         word_bits=word_bits)
    cb = None if enc == c.Encoding.FULL else c.FEAT.to_fixed(np.linspace(-1, 1, 1 << bits))
    return job_for(rng, cfg, codebook=cb)


def _mode(enc, bits) -> str:
    return f"{enc.name} b={bits}"


# --------------------------------------------------------------------------------------
# arithmetic (pure Python: tested on its own)
# --------------------------------------------------------------------------------------
def project(cycles_per_sample: float, beats_per_sample: int, word_bits: int, clock_mhz: float,
            ddr_gbytes_per_s: float) -> dict:
    """Samples/s of the engine on a board, and what bounds it.

    engine-bound: ``clock / cycles_per_sample`` (the engine's measured cycles, stalls
    included, at the board's clock); memory-bound: ``DDR bytes/s / bytes per sample``
    (``beats_per_sample`` beats of ``word_bits`` bits). The projection is the smaller;
    ``bound`` names it ("engine" on a tie).
    """
    if cycles_per_sample <= 0 or beats_per_sample <= 0:
        raise ValueError("cycles and beats per sample must be positive")
    bytes_per_sample = beats_per_sample * word_bits / 8
    engine = clock_mhz * 1e6 / cycles_per_sample
    memory = ddr_gbytes_per_s * 1e9 / bytes_per_sample
    return {"bytes_per_sample": bytes_per_sample, "engine_samples_per_s": engine,
            "memory_samples_per_s": memory, "samples_per_s": min(engine, memory),
            "bound": "engine" if engine <= memory else "memory",
            "engine_bytes_per_s": engine * bytes_per_sample}


def speedup(busy_32: float, busy_b: float, beats_32: float, beats_b: float) -> dict:
    """Measured speed-up of a b-bit job over the 32-bit job (same samples, same clock)
    against the ideal (the ratio of their input beats)."""
    measured = busy_32 / busy_b
    ideal = beats_32 / beats_b
    return {"speedup": measured, "ideal": ideal, "of_ideal": measured / ideal}


# --------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------
def _sim_speed(label: str, results, note: str) -> dict:
    st = results[0].stats
    cycles = sum(r.stats["cycles"] for r in results)
    streaming = sum(r.stats["sim_job_seconds"] for r in results)
    return {"label": label, "simulator": st["simulator"], "jobs": len(results), "cycles": cycles,
            "wall_seconds": st["sim_wall_seconds"], "cpu_seconds": st["sim_cpu_seconds"],
            "startup_seconds": st["sim_startup_seconds"], "job_seconds": streaming,
            "cycles_per_second": cycles / st["sim_wall_seconds"],
            "cycles_per_cpu_second": cycles / max(st["sim_cpu_seconds"], 1e-9),
            "cycles_per_job_second": cycles / max(streaming, 1e-9), "note": note}


def efficiency_table(quick: bool = False, simulator: str = "verilator"):
    """Rows of the efficiency table and the simulator-speed record of its run."""
    from .sim.board import run_jobs

    rng = np.random.default_rng(0)
    dims = (10, 100, 1000) if not quick else (100,)
    batches = (1, 16, 64) if not quick else (16,)
    specs, jobs = [], []
    for d in dims:
        # whole batches only (a partial last batch pays a full boundary: see the projection)
        n = 64 * -(-max(64, 20000 // d) // 64) if not quick else 64
        for batch in batches:
            for enc, bits in TABLE_MODES:
                jobs.append(_job(rng, enc, bits, n, d, batch))
                specs.append((enc, bits, d, batch, n))
    results = run_jobs(jobs, simulator=simulator)
    rows, full = [], {}
    for (enc, bits, d, batch, n), (cfg, _, _), r in zip(specs, jobs, results):
        st = r.stats
        boundaries = cfg.epochs * -(-n // batch)
        row = {"mode": _mode(enc, bits), "bits": bits, "d": d, "batch": batch, "n": n, "epochs": cfg.epochs,
               "beats_per_sample": cfg.layout.beats_per_sample, "beats": st["beats"], "stalls": st["stalls"],
               "cycles": st["cycles"], "efficiency": st["efficiency"],
               "stall_per_boundary": st["stalls"] / boundaries,
               "target_applies": batch * cfg.layout.beats_per_sample >= 240}
        rows.append(row)
        if bits == 32:
            full[(d, batch)] = row
    for row in rows:
        f = full[(row["d"], row["batch"])]
        row.update(speedup(f["beats"] + f["stalls"], row["beats"] + row["stalls"], f["beats"], row["beats"]))
        row["speedup_vs_32"] = row["speedup"]
    speed = _sim_speed(f"efficiency table ({len(rows)} jobs)", results,
                       "many short jobs: start-up and per-job register traffic weigh in")
    return rows, speed


def numpy_sgd(n: int, d: int, batch: int, epochs: int = 1, seed: int = 0, min_seconds: float = 0.5) -> dict:
    """numpy float64 mini-batch SGD (:func:`zipsgd.baseline.sgd_raw`) on this machine.

    The job (``epochs`` over ``n`` x ``d`` at ``batch``) runs again until
    ``min_seconds`` have passed; the fastest run counts (the least disturbed by
    other load).
    """
    from .baseline import sgd_raw

    rng = np.random.default_rng(seed)
    X = rng.uniform(-0.25, 0.25, (n, d))
    y = X @ rng.normal(size=d) + 0.01 * rng.normal(size=n)
    perms = [rng.permutation(n)]
    times = []
    while not times or (sum(times) < min_seconds and len(times) < 50):
        t = time.perf_counter()
        sgd_raw("squared", X, y, perms, [2.0 ** -10] * epochs, batch_size=batch)
        times.append(time.perf_counter() - t)
    secs = min(times)
    return {"n": n, "d": d, "batch": batch, "epochs": epochs, "seconds": secs, "runs": len(times),
            "samples_per_s": n * epochs / secs}


def projection(quick: bool = False, simulator: str = "verilator", board: str = PROJECTION_BOARD):
    """The YearPredictionMSD-shaped job in every mode on the simulated board, projected
    to ``board``; returns (rows, numpy baseline, simulator-speed record)."""
    from .sim.board import run_jobs

    spec = BOARDS[board]
    n, d = PROJECTION_SHAPE
    if quick:
        n = 2_000
    rng = np.random.default_rng(1)
    jobs = [_job(rng, enc, bits, n, d, PROJECTION_BATCH, epochs=1) for enc, bits in MODES]
    if jobs[0][0].word_bits != spec.word_bits:
        raise ValueError(f"the projection jobs stream W={jobs[0][0].word_bits}, {board} W={spec.word_bits}")
    results = run_jobs(jobs, simulator=simulator)
    base = numpy_sgd(n, d, PROJECTION_BATCH, epochs=1)
    rows = []
    for (enc, bits), (cfg, _, _), r in zip(MODES, jobs, results):
        st = r.stats
        cps = st["cycles"] / st["samples"]
        row = {"mode": _mode(enc, bits), "bits": bits, "n": n, "d": d, "batch": PROJECTION_BATCH,
               "beats_per_sample": cfg.layout.beats_per_sample, "cycles": st["cycles"], "beats": st["beats"],
               "stalls": st["stalls"], "samples": st["samples"], "cycles_per_sample": cps,
               **project(cps, cfg.layout.beats_per_sample, spec.word_bits, spec.clock_mhz, spec.ddr_gbytes_per_s)}
        row["vs_numpy"] = row["samples_per_s"] / base["samples_per_s"]
        rows.append(row)
    f = rows[0]
    for row in rows:
        row.update(speedup(f["cycles"], row["cycles"], f["beats"], row["beats"]))
    speed = _sim_speed(f"{len(rows)} jobs of {n:,} x {d}, one epoch each", results,
                       "long jobs: whole epochs stream in the simulator")
    return rows, base, speed


def icarus_speed(quick: bool = False):
    """Simulator speed of Icarus on one small job (None when iverilog is missing)."""
    from .sim.board import run_jobs

    if shutil.which("iverilog") is None:
        return None
    rng = np.random.default_rng(2)
    n = 16 if quick else 64
    jobs = [_job(rng, c.Encoding.COMPACT, 4, n, 90, 16, epochs=1)]
    results = run_jobs(jobs, simulator="icarus")
    return _sim_speed(f"one job of {n} x 90, 4-bit double, batch 16", results,
                      "small subset: Icarus evaluates the engine's data path at ~10^2 cycles/s")


def run(quick: bool = False, simulator: str = "verilator") -> dict:
    """Every measurement of the benchmark (see the module docstring)."""
    load0 = os.getloadavg()
    t = time.perf_counter()
    rows, table_speed = efficiency_table(quick, simulator)
    proj, base, proj_speed = projection(quick, simulator)
    speeds = [proj_speed, table_speed]
    ic = icarus_speed(quick) if simulator == "verilator" else None
    if ic is not None:
        speeds.append(ic)
    return {"rows": rows, "projection": proj, "numpy": base, "sim_speed": speeds,
            "published": PUBLISHED,
            "board": {k: v for k, v in asdict(BOARDS[PROJECTION_BOARD]).items() if k != "resources"},
            "machine": {"cpus": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg(),
                        "seconds": time.perf_counter() - t},
            "quick": quick}


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f} "


def format_report(data: dict) -> str:
    rows, proj, base = data["rows"], data["projection"], data["numpy"]
    b = data["board"]
    out = [f"engine efficiency (cycle-accurate, {data['sim_speed'][0]['simulator']}; stalls from the hardware "
           "counter)",
           f"{'mode':<13} {'d':>5} {'batch':>5} {'B/sample':>8} {'beats':>8} {'stalls':>7} {'stall/bnd':>9} "
           f"{'eff':>6} {'x vs 32b':>8} {'ideal':>6} {'of ideal':>8}  eff target (>=0.95 when batch*B>=240)"]
    for r in rows:
        tgt = ("PASS" if r["efficiency"] >= 0.95 else "MISS") if r["target_applies"] else "-"
        if r["mode"] == _mode(c.Encoding.SINGLE, 1):
            tgt += " (half rate by design: W features per beat, W/2 lanes)"
        out.append(f"{r['mode']:<13} {r['d']:>5} {r['batch']:>5} {r['beats_per_sample']:>8} {r['beats']:>8} "
                   f"{r['stalls']:>7} {r['stall_per_boundary']:>9.2f} {r['efficiency']:>6.3f} "
                   f"{r['speedup']:>8.2f} {r['ideal']:>6.2f} {r['of_ideal']:>8.3f}  {tgt}")
    n, d = proj[0]["n"], proj[0]["d"]
    out += ["",
            f"projection to {b['name']} ({b['clock_mhz']:g} MHz, W={b['word_bits']}, DDR {b['ddr_gbytes_per_s']:g} GB/s): "
            f"{n:,} x {d} (YearPredictionMSD's shape, synthetic values), one epoch, batch {proj[0]['batch']}",
            f"{'mode':<13} {'B/sample':>8} {'cyc/sample':>10} {'engine s/s':>11} {'memory s/s':>11} "
            f"{'projected':>11} {'bound':>6} {'x vs 32b':>8} {'ideal':>6} {'of ideal':>8} {'x numpy':>8}"]
    for r in proj:
        tgt = "PASS" if r["of_ideal"] >= SPEEDUP_TARGET else "MISS"
        out.append(f"{r['mode']:<13} {r['beats_per_sample']:>8} {r['cycles_per_sample']:>10.2f} "
                   f"{_rate(r['engine_samples_per_s']):>11} {_rate(r['memory_samples_per_s']):>11} "
                   f"{_rate(r['samples_per_s']):>11} {r['bound']:>6} {r['speedup']:>8.2f} {r['ideal']:>6.2f} "
                   f"{r['of_ideal']:>8.3f} {r['vs_numpy']:>8.1f}  {tgt if r['bits'] != 32 else ''}")
    peak = max(r["engine_bytes_per_s"] for r in proj)
    out.append(f"the engine reads at most {peak / 1e9:.2f} GB/s at {b['clock_mhz']:g} MHz (one {b['word_bits']}-bit "
               f"beat per cycle), under the {b['ddr_gbytes_per_s']:g} GB/s of DDR: the engine, not the memory, "
               "bounds every mode" if all(r["bound"] == "engine" for r in proj) else
               f"the memory bounds: {', '.join(r['mode'] for r in proj if r['bound'] == 'memory')}")
    out.append(f"numpy float64 SGD on this machine, same job (n={base['n']:,}, d={base['d']}, batch {base['batch']}, "
               f"{base['epochs']} epoch, one process): {_rate(base['samples_per_s'])}samples/s "
               f"({base['seconds'] * 1e3:.1f} ms, best of {base['runs']}); 'x numpy' = projected / this")
    eight = next(r for r in proj if r["bits"] == 8)
    best = max((r for r in proj if r["bits"] != 32), key=lambda r: r["speedup"])
    pub = data["published"]
    out += ["",
            "against published figures (cited, not measured here):",
            f"  {pub['zipml_pynq_speedup']['text']}: {pub['zipml_pynq_speedup']['value']}x",
            f"    here, 8-bit double vs 32-bit on the same shape: {eight['speedup']:.2f}x at equal clock "
            f"(ideal {eight['ideal']:.2f}x = {proj[0]['beats_per_sample']}/{eight['beats_per_sample']} beats)",
            f"  {pub['zipml_speedup']['text']}",
            f"    here, up to {best['speedup']:.2f}x at equal clock ({best['mode']}; ideal {best['ideal']:.2f}x)"]
    out += ["", "simulator speed (simulated cycles per second of wall time, end to end: start-up, memory load, "
            "streaming, read-back):"]
    for s in data["sim_speed"]:
        out.append(f"  {s['simulator']:<9} {s['label']}: {s['cycles_per_second']:,.0f} cycles/s end to end "
                   f"({s['cycles']:,} cycles in {s['wall_seconds']:.1f} s, start-up {s['startup_seconds']:.1f} s); "
                   f"{s['cycles_per_job_second']:,.0f} cycles/s within the jobs; "
                   f"{s['cycles_per_cpu_second']:,.0f} per CPU-second of the simulator -- {s['note']}")
    m = data["machine"]
    out.append(f"machine: {m['cpus']} CPUs, load average {m['load_before'][0]:.2f} before / "
               f"{m['load_after'][0]:.2f} after ({m['seconds']:.0f} s); wall-time figures vary with the load")
    return "\n".join(out)


def save_report(out, stem: str, text: str, data: dict, quiet: bool = False) -> int:
    """Print a benchmark's report (unless ``quiet``) and write ``<stem>.md`` and ``<stem>.json`` in ``out``."""
    if not quiet:
        print(text)
    p = Path(out)
    p.mkdir(parents=True, exist_ok=True)
    (p / f"{stem}.md").write_text("```\n" + text + "\n```\n")
    (p / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    return 0


def main(quick: bool = False, out: str = "results", quiet: bool = False) -> int:
    data = run(quick)
    return save_report(out, "engine_efficiency", format_report(data), data, quiet)
