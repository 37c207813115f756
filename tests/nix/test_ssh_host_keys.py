"""modules/ssh-host-keys.sh with real ssh-keygen: a netbooted node keeps its SSH host keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.nix import REPO, need

SCRIPT = REPO / "modules" / "ssh-host-keys.sh"


def keygen(path: Path) -> None:
    """A fresh ed25519 key pair at `path`, as sshd-keygen.service makes one at every RAM boot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [need("ssh-keygen", "openssh-client"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
    )


def fingerprint(path: Path) -> str:
    """The key's SHA256 fingerprint, as `ssh` shows it to a client."""
    out = subprocess.run(
        [need("ssh-keygen", "openssh-client"), "-l", "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()[1]


def keep(volume: Path, *keys: Path) -> subprocess.CompletedProcess[str]:
    """Run the script as the unit does: the volume's key directory, then the key paths."""
    return subprocess.run(
        ["bash", str(SCRIPT), str(volume), *map(str, keys)],
        check=True,
        capture_output=True,
        text=True,
    )


def test_a_key_survives_the_next_boot(tmp_path: Path) -> None:
    volume, etc = tmp_path / "cairn-secrets" / "ssh-host-keys", tmp_path / "boot1"
    first = etc / "ssh_host_ed25519_key"
    keygen(first)
    saved = keep(volume, first)
    assert "saved to" in saved.stdout
    assert (volume / first.name).read_bytes() == first.read_bytes()
    assert (volume / first.name).stat().st_mode & 0o777 == 0o600
    assert volume.stat().st_mode & 0o777 == 0o700

    # The next boot: RAM again, a new key from sshd-keygen; the volume's key must win.
    second = tmp_path / "boot2" / "ssh_host_ed25519_key"
    keygen(second)
    assert fingerprint(second) != fingerprint(first)
    restored = keep(volume, second)
    assert "the key kept in" in restored.stdout
    assert second.read_bytes() == first.read_bytes()
    assert second.stat().st_mode & 0o777 == 0o600
    # The public half is the kept key's, so `ssh-keygen -lf KEY.pub` shows what clients see.
    assert fingerprint(Path(f"{second}.pub")) == fingerprint(first)
    assert Path(f"{second}.pub").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in second.parent.iterdir()) == [second.name, f"{second.name}.pub"]

    # Run again (a restart of the unit): nothing to do, nothing said.
    assert keep(volume, second).stdout == ""


def test_every_configured_key_is_kept(tmp_path: Path) -> None:
    volume, etc = tmp_path / "vol", tmp_path / "etc"
    keys = [etc / "ssh_host_ed25519_key", etc / "ssh_host_rsa_key"]
    for key in keys:
        keygen(key)
    keep(volume, *keys)
    assert sorted(p.name for p in volume.iterdir()) == sorted(k.name for k in keys)


def test_a_damaged_kept_key_leaves_this_boots_key(tmp_path: Path) -> None:
    volume, key = tmp_path / "vol", tmp_path / "etc" / "ssh_host_ed25519_key"
    volume.mkdir()
    (volume / key.name).write_text("not a key\n")
    keygen(key)
    before = key.read_bytes()
    result = keep(volume, key)
    assert "not a private key" in result.stderr
    assert key.read_bytes() == before
    assert sorted(p.name for p in key.parent.iterdir()) == [key.name, f"{key.name}.pub"]


def test_a_missing_key_is_reported_not_fatal(tmp_path: Path) -> None:
    volume, present = tmp_path / "vol", tmp_path / "etc" / "ssh_host_ed25519_key"
    keygen(present)
    result = keep(volume, tmp_path / "etc" / "ssh_host_rsa_key", present)
    assert "no such key" in result.stderr
    assert (volume / present.name).read_bytes() == present.read_bytes()
