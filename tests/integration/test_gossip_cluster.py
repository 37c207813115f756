"""Gossip between real daemons, one per systemd node in its own network namespace, with 20 %
of the gossip datagrams dropped at every receiver by nftables."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cairn.gossip.profiles import LAN
from tests.conftest import CAIRN_BIN
from tests.harness import Cluster, wait_until
from tests.harness.fixtures import require_or_skip

GOSSIP_PORT = 8471
API_TOKEN = "operator-token-0123456789"
MEMBERS = 5  # n0..n4 share the key; n5 holds another one
# A member is declared dead at most the longest suspicion timeout (no confirmations at all)
# after its first suspicion, which comes within a few (awareness-stretched) probe rounds.
DEAD_BOUND_S = LAN.suspicion_max_mult * LAN.suspicion_min(MEMBERS) + 8 * LAN.probe_interval
UNIT = f"""\
[Unit]
Description=Cairn supervisor (gossip test)

[Service]
Type=notify
NotifyAccess=main
ExecStart={CAIRN_BIN} run --config /etc/cairn/cairn.json
StateDirectory=cairn
"""
LOSS = f"""\
table inet cairn_loss {{
  chain input {{
    type filter hook input priority 0; policy accept;
    udp dport {GOSSIP_PORT} numgen random mod 100 < 20 drop
  }}
}}
"""
PARTITION = f"""\
table inet cairn_partition {{
  chain input {{
    type filter hook input priority -1; policy accept;
    udp dport {GOSSIP_PORT} drop
    tcp dport {GOSSIP_PORT} drop
  }}
  chain output {{
    type filter hook output priority -1; policy accept;
    udp dport {GOSSIP_PORT} drop
    tcp dport {GOSSIP_PORT} drop
  }}
}}
"""


def _config(i: int, seed_ip: str) -> str:
    return json.dumps(
        {
            "version": 1,
            "node": {"name": f"n{i}"},
            "api": {"host": "0.0.0.0", "token_file": "/etc/cairn/api.token"},
            "probe": {"interval": 1.0},
            "gossip": {
                "key_file": "/etc/cairn/gossip.key",
                "join": [seed_ip],
                "profile": "lan",
            },
        }
    )


def nft(node: Any, rules: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=rules, text=True, check=True
    )


def nft_delete(node: Any, table: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", node.netns, "nft", "delete", "table", "inet", table], check=True
    )


def status(node: Any) -> dict[str, Any]:
    out = node.exec(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:8470/status"]).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def views(node: Any) -> dict[str, dict[str, Any]]:
    """name → member row, as `node` sees the cluster (itself excluded)."""
    return {m["name"]: m for m in status(node)["cluster"] or [] if not m["self"]}


def metric(node: Any, name: str) -> float:
    text = node.exec(["curl", "-sS", "http://127.0.0.1:8470/metrics"]).stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


def put(node: Any, path: str, content: str) -> None:
    node.exec(["sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}"], input=content)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Six booted nodes running cairn.service; n0..n4 share a key, n5 has its own."""
    require_or_skip()
    key, stranger = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    with Cluster(MEMBERS + 1) as c:
        seed = c.nodes[0].ip
        for i, node in enumerate(c.nodes):
            put(node, "/etc/systemd/system/cairn.service", UNIT)
            put(node, "/etc/cairn/cairn.json", _config(i, seed))
            put(node, "/etc/cairn/gossip.key", (key if i < MEMBERS else stranger) + "\n")
            put(node, "/etc/cairn/api.token", API_TOKEN + "\n")
            nft(node, LOSS)
            node.systemd.Reload()
        for node in c.nodes:
            node.start_unit("cairn.service")
        for node in c.nodes:
            node.wait_unit("cairn.service", "active", timeout=60)
        c.gossip_key = key  # type: ignore[attr-defined]
        yield c


def members(c: Cluster) -> list[Any]:
    return c.nodes[:MEMBERS]


