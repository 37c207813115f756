"""OnnxEmbedder on the generated demo model: vectors, token counts, load errors, options."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from cairn.inference.demo_onnx import write_tiny_embedder
from cairn.inference.onnx_engine import MAX_TOKENS, OnnxEmbedder, providers, session_options
from cairn.inference.types import ModelLoadError

AFFINITIES = "session.intra_op_thread_affinities"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_embedder(tmp_path_factory.mktemp("onnx") / "tiny.onnx", dim=32)


@pytest.fixture(scope="module")
def embedder(model: Path) -> OnnxEmbedder:
    return OnnxEmbedder(str(model), threads=1)


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_dim_comes_from_the_model(embedder: OnnxEmbedder) -> None:
    assert embedder.dim == 32


def test_vectors_have_dim_and_unit_length(embedder: OnnxEmbedder) -> None:
    vectors, _ = embedder.embed(["hello", "héllo wörld ☃"])
    assert [len(v) for v in vectors] == [32, 32]
    assert all(norm(v) == pytest.approx(1.0, abs=1e-5) for v in vectors)


def test_identical_texts_give_identical_vectors(embedder: OnnxEmbedder) -> None:
    (a, b), _ = embedder.embed(["same text", "same text"])
    assert a == b


def test_different_texts_give_different_vectors(embedder: OnnxEmbedder) -> None:
    (a, b, c), _ = embedder.embed(["cat", "dog", "tac"])
    assert a != pytest.approx(b, abs=1e-3)
    assert a != pytest.approx(c, abs=1e-3)  # same bytes, other order


def test_batch_of_n_gives_n_vectors_and_counts_bytes(embedder: OnnxEmbedder) -> None:
    texts = ["a", "bb", "ccc", "é"]  # é is two UTF-8 bytes
    vectors, tokens = embedder.embed(texts)
    assert len(vectors) == 4
    assert tokens == 1 + 2 + 3 + 2


def test_a_vector_does_not_depend_on_its_batch(embedder: OnnxEmbedder) -> None:
    (alone,), _ = embedder.embed(["short"])
    (batched, _), _ = embedder.embed(["short", "a much longer neighbour in the batch"])
    assert batched == pytest.approx(alone, abs=1e-6)


def test_long_texts_are_truncated(embedder: OnnxEmbedder) -> None:
    (long_v, exact_v), tokens = embedder.embed(["x" * (MAX_TOKENS + 100), "x" * MAX_TOKENS])
    assert tokens == 2 * MAX_TOKENS
    assert long_v == exact_v


def test_no_texts_no_work(embedder: OnnxEmbedder) -> None:
    assert embedder.embed([]) == ([], 0)


def test_an_empty_text_is_rejected_by_index(embedder: OnnxEmbedder) -> None:
    with pytest.raises(ValueError, match=r"input\[1\]"):
        embedder.embed(["fine", ""])


def test_two_threads_give_the_same_vectors(model: Path, embedder: OnnxEmbedder) -> None:
    texts = ["one", "two three"]
    two, _ = OnnxEmbedder(str(model), threads=2).embed(texts)
    one, _ = embedder.embed(texts)
    assert [pytest.approx(v, abs=1e-6) for v in one] == two


def test_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all" * 50)
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        OnnxEmbedder(str(bad), threads=1)


def test_truncated_model_is_a_load_error(model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.onnx"):
        OnnxEmbedder(str(cut), threads=1)


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model file"):
        OnnxEmbedder(str(tmp_path / "absent.onnx"), threads=1)


def test_model_without_input_ids_is_a_load_error(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ModelLoadError, match="input_ids"):
        OnnxEmbedder(str(path), threads=1)


def test_cuda_is_preferred_when_onnxruntime_has_it() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_only_without_cuda() -> None:
    assert providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_session_options_set_threads_and_sequential_execution() -> None:
    opts = session_options(3)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    assert opts.execution_mode.name == "ORT_SEQUENTIAL"
    with pytest.raises(RuntimeError, match="does not have"):
        opts.get_session_config_entry(AFFINITIES)  # no cores given: onnxruntime's default


def test_session_options_pin_pool_threads_to_the_cores_after_the_first() -> None:
    # onnxruntime numbers processors from 1 and pins only the threads it starts (threads - 1).
    opts = session_options(3, [4, 6, 7])
    assert opts.get_session_config_entry(AFFINITIES) == "7;8"


def test_session_options_need_one_core_per_thread() -> None:
    with pytest.raises(ValueError, match="2 threads need 2 cores"):
        session_options(2, [0, 1, 2])


def test_session_options_need_a_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        session_options(0)


def test_symbolic_dim_is_found_by_running_the_model(model: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(model))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "dim"
    path = tmp_path / "symbolic.onnx"
    onnx.save(proto, str(path))
    assert OnnxEmbedder(str(path), threads=1).dim == 32


def test_embed_pins_its_calling_thread_to_the_first_core(model: Path) -> None:
    core = max(os.sched_getaffinity(0))
    embedder = OnnxEmbedder(str(model), threads=1, cores=[core])
    seen: list[set[int]] = []

    def call() -> None:  # a thread of its own, so the test runner's thread stays unpinned
        embedder.embed(["pin me"])
        seen.append(os.sched_getaffinity(0))

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert seen == [{core}]


def test_cores_must_match_threads(model: Path) -> None:
    with pytest.raises(ValueError, match="2 threads need 2 cores"):
        OnnxEmbedder(str(model), threads=2, cores=[0])
