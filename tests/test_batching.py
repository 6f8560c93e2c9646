"""The batched engine: distinct replies under concurrency, cancellation that frees slots, grammar and stop."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from kit.errors import ChatError
from kit.model.engine import Engine, close_engines, engine_for
from kit.model.settings import LlamaSettings
from kit.pipeline.cancel import CancelToken
from tests.helpers import wait_until

GREEDY = {"max_tokens": 20, "temperature": 0, "seed": 1, "repeat_penalty": 1.1}
LONG_PROMPT = "Count from 1 to 1000, separated by commas."  # runs to max_tokens without stopping
WORDS = ["apple", "river", "guitar", "pencil", "tiger", "window", "rocket", "banana"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    shared = engine_for(LlamaSettings(max_tokens=24, temperature=0, seed=7))
    shared.load()
    return shared


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def echo(word: str) -> list[dict[str, str]]:
    return user(f"Write one sentence about a {word}.")


def test_eight_concurrent_prompts_each_get_their_own_answer_and_none_of_another(engine: Engine) -> None:
    alone = {word: "".join(engine.chat(echo(word), **GREEDY)) for word in WORDS}
    assert all(word in alone[word].lower() for word in WORDS), alone  # the check below means something
    barrier = threading.Barrier(len(WORDS))

    def ask(word: str) -> str:
        barrier.wait()
        return "".join(engine.chat(echo(word), **GREEDY))

    with ThreadPoolExecutor(len(WORDS)) as pool:
        together = dict(zip(WORDS, pool.map(ask, WORDS), strict=True))
    for word, reply in together.items():
        assert word in reply.lower(), (word, reply)
        assert not [other for other in WORDS if other != word and other in reply.lower()], (word, reply)
    assert engine.running == 0 and engine.waiting == 0


def test_plain_greedy_read_by_argmax_gives_the_sampler_chains_replies(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Greedy with no penalty and no grammar skips llama.cpp's sampler: eight at once (prompts read in the same
    steps as others decode, so the output rows interleave) answer exactly as the sampler chain does."""
    options = {**GREEDY, "repeat_penalty": 1.0}
    barrier = threading.Barrier(len(WORDS))

    def ask(word: str) -> str:
        barrier.wait()
        return "".join(engine.chat(echo(word), reuse=False, **options))

    with ThreadPoolExecutor(len(WORDS)) as pool:
        by_argmax = dict(zip(WORDS, pool.map(ask, WORDS), strict=True))
    monkeypatch.setattr("kit.model.batching.plain_greedy", lambda options: False)
    by_chain = {word: "".join(engine.chat(echo(word), reuse=False, **options)) for word in WORDS}
    assert by_argmax == by_chain
    assert all(word in by_chain[word].lower() for word in WORDS), by_chain  # real replies, not empty ones


def test_cancelling_one_of_eight_gives_its_slot_to_a_waiting_request_and_spares_the_others(engine: Engine) -> None:
    cancels = [CancelToken() for _ in range(engine.slots)]
    counts = [0] * engine.slots
    done = [threading.Event() for _ in range(engine.slots)]

    def run(i: int) -> None:
        for _ in engine.chat(user(LONG_PROMPT), cancel=cancels[i], max_tokens=300, temperature=0):
            counts[i] += 1
        done[i].set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(engine.slots)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: engine.running == engine.slots and min(counts) > 0, timeout=60)
    others_done_at_first_token: list[list[bool]] = []

    def wait_for_a_slot() -> None:
        for _ in engine.chat(user("Hi"), max_tokens=4):
            if not others_done_at_first_token:
                others_done_at_first_token.append([event.is_set() for event in done[1:]])

    waiter = threading.Thread(target=wait_for_a_slot)
    waiter.start()
    assert wait_until(lambda: engine.waiting == 1)
    cancels[0].cancel()
    waiter.join(120)
    assert others_done_at_first_token, "the waiting request never got its turn"
    # It got the cancelled request's slot, not one freed later: the other seven (300 tokens each) were all still
    # running when its first token came. A count of decode steps, not a time, so a loaded machine cannot fail it.
    assert others_done_at_first_token[0] == [False] * (engine.slots - 1)
    before = counts[1:]
    assert wait_until(lambda: all(c > b for c, b in zip(counts[1:], before, strict=True)), timeout=30)
    for cancel in cancels:
        cancel.cancel()
    for thread in threads:
        thread.join(30)
    assert all(event.is_set() for event in done)  # every stream ended cleanly, none raised


