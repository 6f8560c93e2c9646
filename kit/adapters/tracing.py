"""A chain's runs as OpenTelemetry spans under the reply's span: a LangChain callback handler that every run
started in a traced reply gets (LangChain's configure hook, as LangSmith's tracer is added), no config needed.

Runs become spans named as the GenAI conventions name them: `chat {model}` for a chat model, `execute_tool
{tool}` for a tool, the run's name for a chain or a graph's node. Runs LangChain marks hidden (a graph's
plumbing) give their children to their parent. Prompts, answers, tool arguments and results are recorded
only with `capture_content` (the `trace_content` setting). Imported only when traces are on.
"""

from __future__ import annotations

import json
from contextvars import ContextVar, Token
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook

_HANDLER: ContextVar[RunSpans | None] = ContextVar("kit_run_spans", default=None)
_HIDDEN = "langsmith:hidden"


def _model(serialized: Any, params: Any, metadata: Any) -> str:
    for source, key in ((params, "model"), (params, "model_name"), (metadata, "ls_model_name"), (params, "_type")):
        value = source.get(key) if isinstance(source, dict) else None
        if isinstance(value, str) and value:
            return value
    return str((serialized or {}).get("name") or "model")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


class RunSpans(BaseCallbackHandler):
    """Opens a span per LangChain run of one reply, under `reply` (the reply's span) or the run's parent."""

    run_inline = True  # called where the run runs: the span's parent is in that context

    def __init__(self, tracer: Any, reply: Any, *, capture_content: bool = False, named: bool = True) -> None:
        self.tracer = tracer
        self.reply = reply
        self.capture_content = capture_content
        self.named = named  # False: the reply's span takes the name of the first chat model it sees
        self.spans: dict[UUID, Any] = {}
        self.hidden: dict[UUID, UUID | None] = {}  # a hidden run's id: its parent's

    def _parent(self, parent_run_id: UUID | None) -> Any:
        while parent_run_id in self.hidden:
            parent_run_id = self.hidden[parent_run_id]
        return self.spans.get(parent_run_id) if parent_run_id is not None else None

    def _start(self, run_id: UUID, parent_run_id: UUID | None, name: str, attributes: dict[str, Any]) -> None:
        from opentelemetry import trace

        parent = self._parent(parent_run_id) or self.reply
        context = trace.set_span_in_context(parent)
        self.spans[run_id] = self.tracer.start_span(name, context=context, attributes=attributes)

    def _end(self, run_id: UUID, error: BaseException | None = None, **attributes: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self.spans.pop(run_id, None)
        self.hidden.pop(run_id, None)
        if span is None:
            return
        span.set_attributes({key: value for key, value in attributes.items() if value is not None})
        if error is not None:
            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        span.end()

    # -- chains and graph nodes ----------------------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if _HIDDEN in (tags or []):
            self.hidden[run_id] = parent_run_id
            return
        name = kwargs.get("name") or (serialized or {}).get("name") or "chain"
        attributes = {"kit.run.type": "chain"}
        node = (metadata or {}).get("langgraph_node")
        if isinstance(node, str):
            attributes["langgraph.node"] = node
        self._start(run_id, parent_run_id, str(name), attributes)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    # -- models ---------------------------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        prompt = [[{"role": m.type, "content": m.content} for m in batch] for batch in messages]
        self._model_start(serialized, prompt, run_id, parent_run_id, kwargs)

    def on_llm_start(
        self, serialized: Any, prompts: list[str], *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._model_start(serialized, prompts, run_id, parent_run_id, kwargs)

    def _model_start(self, serialized: Any, prompt: Any, run_id: UUID, parent_run_id: UUID | None, kwargs: Any) -> None:
        model = _model(serialized, kwargs.get("invocation_params"), kwargs.get("metadata"))
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        if self.capture_content:
            attributes["gen_ai.input.messages"] = _text(prompt)
        self._start(run_id, parent_run_id, f"chat {model}", attributes)
        if not self.named:
            self.named = True
            self.reply.update_name(f"chat {model}")
            self.reply.set_attribute("gen_ai.request.model", model)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        generations = [g for batch in response.generations for g in batch]
        usage = (
            next(
                (
                    m.usage_metadata
                    for g in generations
                    if (m := getattr(g, "message", None)) is not None and getattr(m, "usage_metadata", None)
                ),
                None,
            )
            or {}
        )
        output = _text([g.text for g in generations]) if self.capture_content else None
        self._end(
            run_id,
            None,
            **{
                "gen_ai.usage.input_tokens": usage.get("input_tokens"),
                "gen_ai.usage.output_tokens": usage.get("output_tokens"),
                "gen_ai.output.messages": output,
            },
        )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)

    # -- tools ----------------------------------------------------------------------------------------------

    def on_tool_start(
        self, serialized: Any, input_str: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        name = str(kwargs.get("name") or (serialized or {}).get("name") or "tool")
        attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
        call_id = (kwargs.get("inputs") or {}).get("tool_call_id") if isinstance(kwargs.get("inputs"), dict) else None
        if isinstance(call_id, str):
            attributes["gen_ai.tool.call.id"] = call_id
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = input_str
        self._start(run_id, parent_run_id, f"execute_tool {name}", attributes)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        result = _text(getattr(output, "content", output)) if self.capture_content else None
        self._end(run_id, None, **{"gen_ai.tool.call.result": result})

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error)


register_configure_hook(_HANDLER, inheritable=True)  # runs started where _HANDLER is set get it


def trace_runs(handler: RunSpans) -> Token[RunSpans | None]:
    """Every LangChain run started in this context from now on (and in copies of it, such as the pump's
    thread) reports to `handler`; `stop_tracing_runs(token)` undoes it."""
    return _HANDLER.set(handler)


def stop_tracing_runs(token: Token[RunSpans | None]) -> None:
    """Undo `trace_runs` in this context (the contexts copied from it keep their handler)."""
    _HANDLER.reset(token)
