"""The generated demo GGUF: llama.cpp loads it, it is deterministic, its size is as documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from cairn.inference.demo_gguf import (
    BOS_ID,
    CHAT_TEMPLATE,
    SPACE_ID,
    VOCAB_SIZE,
    parameter_count,
    write_tiny_llama,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llm(tiny: Path) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(str(tiny), n_ctx=256, n_threads=2, verbose=False)
    yield model
    model.close()


def test_loads_in_llama_cpp_with_byte_vocab(llm: llama_cpp.Llama) -> None:
    assert llm.n_vocab() == VOCAB_SIZE
    # BOS, then one token per byte (token id == byte value); a space is SentencePiece's "▁".
    assert llm.tokenize("hi é".encode()) == [BOS_ID, 104, 105, SPACE_ID, 0xC3, 0xA9]
    assert llm.detokenize([104, 105, SPACE_ID, 0xC3, 0xA9]).decode() == "hi é"


def test_carries_the_chat_template(llm: llama_cpp.Llama) -> None:
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_greedy_text_is_printable_ascii(llm: llama_cpp.Llama) -> None:
    out = llm("Once upon a time", max_tokens=64, temperature=0.0)
    text = out["choices"][0]["text"]  # type: ignore[index]
    assert len(text) == 64  # neither EOS nor a multi-byte character cut it short
    assert all(c == "\n" or " " <= c <= "~" for c in text)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_llama(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_llama(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c
    assert len(a) == len(c)


@pytest.mark.parametrize(
    ("layers", "dim", "heads", "ff", "dtype"),
    [(2, 64, 4, None, "f32"), (3, 96, 3, 200, "f16")],
)
def test_parameter_count_formula_matches_llama_cpp(
    tmp_path: Path, layers: int, dim: int, heads: int, ff: int | None, dtype: str
) -> None:
    path = write_tiny_llama(
        tmp_path / "m.gguf",
        layers=layers,
        dim=dim,
        heads=heads,
        ff=ff,
        dtype=dtype,  # type: ignore[arg-type]
    )
    model = llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
    try:
        assert llama_cpp.llama_model_n_params(model.model) == parameter_count(
            layers=layers, dim=dim, ff=ff
        )
        assert model.metadata["llama.block_count"] == str(layers)
    finally:
        model.close()


def test_f16_halves_the_weights(tmp_path: Path) -> None:
    f32 = write_tiny_llama(tmp_path / "a.gguf", dim=128, dtype="f32").stat().st_size
    f16 = write_tiny_llama(tmp_path / "b.gguf", dim=128, dtype="f16").stat().st_size
    assert 0.45 < f16 / f32 < 0.6


def test_benchmark_size_is_about_100m() -> None:
    assert parameter_count(layers=12, dim=768) == 113_664_768


def test_rejects_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        write_tiny_llama(tmp_path / "x.gguf", dim=66, heads=4)
    with pytest.raises(ValueError, match="vocab"):
        write_tiny_llama(tmp_path / "x.gguf", vocab="bpe")  # type: ignore[arg-type]
