"""Legacy LangChain chains (`langchain-classic`'s `Chain`: LLMChain, ConversationChain, RetrievalQA, ...).

A `Chain` is a Runnable, but its `.stream()` only yields the whole result once the chain has finished:
served as a Runnable, its answer would arrive in one block. Such chains stream through callbacks instead
(the StreamingStdOutCallbackHandler pattern), so `create_app(chain)` serves them with
`kit.adapters.callbacks.callback_source`: the chain runs unchanged, and a handler added to the run forwards each
`on_llm_new_token` to the client. Handlers the user bound to the model at construction keep running
(LangChain merges them with the run's), so a chain that printed to stdout still does.
"""

from __future__ import annotations

from typing import Any

from langchain_classic.chains.base import Chain

from kit.adapters.callbacks import callback_source
from kit.pipeline.sources import SourceFn


def recognises(source: object) -> bool:
    """A legacy `Chain` (kit.adapters.registry asks)."""
    return isinstance(source, Chain)


def adapt(chain: Any) -> SourceFn:
    """What `create_app(chain)` uses for a legacy `Chain`: `callback_source(chain)`."""
    return callback_source(chain)
