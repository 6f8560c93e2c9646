"""ChatLlama: the kit's LangChain chat model over its llama.cpp engine.

Why the kit has its own chat model instead of an integration package: `langchain-community`'s
`ChatLlamaCpp` is being sunset (importing the package raises a DeprecationWarning, and the kit's tests turn
warnings into errors), and no maintained LangChain package runs llama.cpp in-process. A `BaseChatModel`
needs only `_generate` and `_stream`; owning them also lets the model honour the kit's cancel token and its
fair queue, which no integration would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import model_validator

from kit.model.engine import Engine, engine_for
from kit.model.remote import RemoteEngine
from kit.model.settings import LlamaSettings
from kit.model.tools import ToolTurns, openai_tools, split_call_or_text, to_chat_messages, tool_call_chunk, tool_mode


class ChatLlama(BaseChatModel):
    """A LangChain chat model over the kit's llama.cpp engine (default: the embedded SmolLM2).

    It streams token by token (`.stream()`, `astream_events`, and `on_llm_new_token` callbacks during
    `.invoke()`), waits its turn in the model's fair queue, and stops between two tokens when the
    request it serves is cancelled (see `cancel_scope`).
    """

    model_path: str | None = LlamaSettings.model_path
    n_ctx: int = LlamaSettings.n_ctx
    n_threads: int | None = LlamaSettings.n_threads
    slots: int = LlamaSettings.slots
    prefix_reuse: bool = LlamaSettings.prefix_reuse
    host_cache_mb: int = LlamaSettings.host_cache_mb
    max_tokens: int = LlamaSettings.max_tokens
    temperature: float = LlamaSettings.temperature
    seed: int | None = LlamaSettings.seed
    repeat_penalty: float = LlamaSettings.repeat_penalty
    max_queue: int = LlamaSettings.max_queue
    # A server to stream from instead of this process (kit.model.remote); None: KIT_ENGINE_URL, else in-process.
    engine_url: str | None = LlamaSettings.engine_url
    # When bound tools are called (kit.model.tools): a small model calls one after the user's message and
    # answers after the results; "model_decides" lets a capable model choose.
    tool_turns: ToolTurns = "call_then_answer"

    @model_validator(mode="after")
    def _check_kit_model(self) -> ChatLlama:
        self.settings.check()  # a missing model or llama-cpp-python is reported when the model is built
        return self

    @property
    def settings(self) -> LlamaSettings:
        return LlamaSettings(**{f.name: getattr(self, f.name) for f in fields(LlamaSettings)})

    @property
    def engine(self) -> Engine | RemoteEngine:
        """The shared engine (the model is loaded on first use), or the client of the server at `engine_url`."""
        return engine_for(self.settings)

    @property
    def _llm_type(self) -> str:
        return "kit-llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return asdict(self.settings)

    def bind_tools(
        self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """The model with tools: its calls are JSON forced by a grammar (see kit.model.tools and `tool_turns`)."""
        return self.bind(tools=openai_tools(tools), tool_choice=tool_choice, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        mode = tool_mode(tools, tool_choice, self.tool_turns, messages)
        options = {**self.settings.options(), **kwargs}
        if stop:
            options["stop"] = stop
        if mode.grammar is not None:
            options["grammar"] = mode.grammar
        chat = to_chat_messages(messages, mode.prompt)
        usage: dict[str, int] = {}
        pieces = self.engine.chat(chat, reuse=self.prefix_reuse, usage=usage, **options)
        yield from self._chunks(split_call_or_text(pieces, mode.may_call), run_manager)
        if usage:  # the reply's token counts, as LangChain's own chat models report them in their last chunk
            inputs, outputs = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
            metadata = UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs)
            yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=metadata))

    def _chunks(
        self, pieces: Iterator[tuple[str, str]], run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        for kind, text in pieces:
            if kind == "call":
                yield ChatGenerationChunk(message=tool_call_chunk(text))
                continue
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
            # LangChain's own .stream() reports tokens itself and passes no run manager; _generate passes
            # one, so callback handlers (the StreamingStdOutCallbackHandler pattern) see every token.
            if run_manager is not None:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
