"""modules/packages/build-flags.json as build arguments, the same flags the Nix package uses.

The Makefile builds the legacy wheels with `python -m tests.legacy.build_flags cmake portable`
(CMAKE_ARGS of llama-cpp-python) and `... numpy portable` (pip's config settings for numpy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FLAGS = Path(__file__).resolve().parents[2] / "modules" / "packages" / "build-flags.json"


def load() -> dict[str, Any]:
    """The whole file."""
    data: dict[str, Any] = json.loads(FLAGS.read_text())
    return data


def ggml_flags(variant: str) -> dict[str, bool]:
    """ggml's CMake options of a llama-cpp-python variant, name -> on."""
    flags: dict[str, bool] = load()["llamaCpp"][variant]
    return flags


def cmake_args(variant: str) -> list[str]:
    """The `-D` arguments for CMake, as scikit-build-core reads them from CMAKE_ARGS."""
    return [f"-D{name}={'ON' if on else 'OFF'}" for name, on in ggml_flags(variant).items()]


def numpy_setup_args(variant: str) -> list[str]:
    """numpy's meson setup arguments (nixpkgs: mesonFlags; pip: -Csetup-args=)."""
    args: list[str] = load()["numpy"][variant]["setupArgs"]
    return args


def main(argv: list[str]) -> int:
    """Print one build's arguments for a shell: `cmake VARIANT` or `numpy VARIANT`."""
    match argv:
        case ["cmake", variant]:
            print(" ".join(cmake_args(variant)))
        case ["numpy", variant]:
            print(" ".join(f"--config-settings=setup-args={a}" for a in numpy_setup_args(variant)))
        case _:
            print("usage: python -m tests.legacy.build_flags cmake|numpy VARIANT", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
