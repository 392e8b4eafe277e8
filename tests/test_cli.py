"""`zipsgd` command line: train, outputs, one-line errors with exit status 2."""

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from zipsgd import cli
from zipsgd.datasets import load_data

KEYS = {"final_loss", "loss_curve", "baseline_float64_final_loss", "baseline_float64_loss_curve", "bits",
        "sampling", "levels", "backend", "bits_per_feature", "seconds", "optimum_loss", "ratio_to_optimum"}


@pytest.fixture(autouse=True)
def _train_default_backend(monkeypatch):
    """These tests run on the default backend of `zipsgd train`, whatever the environment says."""
    monkeypatch.delenv("ZIPSGD_BACKEND", raising=False)


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, match):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("zipsgd: error:"), err
    assert match in lines[0], err


def test_train_diabetes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "out" / "r.json", tmp_path / "r.png"
    code, out, err = _run(["train", "sklearn:diabetes", "--bits", "4", "--epochs", "3", "--step", "0.0625",
                           "--json", str(js), "--plot", str(png)], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert KEYS <= set(res)
    assert res["bits"] == 4 and res["sampling"] == "double" and res["levels"] == "uniform"
    assert res["backend"] == "cpu" and res["loss"] == "squared"
    assert len(res["loss_curve"]) == 3 and len(res["baseline_float64_loss_curve"]) == 3
    assert 0 < res["final_loss"] < 0.1 and 0 < res["baseline_float64_final_loss"] < 0.1
    assert res["final_loss"] / res["baseline_float64_final_loss"] < 1.2
    # the true optimum (least squares: closed form): below every model's loss, the ratio >= 1
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression
    X, y = load_diabetes(return_X_y=True)
    ols = LinearRegression().fit(X, y)
    r2_opt = ols.score(X, y)                  # L* = (1 - R²) var(y') / 2 in the scaled units
    scale = (np.abs(y - y.mean()).max()) ** 2
    assert abs(res["optimum_loss"] - (1 - r2_opt) * y.var() / scale / 2) < 1e-9
    assert 1.0 <= res["ratio_to_optimum"] < 1.2 and res["optimum_loss"] <= res["final_loss"]
    assert "optimum L*" in out
    assert res["bits_per_feature"] > 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "final loss" in out and "float64" in out
    assert not list(tmp_path.glob("**/.*.tmp")) and not list(tmp_path.glob(".*.png"))


def test_train_classifier_quiet(tmp_path, capsys):
    js = tmp_path / "c.json"
    code, out, err = _run(["train", "sklearn:breast_cancer", "--epochs", "2", "--bits", "2", "--sampling",
                           "nearest", "--levels", "optimal", "--json", str(js), "--quiet"], capsys)
    assert code == 0, err
    assert out == "" and err == ""
    res = json.loads(js.read_text())
    assert res["loss"] == "logistic" and res["levels"] == "optimal" and res["sampling"] == "nearest"


def _csv(path, rows, header=None):
    lines = ([",".join(header)] if header else []) + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_csv_target_column(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = X @ [1.0, -2.0, 0.5] + 3
    rows = np.column_stack([X[:, 0], y, X[:, 1:]])
    f = _csv(tmp_path / "d.csv", rows.tolist(), header=["a", "price", "b", "c"])
    ds = load_data(str(f), target="price")
    assert np.allclose(ds.y, y) and ds.X.shape == (50, 3)
    js = tmp_path / "o.json"
    code, _, err = _run(["train", str(f), "--target", "price", "--epochs", "2", "--json", str(js)], capsys)
    assert code == 0, err
    assert json.loads(js.read_text())["n_features"] == 3


@pytest.mark.parametrize("case", ["nan_csv", "mismatched_npz", "three_classes", "bits9", "over_capacity",
                                  "missing_file", "directory", "sampling", "backend_pynq", "bad_option",
                                  "bad_target"])
def test_errors_exit_2_one_line_no_json(case, tmp_path, capsys):
    js = tmp_path / "never.json"
    rng = np.random.default_rng(1)
    extra = []
    if case == "nan_csv":
        rows = rng.normal(size=(6, 3)).tolist()
        rows[2][1] = "nan"
        data, match = str(_csv(tmp_path / "nan.csv", rows)), "NaN"
    elif case == "mismatched_npz":
        np.savez(tmp_path / "m.npz", X=rng.normal(size=(10, 2)), y=rng.normal(size=9))
        data, match = str(tmp_path / "m.npz"), "different numbers of samples"
    elif case == "three_classes":
        np.savez(tmp_path / "c.npz", X=rng.normal(size=(12, 2)), y=np.arange(12) % 3)
        data, match, extra = str(tmp_path / "c.npz"), "the target has 3 classes", ["--loss", "logistic"]
    elif case == "bits9":
        data, match, extra = "sklearn:diabetes", "unsupported bits=9", ["--bits", "9"]
    elif case == "over_capacity":
        # 4096 feature columns + intercept > the default engine's dim_max of 4096
        rows = rng.integers(0, 9, size=(3, 4097)).tolist()
        data, match = str(_csv(tmp_path / "wide.csv", rows)), "capacity"
    elif case == "missing_file":
        data, match = str(tmp_path / "nope.svm"), "cannot read"
    elif case == "directory":
        data, match = str(tmp_path), "cannot read"
    elif case == "sampling":
        data, match, extra = "sklearn:diabetes", "unsupported sampling='triple'", ["--sampling", "triple"]
    elif case == "backend_pynq":
        data, match, extra = "sklearn:diabetes", "backend='pynq'", ["--backend", "pynq"]
    elif case == "bad_option":
        data, match, extra = "sklearn:diabetes", "--epochs", ["--epochs", "many"]
    else:
        data, match, extra = str(_csv(tmp_path / "t.csv", [[1, 2], [3, 4]], header=["a", "b"])), "price", \
            ["--target", "price"]
    code, out, err = _run(["train", data, "--epochs", "1", "--json", str(js)] + extra, capsys)
    _assert_one_line_error(code, err, match)
    assert not js.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".never")] == []


