"""Files a user might attach, made in the test: text of several kinds, a real PDF with text on its pages, a tiny
PNG and JPEG, a WAV recording, and hostile ones (a zip bomb, a PDF of thousands of pages, binary named .txt)."""

from __future__ import annotations

import base64
import io
import wave
import zipfile

SECRET = "The secret word is PAPAYA."
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")  # the signature and an empty image


def pdf(pages: list[str]) -> bytes:
    """A PDF with one line of text per page (Helvetica), with a correct cross-reference table."""
    count = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count))
        + b"] /Count %d >>" % count,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for index, text in enumerate(pages):
        stream = b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % (5 + 2 * index)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def wav(seconds: float = 0.1) -> bytes:
    """A silent mono 8 kHz WAV recording."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(b"\x00\x00" * int(8000 * seconds))
    return out.getvalue()


def zip_bomb(megabytes: int = 200) -> bytes:
    """A zip whose one member inflates to `megabytes` of zeros (about 200 KB on the wire for 200 MB)."""
    out = io.BytesIO()
    archive = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    with archive, archive.open("zeros.txt", "w") as member:
        for _ in range(megabytes):
            member.write(b"\x00" * (1024 * 1024))
    return out.getvalue()


# (name, declared type, bytes, what the source reads as its content)
TEXT_FILES = [
    ("secret.txt", "text/plain", SECRET.encode(), SECRET),
    ("notes.md", "text/markdown", b"# Notes\n\n- PAPAYA is the word", "# Notes\n\n- PAPAYA is the word"),
    ("table.csv", "text/csv", b"fruit,word\npapaya,PAPAYA\n", "fruit,word\npapaya,PAPAYA\n"),
    ("data.json", "application/json", b'{"secret": "PAPAYA"}', '{"secret": "PAPAYA"}'),
    ("code.py", "application/octet-stream", b"SECRET = 'PAPAYA'\n", "SECRET = 'PAPAYA'\n"),
    ("page.html", "text/html", b"<p>PAPAYA</p><script>x()</script>", "<p>PAPAYA</p><script>x()</script>"),
    ("accents.txt", "text/plain", "Café, naïve: PAPAYA".encode("utf-16"), "Café, naïve: PAPAYA"),
]
