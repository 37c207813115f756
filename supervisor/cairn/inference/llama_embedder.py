"""GGUF embedding models: mean-pooled, L2-normalised sentence vectors from llama.cpp."""

from __future__ import annotations

import logging
import math

import llama_cpp

from cairn.inference.llama_engine import load_model, reason_for
from cairn.inference.types import ModelLoadError

log = logging.getLogger(__name__)


class LlamaEmbedder:
    """One GGUF model in an embeddings context; call `embed` from one thread only.

    Every thread that calls into llama.cpp gets its own OpenMP pool, so the worker runs all
    embedding calls on a single dedicated thread.
    """

    def __init__(self, path: str, *, n_ctx: int, n_threads: int, n_gpu_layers: int = 0) -> None:
        model, llama_log = load_model(path, n_gpu_layers)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx  # a whole input is one batch: pooling sees every token at once
        cparams.n_ubatch = n_ctx
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.embeddings = True
        # The model's own pooling when its GGUF names one (embedding models do), else mean.
        cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if (
            ctx is not None
            and llama_cpp.llama_pooling_type(ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE
        ):
            llama_cpp.llama_free(ctx)  # a generative model: ask for mean pooling explicitly
            cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            ctx = llama_cpp.llama_init_from_model(model, cparams)
        if ctx is None:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(f"{path}: {reason_for(llama_log, 'could not create a context')}")
        self._model, self._ctx = model, ctx
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        self.dim = llama_cpp.llama_model_n_embd(model)
        self._batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
        log.info("loaded %s for embeddings: dim %d, n_ctx %d", path, self.dim, self.n_ctx)

    def _tokens(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, True, False)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, True, False)
        return list(buf[:n])[: self.n_ctx]  # longer inputs are truncated, as OpenAI's are not

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """One vector per text and the number of tokens read; blocking."""
        vectors, total = [], 0
        for text in texts:
            if not text:
                raise ValueError("an input is empty")
            tokens = self._tokens(text)
            total += len(tokens)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
            b = self._batch
            b.n_tokens = len(tokens)
            for i, tok in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, i, 1
                b.seq_id[i][0] = 0
                b.logits[i] = True  # pooling reads every token's output
            if llama_cpp.llama_decode(self._ctx, b) != 0:
                raise RuntimeError("llama_decode failed while embedding")
            raw = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
            vec = [float(raw[i]) for i in range(self.dim)]
            norm = math.sqrt(sum(x * x for x in vec)) or 1.0
            vectors.append([x / norm for x in vec])
        return vectors, total

    def close(self) -> None:
        """Free the native memory."""
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        llama_cpp.llama_model_free(self._model)
