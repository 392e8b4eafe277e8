"""The codebook: the levels a code stands for, written by the host, read by every lane.

Each multiplier lane of the dot product and of the gradient reads its own LUT-RAM copy
(asynchronous read: a block RAM would put its slow clock-to-out before a multiplier); the
host's writes reach the copies through a registered tree (each register feeds at most
``BRANCH`` of the next level). The engine is idle while the host writes the codebook.

The bucket modes (codes of at most ``BUCKET_BITS_MAX`` bits) read the first ``LEVELS``
levels from registers instead (:attr:`Codebook.levels`).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from zipsgd.contract import FEAT

from .decode import BUCKET_BITS_MAX, CODE_BITS
from .pipe import fanout_tree, tree_sizes

#: Levels of the bucket modes' codes (2 ** BUCKET_BITS_MAX): bucket sums in the dot
#: product, the level table in the gradient.
LEVELS = 1 << BUCKET_BITS_MAX
#: Copies each register of the write tree feeds.
BRANCH = 4
#: A codebook write as the lanes' copies see it.
WRITE = data.StructLayout({"we": 1, "addr": CODE_BITS, "data": FEAT.width})


def lane_codebook(m, write, bits: int, name: str):
    """A LUT-RAM copy of the codebook's first ``2**bits`` levels, written from ``write``
    (a :data:`WRITE` value); returns its asynchronous read port (``addr``, ``data``)."""
    mem = Memory(shape=signed(FEAT.width), depth=1 << bits, init=[], attrs={"ram_style": "distributed"})
    m.submodules[name] = mem
    wp = mem.write_port()
    rp = mem.read_port(domain="comb")
    write = data.View(WRITE, write)
    m.d.comb += [wp.addr.eq(write.addr[:bits]), wp.data.eq(write.data.as_signed()),
                 wp.en.eq(write.we & (write.addr < (1 << bits)))]
    return rp


class Codebook(wiring.Component):
    """The codebook's write tree and the bucket modes' level registers.

    Parameters
    ----------
    copies : int
        LUT-RAM copies of the codebook (one per multiplier lane of the dot product and of
        the gradient).

    Members
    -------
    we, addr, data : In
        A write from the register block.
    writes : Out(ArrayLayout(WRITE, copies))
        The write as each copy sees it, ``WRITE_LATENCY`` cycles later.
    levels : Out(ArrayLayout(signed(FEAT.width), LEVELS))
        Levels ``0 .. LEVELS-1`` (registers, 1 cycle after the write).
    """

    def __init__(self, copies: int):
        self.copies = copies
        #: Cycles from a write to the copies: the input registers, then the tree.
        self.WRITE_LATENCY = 1 + len(tree_sizes(copies, BRANCH))
        super().__init__({
            "we": In(1), "addr": In(CODE_BITS), "data": In(FEAT.width),
            "writes": Out(data.ArrayLayout(WRITE, copies)),
            "levels": Out(data.ArrayLayout(signed(FEAT.width), LEVELS)),
        })

    def elaborate(self, platform):
        m = Module()
        # the write registered once (it fans out to every lane's copy)
        we = Signal(name="cb_we")
        addr = Signal.like(self.addr, name="cb_addr", reset_less=True)
        wdata = Signal.like(self.data, name="cb_data", reset_less=True)
        m.d.sync += [we.eq(self.we), addr.eq(self.addr), wdata.eq(self.data)]
        levels = Array(Signal(signed(FEAT.width), name=f"lvl{k}", reset_less=True) for k in range(LEVELS))
        with m.If(we & (addr < LEVELS)):
            m.d.sync += levels[addr[:BUCKET_BITS_MAX]].eq(wdata.as_signed())
        m.d.comb += [self.levels[k].eq(levels[k]) for k in range(LEVELS)]
        leaves, depth = fanout_tree(m, Cat(we, addr, wdata), self.copies, "cbw", BRANCH)
        assert 1 + depth == self.WRITE_LATENCY
        m.d.comb += [self.writes[i].eq(leaf) for i, leaf in enumerate(leaves)]
        return m
