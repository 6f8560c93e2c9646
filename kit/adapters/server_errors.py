"""A model server's failure told in the chat: what an OpenAI-compatible server answered a chain's model, in the
server's own words, instead of the kit's generic "interrupted" message (a 500).

Two failures reach a chain through its model's SDK: the server refused the request (openai's and anthropic's
`APIStatusError`, which keep the server's status and error body), or it answered 200 and then closed an empty
stream (LangChain's "No generation chunks were returned": llama-cpp-python's server does this when its chat
template cannot render the messages). A text model's template fails on an image part (SmolLM2's: "can only
concatenate str (not "list") to str"), so a failure before the first word of a request that carried images
or recordings says that the model may not read them (415), and what the server said.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from kit.errors import ChatError
from kit.model.remote import refusal
from kit.pipeline.sources import Message

EMPTY_STREAM = "The model server ended its reply without sending anything (an empty stream); its log says why."
CANNOT_READ = (
    "The model could not read the attached {what} ({names}): it seems unable to {ability}. Ask again without "
    "{it}, or use a model that can. ({said})"
)
_NOUNS = {"image": "image", "audio": "recording"}
_ABILITIES = {"image": "see images", "audio": "hear recordings"}
# langchain-core's chat models raise this ValueError when a stream ended before its first chunk.
_NO_CHUNKS = "No generation chunks were returned"


def explain(error: BaseException, messages: Sequence[Message], *, started: bool = False) -> ChatError | None:
    """The ChatError to show for a model server's failure, None for any other error. `started`: the reply's
    first item had arrived (then the model did read the request, whatever it carried).

    >>> class APIStatusError(Exception):  # the shape of openai's and anthropic's
    ...     status_code, body = 500, {"message": "can only concatenate str (not \\"list\\") to str"}
    >>> explain(APIStatusError(), [{"role": "user", "text": "Hi"}]).message
    'The model server answered HTTP 500: can only concatenate str (not "list") to str'
    >>> image = {"name": "photo.png", "kind": "image"}
    >>> explain(ValueError(_NO_CHUNKS), [{"role": "user", "text": "What is it?", "files": [image]}]).status
    415
    """
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and hasattr(error, "body"):
        refused = refusal(status, error.body, str(error))  # type: ignore[attr-defined]
        message, code = f"The model server answered HTTP {status}: {refused.message}", refused.status
    elif isinstance(error, ValueError) and str(error) == _NO_CHUNKS:
        message, code = EMPTY_STREAM, 502
    else:
        return None
    media = [] if started else _media(messages)
    if not media:
        return ChatError(message, code)
    kinds = {attachment["kind"] for attachment in media}
    kind = kinds.pop() if len(kinds) == 1 else None
    what = f"{_NOUNS[kind]}{'s' if len(media) > 1 else ''}" if kind else "images and recordings"
    names = ", ".join(str(attachment.get("name", "file")) for attachment in media)
    ability = _ABILITIES.get(kind or "", "see images or hear recordings")
    it = "them" if len(media) > 1 else "it"
    return ChatError(CANNOT_READ.format(what=what, names=names, ability=ability, it=it, said=message), 415)


def explained(stream: Iterable[Any], messages: Sequence[Message]) -> Iterator[Any]:
    """`stream`, with a model server's failure raised as `explain`'s ChatError (the original as its cause)."""
    started = False
    try:
        for item in stream:
            started = True
            yield item
    except Exception as error:
        told = explain(error, messages, started=started)
        if told is None:
            raise
        raise told from error


def _media(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The images and recordings the request's last user message carried (what a text model's template refuses)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return [f for f in message.get("files") or [] if f.get("kind") in ("image", "audio")]
    return []
