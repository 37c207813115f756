"""The Nix package depends on every runtime dependency pyproject.toml lists, and on nothing else."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import TypedDict

import pytest

from tests.legacy.build_flags import ggml_flags, numpy_setup_args
from tests.nix import HERE, REPO, nix_error, nix_eval, nix_eval_file, nix_string

PYPROJECT = REPO / "pyproject.toml"
MAPPING = REPO / "modules" / "packages" / "python-deps.nix"
PACKAGE_DEPS = HERE / "package-deps.nix"

# PEP 508: a distribution name is what comes before any extras, version pin or marker.
_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (`PyGObject` == `pygobject`, `a_b` == `a-b`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_dependencies(pyproject: Path) -> set[str]:
    """The normalised names in [project].dependencies, without pins, extras or markers."""
    with pyproject.open("rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    names = set()
    for requirement in requirements:
        match = _NAME.match(requirement)
        assert match is not None, f"{pyproject}: not a PEP 508 requirement: {requirement!r}"
        names.add(normalize(match.group(1)))
    return names


def mapping() -> dict[str, str]:
    """modules/packages/python-deps.nix: PyPI name -> python3Packages attribute."""
    data = nix_eval_file(MAPPING)
    assert isinstance(data, dict)
    return data


class Dependency(TypedDict):
    """One entry of the package's `dependencies`, as tests/nix/package-deps.nix reports it."""

    attr: str
    cmakeFlags: list[str]
    cudaSupport: bool
    mesonFlags: list[str]


def package_dependencies(llama_variant: str) -> list[Dependency]:
    """What cairn.nix puts in `dependencies`, evaluated with stand-ins for nixpkgs."""
    expr = (
        f"import {nix_string(str(PACKAGE_DEPS))} {{ llamaVariant = {nix_string(llama_variant)}; }}"
    )
    deps: list[Dependency] = nix_eval(expr)
    return deps


def test_every_pypi_dependency_has_a_nix_mapping() -> None:
    unmapped = pypi_dependencies(PYPROJECT) - set(mapping())
    assert unmapped == set(), f"add these to {MAPPING.relative_to(REPO)}"


def test_the_mapping_names_no_dependency_pyproject_dropped() -> None:
    stale = set(mapping()) - pypi_dependencies(PYPROJECT)
    assert stale == set(), f"remove these from {MAPPING.relative_to(REPO)}"


def test_mapping_keys_are_normalised_names() -> None:
    for name in mapping():
        assert name == normalize(name), name


def test_a_dependency_added_without_a_mapping_is_reported(tmp_path: Path) -> None:
    with PYPROJECT.open("rb") as f:
        requirements = [
            *tomllib.load(f)["project"]["dependencies"],
            "Tiny_Dep[x]>=1; python_version>'3'",
        ]
    grown = tmp_path / "pyproject.toml"
    grown.write_text(f"[project]\ndependencies = {json.dumps(requirements)}\n")
    assert pypi_dependencies(grown) - set(mapping()) == {"tiny-dep"}


@pytest.mark.parametrize("variant", ["portable", "cuda"])
def test_the_package_depends_on_exactly_the_mapped_attributes(variant: str) -> None:
    attrs = [dep["attr"] for dep in package_dependencies(variant)]
    assert sorted(attrs) == sorted(mapping().values())


def dependency(variant: str, attr: str) -> Dependency:
    (dep,) = [d for d in package_dependencies(variant) if d["attr"] == attr]
    return dep


@pytest.mark.parametrize("variant", ["portable", "cuda"])
def test_llama_cpp_python_gets_the_ggml_flags_of_build_flags_json(variant: str) -> None:
    # The same file the Makefile's legacy wheels are built from (tests/legacy).
    expected = {f"-D{n}:BOOL={'TRUE' if on else 'FALSE'}" for n, on in ggml_flags(variant).items()}
    flags = dependency(variant, "llama-cpp-python")["cmakeFlags"]
    assert {f for f in flags if f.startswith("-DGGML_")} == expected


def test_llama_cpp_python_is_the_portable_build_for_the_portable_variant() -> None:
    llama = dependency("portable", "llama-cpp-python")
    flags = llama["cmakeFlags"]
    # A Core 2 Duo has no instruction set ggml can switch on: every option is off.
    assert [f for f in flags if f.startswith("-DGGML_") and not f.endswith("=FALSE")] == []
    assert "-DGGML_NATIVE:BOOL=FALSE" in flags
    assert "-DGGML_AVX:BOOL=FALSE" in flags
    assert "-DGGML_SSE42:BOOL=FALSE" in flags
    assert not any(f.startswith("-DCMAKE_CUDA_ARCHITECTURES") for f in flags)
    assert llama["cudaSupport"] is False


def test_llama_cpp_python_is_the_cuda_build_for_the_cuda_variant() -> None:
    llama = dependency("cuda", "llama-cpp-python")
    flags = llama["cmakeFlags"]
    assert "-DGGML_NATIVE:BOOL=FALSE" in flags
    assert "-DGGML_AVX2:BOOL=TRUE" in flags
    assert "-DGGML_AVX512:BOOL=FALSE" in flags
    assert llama["cudaSupport"] is True


def test_the_cuda_build_targets_the_workstations_cuda_capabilities() -> None:
    # hosts/rtx4070-workstation/nixpkgs-config.nix: cudaCapabilities = [ "8.9" ], through
    # cudaPackages.flags as nixpkgs renders it; without it ggml builds its own list of archs.
    flags = dependency("cuda", "llama-cpp-python")["cmakeFlags"]
    assert [f for f in flags if "CMAKE_CUDA_ARCHITECTURES" in f] == [
        "-DCMAKE_CUDA_ARCHITECTURES:STRING=89"
    ]


def test_numpy_is_built_without_a_cpu_baseline_for_the_portable_variant_only() -> None:
    assert numpy_setup_args("portable") == ["-Dcpu-baseline=none"]
    assert dependency("portable", "numpy")["mesonFlags"] == numpy_setup_args("portable")
    assert dependency("cuda", "numpy")["mesonFlags"] == []


def test_an_unknown_variant_is_refused_naming_the_known_ones() -> None:
    err = nix_error(f'import {nix_string(str(PACKAGE_DEPS))} {{ llamaVariant = "avx"; }}')
    assert "llamaVariant must be one of cuda, portable, got 'avx'" in err
