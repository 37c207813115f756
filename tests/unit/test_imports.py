"""Import hygiene: the CLI and config never load an inference engine.

The CUDA package's import check and the NixOS build-time `cairn config check` run where
libcuda is absent, and OpenMP's thread binding is read when libgomp loads, so llama_cpp and
onnxruntime may only be imported by a worker, after it has set its environment.
"""

from __future__ import annotations

import subprocess
import sys


def test_cli_config_and_worker_modules_do_not_load_engines() -> None:
    code = (
        "import sys, cairn.cli, cairn.config, cairn.daemon, cairn.inference.worker; "
        "print(sorted(m for m in ('llama_cpp', 'onnxruntime', 'gguf', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
