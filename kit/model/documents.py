"""Attached documents longer than a slot's context: their sections cut to what fits, and a note saying how much
of each was read (the embedded engine reads `n_ctx` tokens per slot, 4,096 by default).

A file reaches the model as a named section of its message (`kit.pipeline.files.file_section`). When the prompt
does not fit, the sections are cut, the newest document keeping the most, before the conversation's oldest
turns are dropped (`kit.model.fit`): what the user just attached is what the question is about.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from kit.model.fit import Render
from kit.pipeline.files import FILE_SECTION

SLACK_TOKENS = 32  # per cut section: its note, and tokens that merge differently at the cut


@dataclass(frozen=True)
class Cut:
    """A document read in part: its name, the tokens read and the tokens it has."""

    name: str
    used: int
    total: int

    def note(self, n_ctx: int) -> str:
        """What the user is told, in the answer's bubble before the answer.

        >>> Cut("big.txt", 3000, 9000).note(4096)
        "_(Read the first 3,000 of 9,000 tokens of big.txt: the model's context holds 4,096 tokens.)_\\n\\n"
        """
        return (
            f"_(Read the first {self.used:,} of {self.total:,} tokens of {self.name}: the model's context holds "
            f"{n_ctx:,} tokens.)_\n\n"
        )


def fit_documents(
    messages: list[dict[str, str]],
    render: Render,
    tokenize: Callable[[str], list[int]],
    detokenize: Callable[[list[int]], str],
    budget: int,
) -> tuple[list[dict[str, str]], list[Cut]]:
    """`messages` with their file sections cut so that the prompt takes at most `budget` tokens, and the cuts.

    Messages without file sections, or a prompt that fits, come back as they are.
    """
    tokens, _ = render(messages)
    if len(tokens) <= budget:
        return messages, []
    found = [(index, match) for index, m in enumerate(messages) for match in FILE_SECTION.finditer(m["content"])]
    if not found:
        return messages, []
    sizes = [tokenize(match.group(3)) for _, match in found]
    available = max(budget - (len(tokens) - sum(map(len, sizes))) - SLACK_TOKENS * len(found), 0)
    allowed = [0] * len(found)
    for position in reversed(range(len(found))):  # the newest document first
        allowed[position] = min(len(sizes[position]), available)
        available -= allowed[position]
    cuts: list[Cut] = []
    replaced: dict[int, list[tuple[re.Match[str], str]]] = {}
    for (index, match), size, keep in zip(found, sizes, allowed, strict=True):
        if keep == len(size):
            continue
        name = match.group(2)
        cuts.append(Cut(name, keep, len(size)))
        rest = f"\n[... the rest of {name} was not read: only {keep:,} of its {len(size):,} tokens fit.]"
        replaced.setdefault(index, []).append((match, detokenize(size[:keep]) + rest))
    fitted = [dict(m) for m in messages]
    for index, swaps in replaced.items():
        content = fitted[index]["content"]
        for match, body in reversed(swaps):  # from the end, so earlier offsets stay true
            content = content[: match.start(3)] + body + content[match.end(3) :]
        fitted[index]["content"] = content
    return fitted, cuts
