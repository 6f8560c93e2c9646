"""Chat with a document on the embedded model: time to first text for a question about an attached 2,000-token text
file, against the same text pasted into the message (the prompt's reading is the floor), and the kit's own cost of
reading an upload (the multipart body parsed and each file read: a 2,000-token text, a 2 MiB text, a 200-page PDF).

Both requests go through a real server on loopback to `LlamaSource` (greedy, no prefix reuse, so each reads its
whole prompt), alternating, `--runs` times each. The pasted message is exactly the text the model gets for the
attachment (its question and the file as a named section), so the two prompts are the same tokens.

    python -m bench.bench_documents [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Any

import httpx
from flask import Flask

from bench.measure import report, summary
from kit import LlamaSource, create_app, stream_chat
from kit.pipeline.files import FileLimits, with_files_text
from kit.serving.client import multipart_body
from kit.serving.server import BackgroundServer
from kit.web.chat_request import parse_chat_request

QUESTION = "What is the secret word in the file?"
SENTENCE = "The harbour log notes that the tide was normal and that the pier stayed quiet all night. "
TOKENS = 2_000


def document(source: LlamaSource, tokens: int = TOKENS) -> str:
    """A text of about `tokens` tokens of the model's tokenizer, with the secret word in the middle."""
    per_sentence = len(source.engine.tokenize(SENTENCE))
    count = max(tokens // per_sentence, 2)
    lines = [SENTENCE] * count
    lines[count // 2] = "The secret word is PAPAYA. "
    return "".join(lines)


def first_text_s(url: str, text: str, files: list[tuple[str, bytes, str]]) -> float:
    """Seconds from sending to the first text event."""
    reply = stream_chat(url, text, files=files, timeout=900)
    assert reply.status == 200 and not reply.errors, reply.errors
    first = next(item.at for item in reply.items if item.payload and item.payload.get("text"))
    return first - reply.started


def reading_cost_ms(files: list[tuple[str, bytes, str]], repeats: int) -> dict[str, float]:
    """Milliseconds the kit spends parsing a multipart body with these files and reading them (no model)."""
    body = multipart_body([{"role": "user", "text": QUESTION}], files)
    app = Flask(__name__)
    request = httpx.Request("POST", "http://x/chat", data=body["data"], files=body["files"])
    raw = request.read()
    times = []
    for _ in range(repeats):
        with app.test_request_context(
            "/chat", method="POST", input_stream=io.BytesIO(raw), content_type=request.headers["Content-Type"]
        ) as context:
            started = time.perf_counter()
            parse_chat_request(context.request, FileLimits())
            times.append((time.perf_counter() - started) * 1000)
    return summary(times)


def run(runs: int) -> dict[str, Any]:
    source = LlamaSource(temperature=0, max_tokens=16, prefix_reuse=False)
    text = document(source)
    data = text.encode()
    attachment = {"name": "harbour.txt", "type": "text/plain", "kind": "text", "content": text}
    pasted = with_files_text(QUESTION, [attachment])
    with BackgroundServer(create_app(source, thread_store=False)) as server:
        url = server.url + "chat-stream"
        first_text_s(url, QUESTION, [])  # the model loads
        attached_s, pasted_s = [], []
        for _ in range(runs):
            attached_s.append(first_text_s(url, QUESTION, [("harbour.txt", data, "text/plain")]))
            pasted_s.append(first_text_s(url, pasted, []))
    from tests.documents import pdf  # the test suite's PDF maker: one line of text a page

    # A 2 MiB text: the largest one file may hold by default (max_file_bytes).
    big = (SENTENCE * (2 * 1024 * 1024 // len(SENTENCE)))[: 2 * 1024 * 1024 - 1].encode()
    reading = {
        "2,000-token text": reading_cost_ms([("harbour.txt", data, "text/plain")], 50),
        "2 MiB text": reading_cost_ms([("big.txt", big, "text/plain")], 10),
        "200-page PDF": reading_cost_ms([("long.pdf", pdf([SENTENCE] * 200), "application/pdf")], 3),
    }
    return {
        "tokens": len(source.engine.tokenize(pasted)),
        "attached_s": summary(attached_s),
        "pasted_s": summary(pasted_s),
        "ratio": statistics.median(attached_s) / statistics.median(pasted_s),
        # The fastest run of each is the least disturbed by other work on the machine: the fairer comparison.
        "ratio_fastest": min(attached_s) / min(pasted_s),
        "reading_ms": reading,
        "runs": runs,
    }


def describe(figures: dict[str, Any]) -> str:
    """The section for docs/benchmarks.md."""
    attached, pasted = figures["attached_s"], figures["pasted_s"]
    lines = [
        "### Chat with a document",
        "",
        f"A question about an attached text file on the embedded model (a {figures['tokens']:,}-token prompt, "
        f"greedy, no prefix reuse; medians over {figures['runs']} runs, min-max in brackets), against the same "
        "text pasted into the message, which is the floor: the prompt's reading.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| time to first text, file attached, s | {_spread(attached)} |",
        f"| time to first text, text pasted (the floor), s | {_spread(pasted)} |",
        f"| attached ÷ pasted (same run): medians / fastest runs | {figures['ratio']:.3f} / "
        f"{figures['ratio_fastest']:.3f} |",
    ]
    for name, cost in figures["reading_ms"].items():
        lines.append(f"| the kit reading the upload ({name}): parse and read, ms | {cost['median']:.2f} |")
    return "\n".join(lines) + "\n"


def _spread(figure: dict[str, float]) -> str:
    return f"{figure['median']:.2f} ({figure['min']:.2f}-{figure['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    report(run(args.runs), describe, args.json)


if __name__ == "__main__":
    main()
