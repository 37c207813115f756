"""The legacy node's Python runtime runs on a Core 2 Duo, emulated by qemu-user.

`qemu-x86_64 -cpu core2duo` runs one process as a Core 2 Duo (SSSE3; no SSE4.1, SSE4.2, POPCNT
or AVX): an instruction the model lacks raises SIGILL, which kills the process. `.venv-legacy`
(`make legacy`, part of `make test`) holds the runtime dependencies with llama-cpp-python and
numpy built from modules/packages/build-flags.json, the file the Nix package reads. Each test
runs one part of a node's work in that venv under emulation; tests/legacy/probe.py does the work.
CAIRN_LEGACY_VENV points them at another venv: docs/nix-verification.md's mutation check put a
llama-cpp-python built with GGML_AVX=ON there, and the generation and embedding died with SIGILL.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cairn.inference.demo_gguf import write_tiny_llama
from cairn.inference.demo_onnx import write_tiny_embedder
from tests.legacy.build_flags import ggml_flags, numpy_setup_args
from tests.nix import IN_CI, REPO, need, nix_eval_file

LEGACY_VENV = Path(os.environ.get("CAIRN_LEGACY_VENV", REPO / ".venv-legacy"))
PYTHON = LEGACY_VENV / "bin" / "python"
CPU = "core2duo"
# A slow TCG run of a whole import still finishes in a minute here; this only stops a hang.
TIMEOUT = 900

# x86 machine code ending in `ret`: one instruction of each kind the Core 2 Duo lacks.
AVX = "c5f857c0c3"  # vxorps xmm0, xmm0, xmm0
POPCNT = "f30fb8c0c3"  # popcnt eax, eax (SSE4.2 era)
SSE41 = "660f3840c0c3"  # pmulld xmm0, xmm0
SSSE3 = "660f3800c0c3"  # pshufb xmm0, xmm0: the newest a Core 2 Duo has

# ggml's CMake option -> the feature name llama_print_system_info() reports when compiled in
# (ggml-cpu.cpp, ggml_backend_cpu_get_features; SSE4.2 has none: only the emulation shows it).
SYSTEM_INFO_NAME = {
    "GGML_AVX": "AVX",
    "GGML_AVX2": "AVX2",
    "GGML_BMI2": "BMI2",
    "GGML_FMA": "FMA",
    "GGML_F16C": "F16C",
    "GGML_AVX_VNNI": "AVX_VNNI",
    "GGML_AVX512": "AVX512",
    "GGML_AVX512_VBMI": "AVX512_VBMI",
    "GGML_AVX512_VNNI": "AVX512_VNNI",
    "GGML_AVX512_BF16": "AVX512_BF16",
}


def legacy_python() -> Path:
    """The legacy venv's interpreter; skip without it, or fail under CI=true."""
    if not PYTHON.exists():
        msg = f"{PYTHON} missing: run `make legacy` (make test builds it)"
        if IN_CI:
            pytest.fail(f"CI=true: {msg}")
        pytest.skip(msg)
    return PYTHON


def no_core_dumps() -> None:
    """qemu writes the guest's core into the working directory unless the limit forbids it."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run(*args: str, emulate: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m tests.legacy.probe ARGS` in the legacy venv, as a Core 2 Duo or natively."""
    python = str(legacy_python())
    qemu = [need("qemu-x86_64", "qemu-user"), "-cpu", CPU] if emulate else []
    return subprocess.run(
        [*qemu, python, "-m", "tests.legacy.probe", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=no_core_dumps,
    )


def last_step(res: subprocess.CompletedProcess[str]) -> str:
    """What the probe was doing when it stopped."""
    steps = [line for line in res.stderr.splitlines() if line.startswith("probe: ")]
    return steps[-1].removeprefix("probe: ") if steps else "starting Python"


def probe(*args: str, emulate: bool = True) -> Any:
    """The probe's JSON result; fails naming the step of an illegal instruction."""
    res = run(*args, emulate=emulate)
    assert res.returncode != -signal.SIGILL, (
        f"illegal instruction on a {CPU if emulate else 'native'} CPU while: {last_step(res)}\n"
        f"{res.stderr[-3000:]}"
    )
    assert res.returncode == 0, f"exit {res.returncode} while: {last_step(res)}\n{res.stderr}"
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_llama(tmp_path_factory.mktemp("legacy") / "demo.gguf"))


