"""The conda environment and pyproject.toml list the same Python dependencies."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_section(environment_yml: str) -> set[str]:
    lines = environment_yml.splitlines()
    start = lines.index("  - pip:") + 1
    entries = [line.strip().removeprefix("- ") for line in lines[start:] if line.startswith("      - ")]
    return {entry for entry in entries if entry != "-e ."}


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared |= set(extra)
    assert pip_section((ROOT / "environment.yml").read_text()) == declared
