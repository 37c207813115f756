"""Under nixpkgs' module system: a settings key set directly wins over its mirror option, and a
model's defaults are ModelConfig's. Needs a lib checkout, which cannot be fetched in CI, so it
is not collected by `make test`: run it with `make nix-lib-checks NIXPKGS_LIB=<checkout>`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cairn import config
from cairn.config import ModelConfig
from tests.nix import HERE, instantiate

CREDENTIALS = "/run/credentials/cairn.service"


@pytest.fixture(scope="module")
def settings() -> dict[str, Any]:
    lib = os.environ.get("NIXPKGS_LIB", "")
    if not (Path(lib) / "lib" / "default.nix").is_file():
        pytest.fail("set NIXPKGS_LIB to a nixpkgs or nix-community/nixpkgs.lib checkout")
    res = instantiate(
        "--eval", "--strict", "--json", "--argstr", "nixpkgsLib", lib,
        str(HERE / "settings-mirrors.nix"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def test_a_mirror_option_alone_fills_its_settings_key(settings: dict[str, Any]) -> None:
    got = settings["mirrors"]
    assert got["heal"] == {"confirm_window": 300, "critical_units": ["a.service"]}
    assert got["gossip"] == {
        "key_file": f"{CREDENTIALS}/gossip-key",
        "port": 9000,
        "join": ["10.0.0.1"],
        "profile": "lan",
    }
    assert got["api"] == {"token_file": f"{CREDENTIALS}/api-token"}


def test_a_settings_key_set_directly_wins_over_its_mirror(settings: dict[str, Any]) -> None:
    got = settings["direct"]  # the old module: "conflicting definition values", no system
    assert got["heal"] == {"confirm_window": 60, "critical_units": ["b.service"]}
    assert got["gossip"] == {
        "key_file": "/etc/cairn/gossip.key",
        "port": 9100,
        "join": ["10.0.0.2"],
        "profile": "wan",
    }
    assert got["api"] == {"token_file": "/etc/cairn/api.token"}


def test_a_model_left_at_its_defaults_gets_model_configs(settings: dict[str, Any]) -> None:
    rendered = settings["model"]["models"][0]
    cfg = config.from_mapping({**settings["model"], "node": {"name": "n"}})
    assert cfg.models[0] == ModelConfig(name="tiny", path=rendered["path"], kind=cfg.models[0].kind)
    assert set(rendered) == {f.name for f in msgspec.structs.fields(ModelConfig)} - {"cpus"}
