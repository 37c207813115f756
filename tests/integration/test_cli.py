"""The command line as a user runs it: bad config exits 2 naming the key; help and version."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cairn import __version__
from tests.conftest import CAIRN_BIN, free_port, http

# Each bad config would listen on `port` if it were (wrongly) accepted.
BAD: dict[str, tuple[Callable[[int], dict[str, Any]], str]] = {
    "wrong type": (
        lambda port: {"version": 1, "api": {"port": str(port)}},
        "api.port: expected `int`, got `str`",
    ),
    "unknown key": (
        lambda port: {"version": 1, "api": {"port": port, "hots": "::"}},
        "api.hots: unknown key",
    ),
    "missing key": (lambda port: {"api": {"port": port}}, "version: required key is missing"),
}


def cairn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAIRN_BIN, *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("case", BAD)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, case: str) -> None:
    make, message = BAD[case]
    port = free_port()
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(make(port)))
    run = cairn("run", "--config", str(f))
    check = cairn("config", "check", str(f))
    key, problem = message.split(": ", 1)
    expected = f"cairn: {f}: config error at {key}: {problem}\n"
    assert (run.returncode, run.stderr) == (2, expected)
    assert (check.returncode, check.stderr) == (2, expected)
    with pytest.raises(OSError):  # nothing started
        http(f"http://127.0.0.1:{port}/livez", timeout=1)


def test_config_check_accepts_a_good_toml(tmp_path: Path) -> None:
    f = tmp_path / "good.toml"
    f.write_text('version = 1\n[api]\nport = 9999\n[log]\nlevel = "debug"\n')
    res = cairn("config", "check", str(f))
    assert res.returncode == 0
    assert res.stdout.startswith(f"{f}: ok (sha256:")


def test_config_schema_is_json_schema() -> None:
    schema = json.loads(cairn("config", "schema").stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    assert "Config" in schema["$defs"]


def test_version() -> None:
    assert cairn("--version").stdout.strip() == f"cairn {__version__}"


@pytest.mark.parametrize(
    "cmd", [[], ["run"], ["status"], ["config"], ["config", "check"], ["config", "schema"]]
)
def test_help_on_every_command(cmd: list[str]) -> None:
    res = cairn(*cmd, "--help")
    assert res.returncode == 0
    assert res.stdout.startswith("usage: cairn")
