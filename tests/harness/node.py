"""One throwaway node: a real systemd booted by systemd-nspawn, reached over D-Bus."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import cgroups
from .errors import HarnessError
from .poll import wait_until

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
READY_STATES = frozenset({"running", "degraded"})
BOOT_FAILED_STATES = frozenset({"maintenance", "stopping", "offline"})
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Runs as the nspawn process itself before exec: join the node's own cgroups.
_ENTER_CGROUPS = (
    'for g in $CAIRNT_CGROUPS; do echo $$ > "$g/cgroup.procs" || exit 1; done; exec "$@"'
)


class Node:
    """A booted container with its own netns, hostname, system bus and journal."""

    def __init__(
        self,
        *,
        name: str,
        ip: str,
        netns: str,
        rootfs: Path,
        workdir: Path,
        binds: Sequence[Path] = (),
        files: Mapping[str, str | bytes] | None = None,
        nspawn_args: Sequence[str] = (),
    ) -> None:
        """Describe a node; nothing runs until start()."""
        self.name, self.ip, self.netns = name, ip, netns
        self.rootfs, self.workdir = rootfs, workdir
        self.binds, self.files = tuple(binds), dict(files or {})
        self.nspawn_args = tuple(nspawn_args)
        self.bus_dir = workdir / "dbus"
        self.console_log = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None
        self._bus: Any = None
        self._manager: Any = None
        self._cgroups: list[Path] = []
        self._started_at = 0.0

    def __repr__(self) -> str:
        """Show the node's name and address."""
        return f"<Node {self.name} {self.ip}>"

    @property
    def bus_address(self) -> str:
        """Return the D-Bus address of the node's system bus, reachable from the host."""
        return f"unix:path={self.bus_dir / 'system_bus_socket'}"

    def start(self) -> None:
        """Launch systemd-nspawn in its own session and cgroup; returns without waiting."""
        self.bus_dir.mkdir(parents=True, exist_ok=True)
        (self.bus_dir / "system_bus_socket").unlink(missing_ok=True)  # from a previous boot
        argv = self._nspawn_argv()
        self._cgroups = cgroups.create(self.name)
        env = {
            **os.environ,
            "TERM": "dumb",
            "SYSTEMD_COLORS": "0",
            "CAIRNT_CGROUPS": " ".join(map(str, self._cgroups)),
        }
        wrapper = ["setpriv", "--pdeathsig", "TERM", "--", "sh", "-c", _ENTER_CGROUPS, "sh"]
        log.debug("starting %s: %s", self.name, " ".join(argv))
        with open(self.console_log, "wb") as console:
            self._started_at = time.monotonic()
            self.process = subprocess.Popen(
                [*wrapper, *argv],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C on the terminal must not hit nspawn directly
            )

    def _nspawn_argv(self) -> list[str]:
        """Return the systemd-nspawn command line for this node."""
        argv = [
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--link-journal=no",
            "--console=read-only",
            f"--directory={self.rootfs}",
            f"--network-namespace-path=/run/netns/{self.netns}",
            f"--machine={self.name}",
            f"--bind={self.bus_dir}:/run/dbus",
        ]
        argv += [f"--bind-ro={_bind_path(p)}" for p in self.binds]
        argv += [f"--bind-ro={_bind_path(h)}:{_bind_path(n)}" for n, h in self._write_files()]
        return argv + list(self.nspawn_args)

    def _write_files(self) -> list[tuple[str, Path]]:
        """Write the extra files to the host workdir; return (node path, host path)."""
        pairs = []
        for node_path, content in self.files.items():
            if not node_path.startswith("/"):
                raise HarnessError(f"file path must be absolute: {node_path!r}")
            host = self.workdir / "files" / node_path.lstrip("/")
            host.parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            host.write_bytes(data)
            host.chmod(0o755 if data.startswith(b"#!") else 0o644)
            pairs.append((node_path, host))
        return pairs

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the system bus answers and systemd reports running or degraded."""
        deadline = time.monotonic() + timeout
        socket = self.bus_dir / "system_bus_socket"
        try:
            self._bus = wait_until(
                lambda: (
                    self._check_alive() or (_connect(self.bus_address) if socket.exists() else None)
                ),
                timeout,
                what="its bus",
            )
            self._manager = self._bus.get(SYSTEMD)
            remaining = max(0.0, deadline - time.monotonic())
            state = wait_until(self._ready_state, remaining, what="SystemState running")
        except HarnessError as exc:
            if self.process is not None and self.process.poll() is not None:
                raise  # already carries the console
            raise HarnessError(f"{self.name} not ready: {exc}\n{self.console()}") from exc
        self.boot_seconds = time.monotonic() - self._started_at
        log.info("%s ready (%s) in %.2f s", self.name, state, self.boot_seconds)

    def _ready_state(self) -> str | None:
        """Return SystemState once boot has finished; raise if it went wrong."""
        self._check_alive()
        state = str(self.systemd.SystemState)
        if state in BOOT_FAILED_STATES:
            raise HarnessError(f"{self.name} boot ended in {state}:\n{self.console()}")
        return state if state in READY_STATES else None

    def _check_alive(self) -> bool:
        """Raise with the console tail if nspawn has exited; else return False."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise HarnessError(f"{self.name}: nspawn exited ({code}):\n{self.console()}")
        return False

    @property
    def bus(self) -> Any:
        """Return the pydbus connection to the node's system bus."""
        if self._bus is None:
            raise HarnessError(f"{self.name} is not ready; no bus yet")
        return self._bus

    @property
    def systemd(self) -> Any:
        """Return the proxy of the node's systemd Manager."""
        if self._manager is None:
            raise HarnessError(f"{self.name} is not ready; no bus yet")
        return self._manager

    @property
    def system_state(self) -> str:
        """Return the Manager's SystemState (running, degraded, ...)."""
        return str(self.systemd.SystemState)

    def failed_units(self) -> list[str]:
        """Return the names of units in the failed state."""
        return [u[0] for u in self.systemd.ListUnitsFiltered(["failed"])]

    def unit(self, name: str) -> Any:
        """Return a proxy for unit name (Unit and Service/Socket properties, live)."""
        return self.bus.get(SYSTEMD, self.systemd.LoadUnit(name))

    def start_unit(
        self, name: str, mode: str = "replace", *, wait: bool = True, timeout: float = 30.0
    ) -> str:
        """Start unit name over D-Bus; with wait, return once its job has finished."""
        job = str(self.systemd.StartUnit(name, mode))
        if wait:
            self.wait_job(job, timeout)
        return job

    def stop_unit(
        self, name: str, mode: str = "replace", *, wait: bool = True, timeout: float = 30.0
    ) -> str:
        """Stop unit name over D-Bus; with wait, return once its job has finished."""
        job = str(self.systemd.StopUnit(name, mode))
        if wait:
            self.wait_job(job, timeout)
        return job

    def wait_job(self, job: str, timeout: float = 30.0) -> None:
        """Wait until the systemd job at object path job has left the queue."""
        wait_until(
            lambda: job not in {j[4] for j in self.systemd.ListJobs()},
            timeout,
            what=f"{self.name} job {job}",
        )

    def wait_unit(self, name: str, state: str, timeout: float = 30.0) -> Any:
        """Wait until unit name's ActiveState is state; return the unit proxy."""
        unit = self.unit(name)
        try:
            return wait_until(
                lambda: unit if unit.ActiveState == state else None, timeout, what=f"{name} {state}"
            )
        except HarnessError as exc:
            raise HarnessError(
                f"{self.name}: {name} is {unit.ActiveState}/{unit.SubState} (result {unit.Result}),"
                f" not {state} after {timeout:.0f} s\n{self.journal(name)}"
            ) from exc

    @property
    def leader_pid(self) -> int:
        """Return the host pid of the node's PID 1 (systemd)."""
        if self.process is None:
            raise HarnessError(f"{self.name} was never started")
        children = (
            Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        )
        own_ns = os.readlink("/proc/self/ns/pid")
        for pid in children:
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != own_ns:
                    return int(pid)
            except OSError:
                continue
        raise HarnessError(f"{self.name}: no container init among nspawn's children {children}")

    def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node (all its namespaces, clean env) and return the result."""
        command = ["nsenter", f"--target={self.leader_pid}", "--all", "--", *argv]
        env = {"PATH": NODE_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
        proc = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"{self.name}: {list(argv)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
            )
        return proc

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        """Return the node's journal (of one unit, when given) as text, for failure messages."""
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        argv += ["-u", unit] if unit else []
        try:
            proc = self.exec(argv, check=False, timeout=15)
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            return f"(journal unavailable: {exc})"
        return proc.stdout + proc.stderr

    def console(self, lines: int = 60) -> str:
        """Return the tail of nspawn's console output (boot messages, nspawn errors)."""
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    def signal_stop(self) -> None:
        """Close the bus and ask nspawn to power the container off; does not wait."""
        self.close_bus()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        """Power the node off (SIGKILL after timeout) and remove its cgroups."""
        self.signal_stop()
        self.finish_stop(timeout)

    def kill(self) -> None:
        """Crash the node: SIGKILL the container's init (so every process in it), no shutdown."""
        self.close_bus()
        if self.process is not None and self.process.poll() is None:
            # Killing init rather than nspawn: nspawn reaps it, no zombie is left to PID 1.
            os.kill(self.leader_pid, signal.SIGKILL)
        self.finish_stop(10.0)

    def restart(self, timeout: float = 60.0) -> None:
        """Power the node off and boot it again (same name, IP and files; fresh overlay)."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def finish_stop(self, timeout: float) -> None:
        """After signal_stop: wait for nspawn (SIGKILL after timeout), then remove cgroups."""
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %.0f s, killing it", self.name, timeout)
                self.process.kill()
                self.process.wait()
        for path in self._cgroups:
            cgroups.kill(path)  # anything that outlived nspawn
            cgroups.remove(path)

    def close_bus(self) -> None:
        """Close the D-Bus connection to the node, if open."""
        bus, self._bus, self._manager = self._bus, None, None
        if bus is not None:
            try:
                bus.con.close_sync(None)
            except Exception as exc:  # closing a dead connection may fail any way
                log.debug("closing bus of %s: %s", self.name, exc)


def _connect(address: str) -> Any:
    """Open a pydbus connection to address (imported lazily: gi is heavy).

    None while the socket is bound but not yet listening (refused): it exists from bind().
    """
    import pydbus
    from gi.repository import Gio, GLib

    try:
        return pydbus.connect(address)
    except GLib.Error as exc:
        if exc.matches(Gio.io_error_quark(), Gio.IOErrorEnum.CONNECTION_REFUSED):
            return None
        raise


def _bind_path(path: Path | str) -> str:
    """Return path for an nspawn --bind option, refusing the separator ':'."""
    text = str(path)
    if ":" in text:
        raise HarnessError(f"nspawn bind paths cannot contain ':': {text!r}")
    return text
