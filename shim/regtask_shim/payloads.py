"""The web app's task payloads → the inputs and parameters a runner reads.

``document_data`` and ``documents`` are whatever the web app sends; the runners read plain
inputs (text, or base64 for PDF/DOCX) named after the document. This is the one place that knows
both sides.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from dataclasses import dataclass
from typing import Any

from regtask.crmodels import MAX_INPUTS, MAX_PARAMETER_LENGTH, MAX_PARAMETERS
from regtask_shim.errors import BadArguments

CONTENT_KEYS = ("content", "text")
BASE64_KEY = "content_base64"
NOT_PARAMETERS = {*CONTENT_KEYS, BASE64_KEY, "company_id", "content_type", "filename"}
_PARAMETER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
_INPUT_NAME = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True)
class RawInput:
    name: str
    content_type: str
    value: str
    encoding: str = "utf-8"


def _content_type(data: dict[str, Any], default: str) -> str:
    given = data.get("content_type")
    if isinstance(given, str) and given:
        return given
    filename = data.get("filename")
    if isinstance(filename, str) and filename:
        guessed, _ = mimetypes.guess_type(filename)
        if guessed:
            return guessed
    return default


def _one_document(data: Any, name: str, where: str) -> RawInput:
    if isinstance(data, str):
        if not data.strip():
            raise BadArguments(f"bad argument '{where}': empty document")
        return RawInput(name, "text/plain", data)
    if not isinstance(data, dict):
        raise BadArguments(f"bad argument '{where}': a text or an object with 'content'")
    for key in CONTENT_KEYS:
        text = data.get(key)
        if isinstance(text, str) and text.strip():
            # Text content stays text whatever the file was called (invoice.pdf's text layer).
            content_type = _content_type(data, "text/plain")
            if not content_type.startswith("text/"):
                content_type = "text/plain"
            return RawInput(name, content_type, text)
    encoded = data.get(BASE64_KEY)
    if isinstance(encoded, str) and encoded:
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadArguments(f"bad argument '{where}.{BASE64_KEY}': not base64") from None
        return RawInput(name, _content_type(data, "application/octet-stream"), encoded, "base64")
    raise BadArguments(
        f"bad argument '{where}': needs 'content' (text) or '{BASE64_KEY}' "
        "(with 'content_type' or 'filename')"
    )


def _input_name(value: Any, fallback: str) -> str:
    if isinstance(value, str):
        slug = _INPUT_NAME.sub("-", value.lower()).strip("-._")[:63].strip("-._")
        if slug:
            return slug
    return fallback


def document_inputs(document_data: dict[str, Any]) -> tuple[list[RawInput], dict[str, str]]:
    """One document to analyse, and its scalar options as parameters (``summary``...)."""
    document = _one_document(document_data, "document", "document_data")
    parameters: dict[str, str] = {}
    for key, value in document_data.items():
        if key in NOT_PARAMETERS or not _PARAMETER_NAME.match(key):
            continue
        if isinstance(value, bool):
            parameters[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            parameters[key] = str(value)[:MAX_PARAMETER_LENGTH]
        if len(parameters) >= MAX_PARAMETERS - 2:
            break
    filename = document_data.get("filename")
    if isinstance(filename, str) and filename:
        parameters["filename"] = filename[:MAX_PARAMETER_LENGTH]
    return [document], parameters


def vector_inputs(documents: list[Any]) -> list[RawInput]:
    """Each document its own input (named from its id or filename), so chunks keep a source."""
    if len(documents) > MAX_INPUTS:
        raise BadArguments(
            f"bad argument 'documents': at most {MAX_INPUTS} documents per vector computation; "
            "split the call"
        )
    inputs: list[RawInput] = []
    seen: set[str] = set()
    for index, document in enumerate(documents):
        fallback = f"doc-{index}"
        name = fallback
        if isinstance(document, dict):
            name = _input_name(document.get("id") or document.get("filename"), fallback)
        if name in seen:
            name = f"{name[:55]}-{index}"
        seen.add(name)
        inputs.append(_one_document(document, name, f"documents[{index}]"))
    return inputs
