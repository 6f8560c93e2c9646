"""Prefix reuse in the embedded engine: only new tokens are read, long conversations keep going, state stays sound."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from kit import CancelToken
from kit.errors import ChatError
from kit.model.chat_model import ChatLlama
from kit.model.engine import Engine, engine_for
from kit.model.prefix_cache import common_prefix
from kit.model.settings import LlamaSettings
from kit.model.source import LlamaSource
from tests.helpers import wait_until

# A small context and short greedy replies keep these fast; the same settings give ChatLlama the same engine.
SETTINGS = LlamaSettings(n_ctx=512, slots=2, max_tokens=16, temperature=0, seed=1, host_cache_mb=8)
PARAGRAPH = (
    "The lighthouse keeper wrote in his log every evening: the colour of the sea, the ships that passed, the "
    "birds on the rocks, the wind and the rain, and the small repairs the old lamp needed after each storm. "
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    shared = engine_for(SETTINGS)
    shared.load()
    yield shared
    shared.close()


def ask(engine: Engine, messages: list[dict[str, str]], **options: object) -> tuple[str, int, int]:
    """One reply, with the prompt tokens it read and those it reused (one request at a time)."""
    fed, reused = engine.reuse.fed_tokens, engine.reuse.reused_tokens
    reply = "".join(engine.chat(messages, **{**SETTINGS.options(), **options}))  # type: ignore[arg-type]
    return reply, engine.reuse.fed_tokens - fed, engine.reuse.reused_tokens - reused


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_follow_up_turn_reads_only_its_new_tokens(engine: Engine) -> None:
    history = [system("You answer in one short sentence."), user("Name a colour.")]
    reply, fed, _ = ask(engine, history)
    first_prompt, _ = engine.prompt(history)
    assert reply and fed <= len(first_prompt)
    history += [{"role": "assistant", "content": reply}, user("And a fruit?")]
    prompt, _ = engine.prompt(history)
    already_read = len(first_prompt) + len(engine.tokenize(reply))  # the first prompt and the reply's tokens
    _, fed, reused = ask(engine, history)
    assert reused >= already_read - 1  # one token of slack where the reply's end meets the template
    assert fed == len(prompt) - reused and fed <= len(prompt) - already_read + 1
    _, fed, reused = ask(engine, history, reuse=False)  # reuse off: the whole prompt, from an empty sequence
    assert (fed, reused) == (len(prompt), 0)


def test_the_same_prompt_asked_again_reads_nothing_and_gives_the_same_reply(engine: Engine) -> None:
    for topic in ("the sea", "bread", "trains"):
        question = [system("You describe things."), user(f"Describe {topic}.")]
        first, _, _ = ask(engine, question)
        again, fed, reused = ask(engine, question)
        assert (again, fed) == (first, 0) and reused == len(engine.prompt(question)[0])


def test_an_edited_earlier_message_reuses_only_the_common_prefix(engine: Engine) -> None:
    history = [system("You are a patient teacher of geography."), user("What is the capital of Peru?")]
    reply, _, _ = ask(engine, history)
    history += [{"role": "assistant", "content": reply}, user("And of Chile?")]
    ask(engine, history)
    before, _ = engine.prompt(history)
    edited = [*history[:1], user("What is the capital of Spain?"), *history[2:]]
    after, _ = engine.prompt(edited)
    shared = common_prefix(before, after)
    assert 0 < shared < len(after) / 2  # the edit is early in the conversation
    _, fed, reused = ask(engine, edited)
    assert (reused, fed) == (shared, len(after) - shared)


def test_a_conversation_outgrowing_the_context_keeps_its_system_prompt_and_keeps_answering(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    instructions = "You are Captain Nemo and you answer briefly."
    history = [system(instructions)]
    reusing = shifts = 0
    caplog.set_level(logging.INFO, logger="kit.model")
    shifted = engine.reuse.shifted
    for number in range(22):
        history.append(user(f"Tell me one fact about the number {number}."))
        reply, fed, reused = ask(engine, history)
        assert reply.strip(), f"turn {number + 1} got no reply"
        history.append({"role": "assistant", "content": reply})
        reusing += reused > fed
    shifts = engine.reuse.shifted - shifted
    assert sum(len(engine.tokenize(m["content"])) for m in history) > SETTINGS.n_ctx  # it did outgrow it
    assert any("dropped its" in record.getMessage() for record in caplog.records)
    assert shifts >= 1 and reusing >= 19  # the turns where old turns were dropped reuse the cache too
    scheduler = engine._scheduler
    assert scheduler is not None
    latest = max(range(engine.slots), key=lambda seq: scheduler.memory.used[seq])
    kept = scheduler.llama.detokenize(scheduler.memory.tokens[latest], special=True).decode()
    assert kept.startswith(f"<|im_start|>system\n{instructions}<|im_end|>")  # the system prompt is still first
    with pytest.raises(ChatError, match="too long for the model's context of 512 tokens") as raised:
        ask(engine, [system(instructions), user("word " * 600)])
    assert raised.value.status == 413  # a single message that alone cannot fit


def test_the_host_memory_budget_is_never_exceeded_and_a_kept_conversation_comes_back() -> None:
    settings = LlamaSettings(n_ctx=512, slots=1, max_tokens=16, temperature=0, seed=1, host_cache_mb=8)
    one_slot = engine_for(settings)
    try:
        conversations = [[system(f"You are assistant number {i}."), user(PARAGRAPH + "Summarise.")] for i in range(5)]
        for round_ in range(3):
            for conversation in conversations[: 2 if round_ < 2 else 5]:  # two take turns, then five crowd in
                reply, fed, reused = ask(one_slot, conversation)
                conversation += [{"role": "assistant", "content": reply}, user("Go on.")]
        scheduler = one_slot._scheduler
        assert scheduler is not None
        host = scheduler.memory.host
        assert 0 < host.used <= host.peak <= host.budget == 8 * 2**20
        counters = one_slot.reuse
        assert counters.from_host >= 2 and counters.saved > len(host.entries)  # kept, restored, and evicted
        fresh_fed = len(one_slot.prompt(conversations[0])[0])
        reply, fed, reused = ask(one_slot, conversations[0])  # it was evicted or kept: either way, sound
        assert reply == ask(one_slot, conversations[0], reuse=False)[0]
        assert fed + reused == fresh_fed
    finally:
        one_slot.close()


def next_logits(scheduler: Any, seq: int, tokens: list[int], start: int) -> Any:
    """Feed `tokens` to sequence `seq` from position `start` (the engine idle); the logits after the last one."""
    import llama_cpp
    import numpy

    batch = llama_cpp.llama_batch_init(128, 0, 1)
    try:
        for at in range(0, len(tokens), 128):
            piece = tokens[at : at + 128]
            batch.n_tokens = len(piece)
            for i, token in enumerate(piece):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + at + i, 1
                batch.seq_id[i][0], batch.logits[i] = seq, i == len(piece) - 1
            assert llama_cpp.llama_decode(scheduler.ctx, batch) == 0
        logits = llama_cpp.llama_get_logits_ith(scheduler.ctx, -1)
        return numpy.ctypeslib.as_array(logits, shape=(scheduler.n_vocab,)).copy()
    finally:
        llama_cpp.llama_batch_free(batch)


def test_a_hundred_random_cancels_during_prompt_reading_leave_no_cached_state_corrupt(engine: Engine) -> None:
    import llama_cpp

    rng = random.Random(16)
    words = (PARAGRAPH * 2).split()

    def variant(i: int) -> list[dict[str, str]]:
        # Prompts sharing a prefix of random length: every request reuses part of another's cells and reads the rest.
        changed = list(words)
        changed[i * 7 % len(words)] = f"number-{i}"
        return [system(" ".join(changed)), user("What did the keeper write?")]

    def one(i: int) -> None:
        cancel, timer = CancelToken(), None
        try:
            for _ in engine.stream(variant(i), cancel=cancel, max_tokens=8, temperature=0):
                if timer is None:  # the first chunk: the request has its slot and starts reading its prompt
                    timer = threading.Timer(rng.uniform(0.0, 0.5), cancel.cancel)
                    timer.start()
        finally:
            if timer is not None:
                timer.cancel()

    checked = (3, 50, 99)
    before = {i: "".join(engine.chat(variant(i), reuse=False, **SETTINGS.options())) for i in checked}
    started = engine.reuse.requests
    with ThreadPoolExecutor(engine.slots + 1) as pool:  # one more than the slots: most run, some wait
        list(pool.map(one, range(100)))
    assert engine.reuse.requests - started == 100
    assert wait_until(lambda: engine.running == 0 and engine.waiting == 0, timeout=30)
    scheduler = engine._scheduler
    assert scheduler is not None
    memory, cells = llama_cpp.llama_get_memory(scheduler.ctx), scheduler.memory.tokens
    assert all(llama_cpp.llama_memory_seq_pos_max(memory, seq) == len(cells[seq]) - 1 for seq in range(engine.slots))
    probe = engine.tokenize(" The")
    for seq in range(engine.slots):
        kept = list(cells[seq])
        # The cached cells give the logits that reading the same tokens afresh gives. Reading in other batches
        # moves logits by up to about 1 here (a range of about 30); one stale word in the cells moves them by 10.
        cached = next_logits(scheduler, seq, probe, len(kept))
        llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        fresh = next_logits(scheduler, seq, kept + probe, 0)
        llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        scheduler.memory.tokens[seq] = []
        assert abs(cached - fresh).max() < 0.1 * (fresh.max() - fresh.min()), seq
    # A greedy reply read afresh is the same as before the cancels; one reusing the cache still answers.
    assert {i: "".join(engine.chat(variant(i), reuse=False, **SETTINGS.options())) for i in checked} == before
    assert all("".join(engine.chat(variant(i), **SETTINGS.options())) for i in checked)


def test_chat_llama_and_llama_source_reuse_the_conversation_too(engine: Engine) -> None:
    model = ChatLlama(**{name: getattr(SETTINGS, name) for name in ("n_ctx", "slots", "host_cache_mb")}, max_tokens=16)
    assert model.engine is engine
    question = [SystemMessage("You know the planets."), HumanMessage("Which planet is the largest?")]
    answer = model.invoke(question)
    read = engine.reuse.fed_tokens
    model.invoke([*question, AIMessage(answer.content), HumanMessage("And the smallest?")])
    assert engine.reuse.fed_tokens - read < 30  # the new question and the template around it
    source = LlamaSource(SETTINGS)
    history = [{"role": "system", "text": "You know rivers."}, {"role": "user", "text": "Name a long river."}]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in source(history, CancelToken()))
    read = engine.reuse.fed_tokens
    history += [{"role": "ai", "text": text}, {"role": "user", "text": "Where is it?"}]
    assert list(source(history, CancelToken()))
    assert engine.reuse.fed_tokens - read < 30
