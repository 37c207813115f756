"""The demo models of `make run`: a tiny llama GGUF and a tiny ONNX embedder, generated on demand.

Run as `python -m cairn.inference.demo DIR` so the supervisor never imports gguf/onnx itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cairn.config import ModelConfig, ModelKind

CHAT = "demo"
EMBED = "demo-embed"


def models(directory: Path) -> list[ModelConfig]:
    """The demo models' config entries, their files under `directory`."""
    chat = ModelConfig(
        name=CHAT, path=str(directory / "demo.gguf"), kind=ModelKind.GGUF, slots=4, queue=16
    )
    embed = ModelConfig(
        name=EMBED, path=str(directory / "demo-embed.onnx"), kind=ModelKind.ONNX, slots=1
    )
    return [chat, embed]


def ensure(directory: Path) -> None:
    """Generate missing demo models in a child process (keeps gguf/onnx out of the daemon)."""
    if all(Path(m.path).exists() for m in models(directory)):
        return
    subprocess.run([sys.executable, "-m", "cairn.inference.demo", str(directory)], check=True)


def write(directory: Path) -> None:
    """Write both demo models (random weights, deterministic), atomically."""
    from cairn.inference.demo_gguf import write_tiny_llama
    from cairn.inference.demo_onnx import write_tiny_embedder

    directory.mkdir(parents=True, exist_ok=True)
    for name, writer in (("demo.gguf", write_tiny_llama), ("demo-embed.onnx", write_tiny_embedder)):
        final = directory / name
        if final.exists():
            continue
        tmp = directory / f".{name}.tmp"
        writer(tmp)
        tmp.replace(final)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
