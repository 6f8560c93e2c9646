"""What the browser sees: Deep Chat rendering a fast reply, per-character events against coalesced ones."""

from __future__ import annotations

from typing import Any

from bench.measure import summary
from kit import create_app
from kit.pipeline.settings import StreamSettings
from kit.serving.server import BackgroundServer
from kit.testing.browser import chromium_page
from kit.testing.fakes import ScriptedSource

# Installed before the page's scripts: time the last byte of the stream, observe long tasks, and time
# the frame at which the last AI bubble first shows the whole reply.
_INSTRUMENT = """
window.__bench = {lastByte: null, rendered: null, longTasks: [], expected: null};
new PerformanceObserver(list => {
  for (const entry of list.getEntries()) window.__bench.longTasks.push([entry.startTime, entry.duration]);
}).observe({type: "longtask", buffered: true});
const originalFetch = window.fetch;
window.fetch = async (...args) => {
  const response = await originalFetch(...args);
  if (!String(args[0]).includes("chat-stream")) return response;
  const [forPage, forClock] = response.body.tee();
  (async () => {
    const reader = forClock.getReader();
    while (!(await reader.read()).done) {}
    window.__bench.lastByte = performance.now();
  })();
  return new Response(forPage, response);
};
function watchRender() {
  const chat = document.querySelector("deep-chat");
  const bubbles = chat && chat.shadowRoot ? chat.shadowRoot.querySelectorAll(".ai-message-text") : [];
  const last = bubbles.length > 1 ? bubbles[bubbles.length - 1] : null;
  if (window.__bench.expected && last && last.innerText.length >= window.__bench.expected) {
    window.__bench.rendered = performance.now();
    return;
  }
  requestAnimationFrame(watchRender);
}
requestAnimationFrame(watchRender);
"""


def reply_text(chars: int) -> str:
    words = ("streaming", "tokens", "render", "smoothly", "in", "the", "browser")
    out, index = [], 0
    while sum(map(len, out)) < chars:
        out.append(words[index % len(words)] + " ")
        index += 1
    return "".join(out)[:chars].rstrip() + "."


def one_run(coalesce_ms: float, chars: int, chars_per_s: float) -> dict[str, float]:
    """Stream `chars` one character at a time at `chars_per_s` into Deep Chat and time what it shows."""
    text = reply_text(chars)
    source = ScriptedSource(list(text), delay_s=1.0 / chars_per_s)
    app = create_app(source, coalesce_ms=coalesce_ms, granularity="char")
    # bypass_csp: the page forbids eval, which Playwright needs for wait_for_function (the kit is unchanged).
    with BackgroundServer(app) as server, chromium_page(bypass_csp=True) as page:
        page.add_init_script(_INSTRUMENT)
        page.goto(server.url)
        page.evaluate(f"window.__bench.expected = {len(text)}")
        page.locator("#text-input").click()
        page.keyboard.type("go")
        started = page.evaluate("performance.now()")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "window.__bench.rendered !== null && window.__bench.lastByte !== null",
            timeout=(chars / chars_per_s) * 1000 * 4 + 30_000,
            polling=100,
        )
        bench: dict[str, Any] = page.evaluate("window.__bench")
        shown = page.locator(".ai-message-text").last.inner_text()
    if shown != text:
        raise AssertionError("Deep Chat did not show exactly the streamed text")
    tasks = [duration for start, duration in bench["longTasks"] if start >= started]
    return {
        "render_lag_ms": max(0.0, bench["rendered"] - bench["lastByte"]),
        "stream_s": (bench["lastByte"] - started) / 1000,
        "long_tasks": len(tasks),
        "long_task_ms": sum(tasks),
    }


def run(
    runs: int = 3,
    chars: int = 20_000,
    chars_per_s: float = 2_000.0,
    windows: tuple[float, ...] = (0.0, StreamSettings.coalesce_ms),
) -> dict[str, Any]:
    """Median and spread of each figure, per coalescing window (0 = one event per character)."""
    results: dict[str, Any] = {"chars": chars, "chars_per_s": chars_per_s, "runs": runs, "windows": {}}
    for window in windows:
        samples = [one_run(window, chars, chars_per_s) for _ in range(runs)]
        results["windows"][f"{window:g} ms"] = {key: summary([s[key] for s in samples]) for key in samples[0]}
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(runs=1, chars=4000), indent=1))
