"""Files a user attached: each upload read once, checked against the chat's limits, into one plain dict.

Every source gets the same shape on the user message that carried the files (`message["files"]`):

    {"name": "secret.txt", "type": "text/plain", "size": 26, "kind": "text", "content": "The secret word is ...",
     "sha256": "…", "data": b"The secret word is ..."}

- `kind` is "text" (plain text, Markdown, CSV, JSON, source code, HTML as text; `content` is a str), "pdf"
  (`content` is the text of its pages, `pages` how many it has and `pages_read` how many were read), "image" or
  "audio" (`content` is the bytes, `type` what the bytes are); `data` is the file's bytes as uploaded.
- The type comes from the bytes and the name, not from the browser's Content-Type: a PNG sent as text/plain is
  an image, and bytes that are neither text nor a known format are refused.
- `name` is the file's last path component, markup and control characters replaced: it is shown and
  written into prompts.

A file that cannot be read is a `BadFile` naming it (400; 413 past a size limit, 415 for a type the chat does
not accept), raised before any model work. Nothing is written to disk here.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import io
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from kit.errors import ChatError

log = logging.getLogger(__name__)

Attachment = dict[str, Any]
"""One read file: name, type, size, kind ("text" | "pdf" | "image" | "audio"), content (str or bytes), sha256."""

DEFAULT_FILE_TYPES = (
    "text/*",
    "application/json",
    "application/xml",
    "application/x-yaml",
    "application/x-sh",
    "application/javascript",
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "audio/*",
)
"""What a chat accepts by default: text-like files, PDFs, the images every vision API reads, and audio."""

# Magic numbers of the binary formats the kit knows (the first bytes of the file).
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF-", 0, "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"WAVE", 8, "audio/wav"),
    (b"OggS", 0, "audio/ogg"),
    (b"fLaC", 0, "audio/flac"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", 0, "audio/webm"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"\x1f\x8b", 0, "application/gzip"),
)
# Text types by extension, for names the browser sends as application/octet-stream or with no type.
_TEXT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".html": "text/html",
    ".htm": "text/html",
    ".xml": "application/xml",
    ".yaml": "application/x-yaml",
    ".yml": "application/x-yaml",
    ".py": "text/x-python",
    ".js": "application/javascript",
    ".sh": "application/x-sh",
}
_UNSAFE_NAME = re.compile(r"[^\w .,()+@#=\[\]-]")
MAX_NAME_CHARS = 120


class BadFile(ChatError):
    """An attached file the chat cannot take; the message names the file and says why."""

    status = 400


@dataclass(frozen=True)
class FileLimits:
    """How much a chat reads of its uploads (StreamSettings' `max_file_bytes`, `max_files_bytes`, `max_files`,
    `file_types` and `max_pdf_pages`).

    >>> FileLimits().accepts("text/markdown"), FileLimits().accepts("application/zip")
    (True, False)
    """

    max_file_bytes: int = 2 * 1024 * 1024
    max_files_bytes: int = 4 * 1024 * 1024
    max_files: int = 10
    types: Sequence[str] = DEFAULT_FILE_TYPES
    max_pdf_pages: int = 200

    def __post_init__(self) -> None:
        if min(self.max_file_bytes, self.max_files_bytes, self.max_files, self.max_pdf_pages) < 1:
            raise ValueError("max_file_bytes, max_files_bytes, max_files and max_pdf_pages must be positive")
        object.__setattr__(self, "types", tuple(self.types))

    def accepts(self, media_type: str) -> bool:
        """Whether a file of this type may be attached (patterns like "text/*" allowed)."""
        return any(fnmatchcase(media_type, pattern) for pattern in self.types)


# The names a file picker and Deep Chat's drag and drop go by: a browser often gives a Markdown, YAML or source
# file no type at all, so the page's accept list names the extensions of every type the chat accepts.
_EXTENSION_TYPES = {
    ".txt": "text/plain",
    ".log": "text/plain",
    **_TEXT_TYPES,
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".webm": "audio/webm",
}


def accepted_formats(limits: FileLimits) -> str:
    """What the page's attachment button accepts (an `accept` list, Deep Chat's `acceptedFormats`): the chat's
    type patterns, then the extensions of the known types they match.

    >>> accepted_formats(FileLimits(types=("application/pdf", "image/*")))
    'application/pdf,image/*,.pdf,.png,.jpg,.jpeg,.gif,.webp'
    """
    extensions = [extension for extension, media_type in _EXTENSION_TYPES.items() if limits.accepts(media_type)]
    return ",".join([*limits.types, *extensions])


def safe_name(name: str) -> str:
    """The file's last path component, markup and control characters replaced, at most 120 characters.

    >>> safe_name("../../etc/passwd<img src=x>.txt"), safe_name("C:\\\\Users\\\\me\\\\notes.md"), safe_name("")
    ('passwd_img src=x_.txt', 'notes.md', 'file')
    """
    last = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    cleaned = _UNSAFE_NAME.sub("_", last).strip(" .")
    return cleaned[:MAX_NAME_CHARS] or "file"


def sniff(data: bytes) -> str | None:
    """The media type of a known binary format, from the file's first bytes (None for anything else).

    >>> sniff(b"%PDF-1.7 ..."), sniff(b"hello")
    ('application/pdf', None)
    """
    for signature, offset, media_type in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            if offset == 8 and data[:4] != b"RIFF":
                continue
            return media_type
    return None


def read_files(uploads: Sequence[tuple[str, str, bytes]], limits: FileLimits) -> list[Attachment]:
    """Read each (name, declared type, bytes) upload, or raise BadFile naming the first one that cannot be.

    >>> [f["content"] for f in read_files([("a.txt", "text/plain", b"Hi")], FileLimits())]
    ['Hi']
    """
    if len(uploads) > limits.max_files:
        raise BadFile(f"at most {limits.max_files} files can be attached to one message, not {len(uploads)}", 413)
    total = sum(len(data) for _, _, data in uploads)
    if total > limits.max_files_bytes:
        raise BadFile(f"the attached files hold {total:,} bytes; the limit is {limits.max_files_bytes:,}", 413)
    return [read_file(name, declared, data, limits) for name, declared, data in uploads]


def read_file(name: str, declared: str, data: bytes, limits: FileLimits) -> Attachment:
    """One upload as an Attachment (see the module docstring), or BadFile naming it."""
    name = safe_name(name)
    if not data:
        raise BadFile(f"{name} is empty (0 bytes): attach a file with something in it")
    if len(data) > limits.max_file_bytes:
        raise BadFile(f"{name} holds {len(data):,} bytes; one file may hold at most {limits.max_file_bytes:,}", 413)
    media_type = _media_type(name, declared.split(";")[0].strip().lower(), data)
    if not limits.accepts(media_type):
        raise BadFile(f"{name} is {media_type}, which this chat does not accept (it takes {_listed(limits)})", 415)
    digest = hashlib.sha256(data).hexdigest()
    base: Attachment = {"name": name, "type": media_type, "size": len(data), "sha256": digest, "data": data}
    if media_type == "application/pdf":
        content, pages, read = read_pdf(name, data, limits.max_pdf_pages)
        return {**base, "kind": "pdf", "content": content, "pages": pages, "pages_read": read}
    if media_type.startswith(("image/", "audio/")):
        return {**base, "kind": media_type.split("/")[0], "content": data}
    return {**base, "kind": "text", "content": decode_text(name, data)}


def read_again(listing: Attachment, data: bytes) -> Attachment:
    """A file accepted earlier (a transcript's listing and its bytes) read again, whatever the limits are now.

    >>> read_again({"name": "a.txt", "type": "text/plain"}, b"Hi")["content"]
    'Hi'
    """
    limits = FileLimits(max(len(data), 1), max(len(data), 1), types=("*",))
    return read_file(listing["name"], listing["type"], data, limits)


def _media_type(name: str, declared: str, data: bytes) -> str:
    """What the bytes are: a known signature wins over the declared type; text keeps its declared or named type."""
    found = sniff(data)
    if found is not None:
        return found
    if declared.startswith(("image/", "audio/", "video/")) or declared == "application/pdf":
        raise BadFile(f"{name} says it is {declared}, but its bytes are not: the file is damaged or misnamed")
    extension = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if declared.startswith("text/") or declared in _TEXT_TYPES.values():
        return declared
    return _TEXT_TYPES.get(extension, "text/plain")


def decode_text(name: str, data: bytes) -> str:
    """The text of a text file: UTF-8 (a BOM allowed) or UTF-16 with its BOM; anything else is BadFile.

    >>> decode_text("a.txt", "é".encode()), decode_text("b.txt", codecs.BOM_UTF16_LE + "hi".encode("utf-16-le"))
    ('é', 'hi')
    """
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadFile(
            f"{name} is not UTF-8 text (byte {error.start} cannot be decoded): save it as UTF-8, or attach a PDF "
            "or an image"
        ) from None
    if "\x00" in text or sum(1 for c in text[:4096] if unicodedata.category(c) == "Cc" and c not in "\t\n\r\f") > 8:
        raise BadFile(f"{name} holds binary data, not text: attach text, a PDF or an image")
    return text


def read_pdf(name: str, data: bytes, max_pages: int) -> tuple[str, int, int]:
    """A PDF's text, page by page (at most `max_pages`): (text, its pages, the pages read). BadFile when pypdf
    cannot read it (damaged, encrypted)."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise BadFile(f"{name} is an encrypted PDF: attach a copy without a password")
        pages = len(reader.pages)
        texts = [
            f"[page {number}]\n{(page.extract_text() or '').strip()}"
            for number, page in enumerate(reader.pages[:max_pages], 1)
        ]
    except BadFile:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as error:
        log.info("%s: pypdf could not read it: %r", name, error)
        raise BadFile(f"{name} cannot be read as a PDF (it is damaged or not a PDF)") from None
    if pages > max_pages:
        texts.append(f"[pages {max_pages + 1} to {pages} were not read: the chat reads at most {max_pages} pages]")
    return "\n\n".join(texts), pages, min(pages, max_pages)


def _listed(limits: FileLimits) -> str:
    return ", ".join(limits.types)


# -- files as words, for a model that reads only text -------------------------------------------------------

FILE_OPEN = '<file name="{name}" type="{type}">'
FILE_CLOSE = "</file>"
FILE_SECTION = re.compile(r'(<file name="([^"]*)" type="[^"]*">\n)(.*?)(\n</file>)', re.S)
"""A file's section in a prompt: its head, name, body and tail (names never hold a quote: `safe_name`)."""
CANNOT_SEE = "[This model cannot see images: the image above is not shown to it.]"
CANNOT_HEAR = "[This model cannot hear audio: the recording above is not played to it.]"
EARLIER = "[The file {name} was attached earlier; its content is not sent again.]"


def file_section(attachment: Attachment) -> str:
    """A text or PDF file as a named section of a prompt; an image or a recording as a sentence saying the model
    does not get it.

    >>> file_section({"name": "a.txt", "type": "text/plain", "kind": "text", "content": "Hi"})
    '<file name="a.txt" type="text/plain">\\nHi\\n</file>'
    """
    kind = attachment.get("kind")
    if kind in ("image", "audio"):
        return f"{file_label(attachment)}\n{CANNOT_SEE if kind == 'image' else CANNOT_HEAR}"
    if kind not in ("text", "pdf"):
        return EARLIER.format(name=attachment["name"])
    head = FILE_OPEN.format(name=attachment["name"], type=attachment["type"])
    return f"{head}\n{attachment['content']}\n{FILE_CLOSE}"


def file_label(attachment: Attachment) -> str:
    """The line that names an image or a recording before its block.

    >>> file_label({"name": "p.png", "kind": "image"})
    'Attached image: p.png'
    """
    return f"Attached {'image' if attachment['kind'] == 'image' else 'recording'}: {attachment['name']}"


def with_files_text(text: str, files: Sequence[Attachment]) -> str:
    """A message's text followed by its files as sections (what a text-only model or a str input reads).

    >>> with_files_text("What is it?", [{"name": "p.png", "type": "image/png", "kind": "image", "content": b""}])
    'What is it?\\n\\nAttached image: p.png\\n[This model cannot see images: the image above is not shown to it.]'
    """
    return "\n\n".join([text, *(file_section(attachment) for attachment in files)]) if files else text


def data_url(attachment: Attachment) -> str:
    """An image or recording as a base64 data URL, the shape vision chat APIs take in `image_url` parts.

    >>> data_url({"type": "image/png", "content": b"\\x89PNG"})
    'data:image/png;base64,iVBORw=='
    """
    return f"data:{attachment['type']};base64,{base64.b64encode(attachment['content']).decode('ascii')}"


def from_data_url(url: str) -> tuple[str, bytes] | None:
    """(media type, bytes) of a base64 data URL, None for anything else (a blob: or http URL).

    >>> from_data_url("data:image/png;base64,iVBORw==")
    ('image/png', b'\\x89PNG')
    """
    head, comma, body = url.partition(",")
    if not comma or not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        return head[len("data:") : -len(";base64")], base64.b64decode(body, validate=True)
    except ValueError:
        return None


def blocks_text(content: Any) -> str:
    """A LangChain message's content as the text a model without eyes or ears reads: text blocks joined, an image
    or audio block replaced by a sentence saying the model does not get it.

    >>> blocks_text([{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:"}}])
    'What is this?\\n\\n[This model cannot see images: the image above is not shown to it.]'
    """
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("image_url", "image"):
            parts.append(CANNOT_SEE)
        elif isinstance(block, dict) and block.get("type") in ("audio", "input_audio"):
            parts.append(CANNOT_HEAR)
    return "\n\n".join(part for part in parts if part)
