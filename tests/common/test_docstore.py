"""The atomic JSON-document script against a real redis-server."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from regtask import keys
from regtask.docstore import (
    DocStore,
    DocumentError,
    DocumentMissing,
    DocUpdate,
    op_add,
    op_guard_equals,
    op_guard_not,
    op_remove,
    op_set,
)


def stored(client: redis.Redis, key: str) -> dict[str, object]:
    raw = client.hget(key, keys.DATA_FIELD)
    assert raw is not None
    return json.loads(raw)  # type: ignore[no-any-return]


def test_empty_arrays_and_objects_keep_their_shape(redis_sync: redis.Redis) -> None:
    store = DocStore(redis_sync)
    init = {
        "a": [],
        "b": {},
        "c": {"d": [], "e": 'text with [] and [ ] and "quoted [ ]" and \\'},
        "f": [[], {}, [1]],
    }
    store.apply(DocUpdate(key="k", ops=[op_set(("x",), 1)], init=init))
    assert stored(redis_sync, "k") == {**init, "x": 1}
    store.apply(DocUpdate(key="k", ops=[op_add(("a",), "t1"), op_remove(("a",), "t1")]))
    assert stored(redis_sync, "k")["a"] == []
    assert stored(redis_sync, "k")["b"] == {}


def test_add_is_set_like_and_capped(redis_sync: redis.Redis) -> None:
    store = DocStore(redis_sync)
    store.apply(DocUpdate(key="k", ops=[], init={"items": []}))
    for item in ["a", "b", "a", "c", "d"]:
        store.apply(DocUpdate(key="k", ops=[op_add(("items",), item, cap=3)]))
    assert stored(redis_sync, "k")["items"] == ["b", "c", "d"]


def test_missing_document_without_init_is_reported(redis_sync: redis.Redis) -> None:
    with pytest.raises(DocumentMissing, match="no registry document at 'nope'"):
        DocStore(redis_sync).apply(DocUpdate(key="nope", ops=[op_set(("a",), 1)]))
    assert not redis_sync.exists("nope")


@pytest.mark.parametrize(
    "raw",
    [b"not json at all", b"[1, 2, 3]", b'"a string"', b'{"progress": "not an object"}'],
)
def test_malformed_documents_are_not_overwritten(redis_sync: redis.Redis, raw: bytes) -> None:
    redis_sync.hset("bad", keys.DATA_FIELD, raw)
    with pytest.raises(DocumentError, match="malformed registry document at 'bad'"):
        DocStore(redis_sync).apply(
            DocUpdate(key="bad", ops=[op_set(("progress", "progress_percent"), 5)])
        )
    assert redis_sync.hget("bad", keys.DATA_FIELD) == raw


def test_guard_blocks_write_and_publish(redis_sync: redis.Redis) -> None:
    store = DocStore(redis_sync)
    store.apply(DocUpdate(key="k", ops=[], init={"status": "completed"}))
    pubsub = redis_sync.pubsub()
    pubsub.subscribe("chan")
    assert pubsub.get_message(timeout=1) is not None  # subscribe confirmation
    result = store.apply(
        DocUpdate(
            key="k",
            ops=[op_guard_not(("status",), ["completed"]), op_set(("status",), "processing")],
            publish=("chan", "late"),
        )
    )
    assert result.applied is False
    assert stored(redis_sync, "k")["status"] == "completed"
    assert pubsub.get_message(timeout=0.3) is None
    result = store.apply(
        DocUpdate(key="k", ops=[op_guard_equals(("status",), "completed")], delete=True)
    )
    assert result.applied is True
    assert not redis_sync.exists("k")
    pubsub.close()


def test_publish_happens_with_the_write(redis_sync: redis.Redis) -> None:
    store = DocStore(redis_sync)
    pubsub = redis_sync.pubsub()
    pubsub.subscribe("chan")
    pubsub.get_message(timeout=1)
    store.apply(DocUpdate(key="k", ops=[op_set(("n",), 1)], init={}, publish=("chan", "hello")))
    message = pubsub.get_message(timeout=1)
    assert message is not None and message["data"] == b"hello"
    pubsub.close()


def test_ttl_and_fields(redis_sync: redis.Redis) -> None:
    store = DocStore(redis_sync)
    store.apply(
        DocUpdate(
            key="k",
            ops=[],
            init={},
            ttl_s=90,
            extra_fields={"last_update": 12.5},
            init_fields={"created_at": 1.0},
        )
    )
    store.apply(DocUpdate(key="k", ops=[], init={}, init_fields={"created_at": 2.0}))
    assert 0 < redis_sync.ttl("k") <= 90
    assert redis_sync.hget("k", "last_update") == b"12.5"
    assert redis_sync.hget("k", "created_at") == b"1.0"


def test_concurrent_adds_lose_nothing(redis_server: object, redis_sync: redis.Redis) -> None:
    url = redis_sync.connection_pool.connection_kwargs
    writers, per_writer = 8, 100
    store_init = DocUpdate(key="k", ops=[], init={"items": []})
    DocStore(redis_sync).apply(store_init)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        client = redis.Redis(host=url["host"], port=url["port"])
        store = DocStore(client)
        try:
            for n in range(per_writer):
                store.apply(DocUpdate(key="k", ops=[op_add(("items",), f"{writer}-{n}")]))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(stored(redis_sync, "k")["items"]) == writers * per_writer  # type: ignore[arg-type]
