"""Run in the legacy venv under qemu-x86_64 -cpu core2duo: one command per part of a node's work.

Each command prints one JSON object on stdout; what it is about to do goes to stderr first, so a
process killed by SIGILL names the step it died in. Only the standard library, the runtime
dependencies and `cairn` are imported here: the legacy venv has nothing else.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import pkgutil
import sys
from typing import Any

# Not imported by distribution: the installer's own, and cairn, whose modules are walked instead.
NOT_RUNTIME = {"pip", "setuptools", "cairn"}


def step(what: str) -> None:
    """Say what comes next, before it can crash."""
    print(f"probe: {what}", file=sys.stderr, flush=True)


def runtime_modules() -> list[str]:
    """Top-level modules of every installed distribution but the installer's."""
    names = set()
    for module, dists in importlib.metadata.packages_distributions().items():
        if module.isidentifier() and not {d.lower() for d in dists} & NOT_RUNTIME:
            names.add(module)
    return sorted(names)


def cairn_modules() -> list[str]:
    """Every module of the cairn package (not __main__, which would run the CLI)."""
    import cairn

    return sorted(
        m.name
        for m in pkgutil.walk_packages(cairn.__path__, "cairn.")
        if not m.name.endswith("__main__")
    )


def imports() -> dict[str, Any]:
    """Import every runtime module and cairn's own, then run a little native code of each kind."""
    modules = runtime_modules()
    for name in [*modules, *cairn_modules()]:
        step(f"import {name}")
        importlib.import_module(name)

    step("numpy arithmetic")
    import numpy as np

    a = np.arange(4096, dtype=np.float32).reshape(64, 64) / 4096
    checksum = float((a @ a.T).sum() + np.sqrt(a).mean() + np.exp(-a).max())
    step("AES-GCM round trip (gossip)")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = AESGCM.generate_key(bit_length=256)
    sealed = AESGCM(key).encrypt(b"\0" * 12, b"digest", b"cluster")
    assert AESGCM(key).decrypt(b"\0" * 12, sealed, b"cluster") == b"digest"
    step("msgspec round trip")
    import msgspec

    assert msgspec.json.decode(msgspec.json.encode({"a": [1, 2.5]})) == {"a": [1, 2.5]}
    return {"modules": modules, "numpy": round(checksum, 3)}


async def _generate(path: str) -> dict[str, Any]:
    step("import cairn.inference.llama_engine")
    from cairn.inference.llama_engine import LlamaEngine
    from cairn.inference.types import SamplingParams

    step(f"load {path}")
    engine = LlamaEngine(path, n_ctx=256, n_threads=1, n_batch=64, slots=1, queue_limit=0)
    engine.start()
    try:
        step("generate")
        text = ""
        ids: list[int] = []
        async for chunk in engine.generate(
            "A cairn of", SamplingParams(max_tokens=8, temperature=0)
        ):
            text += chunk.text
            ids += chunk.token_ids
        return {"text": text, "token_ids": ids}
    finally:
        engine.close()


def generate(path: str) -> dict[str, Any]:
    """Eight greedy tokens from the GGUF at path, through the engine the workers run."""
    return asyncio.run(_generate(path))


def embed(path: str) -> dict[str, Any]:
    """Embeddings from the GGUF at path, through the embedder `embedding = true` workers run."""
    step("import cairn.inference.llama_embedder")
    from cairn.inference.llama_embedder import LlamaEmbedder

    step(f"load {path} for embeddings")
    embedder = LlamaEmbedder(path, n_ctx=128, n_threads=1)
    try:
        step("embed")
        vectors, tokens = embedder.embed(["a cairn", "of stones"])
        return {"vectors": vectors, "tokens": tokens}
    finally:
        embedder.close()


def onnx_embed(path: str) -> dict[str, Any]:
    """Embeddings from the ONNX model at path, through onnxruntime."""
    step("import cairn.inference.onnx_engine")
    from cairn.inference.onnx_engine import OnnxEmbedder

    step(f"load {path} in onnxruntime")
    vectors, tokens = OnnxEmbedder(path, threads=1).embed(["a cairn", "of stones"])
    return {"vectors": vectors, "tokens": tokens}


def build_info() -> dict[str, Any]:
    """What the builds say they hold: ggml's compiled-in CPU features, numpy's SIMD baseline."""
    import llama_cpp
    import numpy

    return {
        "llama": llama_cpp.llama_print_system_info().decode(),
        "numpy": numpy.show_config("dicts")["SIMD Extensions"],
    }


def execute(code: bytes) -> dict[str, Any]:
    """Run machine code (ending in `ret`) from an executable page: the harness's own control."""
    import ctypes
    import mmap

    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    step(f"execute {code.hex()}")
    ctypes.CFUNCTYPE(None)(address)()
    return {"executed": code.hex()}


def main(argv: list[str]) -> int:
    """`imports`, `generate GGUF`, `embed GGUF`, `onnx ONNX`, `build-info` or `execute HEX`."""
    match argv:
        case ["imports"]:
            result = imports()
        case ["generate", path]:
            result = generate(path)
        case ["embed", path]:
            result = embed(path)
        case ["onnx", path]:
            result = onnx_embed(path)
        case ["build-info"]:
            result = build_info()
        case ["execute", code]:
            result = execute(bytes.fromhex(code))
        case _:
            print(
                "usage: python -m tests.legacy.probe imports|generate|embed|onnx ...",
                file=sys.stderr,
            )
            return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
