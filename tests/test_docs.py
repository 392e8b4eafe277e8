"""The generated tables of docs/design.md match the contract they document."""

from pathlib import Path

from zipsgd import contract as c

DESIGN = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()


def _section(tag):
    return DESIGN.split(f"<!-- {tag} -->")[1].split(f"<!-- /{tag} -->")[0].strip()


def test_mode_table_is_current():
    assert _section("mode-table") == c.mode_table()


def test_register_table_is_current():
    assert _section("register-table") == c.register_table()
