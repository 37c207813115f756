"""Pytest fixtures for integration tests; register with pytest_plugins in tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.inference import demo

from .cluster import Cluster
from .errors import HarnessUnavailable
from .host import require_host
from .lan import Lan

ClusterFactory = Callable[..., Cluster]


def require_or_skip() -> None:
    """Skip the test when nodes cannot run here; fail loudly instead when CI=true."""
    try:
        require_host()
    except HarnessUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(str(exc))


@pytest.fixture
def cluster_factory() -> Iterator[ClusterFactory]:
    """Return a function that boots a Cluster(n, **kwargs); all are torn down after the test."""
    require_or_skip()
    clusters: list[Cluster] = []

    def factory(n: int = 1, **kwargs: Any) -> Cluster:
        cluster = Cluster(n, **kwargs)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield factory
    errors = []
    for cluster in reversed(clusters):
        try:
            cluster.close()
        except Exception as exc:  # close the rest, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A test network with one bare client namespace (skipped without root; fails under CI)."""
    try:
        Lan.require()
    except HarnessUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise
        pytest.skip(str(exc))
    with Lan(1) as net:
        yield net


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models, demo.gguf and demo-embed.onnx, written once per session."""
    d = tmp_path_factory.mktemp("models")
    demo.write(d)
    return d


@pytest.fixture
def short_socket_dir() -> Iterator[str]:
    """A directory for workers' unix sockets under /tmp: their paths must stay short."""
    d = tempfile.mkdtemp(prefix="cs-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)
