"""`zipsgd` command line: train, outputs, one-line errors with exit status 2."""

import json

import numpy as np
import pytest

from zipsgd import cli
from zipsgd.datasets import load_data

KEYS = {"final_loss", "loss_curve", "baseline_float64_final_loss", "baseline_float64_loss_curve", "bits",
        "sampling", "levels", "backend", "bits_per_feature", "seconds"}


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


@pytest.mark.parametrize("case", ["nan_csv", "mismatched_npz", "three_classes", "bits3", "over_capacity",
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
        data, match, extra = str(tmp_path / "c.npz"), "two classes, got 3 classes", ["--loss", "logistic"]
    elif case == "bits3":
        data, match, extra = "sklearn:diabetes", "unsupported bits=3", ["--bits", "3"]
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
    code, _, err = _run([], capsys)
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
