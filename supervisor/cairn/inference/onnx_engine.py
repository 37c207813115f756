"""Text embeddings from an ONNX model with onnxruntime, byte-level tokenised."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cairn.inference.types import ModelLoadError

log = logging.getLogger(__name__)

MAX_TOKENS = 512  # longer texts are truncated; the demo model has this many positions
TOKENIZER = "bytes"  # the only tokenizer there is: UTF-8 bytes are the token ids
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def providers(available: list[str]) -> list[str]:
    """Execution providers in preference order: CUDA first when onnxruntime has it, then CPU."""
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def session_options(threads: int, cores: list[int] | None = None) -> ort.SessionOptions:
    """Sequential execution on `threads` intra-op threads, optionally one per core."""
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if cores is not None:
        if len(cores) != threads:
            raise ValueError(f"{threads} threads need {threads} cores, got {cores}")
        if threads > 1:
            # onnxruntime pins only the threads it creates (threads - 1); the caller of run()
            # is intra-op thread 0. Its ids are 1-based: "1" means core 0.
            affinities = ";".join(str(c + 1) for c in cores[1:])
            opts.add_session_config_entry("session.intra_op_thread_affinities", affinities)
    return opts


class OnnxEmbedder:
    """An onnxruntime session of a text-embedding model; with cores, embed() pins its caller."""

    def __init__(
        self,
        path: str,
        *,
        threads: int,
        cores: list[int] | None = None,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        if not Path(path).is_file():
            raise ModelLoadError(f"{path}: no such model file")
        self.path = path
        self.max_tokens = max_tokens
        self._cores = cores
        opts = session_options(threads, cores)  # a bad thread/core count is not a load error
        try:
            self._session = ort.InferenceSession(
                path, opts, providers=providers(ort.get_available_providers())
            )
        except Exception as err:
            # onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception only.
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {err}") from err
        self.providers: list[str] = self._session.get_providers()
        meta = self._session.get_modelmeta().custom_metadata_map
        tokenizer = meta.get("cairn.tokenizer", TOKENIZER)
        if tokenizer != TOKENIZER:
            raise ModelLoadError(f"{path}: tokenizer {tokenizer!r} is not supported")
        self.pad_id = int(meta.get("cairn.pad_id", "0"))  # masked out; any valid id does
        inputs = {i.name for i in self._session.get_inputs()}
        if "input_ids" not in inputs:
            raise ModelLoadError(f"{path}: no 'input_ids' input (has {sorted(inputs)})")
        self._with_mask = "attention_mask" in inputs
        outputs = self._session.get_outputs()
        named = [o for o in outputs if o.name == "embeddings"]
        self._output = (named or outputs)[0].name
        shape = (named or outputs)[0].shape
        if len(shape) != 2:
            raise ModelLoadError(
                f"{path}: output {self._output} has shape {shape}, not [batch, dim]"
            )
        # A symbolic dim is only known from an output.
        self.dim: int = shape[1] if isinstance(shape[1], int) else len(self._run([[0x78]])[0])
        log.info("loaded %s: dim %d on %s", path, self.dim, self.providers[0])

    def tokenize(self, text: str) -> list[int]:
        """UTF-8 bytes as token ids, truncated to max_tokens."""
        return list(text.encode("utf-8")[: self.max_tokens])

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """One vector per text and the number of tokens read; an empty text is a ValueError."""
        if not texts:
            return [], 0
        rows = [self.tokenize(t) for t in texts]
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"input[{i}] is empty")
        if self._cores:
            # The calling thread does intra-op thread 0's share: keep it on its own core too.
            os.sched_setaffinity(0, {self._cores[0]})
        return self._run(rows), sum(map(len, rows))

    def _run(self, rows: list[list[int]]) -> list[list[float]]:
        """Pad the token rows into one batch and run the model on it."""
        width = max(map(len, rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = (
            {"input_ids": ids, "attention_mask": mask} if self._with_mask else {"input_ids": ids}
        )
        (vectors,) = self._session.run([self._output], feeds)
        result: list[list[float]] = np.asarray(vectors, dtype=np.float32).tolist()
        return result
