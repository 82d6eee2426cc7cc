"""``vector_computation``: documents in, chunks embedded and stored in the tenant's Chroma
collection (both through the gateway).

Parameters: ``collection`` (default ``documents``; the gateway scopes it to the tenant),
``chunk_size`` in characters (default 1000), ``chunk_overlap`` (default 150), ``batch_size``
chunks per embedding request (default 16), ``model`` (default: the gateway's embedding model).
Each batch is one LLM request (counted against the company's hourly quota) and one upsert;
progress is reported per batch.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from regtask_runners.errors import PermanentError
from regtask_runners.framework import TaskContext, param_int, with_llm_quota
from regtask_runners.textextract import extract_text

DEFAULT_COLLECTION = "documents"


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Windows of ``size`` characters overlapping by ``overlap``, cut at whitespace when
    possible, so that no chunk starts or ends in the middle of a word."""
    if overlap >= size:
        raise PermanentError("chunk_overlap must be smaller than chunk_size")
    clean = " ".join(text.split())
    chunks: list[str] = []
    start = 0
    while start < len(clean):
        end = min(start + size, len(clean))
        if end < len(clean):
            cut = clean.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        chunk = clean[start:end].strip()
        if chunk:
            chunks.append(chunk)
        if end >= len(clean):
            break
        next_start = max(end - overlap, start + 1)
        space = clean.find(" ", next_start, end)
        start = space + 1 if overlap and space != -1 else next_start
    return chunks


async def run(ctx: TaskContext) -> dict[str, Any]:
    task = ctx.task
    if not task.inputs:
        raise PermanentError("vector_computation needs at least one input document")
    size = param_int(task, "chunk_size", 1000, 50, 8000)
    overlap = param_int(task, "chunk_overlap", 150, 0, 4000)
    batch_size = param_int(task, "batch_size", 16, 1, 256)
    collection = task.parameters.get("collection") or DEFAULT_COLLECTION
    model = task.parameters.get("model") or task.model_preferences.get("embedding_model")

    await ctx.progress.report(2, "extracting_text", {"documents": len(task.inputs)})
    items: list[tuple[str, str, dict[str, Any]]] = []
    per_document: dict[str, int] = {}
    for item in task.inputs:
        doc = await asyncio.to_thread(extract_text, item)
        chunks = chunk_text(doc.text, size, overlap)
        per_document[item.name] = len(chunks)
        for index, chunk in enumerate(chunks):
            metadata = {"source": item.name, "chunk": index, "task_id": task.task_id}
            items.append((f"{task.task_id}:{item.name}:{index}", chunk, metadata))
    if not items:
        raise PermanentError("the input documents contain no text to embed")

    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    await ctx.progress.report(
        5, "embedding", {"chunks": len(items), "batches": len(batches)}, force=True
    )
    dimension = 0
    stored_in = ""
    for number, batch in enumerate(batches, start=1):
        texts = [text for _, text, _ in batch]
        vectors = await with_llm_quota(ctx, functools.partial(ctx.gateway.embeddings, texts, model))
        dimension = len(vectors[0])
        answer = await ctx.gateway.upsert_vectors(
            {
                "collection": collection,
                "ids": [chunk_id for chunk_id, _, _ in batch],
                "embeddings": vectors,
                "documents": [text for _, text, _ in batch],
                "metadatas": [metadata for _, _, metadata in batch],
            }
        )
        stored_in = str(answer["collection"])
        await ctx.progress.report(
            5 + int(90 * number / len(batches)),
            "embedding",
            {
                "batch": number,
                "batches": len(batches),
                "chunks_done": min(number * batch_size, len(items)),
            },
        )

    ctx.log.info("vectors_computed", count=len(items), dimension=dimension, collection=stored_in)
    return {
        "count": len(items),
        "dimension": dimension,
        "collection": stored_in,
        "requested_collection": collection,
        "chunks_per_document": per_document,
        "chunk_size": size,
        "chunk_overlap": overlap,
    }
