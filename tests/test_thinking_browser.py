"""A reasoning model's reply in Deep Chat (the pinned bundle, in Debian's chromium, on the kit's page): the thinking
bubble fills first, folds when the answer starts and opens on a click; the answer holds no tags."""

from __future__ import annotations

import time

from kit import create_app
from kit.pipeline.sources import Role
from kit.testing.browser import chromium_page
from kit.testing.fakes import ScriptedSource
from tests.test_browser import send

THOUGHT = "The user greets me. A short, friendly answer is best; no tools are needed here."
ANSWER = "Hello! How can I help you today?"


def pieces(text: str, size: int = 4) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def bubble_states(page, until: str, timeout: float = 20.0) -> list[tuple[str, str, bool]]:  # type: ignore[no-untyped-def]
    """(thinking text, answer text, thinking folded) each time it changed, until the answer equals `until`."""
    states: list[tuple[str, str, bool]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = page.evaluate(
            """() => {
                const root = document.querySelector('deep-chat').shadowRoot;
                const thinking = root.querySelector('.deep-chat-outer-container-role-thinking .message-bubble');
                const answers = root.querySelectorAll('.deep-chat-outer-container-role-ai .message-bubble');
                const answer = answers.length > 1 ? answers[answers.length - 1] : null;  // the first is the intro
                return [thinking ? thinking.textContent.trim() : '', answer ? answer.textContent.trim() : '',
                        !!thinking && thinking.classList.contains('kit-folded')];
            }"""
        )
        if not states or states[-1] != tuple(state):
            states.append(tuple(state))
        if state[1] == until:
            break
        time.sleep(0.02)
    return states


def test_the_thinking_bubble_fills_first_then_folds_when_the_answer_starts(serve) -> None:  # type: ignore[no-untyped-def]
    tagged = pieces(f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}")  # tags torn across pieces, as a raw model sends
    server = serve(create_app(ScriptedSource(tagged, delay_s=0.04), coalesce_ms=0))
    with chromium_page() as page:
        page.goto(server.url)
        send(page, "Hi")
        states = bubble_states(page, until=ANSWER)
        assert states[-1][1] == ANSWER  # the answer's bubble holds the answer alone: no tags, no thinking
        thinking_only = [s for s in states if s[0] and not s[1]]
        assert len(thinking_only) >= 5, states  # the thinking streamed in, before any answer
        assert all(not folded for _, _, folded in thinking_only)  # open while the model thinks
        assert thinking_only[-1][0] == THOUGHT
        assert all(folded for _, answer, folded in states if answer), states  # folded once the answer began
        thinking = page.locator(".deep-chat-outer-container-role-thinking .message-bubble")
        assert not thinking.locator("p").first.is_visible()  # folded: only its label shows
        thinking.click()
        assert thinking.locator("p").first.is_visible() and thinking.inner_text().endswith(THOUGHT)
        thinking.click()
        assert not thinking.locator("p").first.is_visible()


def test_thinking_and_steps_bubbles_look_apart_from_the_answer(serve) -> None:  # type: ignore[no-untyped-def]
    script = [Role("thinking"), "I should look it up.", Role("steps"), "calling lookup {}", Role("ai"), "Found it."]
    server = serve(create_app(ScriptedSource(script, delay_s=0.05)))  # type: ignore[arg-type]
    with chromium_page() as page:
        page.goto(server.url)
        send(page, "Look it up")
        bubble_states(page, until="Found it.")
        looks = page.evaluate(
            """() => Object.fromEntries(['thinking', 'steps', 'ai'].map((role) => {
                const bubble = [...document.querySelector('deep-chat').shadowRoot.querySelectorAll(
                    `.deep-chat-outer-container-role-${role} .message-bubble`)].pop();
                const style = getComputedStyle(bubble);
                return [role, [style.backgroundColor, style.borderLeftStyle, bubble.classList.contains('kit-folded')]];
            }))"""
        )
        assert looks["thinking"][1] == looks["steps"][1] == "solid" and looks["ai"][1] == "none"
        assert looks["thinking"][0] != looks["ai"][0]  # muted, not the answer's colours
        assert looks["thinking"][2] and looks["steps"][2] and not looks["ai"][2], looks  # both folded under the answer
