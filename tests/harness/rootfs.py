"""Build and cache the Debian rootfs that every test node boots from."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("CAIRN_HARNESS_CACHE", "/var/cache/cairn-harness"))
MIRROR = "http://deb.debian.org/debian"
# Units that only make sense on a real machine; masked so boots are quick and not degraded.
MASKED_UNITS = (
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "getty.target",
    "systemd-networkd-wait-online.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)
# Bump when the customisation below changes, so old caches are not reused.
LAYOUT_VERSION = "2"


@dataclass(frozen=True)
class Flavour:
    """A Debian release and the packages debootstrap adds to its minbase."""

    suite: str
    packages: tuple[str, ...]


# Every node's default: runtime libraries of the bound host interpreter and the venv's wheels
# come from here (the host is Debian 12 too).
BOOKWORM = Flavour(
    "bookworm",
    (
        "systemd",
        "systemd-sysv",
        "dbus",
        "python3",
        "iproute2",
        "curl",
        "libgirepository-1.0-1",
        "gir1.2-glib-2.0",
        "libssl3",
        "libffi8",
        "zlib1g",
        "libbz2-1.0",
        "liblzma5",
        "libsqlite3-0",
        "libreadline8",
        "libncursesw6",
        "libexpat1",
        "libuuid1",
        "libgomp1",
        "libstdc++6",
    ),
)
# systemd 257 and polkit 126, for the security tests of polkit rules: from 257 on systemd asks
# polkit about StartTransientUnit with the unit's name (252 asks without one). Its glibc and
# Python differ from the host's, so the bound venv does not run here: tests use the node's own
# tools only.
# libpam-systemd: polkitd needs default-logind, a virtual package debootstrap cannot resolve.
TRIXIE = Flavour(
    "trixie", ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "polkitd", "util-linux")
)


def rootfs_key(flavour: Flavour = BOOKWORM) -> str:
    """Return the cache key: a hash of everything that shapes the rootfs."""
    parts = (LAYOUT_VERSION, flavour.suite, MIRROR, *flavour.packages, *MASKED_UNITS)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def is_cached(cache_dir: Path = CACHE_DIR, flavour: Flavour = BOOKWORM) -> bool:
    """Return whether a complete rootfs of that flavour is cached."""
    return (cache_dir / f"rootfs-{rootfs_key(flavour)}").is_dir()


def ensure_rootfs(cache_dir: Path = CACHE_DIR, flavour: Flavour = BOOKWORM) -> Path:
    """Return the cached rootfs, building it first if no complete copy exists."""
    final = cache_dir / f"rootfs-{rootfs_key(flavour)}"
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"{final.name}.lock") as lock_fd:
        if final.is_dir():  # another process built it while we waited
            return final
        _remove_stale_builds(cache_dir, final.name)
        build = Path(tempfile.mkdtemp(prefix=f"{final.name}.build-", dir=cache_dir))
        try:
            _build(build, lock_fd, flavour)
        except BaseException:
            _unmount_below(build)
            shutil.rmtree(build, ignore_errors=True)
            raise
        os.rename(build, final)  # atomic: the cache is either absent or complete
    return final


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    """Hold an exclusive flock on path for the block; yield the lock's fd."""
    with open(path, "w") as fh:
        log.debug("waiting for rootfs lock %s", path)
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_builds(cache_dir: Path, name: str) -> None:
    """Delete half-built trees left by an interrupted build (we hold the lock)."""
    for stale in cache_dir.glob(f"{name}.build-*"):
        log.info("removing interrupted rootfs build %s", stale)
        _unmount_below(stale)  # a killed debootstrap leaves proc/sys/devpts mounted
        shutil.rmtree(stale, ignore_errors=True)


def _unmount_below(path: Path) -> None:
    """Lazily unmount every mount under path, deepest first, so rmtree stays inside it."""
    prefix = f"{path.resolve()}/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # mountinfo escapes as \040
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _build(target: Path, lock_fd: int, flavour: Flavour) -> None:
    """Debootstrap into target and prepare it for booting under nspawn."""
    started = time.monotonic()
    log.info("building rootfs %s (debootstrap %s, about a minute)", target, flavour.suite)
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(flavour.packages)}",
        flavour.suite,
        str(target),
        MIRROR,
    ]
    # debootstrap inherits the lock: if we are killed, nobody removes its tree under it.
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, pass_fds=(lock_fd,))
    if proc.returncode != 0:
        raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    _customise(target)
    log.info("rootfs built in %.1f s", time.monotonic() - started)


def _customise(root: Path) -> None:
    """Mask machine-only units and leave per-boot identity to nspawn and systemd."""
    units = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = units / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # No /etc/hostname: systemd then keeps the hostname nspawn sets from --machine.
    (root / "etc/hostname").unlink(missing_ok=True)
    (root / "etc/hosts").write_text(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
    )
    # Empty machine-id: each boot gets a fresh transient id (from nspawn's --uuid).
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
