"""The vector route: a runner's embeddings into ChromaDB, in its tenant's own collection.

The collection's name is derived from (company, user, requested name)
(:func:`regtask.naming.derived_name`), so a runner can only ever write its own tenant's
collections; the bytes are counted against the company's storage quota first and released when
Chroma refuses or cannot be reached.
"""

from __future__ import annotations

import httpx
import structlog
from fastapi import APIRouter, HTTPException

from regtask import registry_ops
from regtask.gateway_api import VECTORS_UPSERT_PATH, VectorUpsertIn, VectorUpsertOut
from regtask.naming import derived_name
from regtask.storage import vectors_item
from regtask_gateway import headroom
from regtask_gateway.auth import ClaimsDep
from regtask_gateway.state import StateDep, company_quotas, json_size

log = structlog.get_logger(__name__)

# Chroma collection names derived from (company, user, collection): "rtv-<readable>-<hash>".
VECTOR_COLLECTION_PREFIX = "rtv"

router = APIRouter()


@router.post(VECTORS_UPSERT_PATH)
async def vectors_upsert(
    body: VectorUpsertIn, state: StateDep, claims: ClaimsDep
) -> VectorUpsertOut:
    name = derived_name(
        VECTOR_COLLECTION_PREFIX, claims.company_id, claims.user_id, body.collection
    )
    size = 4 * body.dimension * len(body.ids) + json_size(body.documents or [])
    quotas = await company_quotas(state, claims.company_id)
    item = vectors_item(name)
    decision = await state.storage.reserve(claims.company_id, size, quotas.storage_limit_mb, item)
    headroom.show_storage(state.metrics, claims.company_id, decision)
    if not decision.allowed:
        raise HTTPException(507, "company storage quota exhausted")
    try:
        chroma = await state.chroma_client()
        collection = await chroma.get_or_create_collection(
            name,
            metadata={
                "company_id": claims.company_id,
                "user_id": claims.user_id,
                "collection": body.collection,
            },
            embedding_function=None,
        )
        await collection.upsert(
            ids=body.ids,
            embeddings=body.embeddings,  # type: ignore[arg-type]
            documents=body.documents,
            metadatas=body.metadatas,  # type: ignore[arg-type]
        )
        total = await collection.count()
    except (httpx.TransportError, ConnectionError) as exc:
        await state.storage.release(claims.company_id, size, item)
        log.error("gateway_chroma_unreachable", error=str(exc))
        raise HTTPException(502, "vector store unreachable") from exc
    except Exception as exc:
        # Chroma reports a dimension mismatch and similar client errors as plain exceptions.
        await state.storage.release(claims.company_id, size, item)
        log.warning("gateway_chroma_refused", collection=name, error=str(exc))
        raise HTTPException(422, f"vector store refused the upsert: {exc}") from exc
    if state.settings.unified_registry_enabled:
        await state.registry.apply(
            registry_ops.unified_register_collection(claims.user_id, name, claims.company_id)
        )
    log.info("vectors_upserted", task_id=claims.task_id, collection=name, count=len(body.ids))
    return VectorUpsertOut(
        collection=name,
        requested_collection=body.collection,
        upserted=len(body.ids),
        total=total,
        dimension=body.dimension,
    )
