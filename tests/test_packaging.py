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
    environment = (ROOT / "environment.yml").read_text()
    # llama-cpp-python is built by the script the file's header names, with the pinned version (no AMX kernels).
    (llama,) = {entry for entry in declared if entry.startswith("llama-cpp-python")}
    version = llama.split("==")[1]
    assert f'scripts/ensure-llama-wheel.sh "$(command -v python)" {version}' in environment
    assert pip_section(environment) == declared - {llama}
