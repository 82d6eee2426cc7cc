"""An OpenAI-compatible ``/v1/embeddings`` server for all-MiniLM-L6-v2 (dev, tests, demo).

``python -m regtask_dev.embed_server --model-dir DIR --port N [--host H] [--model-alias NAME]``
answers ``POST /v1/embeddings`` (``input``: a string or a list of strings; ``model``: the alias,
or absent) with OpenAI's shape, and ``GET /v1/models`` with its one model (readiness checks use
it). A request naming another model gets 404 ``model_not_found``, as OpenAI answers: a gateway
configured with the wrong ``LLM_EMBEDDING_MODEL`` fails loudly instead of silently getting
vectors of another model. Encoding runs in a worker thread, one batch at a time (numpy already
uses the cores).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from regtask_dev.minilm import MODEL_NAME, MiniLM

MAX_INPUTS = 256
MAX_INPUT_CHARS = 100_000


class EmbeddingsRequest(BaseModel):
    input: (
        Annotated[str, StringConstraints(max_length=MAX_INPUT_CHARS)]
        | list[Annotated[str, StringConstraints(max_length=MAX_INPUT_CHARS)]]
    )
    model: str | None = None
    encoding_format: str | None = Field(default=None, pattern="^float$")
    user: str | None = None


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}},
        status_code=status,
    )


def create_app(model: MiniLM, alias: str = MODEL_NAME) -> FastAPI:
    app = FastAPI(title="regtask dev embeddings", docs_url=None, redoc_url=None)
    lock = asyncio.Lock()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": alias, "object": "model", "owned_by": "regtask"}]}

    @app.post("/v1/embeddings", response_model=None)
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any] | JSONResponse:
        if body.model not in (None, "", alias):
            message = f"model '{body.model}' not found: this server has '{alias}'"
            return _error(404, message, "model_not_found")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > MAX_INPUTS:
            return _error(400, f"'input' must hold 1 to {MAX_INPUTS} strings", "invalid_input")
        async with lock:
            encoded = await asyncio.to_thread(model.encode, texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector.tolist()}
                for i, vector in enumerate(encoded.vectors)
            ],
            "model": alias,
            "usage": {"prompt_tokens": encoded.tokens, "total_tokens": encoded.tokens},
        }

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m regtask_dev.embed_server")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-alias", default=MODEL_NAME)
    args = parser.parse_args(argv)
    app = create_app(MiniLM(args.model_dir), args.model_alias)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
