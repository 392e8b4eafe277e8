"""zipsgd.bench_optimum, quick run: every part present and its numbers sane (issue 16 part 4)."""

import json

import numpy as np
import pytest

from zipsgd import bench_optimum as B
from zipsgd import formats as fm


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimum")
    assert B.main(["--quick", "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "optimum_quick.json").read_text()), (out / "optimum_quick.md").read_text()


def test_every_part_is_reported(quick):
    res, text = quick
    for k in "abcdef":
        assert res[k], k
    for title in ("a. ZipML", "b. ZipML", "c. TinyScript", "d. Li & De Sa", "e. HALP", "f. Reused copies"):
        assert title in text


def test_a_nearest_and_single_end_on_their_predicted_points(quick):
    for r in quick[0]["a"]:
        if r["sampling"] != "double":
            assert abs(r["ratio"] - r["predicted"]) <= 0.25 * (r["predicted"] - 1), r
            assert r["ratio"] > 1.5 if r["bits"] == 1 else r["ratio"] > 1.1


def test_bc_scan_stops_at_the_first_width_within_one_percent(quick):
    for part in "bc":
        rows = quick[0][part]
        for key in dict.fromkeys((r["data"], r["levels"], r["scale"]) for r in rows):
            rs = [r for r in rows if (r["data"], r["levels"], r["scale"]) == key]
            assert [r["bits"] for r in rs] == list(range(1, len(rs) + 1))
            assert all(not r["pass"] for r in rs[:-1])
            assert all(r["ratio"] > 1.0 - 1e-3 and r["float64_ratio"] >= 1.0 - 1e-6 for r in rs)
            assert rs[0]["ratio"] > rs[-1]["ratio"]                    # 1 bit is the worst
            code = [r["code_bits"] for r in rs]
            assert code == sorted(code)                                # more bits never stream less
        for c in quick[0][f"{part}_checks"]:
            if c["base_bits"] and c["other_bits"]:
                assert c["pass"] == (c["other_bits"] < c["base_bits"])


def test_d_floor_follows_the_l1_term_for_float8(quick):
    rows = [r for r in quick[0]["d"] if r["format"] == "float:e4m3"]
    assert len(rows) == 2
    for r in rows:
        assert r["predicted"] / 3 - 0.005 <= r["floor"] <= 3 * r["predicted"] + 0.005, r
        assert r["float64_ratio"] < 1.05


def test_d_ulp_and_predicted_floor():
    f = fm.parse("fixed8.6")
    assert np.all(B.ulp(f, [0.0, 0.3, -1.9]) == 2.0 ** -6)
    g = fm.parse("float:e4m3")
    # 0.3 lies in [2**-2, 2**-1): step 2**-5; the denormals share the smallest binade's step 2**-9
    assert B.ulp(g, [0.3])[0] == 2.0 ** -5 and B.ulp(g, [0.0])[0] == 2.0 ** -9


def test_f_more_copies_less_bias(quick):
    rows = quick[0]["f"]
    big = max(r["d"] for r in rows)
    rs = {r["copies"]: r for r in rows if r["d"] == big}
    fresh = rs[max(rs)]
    assert rs[1]["ratio"] > fresh["ratio"] and rs[1]["predicted"] > rs[4]["predicted"] > 1.0


def test_unknown_part_is_refused():
    with pytest.raises(SystemExit):
        B.main(["--parts", "x"])
