"""A tiny random-weight ONNX text-embedding model, generated at run/test time (never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The tokenizer contract, also stored in the model's metadata so an engine reads it from the file:
# UTF-8 bytes are the token ids 0..255 and PAD_ID fills the rest of a batch's rows.
TOKENIZER = "bytes"
PAD_ID = 256
VOCAB_SIZE = 257
MAX_POSITIONS = 512
OPSET = 18  # every Reduce* op takes its axes as an input from opset 18 on


def _graph(dim: int, seed: int) -> onnx.GraphProto:
    """Embed bytes at their positions, mask-average over the sequence, L2-normalise."""
    rng = np.random.default_rng(seed)
    tokens = rng.standard_normal((VOCAB_SIZE, dim)).astype(np.float32)
    positions = rng.standard_normal((MAX_POSITIONS, dim)).astype(np.float32)
    inits = [
        numpy_helper.from_array(tokens, "token_table"),
        numpy_helper.from_array(positions, "position_table"),
        numpy_helper.from_array(np.array([1], np.int64), "one_i64"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_i64"),
        numpy_helper.from_array(np.array(MAX_POSITIONS - 1, np.int64), "last_position"),
        numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
        numpy_helper.from_array(np.array([2], np.int64), "feature_axis"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f32"),
        numpy_helper.from_array(np.array(1e-12, np.float32), "tiny"),
        numpy_helper.from_array(np.array(1, np.int64), "seq_axis_scalar"),
    ]
    nodes = [
        helper.make_node("Gather", ["token_table", "input_ids"], ["tok"]),
        # Position of each real token = running count of the mask minus one; pads are masked.
        helper.make_node("CumSum", ["attention_mask", "seq_axis_scalar"], ["count_so_far"]),
        helper.make_node("Sub", ["count_so_far", "one_i64"], ["pos_raw"]),
        helper.make_node("Clip", ["pos_raw", "zero_i64", "last_position"], ["pos"]),
        helper.make_node("Gather", ["position_table", "pos"], ["posv"]),
        helper.make_node("Add", ["tok", "posv"], ["tok_at_pos"]),
        # Mean pooling of a sum would cancel the positions out again ("ab" == "ba"); the
        # non-linearity keeps the vector dependent on byte order.
        helper.make_node("Tanh", ["tok_at_pos"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "feature_axis"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "seq_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "seq_axis"], ["count_raw"], keepdims=1),
        # An all-pad row sums to zero; dividing by at least 1 keeps it finite.
        helper.make_node("Max", ["count_raw", "one_f32"], ["count"]),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("ReduceL2", ["mean", "seq_axis"], ["norm_raw"], keepdims=1),
        helper.make_node("Max", ["norm_raw", "tiny"], ["norm"]),
        helper.make_node("Div", ["mean", "norm"], ["embeddings"]),
    ]
    return helper.make_graph(
        nodes,
        "cairn-tiny-embedder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        initializer=inits,
    )


def write_tiny_embedder(path: Path, *, dim: int = 32, seed: int = 0) -> Path:
    """Write a byte-level embedding model with random weights to path; same seed, same bytes."""
    model = helper.make_model(
        _graph(dim, seed),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cairn",
    )
    model.ir_version = 8  # old enough for any onnxruntime that knows opset 18
    helper.set_model_props(model, {"cairn.tokenizer": TOKENIZER, "cairn.pad_id": str(PAD_ID)})
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path
