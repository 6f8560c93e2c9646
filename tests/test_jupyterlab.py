"""The tutorial itself, as a reader meets it: notebook 01 run in a local JupyterLab, chatting in its Deep Chat
iframe. (JupyterHub and remote servers: tests/test_hosted_notebooks.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.testing.browser import chromium_page
from tests.jupyter_servers import NOTEBOOK, Jupyter, jupyterlab
from tests.notebook_ui import Responses, run_tutorial


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Jupyter]:
    with jupyterlab(tmp_path) as running:
        yield running


@pytest.mark.timeout(300)
def test_notebook_01_runs_in_jupyterlab_and_its_deep_chat_streams_a_reply(lab: Jupyter) -> None:
    responses = Responses()
    with chromium_page(viewport={"width": 1400, "height": 1000}) as page:
        responses.watch(page)
        run = run_tutorial(page, f"{lab.lab_url(NOTEBOOK.name)}?token={lab.token}", lab.log.with_suffix(".png"))
    assert run.iframe_src.startswith("http://127.0.0.1:")  # the browser is on the kernel's machine
    assert responses.exactly(f"{run.iframe_src}chat-stream") == [200, 200], responses.seen
    # The page also tells the kit of the Stop (kit.web.blueprint's STOP_ROUTE), once: a reply that ended needs none.
    assert responses.exactly(f"{run.iframe_src}chat-stream/stop") == [200], responses.seen
    assert not responses.refused(), responses.refused()
    # Straight to the kit, the Stop reaches it: its next write fails and the source is stopped.
    assert run.stopped_end == "client_gone", run.stopped_end
