"""The README's settings table is the one generated from the model."""

from __future__ import annotations

from pathlib import Path

from config.docs import README, current_table, replace_table, settings_table


def test_readme_table_is_up_to_date() -> None:
    text = README.read_text(encoding="utf-8")
    assert current_table(text) == settings_table(), (
        "README.md's settings table is stale: run `python -m config.docs --write`"
    )


def test_every_setting_is_described() -> None:
    table = settings_table()
    assert all(not row.endswith("|  |") for row in table.splitlines()[2:])


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- settings-table:start -->\nold\n<!-- settings-table:end -->\nend\n")
    from config.docs import main

    main(["--write", "--readme", str(readme)])
    text = readme.read_text()
    assert text == replace_table(
        "# t\n<!-- settings-table:start -->\n<!-- settings-table:end -->\nend\n", settings_table()
    )
    assert text.startswith("# t\n<!-- settings-table:start -->\n| setting |")
    assert text.endswith("|\n<!-- settings-table:end -->\nend\n")
