"""The kit's embedded models inside a chain: their queue places, taken before the first byte and given back after."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from kit.model.chat_model import ChatLlama
from kit.model.engine import Admission
from kit.pipeline.cancel import CancelToken

# -- admission: the kit's embedded models in a chain -------------------------------------------------


def kit_models(chain: object) -> list[ChatLlama]:
    """The kit's own chat models used by a chain (found through LangChain's graph of the chain)."""
    if isinstance(chain, ChatLlama):
        return [chain]
    try:
        nodes = chain.get_graph().nodes.values()  # type: ignore[attr-defined]
    except Exception:
        return []
    found: list[ChatLlama] = []
    for node in nodes:
        if isinstance(node.data, ChatLlama) and all(node.data is not m for m in found):
            found.append(node.data)
    return found


def admit_models(models: Sequence[ChatLlama], cancel: CancelToken) -> list[Admission]:
    """Take a place with each model's engine now (raising ServiceBusy before the first byte)."""
    admissions: list[Admission] = []
    try:
        engines = {id(m.engine): (m.engine, m.max_queue) for m in models}
        for engine, max_queue in engines.values():
            admissions.append(engine.admit(cancel, max_queue))
    except BaseException:
        for admission in admissions:
            admission.release()
        raise
    return admissions


def released(stream: Iterator[Any], admissions: list[Admission]) -> Iterator[Any]:
    try:
        yield from stream
    finally:
        for admission in admissions:
            admission.release()
