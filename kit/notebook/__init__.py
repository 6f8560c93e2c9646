"""Notebooks: serve an app in the background and show Deep Chat in an iframe, the URL a browser reaches it by,
the stream inspector and its plots, child model servers. May import kit.serving, kit.web, kit.model and below.

`from kit.notebook import serve, show, stop_all` is what a tutorial needs.
"""

from kit.notebook.widget import labelled_box, running, serve, show, stop_all

__all__ = ["labelled_box", "running", "serve", "show", "stop_all"]
