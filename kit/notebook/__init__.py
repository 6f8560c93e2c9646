"""Notebooks: serve an app in the background and show Deep Chat in an iframe, the URL a browser reaches it by,
the stream inspector and its plots, child model servers. May import kit.serving, kit.web, kit.model and below.

`from kit.notebook import serve, show, stop_all` is what a tutorial needs; `Inspector` and `plot_streams`
watch and draw what the streams did; `start_llama_server` runs llama-cpp-python's OpenAI-compatible server.
"""

from kit.notebook.child_server import start_llama_server
from kit.notebook.inspector import Inspector
from kit.notebook.plots import plot_streams
from kit.notebook.widget import labelled_box, running, serve, show, stop_all

__all__ = ["Inspector", "labelled_box", "plot_streams", "running", "serve", "show", "start_llama_server", "stop_all"]
