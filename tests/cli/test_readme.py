"""The README's configuration table stays in step with :class:`conveyor.config.Settings`:
every setting is listed under its ``CONVEYOR_*`` variable, and no row names one that does
not exist."""

from __future__ import annotations

import re
from pathlib import Path

from conveyor.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
ENV_NAME = re.compile(r"\bCONVEYOR_[A-Z0-9_]+\b")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def setting_variables() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def configuration_table_variables() -> set[str]:
    """The ``CONVEYOR_*`` names in the table rows of the README's configuration section
    (from a heading that mentions configuration or settings to the next heading of the
    same or a higher level)."""
    assert README.is_file(), f"{README} is missing: it must document every setting"
    found: set[str] = set()
    section_level: int | None = None
    seen_section = False
    for line in README.read_text(encoding="utf-8").splitlines():
        heading = HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            if section_level is not None and level <= section_level:
                section_level = None
            if re.search(r"configur|settings", heading.group(2), re.IGNORECASE):
                section_level = level
                seen_section = True
            continue
        if section_level is not None and line.lstrip().startswith("|"):
            found.update(ENV_NAME.findall(line))
    assert seen_section, f"{README} has no configuration section (a heading 'Configuration')"
    return found


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    missing = sorted(setting_variables() - configuration_table_variables())
    assert not missing, f"settings missing from the README configuration table: {missing}"


def test_the_readme_configuration_table_names_no_unknown_variable() -> None:
    unknown = sorted(configuration_table_variables() - setting_variables())
    assert not unknown, f"README configuration table names variables Settings lacks: {unknown}"
