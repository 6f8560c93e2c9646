"""Token usage a source reports in its stream: OpenAI's usage chunk, Anthropic's message events, Ollama's last
chunk, LangChain's `usage_metadata`, the embedded engine's last chunk. Read where the kit already looks at an
item that is not a plain str, so a source of str pieces pays nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kit.pipeline.shapes import field


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _sdk_usage(item: Any) -> tuple[Any, Any] | None:
    """(usage object, its holder) of an SDK item that reports totals, or None."""
    response = field(item, "response")  # OpenAI Responses: `response.completed` carries the response
    message = field(item, "message")  # Anthropic `message_start` carries the message
    for holder in (item, response, message):
        if holder is None or isinstance(holder, str):
            continue
        usage = field(holder, "usage")
        if usage is not None:
            return usage, holder
    return None


@dataclass
class Usage:
    """The tokens one reply used, as its source reported them (None: not reported), and the model's name.

    >>> usage = Usage()
    >>> usage.read({"choices": [], "model": "gpt-x", "usage": {"prompt_tokens": 12, "completion_tokens": 30}})
    >>> usage.read({"model": "llama3", "done": True, "prompt_eval_count": 5, "eval_count": 7, "message": {}})
    >>> usage
    Usage(input_tokens=5, output_tokens=7, model='llama3')
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None

    @property
    def reported(self) -> bool:
        """The source reported some token count."""
        return self.input_tokens is not None or self.output_tokens is not None

    def as_dict(self) -> dict[str, Any]:
        """What the page and the transcript get: the counts reported (and the model, when named)."""
        fields = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "model": self.model}
        return {key: value for key, value in fields.items() if value is not None}

    def as_item(self) -> dict[str, Any]:
        """The usage as an item of its own, without text (an OpenAI usage chunk), which `read` takes back: how an
        adapter that sums its models' `usage_metadata` (a chain, a graph) reports it once, at the reply's end.

        >>> usage = Usage()
        >>> usage.read(Usage(3, 4, "m").as_item())
        >>> usage
        Usage(input_tokens=3, output_tokens=4, model='m')
        """
        counts = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        return {"choices": [], "model": self.model, "usage": counts}

    def read(self, item: Any) -> None:
        """Take what `item` says of usage: SDK totals replace what was read before (Anthropic's `message_delta`
        repeats the output count so far), LangChain's `usage_metadata` adds up (its chunks are summed)."""
        if isinstance(item, str | bytes | bytearray):
            return
        metadata = None if isinstance(item, dict) else getattr(item, "usage_metadata", None)
        if metadata:
            self._add(field(metadata, "input_tokens"), field(metadata, "output_tokens"))
            extra = getattr(item, "response_metadata", None)
            self.model = self.model or _str(field(extra, "model_name") or field(extra, "model"))
            return
        if _count(field(item, "eval_count")) is not None:  # Ollama's last chunk
            self._set(field(item, "prompt_eval_count"), field(item, "eval_count"))
            self.model = _str(field(item, "model")) or self.model
            return
        found = _sdk_usage(item)
        if found is None:
            return
        usage, holder = found
        inputs = field(usage, "prompt_tokens") if field(usage, "input_tokens") is None else field(usage, "input_tokens")
        outputs = field(usage, "output_tokens")
        self._set(inputs, field(usage, "completion_tokens") if outputs is None else outputs)
        self.model = _str(field(holder, "model")) or self.model

    def _set(self, inputs: Any, outputs: Any) -> None:
        inputs, outputs = _count(inputs), _count(outputs)
        self.input_tokens = self.input_tokens if inputs is None else inputs
        self.output_tokens = self.output_tokens if outputs is None else outputs

    def _add(self, inputs: Any, outputs: Any) -> None:
        inputs, outputs = _count(inputs), _count(outputs)
        if inputs is not None:
            self.input_tokens = (self.input_tokens or 0) + inputs
        if outputs is not None:
            self.output_tokens = (self.output_tokens or 0) + outputs
