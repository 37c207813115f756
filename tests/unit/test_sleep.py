"""The sleeper's view of the kernel: connections to a listening socket, available memory."""

from __future__ import annotations

import socket
from pathlib import Path

from cairn.sleep import Phase, available_bytes, connections, phase_of
from cairn.units import UnitState


def test_tcp_connections_queued_accepted_and_closed_are_seen() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        listen = [("Stream", f"127.0.0.1:{port}")]
        assert connections(listen) == (0, set())
        client = socket.create_connection(("127.0.0.1", port))
        assert connections(listen)[0] == 1  # still in the accept queue: counted
        conn, _ = server.accept()
        assert connections(listen)[0] == 1  # the client's end is not counted twice
        client.close()  # the client closes first: its end lingers in TIME_WAIT
        conn.close()
        busy, closed = connections(listen)
        assert busy == 0 and len(closed) == 1
        assert connections([("Stream", f"[::]:{port + 1}")]) == (0, set())


def test_unix_connections_are_seen(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        listen = [("Stream", path)]
        assert connections(listen)[0] == 0
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            conn, _ = server.accept()
            assert connections(listen)[0] == 1
            conn.close()
        assert connections(listen)[0] == 0


def test_available_memory_is_read(tmp_path: Path) -> None:
    assert available_bytes(Path("/proc/meminfo")) > 0
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  100 kB\nMemAvailable:   42 kB\n")
    assert available_bytes(fake) == 42 * 1024


def test_phases_follow_systemd() -> None:
    assert phase_of(UnitState("a", "active", "running")) is Phase.AWAKE
    assert phase_of(UnitState("a", "activating", "start")) is Phase.WAKING
    assert phase_of(UnitState("a", "inactive", "dead")) is Phase.ASLEEP
    assert phase_of(UnitState("a", "failed", "failed")) is Phase.FAILED
    assert phase_of(None) is Phase.UNKNOWN
