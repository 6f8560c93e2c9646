"""Where the browser showing a notebook can reach a server that listens on the kernel's loopback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Via = Literal["localhost", "proxy", "colab"]

BASE_VARIABLE = "KIT_NOTEBOOK_BASE"
"""Set it to the Jupyter server's base URL (e.g. `/` or `https://hub.example.org/user/me/`) to go through
jupyter-server-proxy when the browser runs on another machine than the kernel."""


@dataclass(frozen=True)
class BrowserUrl:
    """A URL for the browser, how it was chosen (`via`) and why, in words for the notebook reader."""

    url: str
    via: Via
    why: str


def _proxy_url(base: str, port: int) -> str:
    # jupyter-server-proxy's /proxy/<port>/ strips its prefix before forwarding, and the kit's page uses
    # relative URLs only, so the page and its stream route both work under it.
    return f"{base.rstrip('/')}/proxy/{port}/"


def _in_colab(environ: Mapping[str, str]) -> bool:
    return "COLAB_RELEASE_TAG" in environ or "google.colab" in sys.modules


def _colab_url(port: int) -> str:
    from google.colab import output  # type: ignore[import-not-found]  # only exists inside Colab

    # The same facility as google.colab.output.serve_kernel_port_as_iframe: an https URL on Colab's
    # domain that forwards to the kernel machine's port, usable in an iframe and in a new tab.
    return str(output.eval_js(f"google.colab.kernel.proxyPort({port}, {{'cache': false}})"))


def browser_url(
    port: int,
    *,
    base: str | None = None,
    environ: Mapping[str, str] | None = None,
    colab_url: Callable[[int], str] = _colab_url,
) -> BrowserUrl:
    """Choose the URL a notebook's browser should use for a server on 127.0.0.1:`port`.

    In order: an explicit `base` (or the `KIT_NOTEBOOK_BASE` variable) means jupyter-server-proxy under
    that base; Colab means its kernel-port proxy; JupyterHub (`JUPYTERHUB_SERVICE_PREFIX`) means
    jupyter-server-proxy under the user's prefix; otherwise plain localhost.

    >>> browser_url(8000, environ={}).url
    'http://127.0.0.1:8000/'
    >>> browser_url(8000, environ={"JUPYTERHUB_SERVICE_PREFIX": "/user/ada/"}).url
    '/user/ada/proxy/8000/'
    """
    env = os.environ if environ is None else environ
    base = base if base is not None else env.get(BASE_VARIABLE)
    if base is not None:
        return BrowserUrl(_proxy_url(base, port), "proxy", f"jupyter-server-proxy under the base {base!r} you set")
    if _in_colab(env):
        return BrowserUrl(colab_url(port), "colab", "Colab's kernel-port proxy (google.colab.kernel.proxyPort)")
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix:
        return BrowserUrl(
            _proxy_url(prefix, port),
            "proxy",
            f"JupyterHub detected (JUPYTERHUB_SERVICE_PREFIX={prefix}): jupyter-server-proxy must be installed",
        )
    return BrowserUrl(
        f"http://127.0.0.1:{port}/",
        "localhost",
        f"plain localhost: the browser runs on the kernel's machine (set {BASE_VARIABLE} if it does not)",
    )
