"""Plain text out of a task input: text, Markdown, PDF (text layer) and DOCX.

Inputs arrive inline from the gateway (``utf-8`` or ``base64``); the kind is taken from the
content type, else from the name's extension, else from the bytes' signature. A document that
cannot be read is a :class:`~regtask_runners.framework.PermanentError`: another attempt would
read the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import zipfile
from dataclasses import dataclass

import docx
import pypdf
from pypdf.errors import PyPdfError

from regtask.gateway_api import ResolvedInput
from regtask_runners.errors import PermanentError

WORDS_PER_PAGE = 500
# Parsing is bounded before it starts (issue 16, item 11): a DOCX is a zip, and a small upload
# can declare gigabytes of XML (a zip bomb) that python-docx would parse into memory; a PDF can
# carry thousands of pages. Each XML part's declared size is checked (zipfile never reads past
# it), and the PDF's page count, before any text is extracted.
MAX_DOCX_PART_BYTES = 16 * 1024 * 1024
MAX_DOCX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_PDF_PAGES = 500

PDF = "pdf"
DOCX = "docx"
MARKDOWN = "markdown"
TEXT = "text"

_CONTENT_TYPES = {
    "application/pdf": PDF,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": DOCX,
    "text/markdown": MARKDOWN,
    "text/x-markdown": MARKDOWN,
    "text/plain": TEXT,
}
_EXTENSIONS = {".pdf": PDF, ".docx": DOCX, ".md": MARKDOWN, ".markdown": MARKDOWN, ".txt": TEXT}


@dataclass(frozen=True)
class ExtractedText:
    name: str
    kind: str
    text: str
    pages: int
    # True when ``pages`` is an estimate (plain text, Markdown, DOCX without page breaks).
    pages_estimated: bool


def input_bytes(item: ResolvedInput) -> bytes:
    if item.encoding == "base64":
        try:
            return base64.b64decode(item.value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PermanentError(f"input {item.name!r} is not valid base64") from exc
    return item.value.encode()


def detect_kind(item: ResolvedInput, data: bytes) -> str:
    kind = _CONTENT_TYPES.get(item.content_type.split(";")[0].strip().lower())
    if kind and kind != TEXT:
        return kind
    for extension, by_name in _EXTENSIONS.items():
        if item.name.lower().endswith(extension):
            return by_name
    if data.startswith(b"%PDF"):
        return PDF
    if data.startswith(b"PK\x03\x04") and _is_docx(data):
        return DOCX
    return kind or TEXT


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _estimate_pages(text: str) -> int:
    return max(1, math.ceil(len(text.split()) / WORDS_PER_PAGE))


def pdf_text(name: str, data: bytes, max_pages: int = MAX_PDF_PAGES) -> ExtractedText:
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise PermanentError(f"input {name!r} is an encrypted PDF")
        count = len(reader.pages)
        if count > max_pages:
            raise PermanentError(
                f"input {name!r}: the PDF has {count} pages, over the limit of {max_pages}"
            )
        pages: list[str] = []
        for page in reader.pages:
            # Layout mode keeps table columns apart ("1     800,00 EUR" is a quantity and an
            # amount, not 1800); plain extraction is the fallback for odd pages.
            try:
                pages.append(page.extract_text(extraction_mode="layout"))
            except (PyPdfError, ValueError, KeyError):
                pages.append(page.extract_text())
    except PermanentError:
        raise
    except (PyPdfError, ValueError, KeyError, OSError) as exc:
        raise PermanentError(f"input {name!r} is not a readable PDF: {exc}") from exc
    text = "\n\f\n".join(pages)
    if not text.strip():
        raise PermanentError(f"input {name!r}: the PDF has no text layer (scanned images?)")
    return ExtractedText(name, PDF, text, len(reader.pages), False)


def check_docx_size(
    name: str,
    data: bytes,
    max_part: int = MAX_DOCX_PART_BYTES,
    max_total: int = MAX_DOCX_TOTAL_BYTES,
) -> None:
    """Refuse a DOCX whose parts declare more than the limits, before any XML is parsed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except zipfile.BadZipFile as exc:
        raise PermanentError(f"input {name!r} is not a readable DOCX: {exc}") from exc
    total = 0
    for member in members:
        total += member.file_size
        if member.file_size > max_part:
            raise PermanentError(
                f"input {name!r}: DOCX part {member.filename[:80]!r} is "
                f"{member.file_size} bytes uncompressed, over the limit of {max_part}"
            )
    if total > max_total:
        raise PermanentError(
            f"input {name!r}: the DOCX is {total} bytes uncompressed, over the limit of {max_total}"
        )


def docx_text(name: str, data: bytes) -> ExtractedText:
    check_docx_size(name, data)
    try:
        document = docx.Document(io.BytesIO(data))
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PermanentError(f"input {name!r} is not a readable DOCX: {exc}") from exc
    blocks = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            # Cells of a row on one line, apart: "1   800,00 EUR" stays two values.
            blocks.append("   ".join(cell.text for cell in row.cells))
    text = "\n".join(blocks)
    breaks = len(
        document.element.body.xpath('.//w:br[@w:type="page"] | .//w:lastRenderedPageBreak')
    )
    if breaks:
        return ExtractedText(name, DOCX, text, breaks + 1, False)
    return ExtractedText(name, DOCX, text, _estimate_pages(text), True)


_MD_RULES = [
    (re.compile(r"```.*?```", re.DOTALL), " "),
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE), ""),
    (re.compile(r"^\s{0,3}>\s?", re.MULTILINE), ""),
    (re.compile(r"^\s*[-*+]\s+", re.MULTILINE), ""),
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<!\w)([*_])(.+?)\1(?!\w)"), r"\2"),
    (re.compile(r"^\s*(?:-{3,}|\*{3,})\s*$", re.MULTILINE), ""),
]


def markdown_to_text(markdown: str) -> str:
    """Drop the markup, keep the words (headings, emphasis, links' text)."""
    text = markdown
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return text


def extract_text(item: ResolvedInput) -> ExtractedText:
    data = input_bytes(item)
    kind = detect_kind(item, data)
    if kind == PDF:
        return pdf_text(item.name, data)
    if kind == DOCX:
        return docx_text(item.name, data)
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(f"input {item.name!r} is neither UTF-8 text nor PDF/DOCX") from exc
    text = markdown_to_text(raw) if kind == MARKDOWN else raw
    if "\f" in text:
        return ExtractedText(item.name, kind, text, text.count("\f") + 1, False)
    return ExtractedText(item.name, kind, text, _estimate_pages(text), True)