def test_dimension_over_a_tiny_engine(monkeypatch, tmp_path, capsys):
    from zipsgd import contract as c
    from zipsgd import job as J

    orig = J.prepare_job
    monkeypatch.setattr(J, "prepare_job", lambda *a, **k: orig(*a, **{**k, "params": c.EngineParams(dim_max=8)}))
    code, _, err = _run(["train", "sklearn:diabetes", "--epochs", "1", "--json", str(tmp_path / "x.json")], capsys)
    _assert_one_line_error(code, err, "dim_max=8")
    assert not (tmp_path / "x.json").exists()


def test_usage_errors_are_one_line(capsys):
    code, _, err = _run(["bench"], capsys)
    _assert_one_line_error(code, err, "required")
    code, _, err = _run(["bench", "nosuch"], capsys)
    _assert_one_line_error(code, err, "invalid choice")


def test_load_data_specs(tmp_path):
    assert load_data("sklearn:diabetes").task == "regression"
    d = load_data("sklearn:digits")
    assert set(np.unique(d.y)) == {0, 1} and d.X.shape == (1797, 64) and d.default_loss == "logistic"
    assert set(np.unique(load_data("sklearn:iris").y)) == {1, 2}
    assert load_data("sklearn:digits:3").y.sum() == 183
    with pytest.raises(ValueError, match="unknown scikit-learn dataset"):
        load_data("sklearn:mnist")
    svm = tmp_path / "a.svm"
    svm.write_text("1 1:0.5 3:2\n-1 2:1.5\n")
    ds = load_data(str(svm))
    assert ds.X.shape == (2, 3) and list(ds.y) == [1, -1] and ds.default_loss == "logistic"
    np.savez(tmp_path / "ok.npz", X=np.ones((4, 2)), y=np.arange(4.0))
    assert load_data(str(tmp_path / "ok.npz")).X.shape == (4, 2)
    np.savez(tmp_path / "bad.npz", A=np.ones(3))
    with pytest.raises(ValueError, match="needs arrays 'X' and 'y'"):
        load_data(str(tmp_path / "bad.npz"))
    (tmp_path / "junk.svm").write_text("this is not svmlight\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_data(str(tmp_path / "junk.svm"))


def test_bench_subcommand_wiring(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setitem(cli.BENCHES, "convergence", lambda args: seen.update(vars(args)) or 0)
    code, _, err = _run(["bench", "convergence", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert seen["quick"] is True and seen["out"] == str(tmp_path)
    # bench optimum hands its options to zipsgd.bench_optimum.main's argv
    from zipsgd import bench_optimum
    argvs = []
    monkeypatch.setattr(bench_optimum, "main", lambda argv: argvs.append(argv) or 0)
    code, _, err = _run(["bench", "optimum", "--quick", "--quiet", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert argvs == [["--out", str(tmp_path), "--quick", "--quiet"]]


# --------------------------------------------------------------------------------------
# unreadable files: one line, exit status 2
# --------------------------------------------------------------------------------------
def _npz_bytes(tmp_path, compressed=False):
    rng = np.random.default_rng(2)
    f = tmp_path / "whole.npz"
    (np.savez_compressed if compressed else np.savez)(f, X=rng.normal(size=(200, 4)), y=rng.normal(size=200))
    data = f.read_bytes()
    f.unlink()
    return data


@pytest.mark.parametrize("case", ["truncated_npz", "truncated_compressed_npz", "damaged_member_npz",
                                  "binary_svm", "not_utf8_csv", "truncated_csv_gz", "empty_npz"])
def test_unreadable_files_give_one_line(case, tmp_path, capsys):
    f = tmp_path / {"binary_svm": "d.svm", "not_utf8_csv": "d.csv", "truncated_csv_gz": "d.csv.gz"}.get(case, "d.npz")
    if case == "truncated_npz":
        data = _npz_bytes(tmp_path)
        f.write_bytes(data[:len(data) // 2])
    elif case == "truncated_compressed_npz":
        f.write_bytes(_npz_bytes(tmp_path, compressed=True)[:-100])
    elif case == "damaged_member_npz":       # the zip's directory intact, a member's compressed bytes not
        data = bytearray(_npz_bytes(tmp_path, compressed=True))
        data[200:400] = bytes(200)
        f.write_bytes(bytes(data))
    elif case == "binary_svm":
        f.write_bytes(bytes(range(256)) * 8)
    elif case == "not_utf8_csv":
        f.write_bytes(b"a,b\n1,\xff\xfe\n")
    elif case == "truncated_csv_gz":
        f.write_bytes(gzip.compress(b"a,b,y\n" + b"1,2,3\n" * 500)[:-40])
    else:
        f.write_bytes(b"")
    code, out, err = _run(["train", str(f), "--epochs", "1"], capsys)
    _assert_one_line_error(code, err, "cannot read")
    assert str(f) in err and "Traceback" not in err


@pytest.mark.parametrize("name, match", [("X.npy", "zipsgd pack X.npy --labels y.npy"),
                                         ("d.parquet", "Parquet"), ("d.xlsx", "spreadsheet"),
                                         ("d.json", "JSON"), ("d.pkl", "pickles")])
def test_other_formats_refused_by_name(name, match, tmp_path, capsys):
    f = tmp_path / name
    if name.endswith(".npy"):
        np.save(f, np.ones((3, 2)))
    else:
        f.write_bytes(b"PAR1....")
    code, _, err = _run(["train", str(f)], capsys)
    _assert_one_line_error(code, err, match)


# --------------------------------------------------------------------------------------
# outputs: checked first, all or none, normal permissions, the user's path in errors
# --------------------------------------------------------------------------------------
def _no_training(monkeypatch):
    from zipsgd import backends

    def fail(*a, **k):
        raise AssertionError("trained before checking the outputs")
    monkeypatch.setattr(backends, "run_job", fail)


@pytest.mark.parametrize("case", ["plot_is_dir", "json_is_dir", "plot_jpg", "plot_no_suffix", "under_a_file",
                                  "same_file"])
def test_output_paths_checked_before_training(case, tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    js, plot = tmp_path / "a.json", tmp_path / "p.png"
    (tmp_path / "DIR").mkdir()
    (tmp_path / "afile").write_text("x")
    match = {"plot_is_dir": "is a directory", "json_is_dir": "is a directory", "plot_jpg": "'.jpg'",
             "plot_no_suffix": "without a suffix", "under_a_file": "not a directory", "same_file": "same file"}[case]
    if case == "plot_is_dir":
        plot = tmp_path / "DIR"
    elif case == "json_is_dir":
        js = tmp_path / "DIR"
    elif case == "plot_jpg":
        plot = tmp_path / "p.jpg"
    elif case == "plot_no_suffix":
        plot = tmp_path / "curves"
    elif case == "under_a_file":
        js = tmp_path / "afile" / "a.json"
    else:
        js = plot = tmp_path / "both.svg"
    code, _, err = _run(["train", "sklearn:diabetes", "--epochs", "1", "--json", str(js), "--plot", str(plot)],
                        capsys)
    _assert_one_line_error(code, err, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "afile"]
    assert list((tmp_path / "DIR").iterdir()) == []


def test_a_failed_write_leaves_nothing_and_names_the_users_path(tmp_path, monkeypatch, capsys):
    js, plot = tmp_path / "new" / "deeper" / "r.json", tmp_path / "new" / "r.png"

    def broken_writer(*a, **k):
        def write(path):
            raise OSError(28, "No space left on device", str(path))
        return write
    monkeypatch.setattr(cli, "plot_writer", broken_writer)
    code, _, err = _run(["train", "sklearn:diabetes", "--epochs", "1", "--json", str(js), "--plot", str(plot),
                         "--quiet"], capsys)
    _assert_one_line_error(code, err, f"cannot write --plot {plot}: No space left on device")
    assert ".tmp" not in err
    assert list(tmp_path.iterdir()) == []          # no file, no temporary, no directory made for them


def test_outputs_get_normal_permissions_and_pdf(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        js, pdf, svg = tmp_path / "r.json", tmp_path / "r.pdf", tmp_path / "r.svg"
        code, _, err = _run(["train", "sklearn:diabetes", "--epochs", "2", "--json", str(js), "--plot", str(pdf),
                             "--quiet"], capsys)
        assert code == 0, err
        code, _, err = _run(["train", "sklearn:diabetes", "--epochs", "2", "--plot", str(svg), "--quiet"], capsys)
        assert code == 0, err
    finally:
        os.umask(old)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in svg.read_bytes()[:2000]
    for f in (js, pdf, svg):
        assert f.stat().st_mode & 0o777 == 0o644, oct(f.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.pdf", "r.svg"]
    # an existing file keeps its own permissions
    js.chmod(0o600)
    assert cli.main(["train", "sklearn:diabetes", "--epochs", "1", "--json", str(js), "--quiet"]) == 0
    assert js.stat().st_mode & 0o777 == 0o600


def test_json_is_strict(tmp_path, capsys):
    out = {"a": float("inf"), "b": [1.0, float("nan")], "c": {"d": -float("inf")}}
    cli.write_json_atomic(tmp_path / "s.json", out)
    text = (tmp_path / "s.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}


# --------------------------------------------------------------------------------------
# what the output says
# --------------------------------------------------------------------------------------
def test_regression_on_class_like_labels_warns(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 3))
    np.savez(tmp_path / "k.npz", X=X, y=np.arange(60) % 3)
    code, out, err = _run(["train", str(tmp_path / "k.npz"), "--epochs", "1", "--quiet"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zipsgd: warning:"), err
    assert "3 whole values (0, 1, 2)" in lines[0] and "--loss logistic" in lines[0]
    # a real-valued target, or one the user chose squared for, gets none
    np.savez(tmp_path / "r.npz", X=X, y=X @ [1.0, 2.0, 3.0])
    code, _, err = _run(["train", str(tmp_path / "r.npz"), "--epochs", "1", "--quiet"], capsys)
    assert code == 0 and err == ""
    code, _, err = _run(["train", str(tmp_path / "k.npz"), "--epochs", "1", "--quiet", "--loss", "squared"],
                        capsys)
    assert code == 0 and err == ""


def test_scores_in_the_users_units_and_the_classes(tmp_path, capsys):
    from sklearn.metrics import accuracy_score, r2_score

    js = tmp_path / "c.json"
    code, out, err = _run(["train", "sklearn:breast_cancer", "--epochs", "3", "--json", str(js)], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert res["classes"] == [0, 1]
    ds = load_data("sklearn:breast_cancer")
    pred = (ds.X @ res["coef"] + res["intercept"] > 0).astype(int)
    assert res["score"]["metric"] == "accuracy"
    assert res["score"]["engine"] == pytest.approx(accuracy_score(ds.y, pred), abs=0.01)
    assert 0.9 < res["score"]["engine"] <= 1 and 0.9 < res["score"]["baseline_float64"] <= 1
    assert "classes      0 (negative), 1 (positive)" in out
    assert "accuracy     " in out
    assert "engine loss*" in out and "on the quantized data" in out
    assert res["loss_curve_measured_on"] == "quantized data"

    code, out, err = _run(["train", "sklearn:diabetes", "--epochs", "4", "--step", "0.25", "--json", str(js)],
                          capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    ds = load_data("sklearn:diabetes")
    assert res["classes"] is None and res["score"]["metric"] == "r2"
    r2 = r2_score(ds.y, ds.X @ res["coef"] + res["intercept"])
    assert res["score"]["engine"] == pytest.approx(r2, abs=1e-6) and 0.3 < r2 < 0.6
    assert "R^2" in out


def test_text_class_labels_are_reported(tmp_path, capsys):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(80, 2))
    labels = np.where(X[:, 0] + X[:, 1] > 0, "spam", "ham")
    f = tmp_path / "mail.csv"
    f.write_text("a,b,kind\n" + "".join(f"{a},{b},{k}\n" for (a, b), k in zip(X, labels)))
    js = tmp_path / "m.json"
    code, out, err = _run(["train", str(f), "--epochs", "4", "--step", "0.25", "--json", str(js)], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert res["loss"] == "logistic" and res["classes"] == ["ham", "spam"]
    assert res["score"]["engine"] > 0.9
    assert "ham (negative), spam (positive)" in out


def test_epochs_are_numbered_from_one_everywhere(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # the plain progress lines
    js = tmp_path / "e.json"
    code, out, err = _run(["train", "sklearn:diabetes", "--epochs", "3", "--json", str(js)], capsys)
    assert code == 0, err
    assert [ln for ln in err.splitlines() if ln.startswith("epoch")] == \
        ["epoch 1/3 done", "epoch 2/3 done", "epoch 3/3 done"]
    table = [ln.split()[0] for ln in out.splitlines() if ln[:5].strip().isdigit()]
    assert table == ["1", "2", "3"]
    assert len(json.loads(js.read_text())["loss_curve"]) == 3


# --------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------
def test_csv_bom_gzip_and_line_numbers(tmp_path, capsys):
    rows = "".join(f"{i},{2 * i},{i % 2}\n" for i in range(20))
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffprice,b,label\n".encode() + rows.encode())
    ds = load_data(str(f), target="price")
    assert list(ds.y[:3]) == [0, 1, 2] and ds.X.shape == (20, 2)
    g = tmp_path / "d.csv.gz"
    g.write_bytes(gzip.compress(b"a,b,label\n" + rows.encode()))
    ds = load_data(str(g))
    assert ds.X.shape == (20, 2) and set(ds.y) == {0, 1} and ds.default_loss == "logistic"
    t = tmp_path / "d.tsv.gz"
    t.write_bytes(gzip.compress(rows.replace(",", "\t").encode()))
    assert load_data(str(t)).X.shape == (20, 2)
    # 1-based line numbers of the file, blank lines counted
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,y\n1,2,3\n\n4,x,6\n")
    with pytest.raises(ValueError, match=r"bad.csv line 4, column 2 \('b'\): not a number: 'x'"):
        load_data(str(bad))
    bad.write_text("a,b,y\n1,2,3\n\n\n4,,6\n")
    with pytest.raises(ValueError, match=r"line 5, column 2 \('b'\): missing value"):
        load_data(str(bad))
    bad.write_text("1,2,3\n\n4,5\n")
    with pytest.raises(ValueError, match=r"line 3: 2 columns, expected 3 \(as line 1\)"):
        load_data(str(bad))
    bad.write_text("a,b,y\n1,2,3\n4,5,\n")
    with pytest.raises(ValueError, match=r"line 3, column 3 \('y'\) \(the target\): missing value"):
        load_data(str(bad))


@pytest.mark.parametrize("name, text, match", [
    ("semi.csv", "a;b;y\n1;2;3\n4;5;6\n", "separated by semicolons (';'), not commas"),
    ("euro.csv", "1,5;2,5;3\n4,1;5,2;6\n", "separated by semicolons"),
    ("tabs.csv", "a\tb\ty\n1\t2\t3\n", "separated by tabs ('\\t'), not commas: name it .tsv"),
    ("commas.tsv", "a,b,y\n1,2,3\n", "separated by commas (','), not tabs: name it .csv"),
])
def test_csv_delimiter_hint(name, text, match, tmp_path, capsys):
    f = tmp_path / name
    f.write_text(text)
    code, _, err = _run(["train", str(f), "--epochs", "1"], capsys)
    _assert_one_line_error(code, err, match)


# --------------------------------------------------------------------------------------
# help, usage, the default backend
# --------------------------------------------------------------------------------------
def test_help_shows_defaults(capsys):
    for argv in (["train", "--help"], ["pack", "--help"], ["bench", "convergence", "--help"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "(default: " in out, argv
        if argv[0] == "train":
            for text in ("(default: 8)", "(default: double)", "(default: uniform)", "(default: 10)",
                         "(default: feature)", "(default: $ZIPSGD_BACKEND if set, else cpu"):
                assert text in out, text
            assert "(default: None)" not in out and "(default: False)" not in out


def test_bare_zipsgd_shows_usage(capsys):
    code, out, err = _run([], capsys)
    assert code == 2
    assert err.startswith("usage: zipsgd") and "train" in err and "info" in err and "--help" in err


def test_info_and_train_agree_on_the_backend(monkeypatch, tmp_path, capsys):
    from zipsgd import backends

    js = tmp_path / "r.json"
    for env in (None, "cpu"):
        if env:
            monkeypatch.setenv("ZIPSGD_BACKEND", env)
        assert cli.main(["info", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert cli.main(["train", "sklearn:diabetes", "--epochs", "1", "--quiet", "--json", str(js)]) == 0
        assert json.loads(js.read_text())["backend"] == info["train_backend"]["name"] == (env or cli.TRAIN_BACKEND)
        assert cli.main(["info"]) == 0
        text = capsys.readouterr().out
        assert f"train:       {info['train_backend']['name']} — zipsgd train" in text
    # --backend auto: what `zipsgd info` calls the backend (select_backend)
    assert cli.train_backend("auto") == backends.select_backend()


# --------------------------------------------------------------------------------------
# robust scaling
# --------------------------------------------------------------------------------------
def test_quantile_scaling_survives_an_outlier(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5))
    y = X @ [1.0, -2.0, 0.5, 1.5, -1.0] + 0.3 * rng.normal(size=1000)
    X[0, 0] = 1e6
    np.savez(tmp_path / "o.npz", X=X, y=y)
    r2 = {}
    for scale in ("feature", "quantile"):
        js = tmp_path / f"{scale}.json"
        code, _, err = _run(["train", str(tmp_path / "o.npz"), "--epochs", "10", "--step", "0.0625", "--scale",
                             scale, "--json", str(js), "--quiet"], capsys)
        assert code == 0, err
        r2[scale] = json.loads(js.read_text())["score"]["engine"]
    assert r2["feature"] < 0.9 < 0.98 < r2["quantile"], r2


def test_a_diverged_run_warns_and_its_json_says_so(tmp_path, capsys):
    """A step far too large: a warning line naming what happened (under --quiet too), no
    numpy noise, "diverged": true in strict JSON, and no ratio to a diverged baseline."""
    import json as _json

    out = tmp_path / "r.json"
    assert cli.main(["train", "sklearn:diabetes", "--step", "1.9", "--decay", "0", "--bits", "1", "--quiet",
                     "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "saturated" in err and "RuntimeWarning" not in err
    text = out.read_text()
    data = _json.loads(text)
    assert data["diverged"] is True and data["warnings"] and data["ratio_to_float64"] is None
    assert "NaN" not in text and "Infinity" not in text
    assert cli.main(["train", "sklearn:diabetes", "--quiet", "--json", str(out)]) == 0       # step="auto"
    assert _json.loads(out.read_text())["diverged"] is False


def test_train_early_stopping_and_class_weight(tmp_path, capsys):
    js = tmp_path / "r.json"
    code, out, err = _run(["train", "sklearn:diabetes", "--epochs", "40", "--decay", "0", "--tol", "0.01",
                           "--n-iter-no-change", "2", "--json", str(js)], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert res["stopped_early"] and res["epochs_run"] == len(res["loss_curve"]) < 40
    assert "stopped" in out and f"after {res['epochs_run']} of 40 epochs" in out
    assert res["saturated_batches"] == 0
    # class weights: the multipliers in the job, the weights by class name
    code, out, err = _run(["train", "sklearn:breast_cancer", "--epochs", "2", "--class-weight", "0=3,1=1",
                           "--json", str(js), "--quiet"], capsys)
    assert code == 0, err
    job = json.loads(js.read_text())["job"]
    assert job["step_mult_neg"] and abs(job["step_mult"] / job["step_mult_neg"] - 1 / 3) < 1e-3
    _assert_one_line_error(*_run(["train", "sklearn:breast_cancer", "--class-weight", "7=2"], capsys)[::2],
                           "not classes")
    _assert_one_line_error(*_run(["train", "sklearn:diabetes", "--class-weight", "balanced"], capsys)[::2],
                           "classifiers")


def test_train_low_precision_formats_and_solvers(tmp_path, capsys):
    js = tmp_path / "r.json"
    code, out, err = _run(["train", "sklearn:diabetes", "--epochs", "9", "--alpha", "0.001", "--solver", "halp",
                           "--model-format", "fixed8", "--copies", "4", "--json", str(js), "--quiet"], capsys)
    assert code == 0, err
    res = json.loads(js.read_text())
    assert res["solver"] == "halp" and res["model_format"] == "fixed8" and len(res["loss_curve"]) == 9
    assert 1.0 <= res["ratio_to_optimum"] < 1.05          # HALP on 8-bit data with an 8-bit offset
    code, out, err = _run(["train", "sklearn:diabetes", "--epochs", "3", "--model-format", "log8", "--rounding",
                           "nearest", "--json", str(js), "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(js.read_text())["rounding"] == "nearest"
    _assert_one_line_error(*_run(["train", "sklearn:diabetes", "--solver", "adam"], capsys)[::2], "--solver")
    _assert_one_line_error(*_run(["train", "sklearn:diabetes", "--model-format", "fixed99"], capsys)[::2],
                           "fixed99")
    _assert_one_line_error(*_run(["train", "sklearn:diabetes", "--solver", "svrg", "--backend", "sim"],
                                 capsys)[::2], "backend cpu only")


def test_demo_runs_on_the_cpu(tmp_path, capsys):
    """`zipsgd demo` (make demo's job) end to end on the cpu backend: every epoch of the fixed
    schedule printed (numbered from 1), the engine equal to the reference, a plot written."""
    png = tmp_path / "demo.png"
    code, out, err = _run(["demo", "--backend", "cpu", "--epochs", "5", "--out", str(png)], capsys)
    assert code == 0, err
    rows = [ln.split()[0] for ln in out.splitlines() if ln[:5].strip().isdigit()]
    assert rows == ["1", "2", "3", "4", "5"]
    assert "engine == reference: yes" in out and "NO" not in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
