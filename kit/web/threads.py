"""A thread per chat on the web side: the `X-Kit-Thread-Id` header, the owner hook, the transcript of each reply,
and `GET /threads/<id>/messages`, which gives a thread's bubbles back to a page that reloads.

A graph compiled with a checkpointer keeps its threads itself (kit.threads.ThreadMemory); for every other
source the kit appends each reply, as the client saw it, to the thread store when the reply ends or stops.
No route lists threads: an id (128 random bits from the kit's page) is the key to its conversation, and an
app that knows its users binds each thread to one with `owner=`, after which anyone else gets a 404.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Request, Response, jsonify

from kit.errors import ChatError
from kit.pipeline.cancel import STREAM_ID, CancelToken
from kit.pipeline.events import EndEvent, Event, TextEvent, UsageEvent
from kit.pipeline.files import read_again
from kit.pipeline.pump import close_iterator
from kit.pipeline.sources import ANSWER_ROLE, Message
from kit.threads.branching import BranchRequest, branch_scope
from kit.threads.ids import THREAD_ID_HEADER, thread_scope, validate_thread_id
from kit.threads.stops import SharedStops
from kit.threads.store import StoreDown, ThreadStore, open_store
from kit.threads.trace_runs import reply_run_scope
from kit.threads.transcript import Bubbles, ThreadMemory, new_user_messages
from kit.web.langsmith import new_trace_run

log = logging.getLogger(__name__)
SHA256 = re.compile(r"[0-9a-f]{64}")

MESSAGES_ROUTE = "/threads/<thread_id>/messages"
FILE_ROUTE = "/threads/<thread_id>/files/<sha256>"  # issue 28: a file a message of the thread carried
Owner = Callable[[], str | None]
"""Called during a request: the signed-in user's id, or None for nobody."""


class NoSuchThread(ChatError):
    """Another user's thread, answered exactly as one that does not exist would be."""

    status = 404


class ChatThreads:
    """The thread side of an app's chat routes: one per app (or Blueprint).

    - `store`: where transcripts, owners and cross-worker stops live: None for `kit-threads.sqlite` in the
      working directory, a path, `postgresql://...`, a ThreadStore, or False for no store at all (the header
      still reaches a checkpointed graph).
    - `owner`: returns the current user's id; a thread is bound to the first user who chats on it.

    >>> import os, tempfile
    >>> app = Flask(__name__)
    >>> threads = ChatThreads(None, store=os.path.join(tempfile.mkdtemp(), "t.sqlite"))
    >>> threads.register_routes(app)
    >>> app.test_client().get("/threads/0123456789abcdef/messages").json
    []
    """

    def __init__(
        self, source: object, *, store: str | Path | ThreadStore | bool | None = None, owner: Owner | None = None
    ):
        self.memory = source if isinstance(source, ThreadMemory) and source.keeps_threads else None
        self.store = None if store is False else open_store(None if store is True else store)
        self.owner = owner
        self.shared_stops = SharedStops(self.store) if self.store is not None else None
        # Adds to a thread's messages what another part keeps beside them (issue 27: the user's feedback).
        self.annotate: Callable[[str, list[Message]], list[Message]] = lambda thread_id, messages: messages

    def watch_stop(self, stream_id: str | None, cancel: CancelToken) -> None:
        """Let a stop posted on another worker process end this stream (a well-formed id and a store needed)."""
        if self.shared_stops is not None and stream_id is not None and STREAM_ID.fullmatch(stream_id):
            self.shared_stops.watch(stream_id, cancel)

    def post_stop(self, stream_id: str) -> None:
        """A stop for a stream this process does not serve: recorded for the others (503 if the store is down)."""
        if self.shared_stops is not None:
            self.shared_stops.post(stream_id)

    def register_routes(self, target: Flask | Blueprint) -> None:
        """Add `GET /threads/<id>/messages` to an app or a Blueprint."""
        target.add_url_rule(MESSAGES_ROUTE, "thread_messages", self._messages_route, methods=["GET"])
        target.add_url_rule(FILE_ROUTE, "thread_file", self._file_route, methods=["GET"])  # issue 28

    def _messages_route(self, thread_id: str) -> Response:
        return jsonify(self.messages(validate_thread_id(thread_id)))

    def _file_route(self, thread_id: str, sha256: str) -> Response:
        thread_id = validate_thread_id(thread_id)
        self._check_owner(thread_id, claim=False)
        found = self.store.file(thread_id, sha256) if self.store is not None and SHA256.fullmatch(sha256) else None
        if found is None:
            raise NoSuchThread("no such file in this thread")
        return file_response(*found)

    def messages(self, thread_id: str) -> list[Message]:
        """The thread's visible messages in Deep Chat's format; [] for a thread nobody has used."""
        return self.annotate(thread_id, self.branch(thread_id))

    def branch(self, thread_id: str) -> list[Message]:
        """The thread's current branch, each message with its `id` (kit.threads.branching), as Deep Chat's
        history takes it; [] for a thread nobody has used (NoSuchThread for another user's)."""
        self._check_owner(thread_id, claim=False)
        if self.memory is not None:
            return self.memory.thread_messages(thread_id)
        kept = self.store.messages(thread_id) if self.store is not None else []
        return [history_files(message, thread_id) for message in kept]

    def turn(self, request: Request, messages: list[Message]) -> Turn:
        """The thread a chat request runs on (BadThreadId 400, NoSuchThread 404, StoreDown 503 before any byte)."""
        header = request.headers.get(THREAD_ID_HEADER)
        if header is None:
            return Turn(None, [], None)
        thread_id = validate_thread_id(header)
        self._check_owner(thread_id, claim=True)
        store = self.store if self.memory is None else None  # a graph with memory keeps its own thread
        kept: list[Message] | None = None  # the current branch, read once for this request
        if store is not None:
            # Without a thread read the reply still streams when the store is down (only its transcript is lost).
            with contextlib.suppress(StoreDown):
                kept = store.messages(thread_id)
                with_kept_ids(messages, kept)  # issue 27
            restore_earlier_files(store, thread_id, messages, kept)  # issue 28
        turn = Turn(thread_id, new_user_messages(messages), store)
        turn.kept = kept
        turn.trace_run = new_trace_run() if self.store is not None else None  # issue 27: feedback to LangSmith
        if self.memory is not None and turn.trace_run is not None:
            turn.answer_run = AnswerRun(self.memory, self.store, thread_id, turn.trace_run)
        return turn

    def check_owner(self, thread_id: str) -> None:
        """NoSuchThread (404) when the thread belongs to another user than the current one."""
        self._check_owner(thread_id, claim=False)

    def _check_owner(self, thread_id: str, *, claim: bool) -> None:
        if self.owner is None or self.store is None:
            return
        user = self.owner()
        owner = self.store.owner(thread_id)
        if owner is None and claim and user is not None:
            owner = self.store.claim(thread_id, user)
        if owner is not None and owner != user:
            raise NoSuchThread("no such thread")


