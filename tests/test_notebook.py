"""The shipped notebook (``zipsgd notebook``) and its execution on the simulated board."""

import fnmatch
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

from zipsgd import cli

ROOT = Path(__file__).resolve().parents[1]
NAME = "zipsgd_train.ipynb"


def _outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_notebook_ships_clean_in_the_wheel():
    nbformat = pytest.importorskip("nbformat")
    shipped = cli.shipped_notebooks()
    assert [p.name for p in shipped] == [NAME]
    nb = nbformat.read(shipped[0], as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "ship without outputs"
    # the package-data entry of pyproject.toml puts it in the wheel
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    rel = shipped[0].relative_to(ROOT / "host" / "notebooks").as_posix()
    assert "zipsgd.notebooks" in st["packages"], st["packages"]
    assert any(fnmatch.fnmatch(rel, pat) for pat in st["package-data"].get("zipsgd.notebooks", [])), st


def test_notebook_command_copies_and_refuses_to_overwrite(tmp_path, capsys):
    dest = tmp_path / "nb"
    assert cli.main(["notebook", str(dest)]) == 0
    copied = dest / NAME
    assert copied.read_bytes() == cli.shipped_notebooks()[0].read_bytes()
    assert str(copied) in capsys.readouterr().out

    copied.write_text("my edits")
    assert cli.main(["notebook", str(dest)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("zipsgd: error:") and "--force" in err[0], err
    assert copied.read_text() == "my edits"

    assert cli.main(["notebook", str(dest), "--force", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert copied.read_bytes() == cli.shipped_notebooks()[0].read_bytes()

    assert cli.main(["notebook", str(copied)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_notebook_command_default_is_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["notebook"]) == 0
    assert (tmp_path / NAME).is_file()


def test_default_backend_follows_the_environment(monkeypatch):
    from zipsgd.backends import default_backend, select_backend

    monkeypatch.setenv("ZIPSGD_BACKEND", "cpu")
    assert select_backend() == ("cpu", "set by ZIPSGD_BACKEND")
    monkeypatch.setenv("ZIPSGD_BACKEND", "nope")
    with pytest.raises(ValueError, match="ZIPSGD_BACKEND='nope'"):
        default_backend()
    monkeypatch.delenv("ZIPSGD_BACKEND")
    # no PYNQ board on a test machine: the simulated board (or the CPU without the sim extras)
    from zipsgd.backends import backend_available
    assert default_backend() == ("sim" if backend_available("sim") else "cpu")


def test_default_backend_is_the_board_when_it_has_a_bitstream(tmp_path, monkeypatch):
    from zipsgd import backends as info

    monkeypatch.delenv("ZIPSGD_BACKEND", raising=False)
    monkeypatch.delenv("ZIPSGD_BITSTREAMS", raising=False)
    monkeypatch.setenv("ZIPSGD_BOARD", "pynq-z1")
    monkeypatch.setattr(info, "pynq_board_present", lambda: (True, "1 PYNQ device(s)"))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "bitstreams" / "pynq-z1"
    folder.mkdir(parents=True)
    (folder / "zipsgd.bit").write_bytes(b"bit")
    name, why = info.select_backend()
    assert name != "pynq" and "zipsgd.hwh" in why  # PYNQ needs the .hwh beside the .bit
    (folder / "zipsgd.hwh").write_text("<hwh/>")
    assert info.select_backend() == ("pynq", f"PYNQ board with {(folder / 'zipsgd.bit').resolve()}")
    monkeypatch.setenv("ZIPSGD_BOARD", "zcu104")
    assert info.default_backend() != "pynq"


@pytest.mark.xdist_group("verilator")
def test_notebook_runs_on_the_simulated_board(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from zipsgd.backends import backend_available
    if not backend_available("sim"):
        pytest.skip("the simulation extras are not installed")

    assert cli.main(["notebook", str(tmp_path), "--quiet"]) == 0
    path = tmp_path / NAME
    nb = nbformat.read(path, as_version=4)
    # the kernel inherits this process's environment
    monkeypatch.setenv("ZIPSGD_BACKEND", "sim")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    text = "\n".join(_outputs_text(c) for c in code)

    assert "backend='sim' (set by ZIPSGD_BACKEND)" in text
    # per-epoch table: 6 epochs, three positive losses each
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", text, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 7)), text
    assert all(float(v) > 0 for r in rows for v in r[1:])
    assert float(rows[-1][1]) < float(rows[0][1])  # the 4-bit loss falls
    ratios = [float(x) for x in re.findall(r"final training loss [\d.]+ = ([\d.]+) x float64", text)]
    assert len(ratios) == 2 and all(0.8 < r < 1.25 for r in ratios), text
    # engine counters from the RTL
    eff = {int(b): float(e) for b, e in re.findall(r"(\d+)-bit: \d+ cycles, \d+ beats, \d+ stalls, "
                                                   r"efficiency ([\d.]+); engine time", text)}
    assert set(eff) == {4, 32} and all(0.5 < e <= 1 for e in eff.values()), text
    assert eff[32] > eff[4]  # more beats per sample hide the batch-boundary stalls better
    r2 = [float(x) for x in re.findall(r"\d+-bit: R\^2 = ([\d.-]+)", text)]
    assert len(r2) == 2 and all(0.4 < v < 0.6 for v in r2), text
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "no plot"
    assert "backend='sim' equals the cpu reference bit for bit" in _outputs_text(code[-1])
    # the packed-file section: written beside the notebook, fitted on the board, equal to fit(X, y)
    assert (tmp_path / "diabetes_4bit.zsgd").is_file()
    assert re.search(r"fit\(packed\) on backend='sim' equals fit\(X, y\): R\^2 = 0\.\d+ \(transfers \d+\)", text), text
