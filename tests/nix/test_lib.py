"""The pure-Nix cases in tests/nix/test_*.nix, one pytest case each, run against modules/lib."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.nix import HERE, LIB, nix_error, nix_eval, nix_string

RUNNER = HERE / "run.nix"
CASE_FILES = sorted(HERE.glob("test_*.nix"))


@functools.cache
def results(case_file: Path) -> dict[str, dict[str, Any]]:
    """Every case of a file, run under tryEval by run.nix, by name."""
    runs = nix_eval(f"import {nix_string(str(RUNNER))} {nix_string(str(case_file))}")
    by_name = {r["name"]: r for r in runs}
    assert len(by_name) == len(runs), f"{case_file.name}: case names must be unique"
    return by_name


def case_ids() -> list[tuple[Path, str]]:
    """(file, case name) for every case; read at collection time so each case is its own test."""
    if shutil.which("nix-instantiate") is None:
        # test_nix_case then fails under CI=true (or skips) with the install hint.
        return [(f, "nix-instantiate missing") for f in CASE_FILES]
    return [(f, name) for f in CASE_FILES for name in results(f)]


def case_error(case_file: Path, name: str) -> str:
    """The error output of evaluating one case's expression on its own (no tryEval)."""
    cases = f"import {nix_string(str(case_file))}"
    pick = f"builtins.head (builtins.filter (c: c.name == {nix_string(name)}) ({cases}))"
    return nix_error(f"({pick}).expr")


@pytest.mark.parametrize(
    ("case_file", "name"), case_ids(), ids=[f"{f.stem}: {n}" for f, n in case_ids()]
)
def test_nix_case(case_file: Path, name: str) -> None:
    result = results(case_file)[name]
    if result["kind"] == "value":
        if result["threw"]:
            pytest.fail(f"threw instead of returning a value:\n{case_error(case_file, name)}")
        assert result["value"] == result["expected"]
    else:
        assert result["threw"], f"returned instead of throwing {result['throws']!r}"
        # tryEval drops the message: evaluate the expression alone and read what it said.
        stderr = case_error(case_file, name)
        assert result["throws"] in stderr


def test_every_lib_function_has_cases() -> None:
    exported = nix_eval(
        f"builtins.mapAttrs (_: builtins.attrNames) (import {nix_string(str(LIB))})"
    )
    functions = {f"{module}.{fn}" for module, fns in exported.items() for fn in fns}
    tested = {name.split(":")[0] for f in CASE_FILES for name in results(f)}
    assert functions - tested == set(), "lib functions without a case in tests/nix/test_*.nix"
    assert tested - functions == set(), "cases name functions the lib does not export"


def test_lib_exports_the_agreed_interface() -> None:
    exported = nix_eval(
        f"builtins.mapAttrs (_: builtins.attrNames) (import {nix_string(str(LIB))})"
    )
    agreed = {
        "cpus": {"parse", "render", "isolation"},
        "mac": {"normalize", "hostMap"},
        "ipxe": {"entryScript", "hostScript", "bootFiles"},
        "dnsmasq": {"proxyConfig"},
        "optionsDoc": {"render"},
        "polkit": {"manageUnitsRule", "missingUnits"},
        "unitFile": {"settings"},
        "network": {
            "parseIPv4",
            "lanProblems",
            "networkdProblems",
            "nicNameProblems",
            "wakeOnLan",
        },
        "ssh": {"lockoutProblems"},
    }
    assert set(exported) == set(agreed)
    for module, names in agreed.items():
        assert names <= set(exported[module]), module
