"""The command line as a user runs it: bad config exits 2 naming the key; help and version."""

from __future__ import annotations

import json
import os
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


def test_a_deeply_nested_config_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "deep.json"
    f.write_text('{"version": 1, "models": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for args in (("config", "check", str(f)), ("run", "--config", str(f))):
        res = cairn(*args)
        assert (res.returncode, res.stderr) == (
            2,
            f"cairn: {f}: config error at (file): nested too deeply\n",
        )


KEY = "MDEyMzQ1Njc4OWFiY2RlZg=="  # base64 of 16 bytes
SECRETS: dict[str, tuple[str, bytes, str]] = {
    "key not base64": ("gossip.key_file", b"not base64!\n", "key.b64:1: not base64"),
    "key of 5 bytes": ("gossip.key_file", b"aGVsbG8=\n", "key is 5 bytes; AES needs 16, 24 or 32"),
    "key file empty": ("gossip.key_file", b"# no key\n", "no key in the file"),
    "key not ASCII": ("gossip.key_file", b"\xff\n", "cannot read the key file"),
    "token too short": ("api.token_file", b"short\n", "the token must be at least 16 characters"),
    "token not UTF-8": ("api.token_file", b"\xff" * 20, "cannot read"),
}


def secret_config(tmp_path: Path, port: int) -> Path:
    """A config naming a key file and a token file (key.b64, token) in tmp_path."""
    settings: dict[str, Any] = {
        "version": 1,
        "node": {"state_dir": str(tmp_path / "state")},
        "api": {"port": port, "token_file": str(tmp_path / "token")},
        "gossip": {"key_file": str(tmp_path / "key.b64"), "bind": "127.0.0.1", "port": free_port()},
    }
    f = tmp_path / "cairn.json"
    f.write_text(json.dumps(settings))
    return f


@pytest.mark.parametrize("case", SECRETS)
def test_a_bad_key_or_token_file_exits_2_naming_the_key(tmp_path: Path, case: str) -> None:
    key, content, problem = SECRETS[case]
    port = free_port()
    f = secret_config(tmp_path, port)
    (tmp_path / "key.b64").write_text(KEY + "\n")
    (tmp_path / "token").write_text("t" * 32 + "\n")
    (tmp_path / ("key.b64" if key == "gossip.key_file" else "token")).write_bytes(content)
    check = cairn("config", "check", str(f))
    assert check.returncode == 2, check.stderr
    assert check.stderr.startswith(f"cairn: config error at {key}: ") and problem in check.stderr
    run = cairn("run", "--config", str(f))
    assert run.returncode == 2 and f"config error at {key}: " in run.stderr
    assert problem in run.stderr
    with pytest.raises(OSError):  # nothing started
        http(f"http://127.0.0.1:{port}/livez", timeout=1)


def test_config_check_reads_good_secrets_and_notes_absent_ones(tmp_path: Path) -> None:
    f = secret_config(tmp_path, free_port())
    absent = cairn("config", "check", str(f))  # as when the system is built: no secrets there
    assert absent.returncode == 0 and absent.stdout.startswith(f"{f}: ok (sha256:")
    assert f"api.token_file {tmp_path / 'token'} is not here; not checked" in absent.stderr
    assert f"gossip.key_file {tmp_path / 'key.b64'} is not here; not checked" in absent.stderr
    (tmp_path / "key.b64").write_text(KEY + "\n")
    (tmp_path / "token").write_text("t" * 32 + "\n")
    present = cairn("config", "check", str(f))
    assert (present.returncode, present.stderr) == (0, "")


@pytest.mark.parametrize("key", ["api.token_file", "gossip.key_file"])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "link to /dev/zero"])
def test_a_key_or_token_file_that_is_no_regular_file_exits_2(
    tmp_path: Path, key: str, kind: str
) -> None:
    port = free_port()
    f = secret_config(tmp_path, port)
    (tmp_path / "key.b64").write_text(KEY + "\n")
    (tmp_path / "token").write_text("t" * 32 + "\n")
    secret = tmp_path / ("key.b64" if key == "gossip.key_file" else "token")
    secret.unlink()
    if kind == "fifo":  # nobody writes: a blocking open would wait for ever
        os.mkfifo(secret)
    elif kind == "/dev/zero":  # endless: a plain read fills memory
        settings = json.loads(f.read_text())
        section, _, name = key.partition(".")
        settings[section][name] = "/dev/zero"
        f.write_text(json.dumps(settings))
        secret = Path("/dev/zero")
    else:
        secret.symlink_to("/dev/zero")
    for args in (("config", "check", str(f)), ("run", "--config", str(f))):
        # A short timeout: a regression hangs, and must fail rather than stall the suite.
        res = subprocess.run([CAIRN_BIN, *args], capture_output=True, text=True, timeout=15)
        assert res.returncode == 2, res.stderr
        assert f"config error at {key}: " in res.stderr
        assert f"{secret} is not a regular file" in res.stderr
