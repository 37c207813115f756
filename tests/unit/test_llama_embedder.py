"""GGUF embeddings: one normalised vector per input, from a generated llama model."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.inference.demo_gguf import write_tiny_llama
from cairn.inference.llama_embedder import LlamaEmbedder
from cairn.inference.types import ModelLoadError


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaEmbedder]:
    path = write_tiny_llama(tmp_path_factory.mktemp("m") / "demo.gguf")
    e = LlamaEmbedder(str(path), n_ctx=256, n_threads=1)
    yield e
    e.close()


def test_one_unit_vector_per_input(embedder: LlamaEmbedder) -> None:
    vectors, tokens = embedder.embed(["a cairn", "of stones", "a cairn"])
    assert len(vectors) == 3 and all(len(v) == embedder.dim == 64 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert tokens == sum(len(t.encode()) + 1 for t in ("a cairn", "of stones", "a cairn"))


def test_order_does_not_change_a_vector(embedder: LlamaEmbedder) -> None:
    # The KV cache is cleared between inputs: an input's vector does not depend on its neighbours.
    (alone,), _ = embedder.embed(["of stones"])
    _, after = embedder.embed(["a cairn", "of stones"])[0]
    assert alone == after


def test_empty_input_is_refused(embedder: LlamaEmbedder) -> None:
    with pytest.raises(ValueError, match="empty"):
        embedder.embed(["ok", ""])


def test_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(2048))
    with pytest.raises(ModelLoadError, match=r"bad\.gguf"):
        LlamaEmbedder(str(bad), n_ctx=256, n_threads=1)
