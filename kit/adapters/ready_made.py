"""Ready-made models and chains: an OpenAI-compatible server's model, the demo chain."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import Runnable

from kit.model.chat_model import ChatLlama
from kit.model.remote import TIMEOUT, stopping_async_client, stopping_client

# -- ready-made models and chains --------------------------------------------------------------------


def openai_chat_model(
    base_url: str,
    *,
    model: str = "local",
    max_tokens: int = 256,
    temperature: float = 0.2,
    seed: int | None = None,
    api_key: str = "not-needed",
    **kwargs: Any,
) -> Any:
    """LangChain's ChatOpenAI pointed at an OpenAI-compatible server (llama.cpp, vLLM, ...) for scale-out.

    langchain-openai sends the token limit as `max_completion_tokens`, which llama-cpp-python's server
    ignores (it would generate until the context is full), so it is also sent as `max_tokens`. Its HTTP
    clients close a reply's connection when the kit's request is cancelled (kit.model.remote), so a Stop
    through a chain or a graph frees the server's slot at once, not when the reply would have ended.
    """
    from langchain_openai import ChatOpenAI

    kwargs.setdefault("http_client", stopping_client(timeout=TIMEOUT))
    kwargs.setdefault("http_async_client", stopping_async_client(timeout=TIMEOUT))
    return ChatOpenAI(
        base_url=base_url,
        api_key=api_key,  # type: ignore[arg-type]
        model=model,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        temperature=temperature,
        seed=seed,
        extra_body={"max_tokens": max_tokens},
        **kwargs,
    )


DEMO_SYSTEM_PROMPT = "You are a friendly assistant. Answer in a few short sentences."


def demo_chain(model: Any = None, system_prompt: str = DEMO_SYSTEM_PROMPT) -> Runnable[Any, str]:
    """prompt | model | text: the chain behind `python -m kit serve --demo chain` (default: embedded model).

    Its input keys (`question`, `chat_history`) are filled from Deep Chat's history automatically.
    """
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    prompt = ChatPromptTemplate.from_messages(
        [("system", system_prompt), MessagesPlaceholder("chat_history"), ("human", "{question}")]
    )
    return prompt | (model if model is not None else ChatLlama()) | StrOutputParser()
