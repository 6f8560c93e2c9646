"""Reasoning models' thinking: the `<think>` tag rule over any cut, the shapes' thinking, the `thinking` option."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit import CancelToken, create_app
from kit.notebook.inspector import Inspector
from kit.pipeline.shapes import read_parts
from kit.pipeline.sources import Role, UnreadableItem, texts
from kit.pipeline.thinking import _MAX_LEAD, CLOSE, THINKING, ThinkTagSplitter, split_think_tags
from kit.serving.client import chat_body, stream_chat
from kit.testing.fakes import ScriptedSource
from tests.helpers import wait_until


def merged(pieces: list[str | Role]) -> list[tuple[str, str]]:
    """(role, text) runs: what the bubbles hold, however the text was cut."""
    runs: list[tuple[str, str]] = []
    role = "ai"
    for piece in pieces:
        if isinstance(piece, Role):
            role = piece.name
        elif runs and runs[-1][0] == role:
            runs[-1] = (role, runs[-1][1] + piece)
        else:
            runs.append((role, piece))
    return runs


_OPENING = re.compile(r"\s*<think>\s*")


def reference(text: str, opened: bool = False) -> list[tuple[str, str]]:
    """The rule of docs/reasoning.md, on the whole text at once: `<think>` opens at the start (after
    whitespace) or right after `</think>`; thinking ends at the first `</think>`; whitespace around tags goes."""
    runs: list[tuple[str, str]] = []
    after_close = False
    while True:
        if not opened:
            match = _OPENING.match(text)
            if match is None:
                answer = text.lstrip() if after_close else text
                if answer:
                    runs.append(("ai", answer))
                break
            text = text[match.end() :]
        opened = False
        end = text.find(CLOSE)
        thought, text = (text, "") if end < 0 else (text[:end].rstrip(), text[end + len(CLOSE) :])
        if thought:
            runs.append(("thinking", thought))
        if end < 0:
            break
        after_close = True
    return [(role, "".join(t for _, t in group)) for role, group in itertools.groupby(runs, key=lambda run: run[0])]


_FRAGMENTS = ["<think>", "</think>", "<th", "ink>", "</", "think", ">", "<", " ", "\n", "a", "b c", "`x`", "é"]


@given(
    fragments=st.lists(st.sampled_from(_FRAGMENTS), max_size=12),
    cuts=st.lists(st.integers(0, 80), max_size=8),
    opened=st.booleans(),
)
def test_any_cut_of_a_text_with_or_without_tags_splits_as_the_rule_says(
    fragments: list[str], cuts: list[int], opened: bool
) -> None:
    text = "".join(fragments)
    bounds = sorted({0, len(text), *(cut for cut in cuts if cut <= len(text))})
    pieces: list[str | Role] = [text[start:end] for start, end in itertools.pairwise(bounds)]
    head: list[str | Role] = [THINKING] if opened else []
    assert merged(list(split_think_tags([*head, *pieces]))) == reference(text, opened)


def test_tags_torn_anywhere_across_chunks() -> None:
    text = "<think>\nThe user asks for 2+2. That is 4.\n</think>\n\nIt is 4."
    for cut in range(len(text) + 1):
        runs = merged(list(split_think_tags([text[:cut], text[cut:]])))
        assert runs == [("thinking", "The user asks for 2+2. That is 4."), ("ai", "It is 4.")], cut
    assert merged(list(split_think_tags(list(text)))) == runs  # one character per piece


def test_an_unclosed_tag_at_the_end_stays_thinking_and_nothing_is_lost() -> None:
    assert merged(list(split_think_tags(["<think>I was cut off mid-th", "ought </thi"]))) == [
        ("thinking", "I was cut off mid-thought </thi")
    ]
    assert merged(list(split_think_tags(["<thi"]))) == [("ai", "<thi")]  # never a tag: it is text


def test_think_mentioned_inside_code_in_the_answer_is_the_answers_text() -> None:
    answer = "Wrap it so: `<think>` ... `</think>`, or\n```html\n<think>plan</think>\n```"
    assert merged(list(split_think_tags([answer]))) == [("ai", answer)]
    # Only the start of the text (or right after a closing tag) opens thinking.
    text = "<think>plan</think>Use `<think>` tags."
    assert merged(list(split_think_tags([text]))) == [("thinking", "plan"), ("ai", "Use `<think>` tags.")]


def test_a_normal_answer_is_never_held_back() -> None:
    pulled: list[str] = []

    def source() -> Iterator[str]:
        for piece in ["Hello", " <think", "> there", "\n"]:
            pulled.append(piece)
            yield piece

    stream = split_think_tags(source())
    for count, piece in enumerate(["Hello", " <think", "> there", "\n"], start=1):
        assert next(stream) == piece and len(pulled) == count  # out before the next piece was asked for
    assert list(stream) == []


def test_the_splitter_holds_at_most_a_tags_length_so_it_runs_in_linear_time() -> None:
    splitter = ThinkTagSplitter()
    for piece in itertools.chain(["<think>"], "long thought </thin </ k" * 2000):
        list(splitter.feed(piece))
        assert len(splitter.held) < len(CLOSE) + _MAX_LEAD


# -- the shapes' thinking ---------------------------------------------------------------------------------

SHAPED = [
    ({"choices": [{"delta": {"reasoning_content": "r"}}]}, ("r", "")),
    ({"choices": [{"delta": {"reasoning": "r", "content": None}}]}, ("r", "")),
    ({"type": "chunk", "chunk": {"choices": [{"delta": {"reasoning_content": "r"}}]}}, ("r", "")),
    ({"type": "response.reasoning_summary_text.delta", "delta": "r"}, ("r", "")),
    ({"type": "response.reasoning_text.delta", "delta": "r"}, ("r", "")),
    ({"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "r"}}, ("r", "")),
    ({"type": "content_block_delta", "delta": {"type": "signature_delta", "signature": "s"}}, ("", "")),
    ({"type": "thinking", "thinking": "r", "snapshot": "r"}, ("", "")),  # MessageStream's copy of the raw delta
    ({"message": {"role": "assistant", "content": "", "thinking": "r"}, "done": False}, ("r", "")),
    ({"response": "", "thinking": "r", "done": False}, ("r", "")),
    ({"thinking": "r"}, ("r", "")),
    ({"text": "t"}, ("", "t")),
]


@pytest.mark.parametrize(("item", "parts"), SHAPED)
def test_each_shape_gives_its_thinking_apart_from_its_text(item: object, parts: tuple[str, str]) -> None:
    assert read_parts(item) == parts


def test_langchain_chunks_carry_thinking_in_kwargs_and_in_content_blocks() -> None:
    from langchain_core.messages import AIMessageChunk

    kwargs = AIMessageChunk(content="", additional_kwargs={"reasoning_content": "r"})
    standard = AIMessageChunk(content=[{"type": "reasoning", "reasoning": "r"}, {"type": "text", "text": "t"}])
    summary = AIMessageChunk(content=[{"type": "reasoning", "summary": [{"type": "summary_text", "text": "r"}]}])
    anthropic = AIMessageChunk(content=[{"type": "thinking", "thinking": "r", "index": 0}])
    assert [read_parts(m) for m in (kwargs, standard, summary, anthropic)] == [
        ("r", ""), ("r", "t"), ("r", ""), ("r", "")
    ]  # fmt: skip


def test_texts_puts_thinking_in_its_role_and_back_into_the_sources_own() -> None:
    pieces = list(texts([Role("steps"), {"thinking": "plan"}, "calling", {"text": "x", "thinking": "y"}]))
    assert pieces == [Role("steps"), Role("thinking"), "plan", Role("steps"), "calling", Role("thinking"), "y",
                      Role("steps"), "x"]  # fmt: skip


def test_a_reply_of_thinking_only_ends_with_an_error_saying_so() -> None:
    with pytest.raises(UnreadableItem, match="only thought"):
        list(texts([{"thinking": "so much to think about"}]))


# -- the thinking option, served --------------------------------------------------------------------------

THOUGHT = ["<think>", "Let me see. ", "The user says hi. ", "I should greet them.", "</think>"]
ANSWER = ["Hello", " there", "!"]


def reasoning_source(delay_s: float = 0.01) -> ScriptedSource:
    return ScriptedSource([*THOUGHT, *ANSWER], delay_s=delay_s)


@pytest.mark.parametrize("thinking", ["show", "hide", "inline"])
def test_the_thinking_option_shows_hides_or_inlines_and_chat_answers_the_answer_alone(serve, thinking: str) -> None:  # type: ignore[no-untyped-def]
    app = create_app(reasoning_source(), thinking=thinking, coalesce_ms=0)
    inspector = Inspector(app)
    server = serve(app)
    reply = stream_chat(server.url + "chat-stream", "hi")
    thought, answer = "".join(THOUGHT[1:-1]), "".join(ANSWER)
    expected = {
        "show": (thought, answer),
        "hide": ("", answer),
        "inline": ("", f"> {thought}\n\n{answer}"),
    }[thinking]
    assert (reply.text_of("thinking"), reply.text_of("ai")) == expected
    assert httpx.post(server.url + "chat", json=chat_body("hi")).json() == {"text": answer}
    stats = inspector.wait().stats
    assert stats.thoughts >= 3 and stats.first_thought_s is not None  # the inspector saw the model think
    assert stats.first_answer_s is not None and stats.first_answer_s > stats.first_thought_s


def test_hidden_thinking_keeps_heartbeats_flowing_and_stop_still_works(serve) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource(["<think>", *["hmm "] * 400, "</think>", "Done."], delay_s=0.01)
    app = create_app(source, thinking="hide", heartbeat_s=0.1, coalesce_ms=0)
    server = serve(app)
    with httpx.Client(timeout=30) as client:
        body = chat_body("think hard")
        with client.stream("POST", server.url + "chat-stream", json=body, headers={"Accept": "text/event-stream"}) as r:
            lines = r.iter_lines()
            beats = 0
            while beats < 3:  # the thinking is hidden: the client sees only heartbeats
                line = next(lines)
                assert not line.startswith("data:"), line
                beats += line.startswith(":")
    assert wait_until(lambda: source.cancelled == 1)  # Stop reached the source during its thinking


def test_a_plain_function_gets_the_turns_without_thinking_or_steps_bubbles(serve) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[dict[str, str]]] = []

    def source(messages: list[dict[str, str]]) -> list[str]:
        seen.append(messages)
        return ["ok"]

    history = [
        {"role": "user", "text": "Hi"},
        {"role": "thinking", "text": "The user says hi."},
        {"role": "steps", "text": "calling greet {}"},
        {"role": "ai", "text": "Hello!"},
    ]
    server = serve(create_app(source, system_prompt="Be brief"))
    stream_chat(server.url + "chat-stream", "And?", history=history)
    assert [m["role"] for m in seen[0]] == ["system", "user", "ai", "user"]


def test_an_unknown_thinking_option_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="show"):
        create_app("hi", thinking="fold")


def test_a_source_can_say_its_text_starts_inside_thinking() -> None:
    cancel = CancelToken()
    source = ScriptedSource(["The template opened the tag. ", "</th", "ink>", "Answer."])
    pieces = list(split_think_tags(texts([THINKING, *source([], cancel)])))
    assert merged(pieces) == [("thinking", "The template opened the tag."), ("ai", "Answer.")]


def test_a_legacy_callback_chain_streams_its_models_thinking_into_the_thinking_bubble(serve) -> None:  # type: ignore[no-untyped-def]
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk

    from kit import callback_source, create_app, stream_chat

    def chain(inputs: object, callbacks: list) -> str:  # type: ignore[type-arg]
        chunks = [AIMessageChunk(content="", additional_kwargs={"reasoning_content": f"step {i} "}) for i in range(3)]
        chunks += [AIMessageChunk(content=word) for word in ("The ", "answer.")]
        for chunk in chunks:
            for handler in callbacks:
                handler.on_llm_new_token(chunk.content, chunk=ChatGenerationChunk(message=chunk))
        return "The answer."

    server = serve(create_app(callback_source(chain), coalesce_ms=0))
    reply = stream_chat(server.url + "chat-stream", "hi")
    assert reply.text_of("thinking") == "step 0 step 1 step 2 "
    assert reply.text_of("ai") == "The answer."
