"""A conversation longer than a slot's context: keep the system prompt and the newest turns, drop old ones in steps.

Deep Chat sends the whole history each time, so the cut must fall at the same message turn after turn, or
every turn would read its history again. Cut points are therefore fixed by the old messages alone: the first
user message past each multiple of `n_ctx // 4` tokens of history. A conversation that outgrows the context
drops the oldest quarter of it at once and then grows again for several turns, each reusing the cache (the
engine moves the kept turns' cells down, as llama.cpp's context shift does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from kit.model.batching import too_long

log = logging.getLogger(__name__)

Render = Callable[[list[dict[str, str]]], tuple[list[int], list[str]]]
TEMPLATE_TOKENS = 4  # a chat template's tokens around each message (ChatML: <|im_start|>role\n ... <|im_end|>\n)


@dataclass(frozen=True)
class Fitted:
    """The messages that fit, their prompt tokens and stop strings, and how many old messages were dropped."""

    messages: list[dict[str, str]]
    tokens: list[int]
    stops: list[str]
    dropped: int


def cut_points(sizes: Sequence[int], users: Sequence[int], step: int) -> Iterator[int]:
    """Message indices to cut before, oldest first: the first user message past each `step` tokens of history.

    >>> list(cut_points([50, 60, 40, 70, 30, 20], users=[0, 2, 4], step=100))
    [2, 4]
    """
    starts = set(users)
    total, threshold = 0, step
    for index, size in enumerate(sizes):
        if index in starts and index > 0 and total >= threshold:
            yield index
            while total >= threshold:
                threshold += step
        total += size


def fit_messages(
    messages: list[dict[str, str]], render: Render, tokenize: Callable[[str], list[int]], n_ctx: int, room: int
) -> Fitted:
    """The longest newest part of `messages` whose prompt leaves `room` tokens for the reply in `n_ctx`.

    The system message (if first) is always kept, and at least the last user message; a message that alone
    does not fit raises ChatError 413.
    """
    tokens, stops = render(messages)
    if len(tokens) + room <= n_ctx:
        return Fitted(messages, tokens, stops, 0)
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head) :]
    users = [i for i, message in enumerate(turns) if message["role"] == "user"]
    if not users:
        raise too_long(n_ctx, len(tokens))
    sizes = [len(tokenize(message["content"])) + TEMPLATE_TOKENS for message in turns]
    candidates = [cut for cut in cut_points(sizes, users, max(n_ctx // 4, 1)) if cut < users[-1]] + [users[-1]]
    for cut in candidates:
        tokens, stops = render(head + turns[cut:])
        if len(tokens) + room <= n_ctx or (cut == users[-1] and len(tokens) < n_ctx):
            log.info(
                "the conversation outgrew the context of %d tokens: dropped its %d oldest messages (%d tokens), "
                "kept %s the newest %d (%d tokens)",
                n_ctx,
                cut,
                sum(sizes[:cut]),
                "the system prompt and" if head else "",
                len(turns) - cut,
                len(tokens),
            )
            return Fitted(head + turns[cut:], tokens, stops, cut)
    raise too_long(n_ctx, len(tokens))
