"""The demo models of `make run`: a tiny llama GGUF and a tiny ONNX embedder, generated on demand.

Run as `python -m cairn.inference.demo DIR` so the supervisor never imports gguf/onnx itself.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from cairn.config import ModelConfig, ModelKind

CHAT = "demo"
EMBED = "demo-embed"
CHAT_SLOTS = 4
# Tokens per slot: room for an agent's system prompt, tool signatures and a few turns (the
# engine gives each slot context // slots). The tiny model's KV cache for all of it is ~4 MB.
SLOT_CONTEXT = 2048


def models(directory: Path) -> list[ModelConfig]:
    """The demo models' config entries, their files under `directory`."""
    chat = ModelConfig(
        name=CHAT,
        path=str(directory / "demo.gguf"),
        kind=ModelKind.GGUF,
        context=CHAT_SLOTS * SLOT_CONTEXT,
        slots=CHAT_SLOTS,
        queue=16,
    )
    embed = ModelConfig(
        name=EMBED, path=str(directory / "demo-embed.onnx"), kind=ModelKind.ONNX, slots=1
    )
    return [chat, embed]


STAMP = ".demo-version"  # in the models directory: the generators' version that wrote it


def version() -> str:
    """A digest of the generators' source: files an older generator wrote are written again."""
    digest = hashlib.sha256()
    for module in ("demo_gguf.py", "demo_onnx.py"):
        digest.update(Path(__file__).with_name(module).read_bytes())
    return digest.hexdigest()[:16]


def _current(directory: Path) -> bool:
    stamp = directory / STAMP
    return stamp.exists() and stamp.read_text().strip() == version()


def ensure(directory: Path) -> None:
    """Generate missing or outdated demo models in a child process (no gguf/onnx in the daemon)."""
    if _current(directory) and all(Path(m.path).exists() for m in models(directory)):
        return
    subprocess.run([sys.executable, "-m", "cairn.inference.demo", str(directory)], check=True)


def write(directory: Path) -> None:
    """Write both demo models (random weights, deterministic), atomically, then the stamp."""
    from cairn.inference.demo_gguf import write_tiny_llama
    from cairn.inference.demo_onnx import write_tiny_embedder

    directory.mkdir(parents=True, exist_ok=True)
    current = _current(directory)
    for name, writer in (("demo.gguf", write_tiny_llama), ("demo-embed.onnx", write_tiny_embedder)):
        final = directory / name
        if final.exists() and current:
            continue
        tmp = directory / f".{name}.tmp"
        writer(tmp)
        tmp.replace(final)
    (directory / STAMP).write_text(version() + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
