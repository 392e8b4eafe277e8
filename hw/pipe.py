"""Register-level building blocks of the engine's lock-step pipelines.

Every stage of the engine is built from a few patterns, kept here so that each component
states *what* it registers and these helpers say *how*:

* :func:`delay` -- a value ``n`` cycles later (a valid bit is cleared by ``flush``).
* :func:`copies` -- ``n`` registers loaded with the same value, one per group of loads:
  a register that every lane reads would drive 1,000-2,000 loads spread over the die;
  each copy drives one lane group's and is placed next to it (``keep``, so that synthesis
  does not merge them).
* :func:`fanout_tree` -- ``n`` copies of a value through a tree of registered copies, for
  values that are static when they are used (the codebook writes, the L2 shift).
* :func:`adder_tree` -- a registered adder tree, two adder levels per stage.
* :func:`split_mul` -- a multiplication cut into 17 x 18 pieces (one DSP each) whose
  partial products are registered.

Data registers take no reset (valid bits and control do), so the reset net stays small.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Signal, signed

#: Unsigned bits of the low pieces of a split multiplication (17 x 18 fits one DSP).
PIECE = 17
#: Lanes that read one copy of a register every lane needs (see :func:`copies`).
REP_LANES = 4


def delay(m, value, n, name, flush=None):
    """``value`` delayed by ``n`` registers (cleared by ``flush`` and by reset when given: a
    valid bit; data registers take no reset, which keeps the reset net's fan-out small)."""
    prev = value
    for i in range(n):
        r = Signal(prev.shape(), name=f"{name}_d{i + 1}", reset_less=flush is None)
        m.d.sync += r.eq(prev if flush is None else Mux(flush, 0, prev))
        prev = r
    return prev


def copies(m, value, n, name, en=None):
    """``n`` registers all loaded with ``value`` (when ``en``): copies of one register for
    the lane groups, each placed next to the loads it drives. ``keep`` stops Vivado from
    merging them (the Yosys flows mark their flip-flops, see ``KEEP_COPIES`` in the synthesis
    flow). Data registers: no reset."""
    regs = [Signal(value.shape(), name=f"{name}_k{i}", reset_less=True, attrs={"keep": 1})
            for i in range(n)]
    upd = [r.eq(value) for r in regs]
    if en is None:
        m.d.sync += upd
    else:
        with m.If(en):
            m.d.sync += upd
    return regs


def tree_sizes(n, branch):
    """Copies per level of :func:`fanout_tree`, from the leaves up."""
    sizes = [n]
    while sizes[-1] > branch:
        sizes.append(-(-sizes[-1] // branch))
    return sizes


def fanout_tree(m, value, n, name, branch):
    """``n`` copies of ``value`` through a tree of registered copies, each feeding at most
    ``branch`` of the next level; returns (leaves, levels = cycles of latency)."""
    sizes = tree_sizes(n, branch)
    level = [value]
    for depth, size in enumerate(reversed(sizes)):
        nxt = []
        for i in range(size):
            parent = level[i * len(level) // size]
            nxt += copies(m, parent, 1, f"{name}_t{depth}_{i}")
        level = nxt
    return level, len(sizes)


def fanout_tree2(m, value, n, name):
    """``n`` copies of ``value`` two cycles later, through a two-level registered tree."""
    branch = 1
    while branch * branch < n:
        branch += 1
    leaves, levels = fanout_tree(m, value, n, name, branch)
    assert levels == 2 and len(leaves) == n
    return leaves


def adder_tree(m, inputs, name, levels_per_stage=2):
    """Registered adder tree; returns (sum signal, stages). ``inputs`` are values."""
    level = list(inputs)
    stages = 0
    while len(level) > 1:
        for _ in range(levels_per_stage):
            if len(level) == 1:
                break
            nxt = []
            for i in range(0, len(level) - 1, 2):
                nxt.append(level[i] + level[i + 1])
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        regs = []
        for i, v in enumerate(level):
            r = Signal(v.shape(), name=f"{name}_s{stages}_{i}", reset_less=True)
            m.d.sync += r.eq(v)
            regs.append(r)
        level = regs
        stages += 1
    return level[0], stages


def adder_tree_stages(n: int, levels_per_stage: int = 2) -> int:
    """Register stages of :func:`adder_tree` over ``n`` inputs."""
    levels = 0
    while (1 << levels) < n:
        levels += 1
    return -(-levels // levels_per_stage)


def pieces(width: int):
    """(lo, hi) bit ranges splitting a signed ``width``-bit operand into 17-bit unsigned
    pieces and a signed top piece of at most 18 bits."""
    out, lo = [], 0
    while width - lo > 18:
        out.append((lo, lo + PIECE))
        lo += PIECE
    out.append((lo, width))
    return out


def split_mul(m, a, b, name):
    """Registered partial products of ``a * b`` (``b`` cut into :func:`pieces`); returns
    their shifted sum as an expression (the caller registers it: 2 stages in all) and the
    list of (partial product, shift)."""
    parts = []
    bw = b.shape().width
    pcs = pieces(bw)
    for i, (lo, hi) in enumerate(pcs):
        piece = b[lo:hi].as_signed() if hi == bw else Cat(b[lo:hi], Const(0, 1)).as_signed()
        r = Signal(signed(a.shape().width + piece.shape().width), name=f"{name}_p{i}", reset_less=True)
        m.d.sync += r.eq(a * piece)
        parts.append((r, lo))
    acc = None
    for r, lo in parts:
        v = r << lo if lo else r
        acc = v if acc is None else acc + v
    return acc, parts
