"""The Deep Chat page the kit serves: the vendored bundle, no CDN, no inline script."""

from __future__ import annotations

import html
import json
from pathlib import Path

from kit.pipeline.files import FileLimits, accepted_formats

STATIC_DIR = Path(__file__).parent / "static"
BUNDLE_PATH = STATIC_DIR / "vendor" / "deepChat.bundle.js"

# Model output is untrusted: scripts only from this server, so neither a `javascript:` link nor injected
# markup can run code; fonts only from here, so the page never calls a public font host.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; font-src 'self'; connect-src 'self'"
)

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/page.css">
<script type="application/json" id="kit-config">{config}</script>
<script type="module" src="static/vendor/deepChat.bundle.js"></script>
<script type="module" src="static/page.js"></script>
<script type="module" src="static/threads.js"></script>
<script type="module" src="static/interrupts.js"></script>
<script type="module" src="static/branches.js"></script>
</head>
<body>
{body}
</body>
</html>
"""

# A font family of its own, set before the component first renders, stops Deep Chat from fetching the
# Inter font from a public host.
_CHAT = (
    '<deep-chat id="chat" style="font-family: system-ui, sans-serif; width: 100%; height: 100vh; '
    'border: none"></deep-chat>'
)

_MISSING_BUNDLE = """<p class="kit-missing">The Deep Chat bundle is missing from {path}.
Run <code>make setup</code> in the kit's checkout to fetch the pinned <code>deep-chat</code> package.</p>"""


def render_page(
    title: str,
    intro: str = "Ask anything: the reply streams in as it is generated.",
    files: FileLimits | None = FileLimits(),  # noqa: B008  # frozen: one shared default is safe
) -> str:
    """The HTML of the chat page; its URLs are relative, so it also works under a path prefix. Its attachment
    button takes what `files` (the chat's limits, StreamSettings' `file_types`) accept; none with `files=None`
    or no types."""
    attach = {"accept": accepted_formats(files), "max": files.max_files} if files and files.types else None
    # The JSON sits in a non-executed <script>; escaping "<" keeps "</script>" in a title harmless.
    config = json.dumps({"title": title, "intro": intro, "files": attach}).replace("<", "\\u003c")
    body = _CHAT if BUNDLE_PATH.exists() else _MISSING_BUNDLE.format(path=html.escape(str(BUNDLE_PATH)))
    return _TEMPLATE.format(title=html.escape(title), config=config, body=body)
