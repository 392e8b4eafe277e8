"""What the CLI relies on below it: progress from the simulated and PYNQ backends, the
simulator build's announcement and cache folder, and the robust (quantile) scaling."""

import numpy as np
import pytest

from zipsgd import backends, cli, quant
from zipsgd.job import prepare_job
from zipsgd.result import Result


def _job(epochs=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    return prepare_job(X, X @ [1.0, 2.0, -1.0, 0.5], bits=4, epochs=epochs, copies=2)


# --------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------
def test_sim_backend_reports_start_and_end_and_says_so(monkeypatch, tmp_path, capsys):
    board = pytest.importorskip("zipsgd.sim.board")
    from zipsgd import reference

    def fake_run_jobs(jobs, params=None, **kw):
        cfg, streams, cb, opts = jobs[0]
        return [reference.run(cfg, streams, cb, params=params, **opts)]
    monkeypatch.setattr(board, "run_jobs", fake_run_jobs)
    monkeypatch.setattr(type(backends.BACKENDS["sim"]), "available", property(lambda self: True))
    seen = []
    job = _job()
    res = backends.run_job(job, "sim", progress=seen.append)
    assert seen == [0, 3] and res.model.shape == (job.dim,)
    # the CLI says how the simulated board reports progress
    monkeypatch.delenv("ZIPSGD_BACKEND", raising=False)
    assert cli.main(["train", "sklearn:diabetes", "--epochs", "2", "--backend", "sim"]) == 0
    err = capsys.readouterr().err
    assert "zipsgd: backend sim: the simulator runs all epochs in one go" in err


def test_pynq_backend_reports_the_engines_epochs(monkeypatch):
    test_driver = pytest.importorskip("test_driver")
    from zipsgd import pynq_board

    class CountingBoard(test_driver.FakeBoard):
        def read(self, offset):                   # EPOCHS_DONE: the epochs streamed so far
            if test_driver.NAMES[offset] == "EPOCHS_DONE":
                self._log(("r", "EPOCHS_DONE"))
                return len(self.sent)
            return super().read(offset)

    monkeypatch.setattr(pynq_board.PynqBoard, "open", classmethod(lambda cls, name: CountingBoard()))
    monkeypatch.setattr(type(backends.BACKENDS["pynq"]), "available", property(lambda self: True))
    seen = []
    backends.run_job(_job(epochs=3), "pynq", progress=seen.append)
    assert seen == [1, 2, 3, 3]


# --------------------------------------------------------------------------------------
# the simulator build: announced, cached outside site-packages
# --------------------------------------------------------------------------------------
def test_build_root_source_tree_env_and_wheel(monkeypatch, tmp_path):
    runner = pytest.importorskip("zipsgd.sim.runner")
    from zipsgd.hw.verilog import BUILD_DIR

    monkeypatch.delenv("ZIPSGD_BUILD_DIR", raising=False)
    assert runner.source_checkout()
    assert runner._build_root() == BUILD_DIR / "sim"
    # installed as a wheel: site-packages/zipsgd has no pyproject.toml
    monkeypatch.setattr(runner, "ROOT", tmp_path / "site-packages" / "zipsgd")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert runner._build_root() == tmp_path / "cache" / "zipsgd" / "sim"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runner._build_root() == tmp_path / "home" / ".cache" / "zipsgd" / "sim"
    monkeypatch.setenv("ZIPSGD_BUILD_DIR", str(tmp_path / "b"))
    assert runner._build_root() == BUILD_DIR / "sim"


def test_a_build_that_is_not_cached_is_announced(monkeypatch, tmp_path, capsys):
    runner = pytest.importorskip("zipsgd.sim.runner")

    class FakeRunner:
        builds = 0

        def _build_command(self):
            return [[]]

        def build(self, **kw):
            kw["build_dir"].mkdir(parents=True, exist_ok=True)
            FakeRunner.builds += 1

    monkeypatch.setattr(runner, "_build_root", lambda: tmp_path / "sim")
    monkeypatch.setattr(runner, "_runner", lambda simulator: FakeRunner())
    src = tmp_path / "top.v"
    src.write_text("module zipsgd_sim_board; endmodule\n")
    b = runner.build("icarus", [src], "zipsgd_sim_board", tag="w64")
    err = capsys.readouterr().err
    assert not b.reused and FakeRunner.builds == 1
    line, = err.splitlines()
    assert line.startswith("zipsgd: compiling the simulated board with icarus") and "80-100 s" in line
    assert str(b.build_dir) in line
    b = runner.build("icarus", [src], "zipsgd_sim_board", tag="w64")      # cached: silent
    assert b.reused and capsys.readouterr().err == ""
    src.write_text("module zipsgd_sim_board; wire a; endmodule\n")       # a new design: the last time said
    (b.build_dir / "build_seconds.txt").write_text("93.4\n")
    runner.build("icarus", [src], "zipsgd_sim_board", tag="w64")
    assert "about 93 s last time" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# scale="quantile"
# --------------------------------------------------------------------------------------
def test_quantile_scaler_clips_outliers():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    X[7, 0] = 1e6                                            # one outlier among 500
    X[:, 2] = 0.0
    X[[3, 9], 2] = 5.0                                       # a rare indicator keeps its range
    s = quant.Scaler("quantile").fit(X)
    Xs = s.transform(X)
    assert Xs[7, 0] == 1.0 and np.abs(Xs[:, 0]).max() == 1.0
    assert np.ptp(np.delete(Xs[:, 0], 7)) > 1.5               # the rest of the column keeps its spread
    lo, hi = np.sort(X[:, 0])[[1, -2]]
    assert s.center_[0] == pytest.approx((lo + hi) / 2) and s.half_[0] == pytest.approx((hi - lo) / 2)
    assert set(Xs[:, 2]) == {-1.0, 1.0}
    # tiny data: plain min/max; a memory-bounded pass gives the same range
    small = X[:3]
    np.testing.assert_array_equal(quant.Scaler("quantile").fit(small).half_, quant.Scaler("feature").fit(small).half_)
    np.testing.assert_array_equal(quant.trimmed_range(X, block_values=500), quant.trimmed_range(X))
    # no intercept: the trimmed max |x|
    big = np.abs(X[:, :1]).copy()
    assert quant.trimmed_abs_max(big)[0] == np.sort(big[:, 0])[-2]


def test_quantile_scale_in_jobs_and_packed_files(tmp_path):
    from zipsgd import packfile
    from zipsgd.job import SCALE_MODES

    assert "quantile" in SCALE_MODES
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 3))
    X[0, 1] = -1e7
    y = X[:, 0] + 0.1 * rng.normal(size=300)
    for fit_intercept in (True, False):
        job = prepare_job(X, y, scale="quantile", fit_intercept=fit_intercept, epochs=2)
        assert job.scale == "quantile" and np.abs(job.X_scaled).max() <= 1
        assert np.median(np.abs(job.X_scaled[:, 1])) > 0.05           # not squeezed onto one level
    packfile.write(tmp_path / "q.zsgd", X, y, scale="quantile")
    opened = packfile.open_packed(tmp_path / "q.zsgd")
    scaler = packfile._scaler_from(opened.header["scaler"])
    assert opened.header["scale"] == "quantile" and scaler.mode == "quantile"
    np.testing.assert_allclose(scaler.half_, quant.Scaler("quantile").fit(X).half_)
