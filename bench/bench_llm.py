"""What the gateway costs an LLM stream: the same prompts, direct to llama.cpp and through the
gateway (token check, quota Lua, forced ``user``, chunk relay), with the OpenAI SDK the
``llm_conversation`` runner uses.

Run: ``python -m bench.bench_llm`` (needs ``hack/install-llama.sh``). Starts its own Redis,
llama.cpp server (Gemma 3 270M) and gateway on loopback. Temperature 0 and a fixed seed make
both paths generate the same tokens, so tokens/s compare like for like; the paths alternate
per request so machine noise hits both alike.

First the limiter's own cost per call inside Redis (:mod:`bench.limiter`): the rolling-window
sliding log beside the fixed window it replaced. Then retrieval quality of the two embedding
models side by side (:mod:`bench.retrieval`):
all-MiniLM-L6-v2 (the dev ``/v1/embeddings``) and Gemma 3 270M's mean-pooled hidden states
(what it served before), each through its own OpenAI-compatible server, on the same pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

import openai

from bench import limiter, retrieval
from bench.common import emit
from regtask.crmodels import RegistryTaskSpec
from regtask.tasktypes import TaskType
from regtask_dev.gateway_harness import GatewayHarness
from regtask_dev.llm_server import CHAT_MODEL_ALIAS, LlamaServer
from regtask_dev.redis_server import RedisServer

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Describe a cat in a few words.",
    "Which planet is the largest in the solar system?",
]


@dataclass
class Sample:
    first_token_ms: float
    total_s: float
    completion_tokens: int


async def stream_once(client: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> Sample:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    chunks = 0
    stream = await client.chat.completions.create(
        model=CHAT_MODEL_ALIAS,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if any(choice.delta.content for choice in chunk.choices):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    return Sample(
        first_token_ms=((first or end) - start) * 1000,
        total_s=end - start,
        completion_tokens=tokens or chunks,
    )


def tokens_per_s(samples: list[Sample]) -> float:
    return sum(s.completion_tokens for s in samples) / sum(s.total_s for s in samples)


async def measure(
    direct: openai.AsyncOpenAI, gateway: openai.AsyncOpenAI, rounds: int, max_tokens: int
) -> tuple[list[Sample], list[Sample]]:
    await stream_once(direct, "Warm up.", 8)  # load the model pages before timing
    await stream_once(gateway, "Warm up.", 8)
    direct_samples: list[Sample] = []
    gateway_samples: list[Sample] = []
    for round_number in range(rounds):
        for index, prompt in enumerate(PROMPTS):
            pair = [(direct, direct_samples), (gateway, gateway_samples)]
            if (round_number + index) % 2:
                pair.reverse()
            for client, samples in pair:
                samples.append(await stream_once(client, prompt, max_tokens))
    return direct_samples, gateway_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--limiter-only", action="store_true", help="only the limiter's cost (no LLM server)"
    )
    args = parser.parse_args()
    with RedisServer() as redis_server:
        limiter_cost = limiter.measure(redis_server.url)
    if args.limiter_only:
        emit("bench_llm_limiter", {"limiter": limiter_cost})
        return
    with (
        RedisServer() as redis_server,
        LlamaServer() as llm,
        GatewayHarness(
            redis_url=redis_server.url,
            llm_base_url=llm.base_url,
            llm_embeddings_base_url=llm.embeddings_base_url,
            llm_embedding_model=llm.embedding_model,
        ) as gateway,
    ):
        spec = RegistryTaskSpec(
            task_id="llm_bench",
            task_type=TaskType.LLM_CONVERSATION,
            user_id="bench",
            company_id="bench",
            conversation_id="conv_bench",
        )
        token = gateway.add_task_sync(spec)
        direct = openai.AsyncOpenAI(base_url=llm.base_url, api_key="unused")
        via = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1/llm", api_key=token)
        direct_samples, via_samples = asyncio.run(
            measure(direct, via, args.rounds, args.max_tokens)
        )
        pairs = retrieval.load_pairs()
        minilm = retrieval.evaluate(
            retrieval.http_embedder(llm.embeddings_base_url, llm.embedding_model), pairs
        )
    with LlamaServer(embeddings="gemma", chat=False) as gemma_server:
        gemma = retrieval.evaluate(
            retrieval.http_embedder(gemma_server.embeddings_base_url, gemma_server.embedding_model),
            pairs,
        )
    direct_tps = tokens_per_s(direct_samples)
    via_tps = tokens_per_s(via_samples)
    emit(
        "bench_llm",
        {
            "model": "gemma-3-270m-q4_k_m (llama-cpp-python, CPU)",
            "requests": len(direct_samples),
            "max_tokens": args.max_tokens,
            "direct_tokens_per_s": round(direct_tps, 2),
            "via_runner_tokens_per_s": round(via_tps, 2),
            "overhead_pct": round((direct_tps - via_tps) / direct_tps * 100, 2),
            "first_token_ms_direct": round(
                statistics.median(s.first_token_ms for s in direct_samples), 1
            ),
            "first_token_ms_via_runner": round(
                statistics.median(s.first_token_ms for s in via_samples), 1
            ),
            "completion_tokens_direct": sum(s.completion_tokens for s in direct_samples),
            "completion_tokens_via_runner": sum(s.completion_tokens for s in via_samples),
            "limiter": limiter_cost,
            "retrieval": {
                "pairs_file": "bench/retrieval_pairs.json",
                "all-minilm-l6-v2": minilm,
                "gemma-3-270m-mean-pooled": gemma,
            },
        },
    )


if __name__ == "__main__":
    main()
