"""The generated demo ONNX embedder: valid, runnable, deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from cairn.inference.demo_onnx import PAD_ID, write_tiny_embedder


def run(path: Path, rows: list[bytes]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    width = max(map(len, rows))
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = list(row)
        mask[i, : len(row)] = 1
    (out,) = session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
    return np.asarray(out)


def test_written_model_passes_the_onnx_checker(tmp_path: Path) -> None:
    path = write_tiny_embedder(tmp_path / "sub" / "e.onnx")
    onnx.checker.check_model(str(path), full_check=True)


def test_model_declares_inputs_output_and_tokenizer(tmp_path: Path) -> None:
    session = ort.InferenceSession(
        str(write_tiny_embedder(tmp_path / "e.onnx", dim=16)), providers=["CPUExecutionProvider"]
    )
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("input_ids", "tensor(int64)"),
        ("attention_mask", "tensor(int64)"),
    ]
    (out,) = session.get_outputs()
    assert (out.name, out.type, out.shape) == ("embeddings", "tensor(float)", ["batch", 16])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta == {"cairn.tokenizer": "bytes", "cairn.pad_id": str(PAD_ID)}


def test_outputs_are_unit_vectors_of_dim(tmp_path: Path) -> None:
    out = run(write_tiny_embedder(tmp_path / "e.onnx", dim=24), [b"a", b"hello world"])
    assert out.shape == (2, 24)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_a_vector(tmp_path: Path) -> None:
    path = write_tiny_embedder(tmp_path / "e.onnx")
    alone = run(path, [b"hi"])
    padded = run(path, [b"hi", b"a much longer neighbour"])
    assert np.allclose(alone[0], padded[0], atol=1e-6)


def test_byte_order_matters(tmp_path: Path) -> None:
    out = run(write_tiny_embedder(tmp_path / "e.onnx"), [b"ab", b"ba"])
    assert not np.allclose(out[0], out[1], atol=1e-3)


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    a = write_tiny_embedder(tmp_path / "a.onnx", seed=7).read_bytes()
    b = write_tiny_embedder(tmp_path / "b.onnx", seed=7).read_bytes()
    assert a == b


def test_other_seed_writes_other_weights(tmp_path: Path) -> None:
    a = write_tiny_embedder(tmp_path / "a.onnx", seed=1).read_bytes()
    b = write_tiny_embedder(tmp_path / "b.onnx", seed=2).read_bytes()
    assert a != b