def test_a_hundred_random_cancels_leave_no_slot_stray_cells_or_thread_behind(engine: Engine) -> None:
    import llama_cpp

    rng = random.Random(10)
    threads_before = threading.active_count()

    def one(i: int) -> None:
        cancel = CancelToken()
        timer = threading.Timer(rng.uniform(0.0, 0.6), cancel.cancel)
        timer.start()
        stream = engine.chat(user(f"Tell me about the number {i}."), cancel=cancel, max_tokens=40, temperature=0.7)
        try:
            for _ in stream:
                if rng.random() < 0.02:
                    break  # the consumer leaves instead (a closed iterator)
        finally:
            stream.close()
            timer.cancel()

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one, range(100)))
    # Abandoned slots leave at the next decode step, which a loaded 2-core machine can stretch to seconds.
    assert wait_until(lambda: engine.running == 0 and engine.waiting == 0, timeout=30)
    scheduler = engine._scheduler
    assert scheduler is not None
    # Each sequence keeps the cells of what it read (prefix reuse), and exactly those: no half-cleared slot.
    memory, cells = llama_cpp.llama_get_memory(scheduler.ctx), scheduler.memory.tokens
    assert all(llama_cpp.llama_memory_seq_pos_max(memory, seq) == len(cells[seq]) - 1 for seq in range(engine.slots))
    assert wait_until(lambda: threading.active_count() <= threads_before, timeout=10)
    assert "".join(engine.chat(user("What is 2+2?"), **GREEDY))  # the engine still serves


def _start_in_order(engine: Engine, words: list[str]) -> tuple[list[int], list[tuple[str, Any]]]:
    """Start a reply for each word, one after another (each holds its slot before the next is asked): the slots
    they got, in that order, and the replies still streaming."""
    scheduler = engine._scheduler
    assert scheduler is not None
    seqs, streams = [], []
    for word in words:
        request = engine.request(echo(word), reuse=True, **GREEDY)
        chunks = engine.run(request)
        next(chunks)  # the role chunk: the request holds a slot now
        seqs.append(next(slot.seq for slot in scheduler._running.values() if slot.request is request))
        streams.append((word, chunks))
    return seqs, streams


def _texts(chunks: Any) -> str:
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)


