"""The tutorials' nbval markers: a marker nbval does not recognise silently turns into an output comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nbval.plugin import comment_markers

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def marker_lines(notebook: Path) -> list[str]:
    """Every comment line of a code cell that mentions an nbval marker, stripped of '#' and spaces."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [
        line.strip().lstrip("#").strip()
        for cell in cells
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if line.strip().startswith("#") and "NBVAL" in line
    ]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_every_nbval_marker_is_one_nbval_recognises(notebook: Path) -> None:
    # nbval matches the whole comment: "# NBVAL_IGNORE_OUTPUT: why" is not a marker, so the cell's model
    # output would be compared with the committed one and fail on another machine.
    unrecognised = [line for line in marker_lines(notebook) if line not in comment_markers]
    assert unrecognised == []


def test_the_tutorials_are_found() -> None:
    assert len(NOTEBOOKS) >= 4
