"""Rough timing analyses of ECP5 netlists, where nextpnr gives no answer or too little.

:func:`estimate_paths`: register-to-register arrival times through a ``synth_ecp5``
netlist nextpnr cannot place (cell delays measured with nextpnr on tiny designs, one
routing hop per net). :func:`wire_culprits`: after a placement (``--no-route``), which
wires and which launching registers are behind the endpoints over the period. Both name
design signals (:func:`.ecp5.signal_of`) and ``hw/*.py`` lines (:func:`.ecp5.hw_source`).
Hand-set delays: a guide to where a design is slow, not a timing sign-off.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .ecp5 import hw_source, signal_of

#: Delays (ns) of the unplaced estimate (:func:`estimate_paths`), ECP5 speed grade 6, read off
#: nextpnr-ecp5 timing reports of tiny placed designs (``route``: one general routing hop,
#: 0.9-1.4 ns there; dedicated carry / wide-mux links cost 0). ``pfumx_sel`` and
#: ``dpr_read`` are guesses (not measured). Against nextpnr the estimate is within
#: -40 % .. +30 % on small designs; spread-out placement (long nets between DSPs and
#: logic) is what it misses, so it errs on the fast side for big designs.
ECP5_DELAYS = {
    "ff_clk_q": 0.525, "ebr_clk_q": 5.83, "ebr_outreg_clk_q": 0.96, "lut4": 0.236, "pfumx": 0.165, "pfumx_sel": 0.30,
    "l6mux": 0.242, "ccu2_in_cout": 0.447, "ccu2_cin_cout": 0.071, "ccu2_in_s": 0.403,
    "ccu2_cin_s": 0.403, "mult": 3.927, "dpr_read": 0.40, "route": 0.9,
}

_DEDICATED = {("PFUMX", "ALUT"), ("PFUMX", "BLUT"), ("L6MUX21", "D0"), ("L6MUX21", "D1"), ("CCU2C", "CIN")}


def _arc(kind: str, ipin: str, opin: str, dl: dict):
    """Delay of a combinational arc ``ipin -> opin`` of an ECP5 cell (None: no arc)."""
    if kind == "LUT4":
        return dl["lut4"]
    if kind == "PFUMX":
        return dl["pfumx_sel"] if ipin == "C0" else dl["pfumx"]
    if kind == "L6MUX21":
        return dl["pfumx_sel"] if ipin == "SD" else dl["l6mux"]
    if kind == "MULT18X18D":
        return dl["mult"] if opin.startswith("P") else None
    if kind == "TRELLIS_DPR16X4":
        return dl["dpr_read"] if ipin.startswith("RAD") and opin.startswith("DO") else None
    if kind == "CCU2C":
        if ipin == "CIN":
            return {"S0": dl["ccu2_cin_s"], "S1": dl["ccu2_cin_cout"] + dl["ccu2_cin_s"],
                    "COUT": dl["ccu2_cin_cout"]}[opin]
        bit = ipin[-1]
        if opin == "COUT":
            return dl["ccu2_in_cout"]
        if opin == "S" + bit:
            return dl["ccu2_in_s"]
        return dl["ccu2_in_cout"] + dl["ccu2_cin_s"] if bit == "0" else None
    return None


#: Sequential ECP5 cells: output pins launched at clock-to-out, input pins that are endpoints.
_SEQ = {
    "TRELLIS_FF": ("ff_clk_q", ("DI", "CE", "LSR", "M")),
    "DP16KD": ("ebr_clk_q", None),              # every input but the clocks
    "TRELLIS_DPR16X4": (None, ("DI", "WAD", "WRE")),
}


#: nextpnr-ecp5's pre-routing wire estimate (``predictDelay`` at speed grade 6): 0.12 ns
#: per unit of ``3 + 2 * (min(dx, 5) + min(dy, 5)) + max(dx - 5, 0) + max(dy - 5, 0)``
#: tiles between driver and load.
ECP5_WIRE_UNIT = 0.12


def ebr_clk_q(cell: dict, pin: str, dl: dict) -> float:
    """Clock-to-out of a DP16KD output pin (``DOA*`` / ``DOB*``): with the port's output
    register (``REGMODE = OUTREG``, see :func:`.ecp5.absorb_ebr_output_registers`) or without."""
    reg = str(cell["parameters"].get(f"REGMODE_{pin[2]}", "NOREG")).strip()
    return dl["ebr_outreg_clk_q"] if reg == "OUTREG" else dl["ebr_clk_q"]


def _placed_wire(a, b) -> float:
    if a is None or b is None:
        return 0.0
    dx, dy = abs(a[0] - b[0]), abs(a[1] - b[1])
    return ECP5_WIRE_UNIT * (3 + 2 * (min(dx, 5) + min(dy, 5)) + max(dx - 5, 0) + max(dy - 5, 0))


def wire_culprits(placed: Path, period: float = 8.0, n: int = 12) -> dict:
    """Which nets make a placed design slow: a rough timing analysis of nextpnr's placed
    (not routed) netlist (``--write``), with nextpnr's distance-based wire estimate and
    coarse cell delays (:data:`ECP5_DELAYS`). For every register endpoint over ``period``
    it finds the longest wire on the worst path into it, and groups those wires by design
    signal family (digits as ``#``: ``core.hit1_k#`` stands for every lane's copy). Returns
    ``endpoints`` (all), ``failing``, and ``culprits``: up to ``n`` dicts
    ``signal``, ``endpoints`` (failing ones it explains), ``wire`` (worst, ns), ``fanout``;
    and ``starts``: the same failing endpoints grouped by the register (or block RAM,
    multiplier) their worst path is launched from, with its ``endpoints`` and the three
    commonest ``ends`` (a static configuration register there could take more copy
    stages at no cost in cycles; a per-beat one costs a pipeline cycle).
    """
    d = json.loads(Path(placed).read_text())
    mods = list(d["modules"].values())
    mod = next((m for m in mods if m.get("attributes", {}).get("top")), mods[0])
    cells = mod["cells"]
    dl = ECP5_DELAYS
    loc = {}
    for name, cell in cells.items():
        m = re.match(r"X(\d+)/Y(\d+)/", cell.get("attributes", {}).get("NEXTPNR_BEL", ""))
        loc[name] = (int(m.group(1)), int(m.group(2))) if m and "PACKER" not in name else None
    drv, ins = {}, {}
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            for b in bits:
                if isinstance(b, str):
                    continue
                if cell["port_directions"].get(port) == "output":
                    drv[b] = (name, port)
                else:
                    ins.setdefault(name, []).append((port, b))
    names = {}
    for nn, nd in mod["netnames"].items():
        for b in nd["bits"]:
            if isinstance(b, int) and (b not in names or names[b].startswith("$") and not nn.startswith("$")):
                names[b] = nn
    fanout = {}
    for lst in ins.values():
        for _, b in lst:
            fanout[b] = fanout.get(b, 0) + 1

    def seq(cell):
        if cell["type"] in ("TRELLIS_FF", "DP16KD"):
            return True
        return cell["type"] == "MULT18X18D" and any(str(v).strip().startswith("CLK")
                                                     for k, v in cell["parameters"].items() if k.startswith("REG_"))

    def launch(cell, pin):
        t = cell["type"]
        if t == "DP16KD":
            return ebr_clk_q(cell, pin, dl)
        return dl["mult"] if t == "MULT18X18D" else dl["ff_clk_q"]

    write_pins = {"WD", "WAD0", "WAD1", "WAD2", "WAD3", "WRE", "WCK", "DI0", "DI1"}
    clocks = {"CLK", "CLKA", "CLKB", "CLK0", "CLK1", "CLK2", "CLK3", "WCK"}
    arr, prev, visiting = {}, {}, set()

    def wire_of(b, sink):
        src = drv.get(b)
        if src is None or src[1] == "FCO" or cells[src[0]]["type"] == "TRELLIS_RAMW":
            return 0.0
        return _placed_wire(loc.get(src[0]), loc.get(sink))

    def arrival(b):                       # iterative depth-first: carry chains run deep
        stack = [b]
        while stack:
            x = stack[-1]
            if x in arr:
                stack.pop()
                continue
            src = drv.get(x)
            if src is None or loc.get(src[0]) is None and "PACKER" in src[0]:
                arr[x], prev[x] = 0.0, None
                stack.pop()
                continue
            cname, opin = src
            cell = cells[cname]
            if seq(cell):
                arr[x], prev[x] = launch(cell, opin), None
                stack.pop()
                continue
            pend = [ib for ip, ib in ins.get(cname, ()) if ip not in write_pins and ip not in clocks
                    and ip not in ("LSR", "CE") and ib not in arr and ib not in visiting]
            if pend:                      # (a bit met again on its own path closes a loop:
                visiting.add(x)           # counted as launched at 0)
                stack.extend(pend)
                continue
            best, pv = 0.0, None
            for ip, ib in ins.get(cname, ()):
                if ip in write_pins or ip in clocks or ip in ("LSR", "CE"):
                    continue
                if cell["type"] == "TRELLIS_COMB":
                    cd = (dl["ccu2_cin_cout"] if ip == "FCI" else dl["ccu2_in_cout"]) if opin == "FCO" \
                        else dl["l6mux"] if opin == "OFX" else dl["lut4"]
                else:
                    cd = dl["mult"] if cell["type"] == "MULT18X18D" else dl["lut4"]
                t = arr.get(ib, 0.0) + wire_of(ib, cname) + cd
                if t > best:
                    best, pv = t, ib
            arr[x], prev[x] = best, pv
            visiting.discard(x)
            stack.pop()
        return arr[b]

    ends = []
    for name, cell in cells.items():
        if seq(cell):
            pins = [(ip, ib) for ip, ib in ins.get(name, ()) if ip not in clocks]
        elif cell["type"] == "TRELLIS_COMB":
            pins = [(ip, ib) for ip, ib in ins.get(name, ()) if ip in write_pins - {"WCK", "DI0", "DI1"}]
        else:
            continue
        for ip, ib in pins:
            ends.append((arrival(ib) + wire_of(ib, name), name, ib))
    failing = [e for e in ends if e[0] > period]

    def family(name):                     # per-lane copies together
        return re.sub(r"\d+", "#", signal_of(name))

    def family_of(bit):
        return family(names.get(bit, str(bit)))

    groups, starts = {}, {}
    for _, sink, ib in failing:
        best = (wire_of(ib, sink), ib)
        b, seen = ib, set()
        while prev.get(b) is not None and b not in seen:
            seen.add(b)
            pb = prev[b]
            w = wire_of(pb, drv[b][0])
            if w > best[0]:
                best = (w, pb)
            b = pb
        sig = family_of(best[1])
        g = groups.setdefault(sig, {"signal": sig, "endpoints": 0, "wire": 0.0, "fanout": 0})
        g["endpoints"] += 1
        g["wire"] = max(g["wire"], best[0])
        g["fanout"] = max(g["fanout"], fanout.get(best[1], 0))
        start = family_of(b)
        st = starts.setdefault(start, {"signal": start, "endpoints": 0, "ends": {}})
        st["endpoints"] += 1
        q = cells[sink]["connections"].get("Q", [None])[0]      # a flip-flop: its register's name
        end = family_of(q) if isinstance(q, int) else family(sink)
        st["ends"][end] = st["ends"].get(end, 0) + 1
    culprits = sorted(groups.values(), key=lambda g: -g["endpoints"])[:n]
    launch_points = sorted(starts.values(), key=lambda g: -g["endpoints"])[:n]
    for st in launch_points:
        st["ends"] = sorted(st["ends"], key=lambda e: -st["ends"][e])[:3]
    return {"endpoints": len(ends), "failing": len(failing), "culprits": culprits, "starts": launch_points}


def estimate_paths(netlist: Path, top: str = "zipsgd_top", period: float = 8.0, n_paths: int = 6,
                   delays: dict | None = None) -> dict:
    """Unplaced timing estimate of a ``synth_ecp5`` JSON netlist (for designs nextpnr cannot place).

    Arrival times through the mapped cells with the :data:`ECP5_DELAYS` model (cell arcs
    measured with nextpnr, one ``route`` delay per general net), register to register
    (top-level ports are unconstrained, as in nextpnr's out-of-context run). Ranks the
    register endpoints; the figures are an estimate, placement can add a lot to the routing.

    Returns
    -------
    dict
        ``worst`` (ns), ``fmax`` (MHz), ``period``, ``n_endpoints``, ``n_failing`` (over
        ``period``), ``families`` (endpoint signal family -> (count over period, worst ns)),
        ``paths`` (worst distinct start/end families: ``delay``, ``start``, ``end``,
        ``luts``, ``muxes``, ``carry``, ``mults``, ``ebr_start``, ``nets``, ``sources``).
    """
    dl = dict(ECP5_DELAYS, **(delays or {}))
    mod = json.loads(Path(netlist).read_text())["modules"][top]
    names = {}
    for name, nn in mod["netnames"].items():
        key = (nn.get("hide_name", 0), "$" in name, len(name))
        src = nn.get("attributes", {}).get("src", "")
        for i, bit in enumerate(nn["bits"]):
            if isinstance(bit, int) and (bit not in names or key < names[bit][0]):
                names[bit] = (key, name if len(nn["bits"]) == 1 else f"{name}[{i}]", src)
    arr, pred = {}, {}
    comb, driver, endpoints = {}, {}, []
    for cname, cell in mod["cells"].items():
        kind, dirs, conns = cell["type"], cell["port_directions"], cell["connections"]
        if kind in _SEQ:
            launch, ends = _SEQ[kind]
            for pin, bits in conns.items():
                if dirs[pin] == "output" and launch:
                    for bit in bits:
                        if isinstance(bit, int):
                            arr[bit] = ebr_clk_q(cell, pin, dl) if kind == "DP16KD" else dl[launch]
                elif dirs[pin] == "input" and not pin.startswith("CLK") and pin != "WCK" \
                        and (ends is None or pin in ends):
                    endpoints.extend((cname, kind, pin, bit) for bit in bits if isinstance(bit, int))
            if kind != "TRELLIS_DPR16X4":
                continue
        comb[cname] = cell
        for pin, bits in conns.items():
            if dirs[pin] == "output":
                for bit in bits:
                    if isinstance(bit, int):
                        driver[bit] = cname
    # Kahn order over the combinational cells
    users, indeg = {}, {}
    for cname, cell in comb.items():
        deps = set()
        for pin, bits in cell["connections"].items():
            if cell["port_directions"][pin] == "input":
                for bit in bits:
                    d = driver.get(bit) if isinstance(bit, int) else None
                    if d is not None and d != cname:
                        deps.add(d)
        indeg[cname] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(cname)
    ready = [cn for cn, k in indeg.items() if k == 0]
    while ready:
        cname = ready.pop()
        cell = comb[cname]
        kind, dirs, conns = cell["type"], cell["port_directions"], cell["connections"]
        ins = [(pin, bit) for pin, bits in conns.items() if dirs[pin] == "input"
               for bit in bits if isinstance(bit, int)]
        for opin, obits in conns.items():
            if dirs[opin] != "output":
                continue
            for obit in obits:
                if not isinstance(obit, int):
                    continue
                best = None
                for ipin, ibit in ins:
                    a = _arc(kind, ipin, opin, dl)
                    if a is None:
                        continue
                    r = 0.0 if (kind, ipin) in _DEDICATED else dl["route"]
                    if ibit not in arr:         # constant or top-level input: unconstrained
                        continue
                    t = arr[ibit] + r + a
                    if best is None or t > best[0]:
                        best = (t, ibit, cname, kind)
                if best:
                    arr[obit] = best[0]
                    pred[obit] = best[1:]
        for u in users.get(cname, ()):
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)

    def family(sig):
        head, _, last = sig.rpartition(".")
        return (head + "." if head else "") + re.sub(r"\d+", "#", last)

    timed = []
    for cname, kind, pin, bit in endpoints:
        if bit in arr:
            timed.append((arr[bit] + dl["route"], cname, kind, pin, bit))
    timed.sort(key=lambda e: -e[0])
    families = {}
    for t, cname, kind, pin, bit in timed:
        fam = family(signal_of(cname)) + f" ({kind}.{re.sub(r'[0-9]+$', '', pin)})"
        cnt, worst = families.get(fam, (0, 0.0))
        families[fam] = (cnt + (t > period), max(worst, t))

    def trace(bit):
        chain = []
        while bit in pred:
            ibit, cname, kind = pred[bit]
            chain.append((bit, cname, kind))
            bit = ibit
        return bit, chain[::-1]

    paths, seen = [], set()
    for t, cname, kind, pin, bit in timed:
        if len(paths) >= n_paths:
            break
        start_bit, chain = trace(bit)
        start = names.get(start_bit, (None, f"net {start_bit}", ""))[1]
        end_sig = signal_of(cname)
        key = (family(signal_of(start)), family(end_sig))
        if key in seen:
            continue
        kinds = [k for _, _, k in chain]
        nets, sources = [], []
        for b in [start_bit] + [b for b, _, _ in chain]:
            _, nm, src = names.get(b, (None, "", ""))
            sig = signal_of(nm)
            if sig and not sig.startswith("$") and sig not in nets:
                nets.append(sig)
            for part in src.split("|"):
                h = hw_source(part)
                if h and h not in sources:
                    sources.append(h)
        # one path per (start, end) family and per (start, first sources): a shared control
        # path to many enables is listed once
        key2 = (key[0], tuple(sources[:4]))
        if key2 in seen:
            continue
        seen.update((key, key2))
        carry = sum(1 for i, (b, cn, k) in enumerate(chain) if k == "CCU2C" and i
                    and chain[i - 1][2] == "CCU2C")
        paths.append({
            "delay": t, "start": signal_of(start), "end": f"{end_sig} ({kind}.{pin})",
            "luts": kinds.count("LUT4"), "muxes": kinds.count("PFUMX") + kinds.count("L6MUX21"),
            "carry": carry, "mults": kinds.count("MULT18X18D"),
            "ebr_start": arr.get(start_bit) in (dl["ebr_clk_q"], dl["ebr_outreg_clk_q"]),
            "nets": nets, "sources": sources,
        })
    worst = timed[0][0] if timed else 0.0
    return {"worst": worst, "fmax": 1000.0 / worst if worst else float("inf"), "period": period,
            "n_endpoints": len(timed), "n_failing": sum(1 for e in timed if e[0] > period),
            "families": dict(sorted(families.items(), key=lambda kv: -kv[1][1])), "paths": paths}
