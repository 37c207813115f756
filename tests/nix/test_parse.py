"""Every .nix file in the repository parses (nix-instantiate --parse), whoever wrote it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.nix import REPO, instantiate

SKIP_DIRS = {".git", ".venv", "build", "node_modules", "result"}


def nix_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored .nix files; a plain walk outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.nix"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        files = [REPO / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*.nix") if not SKIP_DIRS & set(p.relative_to(REPO).parts)]
    return sorted(p for p in files if p.is_file())  # deleted but still tracked: gone


FILES = nix_files()


def test_the_repository_has_nix_files() -> None:
    rel = {str(p.relative_to(REPO)) for p in FILES}
    assert {"modules/lib/default.nix", "tests/nix/run.nix"} <= rel


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(REPO)) for p in FILES])
def test_parses(path: Path) -> None:
    res = instantiate("--parse", str(path))
    assert res.returncode == 0, res.stderr
