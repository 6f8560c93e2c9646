"""LangGraph adapter: stream a compiled graph (an agent, a StateGraph) token by token into the kit.

`create_app(graph)` uses `graph_source(graph)`. The graph runs with LangGraph's `stream_mode="messages"`,
which reports every chat model's tokens inside any node (and subgraph) as they are produced, and the
messages nodes write without a model (tool results, fixed replies). The answer is the AI text; tool calls
(name and arguments) and tool results go to a `steps_role` bubble when one is given, and are left out
otherwise. `answer_nodes=` names the nodes whose model text is the answer when a graph has several models
talking (the others' text then counts as steps). The token usage its models report (`usage_metadata`),
summed over every model call of the run (an agent calls its model once per step), ends the reply.

The graph's input is built from Deep Chat's history: a graph over `messages` (MessagesState, agents) gets
the whole conversation as LangChain messages; other input schemas are filled as for chains
(`kit.adapters.inputs.default_to_input`). Stop closes the stream: LangGraph cancels the running step, and the kit's
models inside it stop at their next token (the cancel token travels in the context LangGraph copies into
its worker threads). A graph with `async def` nodes streams through `astream` on the kit's event loop
(`kit.pipeline.event_loop`), where Stop cancels its task at the next await.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel

from kit.adapters.admission import admit_models, released
from kit.adapters.events import with_roles
from kit.adapters.graph_branches import branch_messages, fork, switch
from kit.adapters.graph_threads import WAITING_ROLE, WAITING_TEXT, GraphRun, keeps_messages
from kit.adapters.inputs import InputMapper, input_for_keys, to_messages
from kit.adapters.runnables import async_only_parts, with_reply_run
from kit.adapters.server_errors import explained
from kit.errors import ChatError
from kit.model.chat_model import ChatLlama
from kit.pipeline.async_sources import iterate
from kit.pipeline.cancel import CancelToken, bound_context
from kit.pipeline.pump import close_iterator
from kit.pipeline.shapes import read_thinking
from kit.pipeline.sources import ANSWER_ROLE, THINKING_ROLE, Message
from kit.pipeline.usage import Usage
from kit.threads.branching import current_branch

_DONE = object()
ANSWER_KEYS = ("answer", "output", "response", "result", "text", "content")


def graph_input(graph: Pregel) -> InputMapper:
    """Deep Chat's history as the graph's input: `{"messages": [...]}` for a graph over messages, else the
    state's conventional keys (question/input, chat_history, system) filled as for chains."""
    try:
        schema = graph.get_input_jsonschema()
        keys, required = list(schema.get("properties") or {}), list(schema.get("required") or [])
    except Exception:  # pydantic cannot describe some states (a typing.TypedDict before Python 3.12)
        keys, required = [name for name in graph.channels if not name.startswith("__")], []
    if "messages" in keys or not keys:
        return lambda messages: {"messages": to_messages(messages)}
    return input_for_keys(keys, required)


class StepSelector:
    """Sorts the graph's messages into (role, text): AI text to the answer, tool calls and results to steps."""

    def __init__(self, steps_role: str | None, answer_nodes: Sequence[str] | None) -> None:
        self.steps_role = steps_role
        self.answer_nodes = answer_nodes

    def feed(self, message: BaseMessage, metadata: dict[str, Any]) -> Iterator[tuple[str, str]]:
        if isinstance(message, ToolMessage):
            if self.steps_role is not None:
                yield self.steps_role, f"\n{message.name or 'tool'} returned: {message.text}\n"
            return
        if not isinstance(message, AIMessage | AIMessageChunk):
            return  # the user's own messages, echoed back by nodes that rewrite the state
        thought = read_thinking(message)
        if thought:  # a reasoning model's thinking, whichever node it serves
            yield THINKING_ROLE, thought
        node = metadata.get("langgraph_node")
        text_role = ANSWER_ROLE if self.answer_nodes is None or node in self.answer_nodes else self.steps_role
        if text_role is not None and message.text:
            yield text_role, message.text
        if self.steps_role is not None:
            yield from ((self.steps_role, text) for text in _written_calls(message))