def with_kept_ids(messages: list[Message], kept: list[Message]) -> None:
    """The request's messages that repeat the thread's current branch (in order, the same role and text) get
    their stored ids, so a source sees the same id for a message as the page and the messages route.

    >>> asked = [{"role": "user", "text": "hi"}, {"role": "ai", "text": "hello"}, {"role": "user", "text": "bye"}]
    >>> with_kept_ids(asked, [{"id": "1", "role": "user", "text": "hi"}, {"id": "2", "role": "ai", "text": "hello"}])
    >>> [m.get("id") for m in asked]
    ['1', '2', None]
    """
    for message, stored in zip(messages, kept, strict=False):
        if message.get("role") != stored.get("role") or message.get("text") != stored.get("text"):
            return
        message["id"] = stored["id"]


def restore_earlier_files(
    store: ThreadStore, thread_id: str, messages: list[Message], kept: list[Message] | None = None
) -> None:
    """Files that earlier messages carry back by name only (Deep Chat sends a text file once) read again from
    the thread's store (`kept`: its messages, when already read), so a follow-up question about a document still
    has it; the newest file of a name wins."""
    earlier = [(m, i) for m in messages for i, f in enumerate(m.get("files") or []) if f.get("kind") == "earlier"]
    if not earlier:
        return
    kept = store.messages(thread_id) if kept is None else kept
    by_name = {f["name"]: f for m in kept for f in m.get("files", [])}
    for message, index in earlier:
        listing = by_name.get(message["files"][index]["name"])
        found = store.file(thread_id, listing["sha256"]) if listing is not None else None
        if found is not None:
            message["files"][index] = read_again(*found)


def history_files(message: Message, thread_id: str) -> Message:
    """A transcript message as Deep Chat's `history` shows it: its files with a `src` on the file route, an
    image's as a thumbnail ("image"), a recording's as a player ("audio"), any other by name ("any")."""
    if not message.get("files"):
        return message
    kinds = {"image": "image", "audio": "audio"}
    files = [
        {"name": f["name"], "type": kinds.get(f["kind"], "any"), "src": f"threads/{thread_id}/files/{f['sha256']}"}
        for f in message["files"]
    ]
    return {**message, "files": files}


