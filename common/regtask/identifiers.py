"""Validated identifier types shared by every boundary (RPC, CR spec, Redis documents).

Ids end up inside Redis keys (``conversation:{company}:{user}:{conv}``) and Kubernetes labels,
so separators and whitespace are refused here, once, rather than escaped everywhere.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"
ID_MAX_LENGTH = 128

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
]
