"""The built-in demo reply for `python -m kit serve --demo word|char`."""

from __future__ import annotations

from kit.fakes import ScriptedSource
from kit.granularity import splitter

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
