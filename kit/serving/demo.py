"""The built-in demos behind `python -m kit serve --demo word|char|chain`: a paced scripted text, or a chain."""

from __future__ import annotations

from flask import Flask

from kit.pipeline.granularity import splitter
from kit.testing.fakes import ScriptedSource
from kit.web.app import create_app

DEMO_TEXT = (
    "Streaming makes a chatbot feel alive: the reply appears as it is written, not all at once. "
    "This demo streams a fixed text through the kit's pipeline, so you can watch **markdown**, "
    "emoji like 👩‍💻, 👍🏽 and 🇫🇷, accents like é and ñ, and other scripts such as 日本語, "
    "العربية and ग्रन्थ arrive without a single broken character.\n\n"
    "1. Words keep their spaces.\n2. Characters stay whole, even when a token ends mid-emoji.\n"
    "3. Fast streams are coalesced so the browser stays smooth."
)


def demo_source(granularity: str, delay_ms: float) -> ScriptedSource:
    """The demo text cut at `granularity` and paced at one piece every `delay_ms` milliseconds."""
    pieces = list(splitter(granularity)([DEMO_TEXT]))
    return ScriptedSource(pieces, delay_s=delay_ms / 1000)


DEMOS = ("word", "char", "chain")


def build_demo_app(demo: str, delay_ms: float) -> Flask:
    """The app behind `serve --demo NAME` (and, in each gunicorn worker, `serve --prod --demo NAME`)."""
    if demo == "chain":  # a LangChain chain on the embedded model; LangChain is imported for this demo only
        from kit.adapters.ready_made import demo_chain

        return create_app(demo_chain(), title="Deep Chat kit: chain demo")
    return create_app(demo_source(demo, delay_ms), granularity=demo, title=f"Deep Chat kit: {demo} demo")
