"""A PYNQ board behind the :class:`zipsgd.driver.Board` interface.

The overlay (``bitstreams/<board>/zipsgd.bit`` with its ``.hwh``) holds the engine
(``boards.ENGINE_NAME``, bound to :class:`ZipsgdIP`) and an AXI DMA (``boards.DMA_NAME``) whose
memory-to-stream channel feeds the engine's AXI4-Stream input. Nothing here uses a
hard-coded address: PYNQ reads them from the ``.hwh``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import axi_dma
from .boards import BOARDS, DMA_NAME, ENGINE_NAME, ENGINE_VLNV  # noqa: F401  (re-exported)
from .driver import Board, DriverError

DEPLOY_HINT = (
    "build it with `make bitstream BOARD=<board>` on a machine with Vivado (see bitstreams/README.md), "
    "copy bitstreams/<board>/zipsgd.bit and zipsgd.hwh with the zipsgd wheel to the board, "
    "`pip install zipsgd-*.whl[pynq]` there, and run with backend='pynq'")


def _pynq():
    try:
        import pynq  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DriverError(f"backend='pynq' needs the pynq package (pip install 'zipsgd[pynq]') on a PYNQ "
                          f"board: {exc}") from None
    return pynq


def bitstream_dirs() -> list[Path]:
    """Where ``<board>/zipsgd.bit`` is looked for, in order: ``$ZIPSGD_BITSTREAMS``,
    ``./bitstreams`` (e.g. beside a notebook), the source tree's and the package's."""
    dirs = []
    if os.environ.get("ZIPSGD_BITSTREAMS"):
        dirs.append(Path(os.environ["ZIPSGD_BITSTREAMS"]))
    dirs.append(Path.cwd() / "bitstreams")
    dirs.append(Path(__file__).resolve().parents[1] / "bitstreams")
    dirs.append(Path(__file__).resolve().parent / "bitstreams")
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_bitstream(board_or_path: str | os.PathLike = "pynq-z2") -> Path:
    """The ``.bit`` of a board name (pynq-z1, pynq-z2, zcu104) or a path; it must have its ``.hwh``."""
    p = Path(board_or_path)
    candidates = [p] if p.suffix == ".bit" else [d / str(board_or_path) / "zipsgd.bit" for d in bitstream_dirs()]
    for bit in candidates:
        if bit.is_file():
            if not bit.with_suffix(".hwh").is_file():
                raise DriverError(f"{bit} has no {bit.with_suffix('.hwh').name} beside it: PYNQ needs both")
            return bit
    where = ", ".join(str(x) for x in candidates)
    raise DriverError(f"no zipsgd bitstream for {board_or_path!r} (looked at {where}): {DEPLOY_HINT}")


def _make_ip_class():
    pynq = _pynq()

    class ZipsgdIP(pynq.DefaultIP):
        """PYNQ driver class of the engine: ``overlay.zipsgd_0`` is one of these."""

        bindto = [ENGINE_VLNV]

        def engine(self, dma):
            """The zipsgd driver on this IP, fed by ``dma`` (e.g. ``overlay.axi_dma_0``)."""
            from .driver import Engine
            return Engine(PynqBoard(self, dma))

    return ZipsgdIP


def load_overlay(bit: Path, download: bool = True, device=None):
    """``pynq.Overlay`` of ``bit``, programmed when ``download``.

    pynq 4.0 sets each PL clock from the ``.hwh``'s achieved frequency, which its metadata
    parser (pynqmetadata 0.2) finds only for Zynq UltraScale+: on a Zynq-7000 design the
    frequency is None and ``Overlay.download`` stops with a TypeError before programming.
    Then the overlay is loaded unprogrammed, the PL clocks are set from the ``.hwh``'s
    divisors (what earlier pynq releases did) and the bitstream is downloaded.
    """
    pynq = _pynq()
    try:
        return pynq.Overlay(str(bit), download=download, device=device)
    except TypeError as exc:
        if not download or "NoneType" not in str(exc):
            raise
    overlay = pynq.Overlay(str(bit), download=False, device=device)
    for i, clk in overlay.clock_dict.items():
        if clk.get("enable"):
            pynq.Clocks.set_pl_clk(i, div0=clk["divisor0"], div1=clk["divisor1"])
    pynq.Bitstream.download(overlay, overlay.parser)
    return overlay


#: Share of the kernel's free contiguous memory (CMA) one job may hold, and the cap.
CMA_SHARE, DMA_BUDGET_MAX = 0.5, 256 << 20


def dma_budget(device_budget=None) -> int:
    """DMA memory one job may hold on this board: the device's own figure when it has one
    (the simulated board), else half the free CMA (``/proc/meminfo``), at most 256 MiB;
    64 MiB where the kernel reports no CMA."""
    if device_budget:
        return int(device_budget)
    from .info import cma_bytes

    cma = cma_bytes()
    if not cma:
        return 64 << 20
    return int(min(cma.get("free", cma["total"]) * CMA_SHARE, DMA_BUDGET_MAX))


class _WallClock:
    """Board time on hardware: the host's monotonic clock."""

    @staticmethod
    def sleep(seconds):
        time.sleep(seconds)

    @staticmethod
    def time():
        return time.monotonic()