def _written_calls(message: AIMessage | AIMessageChunk) -> Iterator[str]:
    """A call's name and arguments as text, piece by piece as a streaming model sends them."""
    if isinstance(message, AIMessageChunk):
        for chunk in message.tool_call_chunks:
            if chunk.get("name"):
                yield f"{'' if not chunk.get('index') else chr(10)}calling {chunk['name']} "
            if chunk.get("args"):
                yield str(chunk["args"])
    else:
        for index, call in enumerate(message.tool_calls):
            yield f"{chr(10) if index else ''}calling {call['name']} {json.dumps(call['args'], ensure_ascii=False)}"


class GraphSource:
    """A kit source for a compiled LangGraph graph; build it with `graph_source`."""

    def __init__(
        self,
        graph: Pregel,
        *,
        to_input: InputMapper | None = None,
        steps_role: str | None = None,
        answer_nodes: Sequence[str] | None = None,
        config: RunnableConfig | None = None,
        models: Sequence[ChatLlama] = (),
        asynchronous: bool | None = None,
    ) -> None:
        self.graph = graph
        # None: async when some node has only async code (`async def`), which `.stream()` cannot run.
        self.asynchronous = bool(async_only_parts(graph)) if asynchronous is None else asynchronous
        self.to_input = to_input or graph_input(graph)
        self.steps_role = steps_role
        self.answer_nodes = answer_nodes
        self.config = config
        self.models = list(models)

    def __call__(self, messages: list[Message], cancel: CancelToken) -> Iterator[Any]:
        run = GraphRun(self.graph, self.config)  # a checkpointer: the request's thread, only the new turn as input
        value = self._input(run, messages)
        # The root run id the web side chose (kit.threads.trace_runs): feedback on the answer names it in LangSmith.
        stream = explained(run.around(self._stream(value, cancel, with_reply_run(run.config))), messages)
        return released(stream, admit_models(self.models, cancel))

    def resume(self, resume: dict[str, Any], cancel: CancelToken) -> Iterator[Any]:
        """Go on from the current thread's interrupts: `resume` maps interrupt ids to their values
        (LangGraph's `Command(resume=...)`); the continuation streams like a reply."""
        from langgraph.types import Command

        run = GraphRun(self.graph, self.config)
        stream = explained(self._stream(Command(resume=resume), cancel, run.config), ())
        return released(stream, admit_models(self.models, cancel))

    def _input(self, run: GraphRun, messages: list[Message]) -> Any:
        """The run's input; a regenerate or an edit (kit.threads.branching) first forks the thread's checkpoints."""
        branch = current_branch()
        if branch is None or not self.keeps_threads:
            return run.input(messages, self.to_input)
        thread_id = run.thread_id
        assert thread_id is not None  # a checkpointed graph's run always has one
        edited = run.new_turn(messages)[-1:]  # an edit's text: the request's last user message
        return fork(self.graph, thread_id, branch, edited[0] if edited else None)

    @property
    def keeps_threads(self) -> bool:
        """Compiled with a checkpointer over `messages`: the graph keeps each thread (kit.threads.ThreadMemory)."""
        return keeps_messages(self.graph)

    def thread_messages(self, thread_id: str) -> list[Message]:
        """The thread's current branch (its latest checkpoint) as bubbles laid out as they streamed, each with its
        `id`, and `versions` where a turn has several (kit.adapters.graph_branches)."""
        return branch_messages(self.graph, thread_id, StepSelector(self.steps_role, None).feed)

    def switch_branch(self, thread_id: str, message_id: str) -> None:
        """Make the branch through this version current: the newest checkpoint through it, copied as the latest
        (NoSuchMessage when no checkpoint of the thread holds that message)."""
        switch(self.graph, thread_id, message_id, self.config)

    def _stream(self, value: Any, cancel: CancelToken, config: RunnableConfig | None) -> Iterator[Any]:
        selector = StepSelector(self.steps_role, self.answer_nodes)
        context = bound_context(cancel)
        # "values" too: a graph whose nodes write no messages (say, an `answer` key) still has a final state.
        modes = ["messages", "values"]
        if self.asynchronous:  # its async stream runs on the kit's event loop; the token is bound in its task
            stream = self.graph.astream(value, config, stream_mode=modes, subgraphs=True)
            iterator = iterate(stream, cancel, owned=True, context=context)
        else:
            iterator = context.run(self.graph.stream, value, config, stream_mode=modes, subgraphs=True)
        final_state: Any = None
        answered = False
        usage = Usage()  # every model call's usage_metadata (an agent calls its model once per step), summed

        def pieces() -> Iterator[tuple[str, str]]:
            nonlocal final_state, answered
            while not cancel.cancelled:
                item = context.run(next, iterator, _DONE)
                if item is _DONE:
                    break
                namespace, mode, payload = item
                if mode == "values":
                    final_state = payload if not namespace else final_state
                    continue
                if isinstance(payload[0], AIMessage | AIMessageChunk):
                    usage.read(payload[0])
                for role, text in selector.feed(*payload):
                    answered = answered or role == ANSWER_ROLE
                    yield role, text
            if isinstance(final_state, dict) and final_state.get("__interrupt__") and not cancel.cancelled:
                yield WAITING_ROLE, WAITING_TEXT  # stopped for a person (kit.adapters.interrupts): no answer yet
            elif not answered and not cancel.cancelled:
                yield ANSWER_ROLE, answer_from_state(final_state)

        try:
            yield from with_roles(pieces())
        finally:
            context.run(close_iterator, iterator)
        if usage.reported and not cancel.cancelled:  # reported once, at the end, as a chain reports it
            yield usage.as_item()


