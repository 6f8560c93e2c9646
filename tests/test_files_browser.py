"""Attachments on the kit's own page in Debian's chromium, with the real Deep Chat bundle: the attachment button
takes a text file and an image, the source reads both, and a reload shows the user's bubble with both files again
(the image as a thumbnail served from the thread store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit import create_app
from kit.pipeline.sources import Message
from kit.testing.browser import chromium_page
from tests.documents import PNG, SECRET
from tests.helpers import wait_until
from tests.test_threads_browser import bubbles

QUESTION = "What is the secret word in the file?"


def reader(messages: list[Message]) -> list[str]:
    """Answers with what it was given: each file's name and kind, and a text file's content."""
    files = messages[-1].get("files", [])
    return [
        " / ".join(f"{f['name']} ({f['kind']}): {f['content'] if f['kind'] == 'text' else f['size']}" for f in files)
    ]


def shown_files(page: Any) -> list[list[str]]:
    """Per user bubble on the page: the file names and image sources Deep Chat rendered."""
    return page.locator(".deep-chat-outer-container-role-user").evaluate_all(
        "els => els.map(e => [...e.querySelectorAll('img, .any-file-message-text, a')].map("
        "  n => n.tagName === 'IMG' ? 'img:' + n.getAttribute('src').split(/[:/]/)[0] : n.textContent.trim()))"
    )


def test_attach_a_text_file_and_an_image_ask_and_reload(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "photo.png").write_bytes(PNG)
    server = serve(create_app(reader, thread_store=tmp_path / "t.sqlite"))
    with chromium_page() as page:
        page.goto(server.url)
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 0)
        with page.expect_file_chooser() as chooser:
            page.locator("deep-chat .input-button.outside-end").click()
        chooser.value.set_files([str(tmp_path / "secret.txt"), str(tmp_path / "photo.png")])
        page.locator("deep-chat #text-input").fill(QUESTION)
        page.locator("deep-chat .input-button.inside-end").click()
        answer = f"secret.txt (text): {SECRET} / photo.png (image): {len(PNG)}"
        assert wait_until(lambda: bubbles(page)[-1:] == [("ai", answer)], timeout=30), bubbles(page)
        live = shown_files(page)
        page.reload()
        assert wait_until(lambda: page.evaluate("window.kitThread && window.kitThread.restored") == 2, timeout=15)
        assert wait_until(lambda: bubbles(page)[-1:] == [("ai", answer)], timeout=15), bubbles(page)
        restored = shown_files(page)
        # Deep Chat shows the text and each file in a user bubble of its own: the same bubbles as before the reload,
        # the file by name, the image as a thumbnail now read from the thread store.
        assert len(restored) == len(live) == 3, (live, restored)
        assert set(restored[1]) == set(live[1]) == {"secret.txt"}, (live, restored)
        assert "img:threads" in restored[2] and "img:data" in live[2], (live, restored)
        assert page.evaluate(
            "[...document.querySelector('deep-chat').shadowRoot.querySelectorAll('img')]"
            ".every(img => img.complete && img.naturalWidth > 0)"
        )


def test_the_attachment_button_accepts_what_the_file_types_setting_allows(serve) -> None:  # type: ignore[no-untyped-def]
    pdf_only = serve(create_app(reader, thread_store=False, file_types=["application/pdf", "text/markdown"]))
    default = serve(create_app(reader, thread_store=False))
    none = serve(create_app(reader, thread_store=False, file_types=[]))
    with chromium_page() as page:
        accepted = []
        for server in (pdf_only, default):
            page.goto(server.url)
            with page.expect_file_chooser() as chooser:
                page.locator("deep-chat .input-button.outside-end").click()
            accepted.append(chooser.value.element.get_attribute("accept"))
            assert chooser.value.is_multiple()
        assert accepted[0] == "application/pdf,text/markdown,.md,.markdown,.pdf"
        assert accepted[1] is not None and {"text/*", "image/png", "audio/*", ".md", ".py", ".pdf", ".png"} <= set(
            accepted[1].split(",")
        )
        page.goto(none.url)
        page.locator("deep-chat #text-input").wait_for()
        assert page.locator("deep-chat .input-button.outside-end").count() == 0