class PynqBoard(Board):
    """A PYNQ board running the zipsgd overlay.

    Registers through the engine's ``DefaultIP`` (``overlay.zipsgd_0``), transfers through
    PYNQ's own AXI DMA driver (``overlay.axi_dma_0.sendchannel``), buffers from
    ``pynq.allocate`` on the overlay's device. Every wait polls with a bound: PYNQ's
    ``wait()`` has none. A DMA error bit raises :class:`zipsgd.axi_dma.DmaError`;
    :meth:`dma_reset` resets the channel through its DMACR and starts it again.

    ``clock``: where board time comes from (an object with ``sleep`` and ``time``); the
    host's clock on hardware, the simulator's on the simulated board (its device's
    ``board_clock``).
    """

    #: DMASR polls per transfer time, once the transfer could have ended.
    DMA_POLLS = 64

    def __init__(self, ip, dma, name: str = "PYNQ board", clock=None):
        self.ip, self.dma, self.name = ip, dma, name
        self.channel = dma.sendchannel
        if self.channel is None:
            raise DriverError(f"{name}: the DMA has no memory-to-stream channel (c_include_mm2s = 0)")
        self.clock = clock or _WallClock
        self.clock_hz = float(_pynq().Clocks.fclk0_mhz) * 1e6
        self.dma_max_bytes = int(dma.buffer_max_size)
        params = getattr(dma, "description", {}).get("parameters", {})
        self.beat_bytes = int(params.get("c_m_axis_mm2s_tdata_width", 64)) // 8
        self.dma_budget_bytes = dma_budget(getattr(ip.device, "dma_budget_bytes", None))

    @classmethod
    def open(cls, board_or_path: str = "pynq-z2", download: bool = True, device=None) -> "PynqBoard":
        """Load the zipsgd overlay (``board_or_path``: a board name or a ``.bit``) on
        ``device`` (default: PYNQ's active device, the board itself)."""
        bit = find_bitstream(board_or_path)
        _make_ip_class()  # registers the driver class before the overlay binds its IPs
        try:
            overlay = load_overlay(bit, download=download, device=device)
        except Exception as exc:
            raise DriverError(f"could not load {bit} ({type(exc).__name__}: {exc}); is this a PYNQ board? "
                              f"{DEPLOY_HINT}") from None
        for name in (ENGINE_NAME, DMA_NAME):
            if not hasattr(overlay, name):
                raise DriverError(f"{bit} has no {name}: not a zipsgd bitstream")
        board = cls(getattr(overlay, ENGINE_NAME), getattr(overlay, DMA_NAME), name=f"PYNQ ({bit.parent.name})",
                    clock=getattr(overlay.device, "board_clock", None))
        board.overlay = overlay
        return board

    def read(self, offset):
        return int(self.ip.read(offset))

    def write(self, offset, value):
        self.ip.write(offset, int(value) & 0xFFFFFFFF)

    def allocate(self, n_words):
        import numpy as np
        buf = _pynq().allocate(shape=(n_words,), dtype=np.uint64, target=self.ip.device)
        buf.free = buf.freebuffer
        return buf

    def dma_send(self, buffer, start_word, n_words):
        self.channel.transfer(buffer, start=start_word * 8, nbytes=n_words * 8)
        # when the transfer should end if the engine takes a beat a cycle (dma_wait sleeps until then)
        self._transfer_s = n_words * 8 / self.beat_bytes / self.clock_hz
        self._expected_end = self.time() + self._transfer_s

    def dma_wait(self, timeout_s):
        end = self.time() + timeout_s
        ahead = min(getattr(self, "_expected_end", 0.0), end) - self.time()
        if ahead > 0:                           # not before it can have ended: one sleep
            self.sleep(ahead)
        # then short polls: 1/DMA_POLLS of the transfer's time (a stalling engine takes longer)
        step = max(min(getattr(self, "_transfer_s", timeout_s), timeout_s) / self.DMA_POLLS, 1e-6)
        while True:
            sr = self.dma.mmio.read(axi_dma.DMASR)
            axi_dma.check(sr, f"{self.name}'s DMA")
            if sr & axi_dma.SR_IDLE:
                self.channel.wait()        # returns at once (idle): PYNQ's bookkeeping of the transfer
                return True
            left = end - self.time()
            if left <= 0:
                return False
            self.sleep(min(step, left))

    def dma_reset(self):
        # PG021's reset through the DMA's registers (bounded; Halted checked), running again
        # (RS set, Halted seen to fall), then PYNQ's channel started too: it returns at once
        # and sets its first-transfer flag (Idle is 0 after a reset)
        regs = axi_dma.Mm2s(self.dma.mmio.read, self.dma.mmio.write, self.dma_max_bytes)
        regs.reset()
        regs.start()
        self.channel.start()

    def sleep(self, seconds):
        self.clock.sleep(seconds)

    def time(self):
        return self.clock.time()

    def close(self):
        pass
