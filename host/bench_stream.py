"""Streaming from a packed file: the host's rate beside the engine's appetite (``zipsgd bench streaming``).

When a job's copies do not fit the board's DMA memory, the driver refills a ring of DMA
buffers from the memory-mapped ``.zsgd`` file while the DMA streams the other buffer
(:meth:`zipsgd.driver.Engine.run`). The engine keeps its one-beat-per-cycle rate only if
the host refills faster than the engine reads. This benchmark measures, in one run:

- the host's refill rate: the driver's own copy of each transfer from the memory-mapped
  file into a ring buffer (file in the page cache, as after the first epoch), in MB/s;
- the engine's consumption at each board's clock: one ``W``-bit beat per cycle;
- the end-to-end rate of a ring job on the simulated board under PYNQ's classes (the
  simulator's speed, not a board's), with its transfer count.

It runs on this machine's CPU: a PYNQ board's ARM copies several times slower (and its
cache flush adds to that); the figure to compare on a board is the same line printed there.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .boards import BOARDS


def refill_rate(packed, slot_bytes: int, seconds: float = 1.0) -> float:
    """MB/s of copying ``packed``'s copies into a ring slot of ``slot_bytes``, transfer by transfer."""
    words = slot_bytes // 8
    slot = np.empty(words, dtype=np.uint64)
    for s in packed.streams:                 # warm the page cache (the first epoch reads the disk)
        np.asarray(s).sum()
    moved, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in packed.streams:
            for at in range(0, s.size, words):
                n = min(words, s.size - at)
                slot[:n] = s[at:at + n]
                moved += n * 8
    return moved / (time.perf_counter() - t0) / 1e6


def run(quick: bool = False) -> dict:
    from . import packfile

    n, d = (20_000, 90) if quick else (200_000, 90)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float64)
    y = X[:, :5].sum(axis=1)
    out = {"n": n, "d": d, "boards": {}}
    with tempfile.TemporaryDirectory(prefix="zipsgd-bench-") as tmp:
        t0 = time.perf_counter()
        pk = packfile.write(Path(tmp) / "bench.zsgd", X, y, bits=4, copies=2)
        out["pack_seconds"] = time.perf_counter() - t0
        out["file_mbytes"] = pk.nbytes / 1e6
        out["pack_mb_per_s"] = pk.nbytes / 1e6 / out["pack_seconds"]
        for slot_mb in (1, 8):
            out[f"refill_mb_per_s_slot_{slot_mb}mb"] = refill_rate(pk, slot_mb << 20, 0.3 if quick else 1.0)
        for name, spec in BOARDS.items():
            out["boards"][name] = {"clock_mhz": spec.clock_mhz, "word_bits": spec.word_bits,
                                   "engine_mb_per_s": spec.word_bits / 8 * spec.clock_mhz,
                                   "ddr_mb_per_s": spec.ddr_gbytes_per_s * 1e3}
        try:
            out["sim"] = _sim_ring_job(Path(tmp))
        except ImportError as exc:                # the simulation extras are not installed
            out["sim"] = {"skipped": str(exc)}
    return out


def _sim_ring_job(tmp: Path) -> dict:
    from . import packfile
    from .job import job_from_packed
    from .sim.board import run_jobs

    rng = np.random.default_rng(1)
    X = rng.normal(size=(4000, 30))
    pk = packfile.write(tmp / "sim.zsgd", X, X[:, 0], bits=4, copies=2)
    job = job_from_packed(pk, epochs=2, batch_size=64)
    ring = 16 << 10
    t0 = time.perf_counter()
    res = run_jobs([(job.config, str(pk.path), job.codebook, {"ring_bytes": ring})], pynq="pynq-z2")[0]
    wall = time.perf_counter() - t0
    streamed = job.epochs * pk.streams[0].nbytes
    return {"file_bytes": pk.nbytes, "ring_bytes": ring, "transfers": res.stats["transfers"],
            "efficiency": res.stats["efficiency"], "beats": res.stats["beats"], "idles": res.stats["idles"],
            "job_seconds": res.stats["sim_job_seconds"],
            "sim_mb_per_s": streamed / 1e6 / res.stats["sim_job_seconds"], "wall_seconds": wall}


def format_report(data: dict) -> str:
    lines = [f"packed {data['n']} x {data['d']} at 4-bit double, 2 copies: {data['file_mbytes']:.1f} MB in "
             f"{data['pack_seconds']:.2f} s ({data['pack_mb_per_s']:.0f} MB/s of packed words)",
             f"host refill of the DMA ring from the memory-mapped file (this CPU, page cache warm): "
             f"{data['refill_mb_per_s_slot_1mb']:.0f} MB/s with 1 MB transfers, "
             f"{data['refill_mb_per_s_slot_8mb']:.0f} MB/s with 8 MB transfers"]
    best = max(data["refill_mb_per_s_slot_1mb"], data["refill_mb_per_s_slot_8mb"])
    for name, b in data["boards"].items():
        lines.append(f"  {name:<8} engine reads {b['engine_mb_per_s']:.0f} MB/s ({b['word_bits']}-bit beats at "
                     f"{b['clock_mhz']:g} MHz, PS DDR peak {b['ddr_mb_per_s']:.0f} MB/s): host/engine "
                     f"{best / b['engine_mb_per_s']:.2f}x")
    s = data.get("sim", {})
    if "skipped" in s:
        lines.append(f"simulated board: skipped ({s['skipped']})")
    elif s:
        lines.append(f"simulated board under PYNQ: {s['file_bytes'] / 1e3:.0f} kB file through a "
                     f"{s['ring_bytes'] // 1024} KiB ring in {s['transfers']} transfers: the engine waited for "
                     f"input {s['idles']} cycles for {s['beats']} beats ({s['idles'] / s['transfers']:.0f} a "
                     f"transfer: the driver's turn-around between transfers), batch-boundary efficiency "
                     f"{s['efficiency']:.3f}, {s['sim_mb_per_s']:.2f} MB/s (the simulator's speed)")
    lines.append("(a board's ARM copies several times slower than this CPU: run `zipsgd bench streaming` there)")
    return "\n".join(lines)


def main(quick: bool = False, out: str = "results", quiet: bool = False) -> int:
    from .bench_hw import save_report

    data = run(quick)
    return save_report(out, "streaming", format_report(data), data, quiet)
