"""A transcript as a tree of messages (issue 27): each row hangs from its parent (the message before it on its
branch), a thread's head is the leaf of its current branch, and the siblings of a message are its versions.

Pure functions over (id, parent) pairs, so that the store only reads and writes rows. A row from before the tree
(its parent NULL) hangs from the row before it in the thread: an old transcript is one branch, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

ROOT = 0
"""The parent of a thread's first message (ids start at 1 on both databases)."""


class Tree:
    """The rows of one thread, ordered by id, and its head (None: no head kept yet, the newest row is the leaf).

    >>> tree = Tree([(1, None), (2, None), (3, 1), (4, 3)], head=2)
    >>> tree.branch(), tree.versions(3), tree.newest_leaf(1)
    ([1, 2], {'index': 2, 'count': 2, 'ids': ['2', '3']}, 4)
    """

    def __init__(self, rows: Sequence[tuple[int, int | None]], head: int | None) -> None:
        self.parent: dict[int, int] = {}
        self.children: dict[int, list[int]] = {}
        previous = ROOT
        for row_id, parent in rows:
            up = previous if parent is None else parent
            self.parent[row_id] = up
            self.children.setdefault(up, []).append(row_id)
            previous = row_id
        known = head is not None and (head == ROOT or head in self.parent)
        self.head = head if known else previous

    def branch(self) -> list[int]:
        """The current branch's ids, from the thread's first message to its head."""
        return self.path(self.head)

    def path(self, leaf: int) -> list[int]:
        """The ids from the root down to `leaf`, in order."""
        ids: list[int] = []
        while leaf != ROOT:
            ids.append(leaf)
            leaf = self.parent[leaf]
        return ids[::-1]

    def versions(self, row_id: int) -> dict[str, Any] | None:
        """The message's versions (it and its siblings, oldest first), or None when it has no other."""
        siblings = self.children[self.parent[row_id]]
        if len(siblings) < 2:
            return None
        return {"index": siblings.index(row_id) + 1, "count": len(siblings), "ids": [str(i) for i in siblings]}

    def newest_leaf(self, row_id: int) -> int:
        """The leaf a switch to this version leads to: below it, the newest continuation at every step."""
        while self.children.get(row_id):
            row_id = self.children[row_id][-1]
        return row_id
