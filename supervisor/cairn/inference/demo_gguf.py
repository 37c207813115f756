"""Write random-weight llama-architecture GGUF files with a byte-level vocabulary.

The models say nothing useful; they exist so tests, `make run` and the benchmark have a real
GGUF that llama.cpp loads and runs at a realistic per-token cost, without a download.

Parameter count (weights only, f32 norms included), with V = 260 tokens, d = dim, L = layers,
f = ff (default 4 * d), all heads sharing one KV head count (no GQA):

    params = 2 * V * d + L * (4 * d * d + 3 * d * f + 2 * d) + d

e.g. layers=2, dim=64 -> 0.16 M; layers=12, dim=768 (f = 3072) -> 113.7 M.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

log = logging.getLogger(__name__)

# Token ids: the 256 bytes first, so that token id == byte value, then the specials.
BOS_ID = 256
EOS_ID = 257
UNK_ID = 258
SPACE_ID = 259  # SentencePiece's "▁": the tokenizer turns spaces into it before lookup
VOCAB_SIZE = 260

# A small ChatML-like template that can offer tools, Hermes/Qwen style: the tools' signatures as
# JSON lines inside <tools></tools> in the system turn, calls answered as
# <tool_call>{"name": ..., "arguments": ...}</tool_call> blocks (the API recognises the format by
# that tag), results sent back as <tool_response> blocks in a user turn. Without tools a
# conversation renders as "<|role|>\ncontent<|end|>\n" turns. Rendered by llama-cpp-python's
# Jinja2ChatFormatter (a jinja2 sandbox with trim_blocks and lstrip_blocks); a call's arguments
# may be a JSON string or an object, and `function` may wrap the call (OpenAI's shape) or not.
CHAT_TEMPLATE = (
    "{% set msgs = messages %}"
    "{% if tools %}"
    "<|system|>\n"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] }}\n\n"
    "{% set msgs = messages[1:] %}"
    "{% endif %}"
    "# Tools\n\n"
    "You may call functions to help with the request. Their signatures, one JSON object"
    " per line, are inside <tools></tools>:\n<tools>\n"
    "{% for tool in tools %}"
    "{{ tool | tojson }}\n"
    "{% endfor %}"
    "</tools>\n\n"
    "To call a function, answer with a JSON object holding its name and arguments inside"
    " <tool_call></tool_call>, one block per call:\n"
    '<tool_call>\n{"name": <function name>, "arguments": <arguments object>}\n</tool_call>'
    "<|end|>\n"
    "{% endif %}"
    "{% for message in msgs %}"
    "{% if message['role'] == 'tool' %}"
    "{% if loop.first or msgs[loop.index0 - 1]['role'] != 'tool' %}<|user|>\n{% endif %}"
    "<tool_response>\n{{ message['content'] }}\n</tool_response>"
    "{% if loop.last or msgs[loop.index0 + 1]['role'] != 'tool' %}<|end|>\n"
    "{% else %}{{ '\\n' }}{% endif %}"
    "{% else %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% if call['function'] is defined %}{% set call = call['function'] %}{% endif %}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    '<tool_call>\n{"name": {{ call[\'name\'] | tojson }}, "arguments": '
    "{% if call['arguments'] is string %}{{ call['arguments'] }}"
    "{% else %}{{ call['arguments'] | tojson }}{% endif %}"
    "}\n</tool_call>"
    "{% endfor %}"
    "<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_RMS_EPS = 1e-5
_ROPE_BASE = 10000.0


def parameter_count(*, layers: int, dim: int, ff: int | None = None) -> int:
    """Number of weights in a model write_tiny_llama would write with these sizes."""
    ff = _default_ff(dim) if ff is None else ff
    return 2 * VOCAB_SIZE * dim + layers * (4 * dim * dim + 3 * dim * ff + 2 * dim) + dim


def write_tiny_llama(
    path: Path,
    *,
    layers: int = 2,
    dim: int = 64,
    heads: int = 4,
    ctx: int = 2048,
    seed: int = 0,
    vocab: Literal["bytes"] = "bytes",
    ff: int | None = None,
    dtype: Literal["f32", "f16"] = "f32",
    chat_template: str | None = CHAT_TEMPLATE,
) -> Path:
    """Write a random llama GGUF to path (deterministic for a given seed) and return path."""
    if vocab != "bytes":
        raise ValueError(f"unsupported vocab {vocab!r}; only 'bytes' exists")
    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    if (dim // heads) % 2:
        raise ValueError("the head size must be even for RoPE")
    ff = _default_ff(dim) if ff is None else ff
    rng = np.random.default_rng(seed)
    wtype = np.float16 if dtype == "f16" else np.float32

    def matrix(
        rows: int, cols: int, scale: float
    ) -> np.ndarray[tuple[int, int], np.dtype[np.float32]]:
        # Rows are outputs, columns inputs (numpy order; GGUF stores the dims reversed).
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(wtype)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"cairn-demo-{layers}x{dim}")
    writer.add_context_length(ctx)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_rope_freq_base(_ROPE_BASE)
    writer.add_layer_norm_rms_eps(_RMS_EPS)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    )
    _add_byte_vocab(writer)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    ones = np.ones(dim, dtype=np.float32)  # norms stay f32: llama.cpp expects 1-D tensors in f32
    # Unit-variance embeddings; the RMS norms rescale activations anyway.
    writer.add_tensor("token_embd.weight", matrix(VOCAB_SIZE, dim, 1.0))
    for i in range(layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{name}.weight", matrix(dim, dim, dim**-0.5))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones)
        writer.add_tensor(f"{blk}.ffn_gate.weight", matrix(ff, dim, dim**-0.5))
        writer.add_tensor(f"{blk}.ffn_up.weight", matrix(ff, dim, dim**-0.5))
        writer.add_tensor(f"{blk}.ffn_down.weight", matrix(dim, ff, ff**-0.5))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", _output_matrix(matrix(VOCAB_SIZE, dim, 4 * dim**-0.5)))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.debug("wrote %s: %d layers, dim %d, %s", path, layers, dim, dtype)
    return path


def _default_ff(dim: int) -> int:
    return 4 * dim


def _output_matrix(
    weights: np.ndarray[tuple[int, int], np.dtype[np.float32]],
) -> np.ndarray[tuple[int, int], np.dtype[np.float32]]:
    """Zero the output rows of everything but printable ASCII and newline."""
    # A zero row gives logit 0 while the ~96 printable rows give N(0, 16) logits, so greedy
    # decoding never picks EOS or a stray byte: demo text is readable and test runs have a
    # known length. Sampling can still pick them, rarely.
    keep = np.zeros(VOCAB_SIZE, dtype=bool)
    keep[0x20:0x7F] = True
    keep[ord("\n")] = True
    weights[~keep] = 0
    return weights


def _add_byte_vocab(writer: gguf.GGUFWriter) -> None:
    """SentencePiece-style vocab: byte tokens only, so any text tokenizes by byte fallback."""
    tokens = [f"<0x{b:02X}>" for b in range(256)] + ["<s>", "</s>", "<unk>", "\u2581"]
    types = [gguf.TokenType.BYTE] * 256 + [
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.NORMAL,
    ]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * VOCAB_SIZE)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_unk_token_id(UNK_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    # Without this SentencePiece prepends "▁" to every prompt, i.e. an invisible extra space.
    writer.add_add_space_prefix(False)
