"""Pure-Nix tests and the QEMU netboot test; helpers to evaluate Nix shared by the test files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LIB = REPO / "modules" / "lib"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Debian's nix-bin names a `nixbld` group that does not exist outside a multi-user install; an
# empty build-users-group keeps that warning out of the stderr the throw tests read. Evaluation
# never needs a build user.
_NIX_ENV = {
    **os.environ,
    "NIX_CONFIG": os.environ.get("NIX_CONFIG", "") + "\nbuild-users-group =\n",
}


def need(tool: str, package: str) -> str:
    """Path of `tool`; skip without it, or fail under CI=true where nothing may be skipped."""
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} not found: install the Debian package {package}"
        if IN_CI:
            pytest.fail(f"CI=true: {msg}")
        pytest.skip(msg)
    return path


def nix_string(text: str) -> str:
    """A Nix string literal for `text` (JSON escapes, plus a literal `${`)."""
    return json.dumps(text).replace("${", "\\${")


def instantiate(*args: str) -> subprocess.CompletedProcess[str]:
    """Run nix-instantiate with `args`; the result, whatever its exit status."""
    nix = need("nix-instantiate", "nix-bin")
    return subprocess.run(
        [nix, *args], capture_output=True, text=True, env=_NIX_ENV, cwd=REPO, timeout=120
    )


def nix_eval(expr: str) -> Any:
    """Evaluate a Nix expression strictly and return it as JSON data; fail on any error."""
    res = instantiate("--eval", "--strict", "--json", "-E", expr)
    assert res.returncode == 0, f"nix-instantiate failed on:\n{expr}\n{res.stderr}"
    return json.loads(res.stdout)


def nix_eval_file(path: Path) -> Any:
    """Evaluate a Nix file strictly and return it as JSON data; fail on any error."""
    res = instantiate("--eval", "--strict", "--json", str(path))
    assert res.returncode == 0, f"nix-instantiate failed on {path}:\n{res.stderr}"
    return json.loads(res.stdout)


def nix_error(expr: str) -> str:
    """Evaluate a Nix expression that must fail; return its error output."""
    res = instantiate("--eval", "--strict", "--json", "-E", expr)
    assert res.returncode != 0, f"expected an evaluation error, got {res.stdout}\nfrom:\n{expr}"
    return res.stderr


def lib_expr(body: str) -> str:
    """A Nix expression with the real lib in scope as `lib`."""
    return f"let lib = import {nix_string(str(LIB))}; in {body}"