def answer_from_state(state: Any) -> str:
    """The answer of a graph that streamed no AI text: its final state's last AI message, or its answer key.

    Raises ChatError naming the state's keys when there is none, so the reply is an error, not empty.

    >>> answer_from_state({"question": "2+2?", "answer": "4"})
    '4'
    """
    if isinstance(state, dict):
        messages = state.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], AIMessage) and messages[-1].text:
            return messages[-1].text
        for key in ANSWER_KEYS:
            if isinstance(state.get(key), str) and state[key]:
                return state[key]
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ChatError(
        f"The graph finished without an answer: no AI message and no {'/'.join(ANSWER_KEYS)} text in its final "
        f"state ({keys}); write the answer to one of those keys, or pass to_input=/answer_nodes= to graph_source"
    )


def graph_source(
    graph: Pregel,
    *,
    to_input: InputMapper | None = None,
    steps_role: str | None = None,
    answer_nodes: Sequence[str] | None = None,
    config: RunnableConfig | None = None,
    models: Sequence[ChatLlama] = (),
    asynchronous: bool | None = None,
) -> GraphSource:
    """A source for `create_app` that streams a compiled LangGraph graph (what `create_app(graph)` uses).

    - `steps_role="steps"`: tool calls (name and arguments) and tool results stream into a bubble of that
      role; without it only the answer reaches the chat.
    - `answer_nodes`: the nodes whose model text is the answer (default: every node's AI text).
    - `to_input(messages)`: the graph's input from Deep Chat's history (default: `{"messages": [...]}`).
    - `config`: the graph's RunnableConfig (a `thread_id` for a checkpointer, a `recursion_limit`).
    - `models`: the kit's models whose fair queue should admit the request before the first byte (a model
      inside a node's function cannot be found automatically).
    - `asynchronous`: run the graph's async stream on the kit's event loop (default: when a node is `async def`).
    """
    return GraphSource(
        graph,
        to_input=to_input,
        steps_role=steps_role,
        answer_nodes=answer_nodes,
        config=config,
        models=models,
        asynchronous=asynchronous,
    )


def recognises(source: object) -> bool:
    """A compiled LangGraph graph, or one already wrapped by `graph_source` (kit.adapters.registry asks)."""
    return isinstance(source, Pregel | GraphSource)


def adapt(source: Pregel | GraphSource) -> GraphSource:
    """The graph's source; a `graph_source(...)` stays itself, so the routes still see its threads and interrupts."""
    return source if isinstance(source, GraphSource) else graph_source(source)
