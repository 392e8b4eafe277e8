"""Packed files (``zipsgd pack``, ``.zsgd``): the same words as an in-memory job, read back
memory-mapped, refused with a one-line error when they are not what they claim, written
whole or not at all; the estimators and the CLI train from them; the reference reads any
stream in chunks with the same result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zipsgd import contract as c
from zipsgd import packfile, reference
from zipsgd.job import job_from_packed, prepare_job


def _data(n=700, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)


@pytest.mark.parametrize("bits,sampling,chunk", [(4, "double", None), (2, "single", 64), (8, "nearest", 100),
                                                 (32, "double", 64)])
def test_packed_file_holds_the_in_memory_job(tmp_path, bits, sampling, chunk):
    """Packed chunk by chunk from a memory-mapped X, the file's copies equal prepare_job's
    words (same chunking) and training from it equals training in memory."""
    X, y = _data()
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    pk = packfile.write(tmp_path / "a.zsgd", Xm, y, bits=bits, sampling=sampling, copies=3, seed=4, chunk_rows=chunk)
    assert all(isinstance(s, np.memmap) for s in pk.streams)
    mem = prepare_job(X, y, bits=bits, sampling=sampling, copies=3, seed=4, epochs=5, chunk_rows=chunk)
    job = job_from_packed(pk, epochs=5, step=2.0 ** -6, decay=0)       # prepare_job's defaults
    assert len(job.streams) == 3 and all(np.array_equal(a, b) for a, b in zip(mem.streams, job.streams))
    assert job.config == mem.config
    r_mem = reference.run(mem.config, mem.streams, mem.codebook)
    r_file = reference.run(job.config, job.streams, job.codebook)
    assert np.array_equal(r_mem.model, r_file.model) and r_mem.loss_sums == r_file.loss_sums
    assert job.unscale(r_file.model)[1] == mem.unscale(r_mem.model)[1]


def test_chunked_reference_equals_whole_epochs(monkeypatch):
    """The reference decodes in chunks of whole batches; the result does not depend on it."""
    X, y = _data(n=301)
    job = prepare_job(X, y, bits=4, epochs=3, batch_size=7, copies=2, seed=1)
    whole = reference.run(job.config, job.streams, job.codebook)
    monkeypatch.setattr(reference, "CHUNK_SAMPLES", 10)
    parts = reference.run(job.config, job.streams, job.codebook)
    assert np.array_equal(whole.model, parts.model) and whole.loss_sums == parts.loss_sums


def test_estimators_fit_a_packed_file(tmp_path):
    from zipsgd import SGDClassifier, SGDRegressor

    X, y = _data()
    pk = packfile.write(tmp_path / "r.zsgd", X, y, bits=4, copies=2, seed=3)
    a = SGDRegressor(bits=4, copies=2, random_state=3, max_iter=4).fit(X, y)
    b = SGDRegressor(max_iter=4).fit(pk)
    assert np.array_equal(a.coef_, b.coef_) and a.intercept_ == b.intercept_
    assert b.packed_settings_["bits"] == 4 and b.n_features_in_ == X.shape[1]
    assert b.predict(X[:5]).shape == (5,)
    assert b.job_.X_scaled is None                     # nothing of the data is held
    with pytest.raises(ValueError, match="without y"):
        SGDRegressor().fit(pk, y)
    yc = (y > 0).astype(int) + 3
    pc = packfile.write(tmp_path / "c.zsgd", X, yc, loss="logistic", bits=8, copies=2)
    clf = SGDClassifier(max_iter=3).fit(pc)
    assert list(clf.classes_) == [3, 4] and clf.coef_.shape == (1, X.shape[1])
    assert set(clf.predict(X[:20])) <= {3, 4}
    with pytest.raises(ValueError, match="packed for loss='logistic'"):
        SGDClassifier(loss="hinge").fit(pc)


def test_bad_files_are_refused_in_one_line(tmp_path):
    X, y = _data(n=50)
    good = packfile.write(tmp_path / "g.zsgd", X, y, bits=4, copies=1)
    raw = good.path.read_bytes()
    cases = {
        "magic": b"NOTAPACK" + raw[8:],
        "truncated": raw[:-100],
        "version": raw[:8] + (7).to_bytes(4, "little") + raw[12:],
    }
    for name, data in cases.items():
        (tmp_path / f"{name}.zsgd").write_bytes(data)
        with pytest.raises(packfile.PackFileError) as exc:
            packfile.open_packed(tmp_path / f"{name}.zsgd")
        assert "\n" not in str(exc.value) and str(tmp_path / f"{name}.zsgd") in str(exc.value)
    # a file packed for another contract
    size = int.from_bytes(raw[12:16], "little")
    head = json.loads(raw[16:16 + size])
    head["contract_version"] = [1, 0]
    text = json.dumps(head).encode().ljust(size)
    (tmp_path / "old.zsgd").write_bytes(raw[:16] + text + raw[16 + size:])
    with pytest.raises(packfile.PackFileError, match="packed for contract"):
        packfile.open_packed(tmp_path / "old.zsgd")


def test_a_failed_pack_leaves_nothing(tmp_path):
    X, y = _data(n=50)
    X[30, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        packfile.write(tmp_path / "x.zsgd", X, y)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="ends in .zsgd"):
        packfile.write(tmp_path / "x.bin", X, y)


def test_cli_packs_and_trains(tmp_path):
    from zipsgd.cli import main

    X, y = _data(n=300)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "d.zsgd"
    assert main(["pack", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"), "-o", str(out), "--bits", "4",
                 "--copies", "2", "--quiet"]) == 0
    assert main(["train", str(out), "--epochs", "3", "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    job = job_from_packed(packfile.open_packed(out), epochs=3)
    ref = reference.run(job.config, job.streams, job.codebook)
    assert res["packed_file"] and res["baseline_float64_final_loss"] is None
    assert res["loss_curve"] == [float(v) for v in ref.loss_curve(job.n_samples)]
    assert main(["pack", str(tmp_path / "X.npy"), "-o", str(tmp_path / "e.zsgd")]) == 2     # no --labels
    assert main(["train", str(tmp_path / "X.npy.zsgd")]) == 2                               # no such file
    assert c.CONTRACT_VERSION == tuple(packfile.open_packed(out).header["contract_version"])


def test_a_job_too_large_for_memory_is_refused_before_any_work(monkeypatch):
    """In memory, a job that would not fit is refused with the numbers and the remedy;
    packed to a file it needs no such room."""
    from zipsgd import info, job

    lay = c.Layout(64, c.encoding_for("double", 8), 8, 91)
    need = job.memory_estimate(5_000_000, 91, 4, lay)
    assert need > 2 << 30                       # 5 M x 90 at 8 bits: gigabytes of copies
    with pytest.raises(MemoryError, match=r"needs about .* MiB .* 512 MiB are available: pack it .*zipsgd pack"):
        job.check_memory(5_000_000, 91, 4, lay, available=512 << 20)
    job.check_memory(1000, 91, 4, lay, available=512 << 20)
    assert info.memory_available("MemTotal: 2 kB\nMemAvailable:  1000 kB\n") == 1000 * 1024
    X, y = _data(n=40)
    monkeypatch.setattr(info, "memory_available", lambda: 1000)
    with pytest.raises(MemoryError, match="zipsgd pack"):
        prepare_job(X, y, bits=4)
