"""The README says what the code does: the configuration table is the settings classes'."""

from __future__ import annotations

from pathlib import Path

from imagegen_cli.settings_docs import readme_with_table, service_settings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_configuration_table_matches_the_settings_classes() -> None:
    readme = README.read_text()
    assert readme_with_table(readme, settings_table()) == readme, "run `make docs` and commit README.md"


def test_every_setting_is_described() -> None:
    for service, cls in service_settings().items():
        for name, info in cls.model_fields.items():
            assert info.description, f"{service}: setting {name} has no description"


def test_setup_is_two_commands() -> None:
    readme = README.read_text()
    assert "make run " in readme and "make test " in readme
