"""What the engine remembers between requests: token prefixes, and finished sequences' states in host memory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

# A shifted match must be this long to be worth moving cells for (a chat template's few header tokens are not).
MIN_SHIFT = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share.

    >>> common_prefix([1, 2, 3, 4], [1, 2, 5]), common_prefix([], [1]), common_prefix([7], [7])
    (2, 0, 1)
    """
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def shifted_match(cached: Sequence[int], prompt: Sequence[int], start: int, probe: int = 16) -> tuple[int, int]:
    """Where the prompt's rest (from `start`) continues further on in `cached`: (offset, length), or (0, 0).

    After old turns were dropped from a conversation, the newest turns still sit in the cache behind the
    dropped ones; moving them down by `offset` (llama.cpp's context shift) reuses them.

    >>> shifted_match([1, 2, 8, 9, 5, 6, 7], [1, 2, 5, 6, 7, 4], 2, probe=2)
    (2, 3)
    >>> shifted_match([1, 2, 3], [1, 2, 9], 2, probe=1)
    (0, 0)
    """
    key = list(prompt[start : start + probe])
    if len(key) < probe:
        return 0, 0
    for at in range(start + 1, len(cached) - probe + 1):
        if cached[at] == key[0] and list(cached[at : at + probe]) == key:
            return at - start, common_prefix(cached[at:], prompt[start:])
    return 0, 0


@dataclass
class HostCache:
    """Finished sequences' llama.cpp states kept in host memory, least recently used out, within `budget` bytes.

    >>> cache = HostCache(budget=10)
    >>> cache.put([1, 2], b"12345"); cache.put([3], b"678"); cache.put([4], b"9abc")  # [1, 2] goes
    >>> sorted(cache.entries), cache.used, cache.peak
    ([(3,), (4,)], 7, 8)
    """

    budget: int
    entries: OrderedDict[tuple[int, ...], bytes] = field(default_factory=OrderedDict)
    used: int = 0
    peak: int = 0  # the most ever held (tests check it never passes the budget)

    def put(self, tokens: Sequence[int], state: bytes) -> None:
        """Keep `state` (the cells of `tokens`); a state larger than the whole budget is not kept."""
        key = tuple(tokens)
        self.pop(key)
        if not tokens or len(state) > self.budget:
            return
        while self.used + len(state) > self.budget:
            _, oldest = self.entries.popitem(last=False)
            self.used -= len(oldest)
        self.entries[key] = state
        self.used += len(state)
        self.peak = max(self.peak, self.used)

    def pop(self, key: tuple[int, ...]) -> bytes | None:
        state = self.entries.pop(key, None)
        if state is not None:
            self.used -= len(state)
        return state

    def best(self, prompt: Sequence[int]) -> tuple[tuple[int, ...], int]:
        """The kept state sharing the longest prefix with `prompt`, and that length ((), 0 if none)."""
        found: tuple[tuple[int, ...], int] = ((), 0)
        for key in self.entries:
            shared = common_prefix(key, prompt)
            if shared > found[1]:
                found = (key, shared)
        return found

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0
