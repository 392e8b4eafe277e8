"""A PYNQ board behind the :class:`zipsgd.driver.Board` interface.

The overlay (``bitstreams/<board>/zipsgd.bit`` with its ``.hwh``) holds the engine
(``zipsgd_0``, bound to :class:`ZipsgdIP`) and an AXI DMA (``axi_dma_0``) whose
memory-to-stream channel feeds the engine's AXI4-Stream input. Nothing here uses a
hard-coded address: PYNQ reads them from the ``.hwh``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .driver import Board, DriverError

from .boards import BOARDS, ENGINE_VLNV  # noqa: F401  (re-exported)

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


class PynqBoard(Board):
    """A PYNQ board running the zipsgd overlay."""

    def __init__(self, ip, dma, name: str = "PYNQ board"):
        self.ip, self.dma, self.name = ip, dma, name
        self.clock_hz = float(getattr(_pynq().Clocks, "fclk0_mhz", 100.0)) * 1e6
        self.dma_max_bytes = int(getattr(dma, "buffer_max_size", 1 << 26))

    @classmethod
    def open(cls, board_or_path: str = "pynq-z2", download: bool = True) -> "PynqBoard":
        pynq = _pynq()
        bit = find_bitstream(board_or_path)
        _make_ip_class()  # registers the driver class before the overlay binds its IPs
        try:
            overlay = pynq.Overlay(str(bit), download=download)
        except Exception as exc:
            raise DriverError(f"could not load {bit} ({exc}); is this a PYNQ board? {DEPLOY_HINT}") from None
        for name in ("zipsgd_0", "axi_dma_0"):
            if not hasattr(overlay, name):
                raise DriverError(f"{bit} has no {name}: not a zipsgd bitstream")
        board = cls(overlay.zipsgd_0, overlay.axi_dma_0, name=f"PYNQ ({bit.parent.name})")
        board.overlay = overlay
        return board

    def read(self, offset):
        return int(self.ip.read(offset))

    def write(self, offset, value):
        self.ip.write(offset, int(value) & 0xFFFFFFFF)

    def allocate(self, n_words):
        import numpy as np
        buf = _pynq().allocate(shape=(n_words,), dtype=np.uint64)
        buf.free = buf.freebuffer
        return buf

    def dma_send(self, buffer, start_word, n_words):
        ch = self.dma.sendchannel
        if not ch.idle:
            ch.wait()          # the simple DMA holds one transfer at a time
        ch.transfer(buffer, start=start_word * 8, nbytes=n_words * 8)

    def dma_wait(self, timeout_s):
        end = time.monotonic() + timeout_s
        while not self.dma.sendchannel.idle:
            if time.monotonic() > end:
                return False
            time.sleep(1e-4)
        return True

    def sleep(self, seconds):
        time.sleep(seconds)

    def time(self):
        return time.monotonic()

    def close(self):
        pass
