"""``document_analysis``: text, Markdown, PDF and DOCX in; entities, language, key phrases,
counts and (optionally) an LLM summary out.

Parameters: ``summary`` ("true" asks the LLM for a summary through the gateway),
``summary_max_tokens`` (default 160), ``model`` (default: the user's preference, else the
gateway's). Steps reported: ``extracting_text``, ``entity_recognition`` (with
``entities_found``), ``key_phrases``, ``summarizing``, then ``completed`` by the framework.
"""

from __future__ import annotations

import asyncio
from typing import Any

from regtask_runners.entities import (
    count_sentences,
    detect_language,
    extract_entities,
    key_phrases,
    words,
)
from regtask_runners.errors import PermanentError
from regtask_runners.framework import TaskContext, param_bool, param_int, with_llm_quota
from regtask_runners.textextract import ExtractedText, extract_text

# What the summary prompt may carry of a document (the model's context is small).
SUMMARY_INPUT_CHARS = 3000


def analyse(doc: ExtractedText) -> dict[str, Any]:
    """Everything but the summary, for one document (pure: unit-tested on the test data)."""
    entities = extract_entities(doc.text)
    return {
        "name": doc.name,
        "kind": doc.kind,
        "counts": {
            "words": len(words(doc.text)),
            "sentences": count_sentences(doc.text),
            "characters": len(doc.text),
            "pages": doc.pages,
            "pages_estimated": doc.pages_estimated,
        },
        "language": detect_language(doc.text),
        "entities": entities.as_dict(),
        "entities_found": entities.count,
        "key_phrases": key_phrases(doc.text),
    }


async def _summary(ctx: TaskContext, text: str, language: str) -> str:
    model = ctx.task.parameters.get("model") or ctx.task.model_preferences.get("model")
    max_tokens = param_int(ctx.task, "summary_max_tokens", 160, 16, 1024)
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "user",
                "content": "Summarise the following document in three sentences"
                f" (language: {language}).\n\n{text[:SUMMARY_INPUT_CHARS]}",
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0.2,
    }
    if model:
        body["model"] = model
    answer = await with_llm_quota(ctx, lambda: ctx.gateway.chat(body))
    choices = answer.get("choices") or [{}]
    return str((choices[0].get("message") or {}).get("content") or "").strip()


async def run(ctx: TaskContext) -> dict[str, Any]:
    task = ctx.task
    if not task.inputs:
        raise PermanentError("document_analysis needs at least one input document")
    want_summary = param_bool(task, "summary")

    await ctx.progress.report(5, "extracting_text", {"documents": len(task.inputs)})
    # Parsing is CPU work: off the event loop, so a SIGTERM is handled at once.
    extracted = [await asyncio.to_thread(extract_text, item) for item in task.inputs]
    await ctx.progress.report(
        25, "extracting_text", {"pages": sum(d.pages for d in extracted)}, force=True
    )

    analyses = [await asyncio.to_thread(analyse, doc) for doc in extracted]
    found = sum(a["entities_found"] for a in analyses)
    await ctx.progress.report(55, "entity_recognition", {"entities_found": found})

    await ctx.progress.report(
        75, "key_phrases", {"key_phrases": sum(len(a["key_phrases"]) for a in analyses)}
    )

    if want_summary:
        await ctx.progress.report(85, "summarizing", {})
        for doc, analysis in zip(extracted, analyses, strict=True):
            analysis["summary"] = await _summary(ctx, doc.text, analysis["language"]["code"])

    ctx.log.info("document_analysis_done", documents=len(analyses), entities_found=found)
    return {"documents": analyses, "entities_found": found}
