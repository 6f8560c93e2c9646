"""The approval round trip (issue 18): in chromium on the kit's page, from the click on a card's Approve to the
first text of the continuation on screen, p50 and max, and the kit's share of it: that time minus the model's own
time to its first text (measured inside the model: from its call to its first piece).

The agent is the kit's demo agent (create_agent + HumanInTheLoopMiddleware on the SQLite checkpointer) on a scripted
tool-calling model, so the model's own time is known and small; what remains is the page, the resume route (the
claim in the store, the checkpoint read), LangGraph's resume (the middleware, the tool, checkpoint writes) and the
stream's first event. The real limit it is compared with: the same page's plain chat round trip (send to first
text) on a source that answers at once.

    python -m bench.bench_approvals [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from bench.measure import report
from kit import create_app
from kit.notebook import serve
from kit.serving.demo import demo_agent_app
from kit.testing.browser import chromium_page
from kit.testing.tool_model import ScriptedToolModel

# Counts the answer bubbles now, then resolves with the time the first new one shows text (performance.now()).
_FIRST_TEXT_AFTER = """(selector) => {
  const root = document.getElementById('chat').shadowRoot;
  const before = root.querySelectorAll('.ai-message-text').length;
  window.__firstText = new Promise((resolve) => {
    const check = () => {
      const bubbles = root.querySelectorAll('.ai-message-text');
      if (bubbles.length > before && bubbles[bubbles.length - 1].textContent.trim()) {
        observer.disconnect();
        resolve(performance.now());
      }
    };
    setTimeout(() => resolve(NaN), 15000); // never a hang: a lost round shows as NaN
    const observer = new MutationObserver(check);
    observer.observe(root, { childList: true, subtree: true, characterData: true });
  });
  window.__sent = performance.now();
  if (selector) document.querySelector(selector).click();
  // No selector: the user sends a message; the time is that of the Enter key.
  else window.addEventListener('keydown', (e) => { if (e.key === 'Enter') window.__sent = performance.now(); },
                               { capture: true });
  return window.__sent;
}"""


class TimedToolModel(ScriptedToolModel):
    """The scripted model, timing itself: from each call to its first piece (its own time to first text)."""

    own_ms: ClassVar[list[float]] = []

    def _stream(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        for index, chunk in enumerate(super()._stream(messages, *args, **kwargs)):
            if index == 0:
                self.own_ms.append((time.perf_counter() - started) * 1000)
            yield chunk


def _wait_for_card(page: Any) -> None:
    page.locator("#kit-interrupts .kit-approve").wait_for(timeout=15_000)


def _send(page: Any, text: str) -> None:
    page.locator("#text-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def _round_trip_ms(page: Any, selector: str | None) -> float:
    page.evaluate(_FIRST_TEXT_AFTER, selector)
    if selector is None:
        _send(page, "hi")
    return page.evaluate("window.__firstText") - page.evaluate("window.__sent")


def approval_figures(runs: int) -> dict[str, Any]:
    model = TimedToolModel(tool_call_for=lambda text: ("send_email", {"to": text, "subject": "Hi", "body": "Hello"}))
    with tempfile.TemporaryDirectory() as folder, chromium_page() as page:
        server = serve(demo_agent_app(Path(folder) / "t.sqlite", model, approvals=True), name="bench-approvals")
        page.goto(server.url)
        totals, own = [], []
        for index in range(runs + 1):
            _send(page, f"user{index}@example.com")
            _wait_for_card(page)
            model.own_ms.clear()
            total = _round_trip_ms(page, "#kit-interrupts .kit-approve")
            page.locator(".ai-message-text", has_text="Done:").nth(index).wait_for(timeout=15_000)
            if index:  # the first round warms the page and the imports up
                totals.append(total)
                own.append(model.own_ms[0])
        server.stop()
        plain = serve(create_app("Hi", thread_store=Path(folder) / "p.sqlite"), name="bench-approvals-plain")
        page.goto(plain.url)
        page.locator("#text-input").wait_for()  # Deep Chat is up: submitUserMessage works from here
        limits = [_round_trip_ms(page, None) for _ in range(runs)]
        plain.stop()
    shares = [total - mine for total, mine in zip(totals, own, strict=True)]
    return {
        "runs": runs,
        "click_to_first_text_ms": {"p50": statistics.median(totals), "max": max(totals)},
        "model_own_ms": {"p50": statistics.median(own), "max": max(own)},
        "kit_share_ms": {"p50": statistics.median(shares), "max": max(shares)},
        "plain_chat_send_to_first_text_ms": {"p50": statistics.median(limits), "max": max(limits)},
        "target_ms": 50,
    }


def describe(figures: dict[str, Any]) -> str:
    """A paragraph for docs/benchmarks.md."""
    share, total = figures["kit_share_ms"], figures["click_to_first_text_ms"]
    plain = figures["plain_chat_send_to_first_text_ms"]
    return (
        f"**Approvals** ({figures['runs']} round trips in chromium, demo agent on a scripted model, SQLite): click on "
        f"Approve to the continuation's first text {total['p50']:.1f} ms p50, {total['max']:.1f} ms max; the kit's "
        f"share (minus the model's own {figures['model_own_ms']['p50']:.2f} ms) {share['p50']:.1f} ms p50, "
        f"{share['max']:.1f} ms max (target under {figures['target_ms']} ms). The same page's plain chat, send to "
        f"first text on a fixed reply: {plain['p50']:.1f} ms p50."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    figures = approval_figures(args.runs)
    report(figures, describe, args.json)


if __name__ == "__main__":
    main()