@pytest.mark.parametrize(
    ("code", "name"), [(AVX, "AVX"), (POPCNT, "POPCNT"), (SSE41, "SSE4.1")], ids=str
)
def test_the_emulated_cpu_refuses_what_a_core2duo_lacks(code: str, name: str) -> None:
    # The harness's control: were qemu to run a newer model, every test below would pass for
    # nothing. Natively the same code runs (this machine has AVX).
    assert run("execute", code).returncode == -signal.SIGILL, name
    assert probe("execute", code, emulate=False) == {"executed": code}


def test_the_emulated_cpu_runs_ssse3() -> None:
    assert probe("execute", SSSE3) == {"executed": SSSE3}


def test_llama_cpp_is_built_with_the_portable_flags_of_build_flags_json() -> None:
    info = probe("build-info", emulate=False)["llama"]
    reported = {f.split("=")[0].strip() for f in info.split("|") if f.strip().endswith("1")}
    expected_off = {
        SYSTEM_INFO_NAME[n]
        for n, on in ggml_flags("portable").items()
        if not on and n in SYSTEM_INFO_NAME
    }
    assert expected_off, "build-flags.json turns no x86 extension off"
    assert reported & expected_off == set(), info


def test_numpy_is_built_with_the_setup_args_of_build_flags_json() -> None:
    assert numpy_setup_args("portable") == ["-Dcpu-baseline=none"]
    simd = probe("build-info", emulate=False)["numpy"]
    # numpy lists no "baseline" at all when it has none; PyPI's 2.4 wheel says ["X86_V2"].
    assert simd.get("baseline", []) == [], simd
    assert "found" in simd, simd  # runtime dispatch is still built in


def runtime_distributions() -> list[str]:
    """pyproject.toml's [project].dependencies, by name."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return [r.split("==")[0] for r in tomllib.load(f)["project"]["dependencies"]]


def test_every_runtime_dependency_imports_on_a_core2duo() -> None:
    result = probe("imports")
    # The probe imported every module of every installed distribution (the venv holds only the
    # runtime closure) and of cairn; each direct dependency's top-level module is among them.
    top_level = {
        "aiohttp", "apscheduler", "cryptography", "gguf", "llama_cpp", "msgspec", "numpy",
        "pynvml", "onnx", "onnxruntime", "prometheus_client", "psutil", "pydbus", "gi", "systemd",
    }  # fmt: skip
    assert len(top_level) == len(runtime_distributions())
    assert top_level <= set(result["modules"])
    assert result["numpy"] == probe("imports", emulate=False)["numpy"]


def test_a_generation_on_a_core2duo_matches_the_native_one(gguf: str) -> None:
    emulated = probe("generate", gguf)
    assert len(emulated["token_ids"]) == 8
    assert emulated == probe("generate", gguf, emulate=False)


def test_an_embedding_on_a_core2duo_matches_the_native_one(gguf: str) -> None:
    emulated = probe("embed", gguf)
    assert len(emulated["vectors"]) == 2 and len(emulated["vectors"][0]) == 64
    assert emulated == probe("embed", gguf, emulate=False)


def test_an_onnx_embedding_on_a_core2duo_matches_the_native_one(tmp_path: Path) -> None:
    # onnxruntime's PyPI wheel runs here once numpy does: MLAS picks its kernels at run time.
    model = str(write_tiny_embedder(tmp_path / "embed.onnx"))
    emulated = probe("onnx", model)
    native = probe("onnx", model, emulate=False)
    assert len(emulated["vectors"]) == 2 and emulated["tokens"] == native["tokens"]
    # Natively MLAS takes wider kernels (AVX-512 here), which round differently.
    for got, want in zip(emulated["vectors"], native["vectors"], strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_config_check_passes_on_a_core2duo(tmp_path: Path) -> None:
    # The legacy host's settings as Nix renders them (tests/nix/test_host_settings.py); the
    # daemon validates the same way when it starts on the node.
    settings = nix_eval_file(REPO / "hosts" / "legacy-node" / "settings.nix")
    path = tmp_path / "legacy-node.json"
    path.write_text(json.dumps(settings))
    python = str(legacy_python())
    res = subprocess.run(
        [
            need("qemu-x86_64", "qemu-user"),
            "-cpu",
            CPU,
            python,
            "-m",
            "cairn",
            "config",
            "check",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=no_core_dumps,
    )
    assert res.returncode != -signal.SIGILL, res.stderr
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{path}: ok (sha256:")
