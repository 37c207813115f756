"""The worker's GPU decision: offload only when NVML sees a GPU and llama.cpp can use it."""

from __future__ import annotations

import llama_cpp
import pytest

from cairn.inference.worker import gpu_layers
from cairn.system import gpu
from tests.unit.test_gpu import FakeNvml

REAL_NVML = gpu.Nvml


def test_zero_layers_means_cpu() -> None:
    assert gpu_layers(0) == (0, "gpu_layers = 0: CPU only")


def test_no_gpu_runs_on_cpu_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "Nvml", lambda: REAL_NVML(FakeNvml(count=0)))
    layers, reason = gpu_layers(20)
    assert layers == 0 and reason == "no GPU, running on CPU (NVML found no GPU)"


def test_gpu_but_cpu_only_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "Nvml", lambda: REAL_NVML(FakeNvml()))
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    assert gpu_layers(20) == (0, "llama-cpp-python is built without GPU support, running on CPU")


def test_gpu_and_cuda_build_offloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "Nvml", lambda: REAL_NVML(FakeNvml()))
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    layers, reason = gpu_layers(20)
    assert layers == 20 and reason == "offloading 20 layers to NVIDIA GeForce RTX 4070"
