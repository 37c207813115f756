"""Each host class's supervisor settings, rendered by Nix to JSON, pass `cairn config check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.nix import REPO, nix_eval, nix_eval_file, nix_string

CAIRN_BIN = str(Path(sys.executable).parent / "cairn")
CLASSES = ("legacy-node", "rtx4070-workstation", "pxe-server")
SETTINGS = sorted(REPO.glob("hosts/*/settings.nix"))
BASE = REPO / "hosts" / "settings-base.nix"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CAIRN_BIN, "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )


def render(settings: Any, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.json"
    out.write_text(json.dumps(settings))
    return out


def test_every_host_class_has_settings() -> None:
    assert sorted(p.parent.name for p in SETTINGS) == sorted(CLASSES)


@pytest.mark.parametrize("path", SETTINGS, ids=[p.parent.name for p in SETTINGS])
def test_settings_pass_config_check(path: Path, tmp_path: Path) -> None:
    settings = nix_eval_file(path)  # --json: what builtins.toJSON renders for the module
    res = check(render(settings, tmp_path, path.parent.name))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{tmp_path / path.parent.name}.json: ok (sha256:")


@pytest.mark.parametrize("path", SETTINGS, ids=[p.parent.name for p in SETTINGS])
def test_settings_are_a_plain_attrset_for_every_node(path: Path) -> None:
    kind = nix_eval(f"builtins.typeOf (import {nix_string(str(path))})")
    settings = nix_eval_file(path)
    assert kind == "set"  # not a function: the module imports it as services.cairn.settings
    assert "name" not in settings.get("node", {})  # each node takes its hostname at run time
    assert settings["node"]["state_dir"] == "/var/lib/cairn"


def _leaves(tree: dict[str, Any], at: str = "") -> dict[str, Any]:
    """Each leaf of nested settings by its key path."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{at}.{key}" if at else key
        out |= _leaves(value, path) if isinstance(value, dict) else {path: value}
    return out


def test_the_shared_base_passes_config_check_alone(tmp_path: Path) -> None:
    res = check(render(nix_eval_file(BASE), tmp_path, "base"))
    assert res.returncode == 0, res.stderr


def test_every_host_class_builds_on_the_shared_base_and_copies_nothing() -> None:
    base = _leaves(nix_eval_file(BASE))
    hosts = {p.parent.name: _leaves(nix_eval_file(p)) for p in SETTINGS}
    for name, settings in hosts.items():
        assert "../settings-base.nix" in (REPO / "hosts" / name / "settings.nix").read_text()
        assert base.items() <= settings.items(), name  # nothing of the base dropped or changed
    alike = set.intersection(*(set(h.items()) for h in hosts.values()))
    assert alike <= set(base.items())  # what every class sets alike is written once, there


def test_config_check_refuses_a_bad_key_in_rendered_settings(tmp_path: Path) -> None:
    path = REPO / "hosts" / "legacy-node" / "settings.nix"
    bad = nix_eval(
        f'let s = import {nix_string(str(path))}; in s // {{ api = s.api // {{ hots = "::"; }}; }}'
    )
    out = render(bad, tmp_path, "bad")
    res = check(out)
    assert (res.returncode, res.stderr) == (
        2,
        f"cairn: {out}: config error at api.hots: unknown key\n",
    )
