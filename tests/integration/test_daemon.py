"""The real daemon process: health endpoints, status against OpenAPI, metrics, errors, shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CAIRN_BIN, Node
from tests.harness import wait_until

OPENAPI = json.loads(resources.files("cairn.status").joinpath("openapi.json").read_text())


def schema_for(name: str) -> dict[str, Any]:
    """A JSON Schema that resolves #/components refs inside the OpenAPI document."""
    return {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}


def validate(doc: Any, name: str) -> None:
    jsonschema.Draft202012Validator(schema_for(name)).validate(doc)


def test_livez_then_readyz_503_then_200(start_node: Callable[..., Node]) -> None:
    node = start_node(probe_interval=3.0)
    assert node.get("/livez").json() == {"status": "alive"}
    first = node.get("/readyz")
    assert first.status == 503
    validate(first.json(), "Ready")
    assert first.json()["not_ready"]["probe"]["state"] == "starting"
    wait_until(lambda: node.get("/readyz").status == 200, 15, what="readiness")
    assert node.get("/readyz").json() == {"ready": True, "not_ready": {}}


def test_status_matches_the_openapi_schema(start_node: Callable[..., Node]) -> None:
    node = start_node(probe_interval=1.0)
    validate(node.get("/status").json(), "Status")  # before the first probe: probe is null
    wait_until(lambda: node.get("/status").json()["probe"] is not None, 15, what="a probe sample")
    doc = node.get("/status").json()
    validate(doc, "Status")
    assert doc["node"]["name"] == "test-node"
    assert doc["ready"] is True
    assert set(doc["components"]) == {"api", "probe"}
    assert doc["probe"]["cpu"]["count"] >= 1
    assert doc["generation"] is None and "not a NixOS system" in doc["generation_reason"]
    # A GPU machine lists its boards; any other says why there are none.
    assert doc["probe"]["gpus"] or doc["probe"]["gpu_reason"].startswith("NVML")


def test_openapi_document_is_served_and_lists_every_route(start_node: Callable[..., Node]) -> None:
    node = start_node()
    served = node.get("/openapi.json").json()
    assert served == OPENAPI
    assert set(served["paths"]) == {
        "/",
        "/livez",
        "/readyz",
        "/status",
        "/metrics",
        "/openapi.json",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }


def test_metrics_parse_and_are_prefixed(start_node: Callable[..., Node]) -> None:
    node = start_node(probe_interval=1.0)
    wait_until(lambda: node.get("/readyz").status == 200, 15, what="readiness")
    node.get("/nope")
    resp = node.get("/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
    assert all(name.startswith("cairn_") for name in families), sorted(families)
    mem = families["cairn_memory_total_bytes"].samples[0].value
    assert mem > 0
    assert families["cairn_probe_runs"].type == "counter"
    assert families["cairn_probe_runs"].samples[0].name == "cairn_probe_runs_total"
    requests = {
        (s.labels["route"], s.labels["code"]): s.value
        for s in families["cairn_http_requests"].samples
        if s.name == "cairn_http_requests_total"
    }
    assert requests[("unmatched", "404")] == 1
    assert requests[("/readyz", "200")] >= 1
    assert {s.labels["component"] for s in families["cairn_component_ready"].samples} == {
        "api",
        "probe",
    }
    assert families["cairn_build_info"].samples[0].labels["version"]


def test_unknown_path_is_json_404(start_node: Callable[..., Node]) -> None:
    node = start_node()
    resp = node.get("/no/such/thing")
    assert resp.status == 404
    assert resp.json() == {"error": {"status": 404, "message": "Not Found"}}
    validate(resp.json(), "Error")


def test_wrong_method_is_json_405_with_allow(start_node: Callable[..., Node]) -> None:
    node = start_node()
    resp = node.get("/status", method="POST")
    assert resp.status == 405
    assert resp.json()["error"]["status"] == 405
    assert "GET" in resp.headers["Allow"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly_within_5s(start_node: Callable[..., Node], sig: int) -> None:
    node = start_node()
    sent = time.monotonic()
    node.proc.send_signal(sig)
    assert node.proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 5
    assert "stopped" in node.log()
    assert not node.alive()


def test_port_in_use_exits_nonzero_with_reason(start_node: Callable[..., Node]) -> None:
    node = start_node()
    port = node.url.rsplit(":", 1)[1]
    with pytest.raises(AssertionError, match="daemon exited 1") as exc:
        start_node(api={"port": int(port)})
    assert "address already in use" in str(exc.value).lower()


def test_cairn_status_prints_a_table(start_node: Callable[..., Node]) -> None:
    node = start_node(probe_interval=1.0)
    wait_until(lambda: node.get("/readyz").status == 200, 15, what="readiness")
    out = subprocess.run(
        [CAIRN_BIN, "status", "--url", node.url], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("Node test-node (")
    assert "READY" in out and "NOT READY" not in out
    assert "Components" in out and "probe" in out
    assert "unavailable: " in out  # generation on a non-NixOS machine
    as_json = subprocess.run(
        [CAIRN_BIN, "status", "--json", "--url", node.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    validate(json.loads(as_json), "Status")


def test_cairn_status_unreachable_says_so() -> None:
    res = subprocess.run(
        [CAIRN_BIN, "status", "--url", "http://127.0.0.1:9"], capture_output=True, text=True
    )
    assert res.returncode == 3
    assert "cannot read http://127.0.0.1:9/status" in res.stderr
