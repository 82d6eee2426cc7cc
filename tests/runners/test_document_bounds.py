"""Issue 16 item 11: document parsing is bounded, with a clear error, before it starts."""

from __future__ import annotations

import base64
import io
import tracemalloc
import zipfile

import pypdf
import pytest

from regtask.gateway_api import ResolvedInput
from regtask_runners.errors import PermanentError
from regtask_runners.textextract import MAX_PDF_PAGES, extract_text

pytestmark = pytest.mark.unit

DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def as_input(name: str, data: bytes, content_type: str) -> ResolvedInput:
    return ResolvedInput(
        name=name,
        content_type=content_type,
        value=base64.b64encode(data).decode(),
        encoding="base64",
    )


def docx_bomb(xml_bytes: int) -> bytes:
    """A DOCX whose document.xml inflates to ``xml_bytes`` (mostly whitespace): tiny upload."""
    body = b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/' + (
        b'wordprocessingml/2006/main"><w:body>'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            part.write(body)
            chunk = b" " * (1024 * 1024)
            for _ in range(xml_bytes // len(chunk)):
                part.write(chunk)
            part.write(b"</w:body></w:document>")
    return buffer.getvalue()


def test_a_docx_zip_bomb_is_refused_before_parsing() -> None:
    bomb = docx_bomb(200 * 1024 * 1024)
    assert len(bomb) < 1024 * 1024  # a small upload
    tracemalloc.start()
    try:
        with pytest.raises(PermanentError, match="uncompressed, over the limit"):
            extract_text(as_input("bomb.docx", bomb, DOCX_TYPE))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # never inflated


def test_a_pdf_over_the_page_limit_is_refused() -> None:
    writer = pypdf.PdfWriter()
    for _ in range(MAX_PDF_PAGES + 1):
        writer.add_blank_page(width=72, height=72)
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(PermanentError, match=f"{MAX_PDF_PAGES + 1} pages, over the limit"):
        extract_text(as_input("long.pdf", buffer.getvalue(), "application/pdf"))