def converged(c: Cluster, among: list[Any]) -> bool:
    names = {f"n{c.nodes.index(n)}" for n in among}
    for node in among:
        seen = views(node)
        others = names - {f"n{c.nodes.index(node)}"}
        if any(seen.get(o, {}).get("state") != "alive" for o in others):
            return False
    return True


def test_members_converge_under_20_percent_loss(cluster: Cluster) -> None:
    wait_until(
        lambda: converged(cluster, members(cluster)), 60, what="all five to converge", interval=0.5
    )

    # Digests travel with the gossip: every member learns every other's API port.
    def digests_everywhere() -> bool:
        return all(
            (row["digest"] or {}).get("api_port") == 8470
            for node in members(cluster)
            for row in views(node).values()
        )

    wait_until(digests_everywhere, 30, what="every member's digest everywhere", interval=0.5)


def test_a_node_with_the_wrong_key_never_joins(cluster: Cluster) -> None:
    wait_until(lambda: converged(cluster, members(cluster)), 60, what="convergence", interval=0.5)
    stranger = cluster.nodes[MEMBERS]
    for node in members(cluster):
        assert "n5" not in views(node)
    assert set(views(stranger)) == set()
    # Its join attempts and datagrams reached the seed and were refused there, and counted.
    assert metric(cluster.nodes[0], 'cairn_gossip_dropped_packets_total{reason="decrypt"}') > 0


def test_the_api_on_the_network_takes_only_known_bearer_tokens(cluster: Cluster) -> None:
    server, client = cluster.nodes[0], cluster.nodes[1]

    def code(path: str, token: str | None = None) -> str:
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        url = f"http://{server.ip}:8470{path}"
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", *auth, url]
        return str(client.exec(argv).stdout)

    assert code("/status") == "401"
    assert code("/status", "not-the-token-at-all") == "401"
    assert code("/v1/models") == "401"
    assert code("/status", API_TOKEN) == "200"
    # Peers hold no bearer token: they sign each hop (tests/integration/test_routing.py).
    assert code("/livez") == code("/readyz") == "200"


def test_a_partitioned_node_is_suspected_then_refutes(cluster: Cluster) -> None:
    wait_until(lambda: converged(cluster, members(cluster)), 60, what="convergence", interval=0.5)
    cut = cluster.nodes[4]
    before = views(cluster.nodes[0])["n4"]["incarnation"]
    nft(cut, PARTITION)
    try:
        wait_until(
            lambda: all(views(n)["n4"]["state"] != "alive" for n in members(cluster)[:4]),
            30,
            what="every other member to suspect n4",
            interval=0.2,
        )
    finally:
        nft_delete(cut, "cairn_partition")
    wait_until(lambda: converged(cluster, members(cluster)), 60, what="n4 back", interval=0.5)
    assert views(cluster.nodes[0])["n4"]["incarnation"] > before  # n4 refuted


def test_a_killed_node_is_dead_everywhere_and_no_live_one_ever_is(cluster: Cluster) -> None:
    wait_until(lambda: converged(cluster, members(cluster)), 60, what="convergence", interval=0.5)
    victim, live = cluster.nodes[3], [cluster.nodes[i] for i in (0, 1, 2, 4)]
    victim.systemd.KillUnit("cairn.service", "main", 9)
    killed = time.monotonic()
    false_positives: list[str] = []

    def all_dead() -> bool:
        done = True
        for node in live:
            seen = views(node)
            false_positives.extend(
                f"{node.name} saw {n} {r['state']}"
                for n, r in seen.items()
                if n not in ("n3", "n5") and r["state"] == "dead"
            )
            done &= seen["n3"]["state"] == "dead"
        return done

    wait_until(all_dead, DEAD_BOUND_S + 10, what="every member to mark n3 dead", interval=0.2)
    took = time.monotonic() - killed
    assert took <= DEAD_BOUND_S, f"n3 was marked dead everywhere after {took:.1f} s"
    assert false_positives == []