def test_a_step_decodes_its_slots_in_the_order_of_their_sequences(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """llama.cpp puts only consecutive sequence ids in one ubatch: slots that prefix reuse gave back in another
    order than they started (each conversation to the slot that holds it) are still one decode a step."""
    scheduler = engine._scheduler
    assert scheduler is not None
    first, streams = _start_in_order(engine, WORDS)
    for _, chunks in streams:
        _texts(chunks)
    orders: list[list[int]] = []
    fill = scheduler._fill
    monkeypatch.setattr(scheduler, "_fill", lambda entries: (orders.append([e[2] for e in entries]), fill(entries)))
    again, streams = _start_in_order(engine, WORDS[::-1])
    with ThreadPoolExecutor(len(streams)) as pool:
        replies = dict(zip([w for w, _ in streams], pool.map(_texts, [c for _, c in streams]), strict=True))
    monkeypatch.undo()
    assert sorted(again) == sorted(first) and again == [first[WORDS.index(w)] for w in WORDS[::-1]]  # own slots
    assert again != sorted(again)  # so they started in another order than their sequences'
    assert max(len(order) for order in orders) == len(WORDS)  # every slot decoded in one step at least once
    assert [order for order in orders if order != sorted(order)] == []
    assert all(word in reply.lower() for word, reply in replies.items()), replies


def test_a_step_pads_the_sequences_between_its_own_and_leaves_their_cells_as_they_were(  # type: ignore[no-untyped-def]
    engine: Engine, monkeypatch
) -> None:
    """One ubatch a step needs consecutive sequence ids: a free sequence between two generating ones gets a token
    without logits, removed after the decode, so the cells of every sequence match its tokens afterwards."""
    scheduler = engine._scheduler
    assert scheduler is not None
    seqs, streams = _start_in_order(engine, WORDS[:3])
    steps: list[list[tuple[int, int, int, bool]]] = []
    fill = scheduler._fill
    monkeypatch.setattr(scheduler, "_fill", lambda entries: (steps.append(list(entries)), fill(entries)))
    middle = seqs.index(sorted(seqs)[1])
    streams.pop(middle)[1].close()  # its slot is free from the next step: a gap between the other two
    with ThreadPoolExecutor(len(streams)) as pool:
        replies = dict(zip([w for w, _ in streams], pool.map(_texts, [c for _, c in streams]), strict=True))
    monkeypatch.undo()
    runs = [list(dict.fromkeys(entry[2] for entry in step)) for step in steps]
    assert [ids for ids in runs if ids != list(range(ids[0], ids[0] + len(ids)))] == []  # consecutive in every step
    padded = [entry for step in steps for entry in step if entry[2] == sorted(seqs)[1] and not entry[3]]
    assert len(padded) >= 5 and all(word in reply.lower() for word, reply in replies.items()), replies
    memory = scheduler.memory
    for seq in range(scheduler.slots):  # no pad left behind: each sequence's cells end where its tokens do
        assert scheduler.api.llama_memory_seq_pos_max(memory.memory, seq) == len(memory.tokens[seq]) - 1, seq


def test_a_grammar_constrains_the_reply(engine: Engine) -> None:
    for question in ("Is the sky blue?", "Is fire cold?", "写一首诗"):
        reply = "".join(engine.chat(user(question), grammar='root ::= "yes" | "no"', max_tokens=8, temperature=0.8))
        assert reply in {"yes", "no"}, (question, reply)


def test_a_stop_string_ends_the_reply_before_it(engine: Engine) -> None:
    full = "".join(engine.chat(user(LONG_PROMPT), max_tokens=40, temperature=0))
    assert len(full) >= 20
    middle = len(full) // 2
    one_character, several_tokens = full[middle], full[middle : middle + 6]  # taken from the reply itself
    for stop in (one_character, several_tokens):
        cut = "".join(engine.chat(user(LONG_PROMPT), max_tokens=40, temperature=0, stop=["never", stop]))
        assert cut == full[: full.index(stop)]
    chunks = list(engine.stream(user(LONG_PROMPT), max_tokens=40, temperature=0, stop=[several_tokens]))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_unknown_options_are_refused_by_name(engine: Engine) -> None:
    with pytest.raises(TypeError, match="max_token"):
        list(engine.chat(user("Hi"), max_token=3))


def test_the_slot_count_is_a_setting_and_limits_how_many_generate_at_once() -> None:
    settings = LlamaSettings(n_ctx=512, slots=2, max_tokens=24, temperature=0)
    two_slots = engine_for(settings)
    assert two_slots.slots == 2 and engine_for(settings) is two_slots
    most_running = 0

    def watch() -> None:
        nonlocal most_running
        while not done.is_set():
            most_running = max(most_running, two_slots.running)
            time.sleep(0.002)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(lambda i: "".join(two_slots.chat(user(f"Count to {i + 3}."), **settings.options())), range(4))
        )
    done.set()
    watcher.join()
    assert all(replies) and most_running == 2
    with pytest.raises(ValueError, match="slots >= 1"):
        LlamaSettings(slots=0)


def test_closing_an_engine_stops_its_thread_frees_its_model_and_leaves_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kit.model.engine

    monkeypatch.setattr(kit.model.engine, "_engines", {})  # close_engines() here spares the other tests' engines
    settings = LlamaSettings(n_ctx=256, slots=1, max_tokens=4, temperature=0)
    engine = engine_for(settings)
    assert "".join(engine.chat(user("Hi"), **settings.options()))
    scheduler = engine._scheduler
    assert scheduler is not None and scheduler._thread.is_alive()
    engine.close()
    assert not scheduler._thread.is_alive() and engine._llama is None and engine._scheduler is None
    with pytest.raises(ChatError, match="closed"):
        list(engine.chat(user("Hi"), **settings.options()))
    again = engine_for(settings)
    assert again is not engine and "".join(again.chat(user("Hi"), **settings.options()))
    assert close_engines() == 1 and again.closed and not kit.model.engine._engines  # the cache is emptied