def file_response(listing: dict[str, Any], data: bytes) -> Response:
    """A kept file as a download; an image or a recording inline. It is never served as markup of this origin
    (an attached HTML page is text here), and a sandbox CSP keeps anything in it from running."""
    inline = listing["kind"] in ("image", "audio")
    media_type = listing["type"] if inline else "application/octet-stream"
    response = Response(data, mimetype=media_type)
    disposition = "inline" if inline else "attachment"
    response.headers["Content-Disposition"] = f"{disposition}; filename*=UTF-8''{quote(listing['name'])}"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"  # content-addressed: never changes
    return response


class Turn:
    """One request on a thread: the scope the source starts in, and the transcript of its reply."""

    def __init__(self, thread_id: str | None, asked: list[Message], store: ThreadStore | None) -> None:
        self.thread_id = thread_id
        self.asked = asked
        self.store = store
        self.branch: BranchRequest | None = None  # issue 27: a regenerate or an edit (kit.web.branches)
        self.trace_run: str | None = None  # issue 27: the reply's root run id in LangSmith, when it traces
        self.restore: int | None = None  # issue 27: the head to go back to when a regenerate brings nothing
        self.answer_run: AnswerRun | None = None  # a checkpointed graph's reply, traced: its answer's run noted
        self.kept: list[Message] | None = None  # the transcript's current branch as the request found it

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Start the source inside this: a checkpointed graph reads the thread id (and the branch) from it."""
        with thread_scope(self.thread_id), branch_scope(self.branch), reply_run_scope(self.trace_run):
            yield

    def record(self, events: Iterator[Event]) -> Iterator[Event]:
        """The reply's events as they are; when they end (finished, failed or stopped) the question and the
        bubbles the client saw are appended to the thread's transcript."""
        if self.answer_run is not None:
            return self.answer_run.noted(events)
        if self.store is None or self.thread_id is None:
            return events
        return self._recorded(events)

    def _recorded(self, events: Iterator[Event]) -> Iterator[Event]:
        bubbles, kept = Bubbles(), False
        try:
            for event in events:
                if isinstance(event, TextEvent):
                    bubbles.add(event.text, event.role)
                elif isinstance(event, UsageEvent):
                    bubbles.usage = event.usage
                elif isinstance(event, EndEvent):
                    kept = True  # kept before the client learns of the end: a reload right after it shows it
                    self._append(bubbles.messages())
                yield event
        finally:
            close_iterator(events)  # the reply ends (its source cancelled) before its transcript is written
            if not kept:
                self._append(bubbles.messages())

    def record_answer(self, reply: Message) -> None:
        """The transcript of a reply that was not streamed (`POST /chat`): its JSON body, as an answer bubble."""
        if self.store is not None and self.thread_id is not None:
            self._append([{"role": "ai", **reply}] if reply["text"] else [])

    def _append(self, reply: list[Message]) -> None:
        assert self.store is not None and self.thread_id is not None
        try:
            traced = [{**m, "trace_run": self.trace_run} for m in reply] if self.trace_run else reply
            if not self.asked and not traced and self.restore is not None:
                self.store.set_head(self.thread_id, self.restore)  # the answer it was to replace stays current
            self.store.append(self.thread_id, [*self.asked, *traced])
        except ChatError:
            log.warning("thread %s: the reply could not be kept (the store is down)", self.thread_id)


class AnswerRun:
    """A traced reply of a source that keeps its own thread: when it ends, its answer's id (read back from the
    source, as a reload would) is noted with the reply's root run, so a vote on it reaches that run."""

    def __init__(self, memory: ThreadMemory, store: ThreadStore, thread_id: str, run_id: str) -> None:
        self.memory, self.store, self.thread_id, self.run_id = memory, store, thread_id, run_id

    def noted(self, events: Iterator[Event]) -> Iterator[Event]:
        try:
            yield from events
        finally:
            close_iterator(events)
            self._note()

    def _note(self) -> None:
        try:
            shown = self.memory.thread_messages(self.thread_id)
            users = [index for index, message in enumerate(shown) if message.get("role") == "user"]
            reply = shown[users[-1] + 1 :] if users else shown  # the bubbles after the question: this reply's
            for message in reply:
                if message.get("role") == ANSWER_ROLE and message.get("id"):
                    self.store.keep_answer_run(self.thread_id, str(message["id"]), self.run_id)
        except ChatError:
            log.warning("thread %s: the reply's run could not be noted (the store is down)", self.thread_id)
