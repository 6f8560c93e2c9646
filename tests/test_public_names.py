"""The public face: every name a user needs comes from `kit` (and `kit.notebook`), and the README, the docs and
the notebooks never reach deeper for one, so a move inside the kit never breaks a user's code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kit
import kit.notebook

REPO = Path(__file__).resolve().parent.parent
# The names the library issue promised, beside whatever else `kit` offers.
PROMISED = {
    "create_app", "create_blueprint", "ChatLlama", "LlamaSource", "LlamaSettings", "graph_source",
    "runnable_source", "callback_source", "openai_chat_model", "demo_chain", "serve", "show", "stop_all",
    "Role", "ChatError", "ServiceBusy", "CancelToken", "StreamSettings",
}  # fmt: skip
PUBLIC_PACKAGES = {"kit", "kit.notebook"}


def test_every_promised_name_is_public() -> None:
    assert set(kit.__all__) >= PROMISED, PROMISED - set(kit.__all__)


@pytest.mark.parametrize("name", kit.__all__)
def test_every_public_name_imports_from_kit(name: str) -> None:
    value = getattr(kit, name)
    assert value is not None
    assert name in dir(kit)


@pytest.mark.parametrize("name", kit.notebook.__all__)
def test_every_notebook_name_imports_from_kit_notebook(name: str) -> None:
    assert getattr(kit.notebook, name) is not None


def test_an_unknown_name_says_so() -> None:
    with pytest.raises(AttributeError, match="no attribute 'create_ap'"):
        kit.create_ap  # noqa: B018


def test_importing_kit_loads_nothing_heavy() -> None:
    # gunicorn imports the package in its master before gevent patches: nothing of Flask or LangChain may load.
    probe = "import sys, kit; print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'langchain_core')))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def _python_blocks(markdown: str) -> Iterator[str]:
    yield from re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _user_code() -> Iterator[tuple[str, str]]:
    """(where, code) for every Python snippet a user reads: README and docs code blocks, notebook cells."""
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for index, block in enumerate(_python_blocks(path.read_text())):
            yield f"{path.relative_to(REPO)} block {index + 1}", block
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for index, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                yield f"{path.relative_to(REPO)} cell {index + 1}", "".join(cell["source"])


def _kit_imports(code: str) -> Iterator[str]:
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kit":
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "kit")


def test_the_readme_docs_and_notebooks_import_only_public_names() -> None:
    snippets = list(_user_code())
    assert len(snippets) > 20  # the README's, the docs' and every notebook's code was read
    deeper = [(where, module) for where, code in snippets for module in _kit_imports(code)]
    deeper = [(where, module) for where, module in deeper if module not in PUBLIC_PACKAGES]
    assert not deeper, f"user-facing code reaches inside the kit: {deeper}"


def test_the_check_catches_a_deep_import() -> None:
    assert list(_kit_imports("from kit.model.chat_model import ChatLlama\nimport kit")) == [
        "kit.model.chat_model",
        "kit",
    ]
