"""docs/options.md is what tests/nix/options-doc.nix renders from the modules, with a nixpkgs lib.

Runs only with NIXPKGS_LIB set to a nixpkgs or nix-community/nixpkgs.lib checkout (nixpkgs
cannot be fetched here); `nix flake check` (checks.options-doc) checks the same with nixpkgs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.nix import HERE, REPO, instantiate

DOC = REPO / "docs" / "options.md"


@pytest.fixture(scope="module")
def nixpkgs_lib() -> Path:
    value = os.environ.get("NIXPKGS_LIB", "")
    if not value:
        pytest.skip("NIXPKGS_LIB is not set (a checkout of nixpkgs or nix-community/nixpkgs.lib)")
    path = Path(value).resolve()
    assert (path / "lib" / "default.nix").is_file(), f"NIXPKGS_LIB={value}: no lib/default.nix"
    return path


def test_docs_options_md_is_fresh(nixpkgs_lib: Path) -> None:
    res = instantiate(
        "--eval",
        "--strict",
        "--json",
        "--argstr",
        "nixpkgsLib",
        str(nixpkgs_lib),
        str(HERE / "options-doc.nix"),
    )
    assert res.returncode == 0, res.stderr
    assert DOC.read_text() == json.loads(res.stdout), (
        "docs/options.md is stale: make options-doc NIXPKGS_LIB=..."
    )
