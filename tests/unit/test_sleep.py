"""The sleeper's view of the kernel: connections to a listening socket, available memory."""

from __future__ import annotations

import socket
from pathlib import Path

from cairn.policy.sleep import Phase, connections, phase_of
from cairn.system.units import UnitState


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


def test_phases_follow_systemd() -> None:
    assert phase_of(UnitState("a", "active", "running")) is Phase.AWAKE
    assert phase_of(UnitState("a", "activating", "start")) is Phase.WAKING
    assert phase_of(UnitState("a", "inactive", "dead")) is Phase.ASLEEP
    assert phase_of(UnitState("a", "failed", "failed")) is Phase.FAILED
    assert phase_of(None) is Phase.UNKNOWN


def test_a_connection_this_machine_made_to_anothers_port_is_not_a_client(tmp_path: Path) -> None:
    # /proc/net/tcp as the kernel writes it: a service on :80 (0x50) of 10.0.0.5, a local
    # client's TIME_WAIT to it, a half-closed request, and this machine's own finished request
    # to port 80 of 93.184.216.34 (all addresses little-endian hex).
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
    rows = [
        "0: 0500000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0",
        "1: 0500000A:9C40 0500000A:0050 06 00000000:00000000 00:00000000 00000000 0",
        "2: 0500000A:0050 0600000A:D431 08 00000000:00000000 00:00000000 00000000 0",
        "3: 0500000A:A0B2 22D8B85D:0050 06 00000000:00000000 00:00000000 00000000 0",
    ]
    (tmp_path / "tcp").write_text("\n".join([head, *rows]) + "\n")
    busy, closed = connections([("Stream", "0.0.0.0:80")], proc=tmp_path)
    assert busy == 1  # the CLOSE_WAIT one: its answer is still being written
    assert closed == {"0500000A:9C40>0500000A:0050"}  # the local client's, not the outbound
