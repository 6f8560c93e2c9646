"""Which of LangChain's stream events carry the final answer, which the other steps, and which the thinking."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult
from langchain_core.runnables import RunnableConfig

from kit.pipeline.shapes import read_text, read_thinking
from kit.pipeline.sources import (
    ANSWER_ROLE,
    THINKING_ROLE,
    Role,
    to_text,
)
from kit.pipeline.usage import Usage

_MODEL_TOKEN_EVENTS = ("on_chat_model_stream", "on_llm_stream")
_MODEL_END_EVENTS = ("on_chat_model_end", "on_llm_end")


# -- choosing the final answer in the event stream ---------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """LangChain's include/exclude rules for event-stream filters (names, tags, run types).

    >>> answer_only = EventFilter(include_tags=("answer",))
    >>> answer_only.matches({"event": "on_chat_model_stream", "name": "model", "tags": ["answer"]})
    True
    """

    include_names: Sequence[str] | None = None
    include_types: Sequence[str] | None = None
    include_tags: Sequence[str] | None = None
    exclude_names: Sequence[str] | None = None
    exclude_types: Sequence[str] | None = None
    exclude_tags: Sequence[str] | None = None

    @property
    def active(self) -> bool:
        return any(getattr(self, name) is not None for name in self.__dataclass_fields__)

    def matches(self, event: dict[str, Any]) -> bool:
        name, tags = event.get("name"), event.get("tags") or []
        run_type = event["event"].removeprefix("on_").rsplit("_", 1)[0]  # on_chat_model_stream -> chat_model
        includes = (self.include_names, self.include_types, self.include_tags)
        included = all(rule is None for rule in includes) or (
            (self.include_names is not None and name in self.include_names)
            or (self.include_types is not None and run_type in self.include_types)
            or (self.include_tags is not None and any(tag in self.include_tags for tag in tags))
        )
        excluded = (
            (self.exclude_names is not None and name in self.exclude_names)
            or (self.exclude_types is not None and run_type in self.exclude_types)
            or (self.exclude_tags is not None and any(tag in self.exclude_tags for tag in tags))
        )
        return included and not excluded


class AnswerSelector:
    """Turns a v2 event stream into (role, text) pieces: the answer, and optionally the other steps.

    The answer is, in order of precedence: the tokens of model runs matching `filter`; every model's
    tokens (`final_only=False`); or the root run's own output stream (the final answer, whatever model
    produced it). Steps are the tokens of the other model runs. In the root-output case a model token is
    held back one event: if the root then streams, that model is the answer's and its tokens are not steps.
    """

    def __init__(self, *, final_only: bool, filter: EventFilter, steps_role: str | None) -> None:
        self.final_only = final_only
        self.filter = filter
        self.steps_role = steps_role
        self._held: tuple[str, str] | None = None  # (run id, text) of a model token not yet classified
        self._answer_runs: set[str] = set()

    def feed(self, event: dict[str, Any]) -> Iterator[tuple[str, str]]:
        kind = event["event"]
        is_model_token = kind in _MODEL_TOKEN_EVENTS
        thought = read_thinking(event.get("data", {}).get("chunk")) if is_model_token else ""
        if thought:  # every model's thinking shows: it is the chain at work, whichever step it serves
            yield THINKING_ROLE, thought
        if self.filter.active or not self.final_only:
            if is_model_token:
                chosen = self.filter.matches(event) if self.filter.active else True
                role = ANSWER_ROLE if chosen else self.steps_role
                if role is not None:
                    yield role, _chunk_text(event)
            return
        if kind.endswith("_stream") and not event.get("parent_ids"):  # the root run's output
            if self._held is not None:
                self._answer_runs.add(self._held[0])
                self._held = None
            yield ANSWER_ROLE, _chunk_text(event)
        elif self.steps_role is not None and is_model_token and event["run_id"] not in self._answer_runs:
            yield from self._release()
            self._held = (event["run_id"], _chunk_text(event))
        elif self.steps_role is not None and kind in _MODEL_END_EVENTS:
            yield from self._release()

    def finish(self) -> Iterator[tuple[str, str]]:
        yield from self._release()

    def _release(self) -> Iterator[tuple[str, str]]:
        if self._held is not None and self.steps_role is not None:
            yield self.steps_role, self._held[1]
        self._held = None


def _chunk_text(event: dict[str, Any]) -> str:
    return to_text(event.get("data", {}).get("chunk"))


class ModelTap(BaseCallbackHandler):
    """What every model call of a chain run through `.stream()` says beside its text, where an output parser at
    the end (`StrOutputParser`) keeps the answer's text only: its thinking, token by token (a model reports each
    token to its callbacks before passing it on, so the thinking is here by the time the chain's output for that
    token is), and its token usage when the call ends, summed over every call.
    """

    def __init__(self) -> None:
        self.thoughts: deque[str] = deque()
        self.usage = Usage()

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        thought = read_thinking(getattr(chunk, "message", None))
        if thought:
            self.thoughts.append(thought)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                self.usage.read(getattr(generation, "message", None))

    def drain(self) -> Iterator[dict[str, str]]:
        """The thinking collected so far, as items `kit.pipeline.sources.texts` reads as thinking."""
        while self.thoughts:
            yield {"thinking": self.thoughts.popleft()}

    def config(self, config: RunnableConfig | None) -> RunnableConfig:
        """`config` with this handler added to its callbacks (a list or a callback manager)."""
        merged: dict[str, Any] = dict(config or {})
        callbacks = merged.get("callbacks")
        if callbacks is None or isinstance(callbacks, list):
            merged["callbacks"] = [*(callbacks or []), self]
        else:
            manager = callbacks.copy()
            manager.add_handler(self, inherit=True)
            merged["callbacks"] = manager
        return RunnableConfig(**merged)  # type: ignore[typeddict-item]


def answer_only(item: Any) -> Any:
    """An output item's text without its thinking (a ModelTap has that); an item of no known shape as it is.

    >>> answer_only({"text": "Hi", "thinking": "Hmm"})
    'Hi'
    """
    text = read_text(item)
    return item if text is None else text


def with_roles(pieces: Iterator[tuple[str, str]]) -> Iterator[str | Role]:
    """Text pieces, with a Role marker wherever the role changes (Deep Chat starts a new bubble)."""
    current = ANSWER_ROLE
    for role, text in pieces:
        if not text:
            continue
        if role != current:
            current = role
            yield Role(role)
        yield text
