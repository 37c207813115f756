"""aiohttp app factory for the status endpoint; every error is JSON, never a stack trace."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from importlib import resources
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from cairn import auth, jsonapi
from cairn.components import Components
from cairn.config import Config
from cairn.gossip.keyring import Keyring
from cairn.inference.front import MODEL_KEY
from cairn.status.document import StatusDocument
from cairn.status.metrics import Metrics

log = logging.getLogger(__name__)


class Front(Protocol):
    """The front as the status app sees it: the models it serves (the metrics count by them)."""

    @property
    def models(self) -> Mapping[str, object]:
        """The models configured here, by name."""
        ...


class Node(Protocol):
    """What the status layer reads of a node: views and collectors, never the other parts."""

    @property
    def config(self) -> Config:
        """The node's validated config."""
        ...

    @property
    def version(self) -> str:
        """The supervisor's version."""
        ...

    @property
    def components(self) -> Components:
        """Readiness, per component."""
        ...

    @property
    def inference(self) -> Front:
        """The front."""
        ...

    def view(self) -> StatusDocument:
        """The status document, from every part's view."""
        ...

    def collectors(self) -> list[Collector]:
        """Every part's metrics collector."""
        ...

    def accepted_tokens(self) -> list[str]:
        """Bearer tokens the API takes from the network."""
        ...

    def peer_keyring(self) -> Keyring | None:
        """The keys peers sign forwarded requests with, if gossip is on."""
        ...


SUPERVISOR = web.AppKey("supervisor", Node)
METRICS = web.AppKey("metrics", Metrics)
_ASSETS = resources.files("cairn.status")


def _route(request: web.Request) -> str:
    # Label by route template, never by raw path: unknown paths must not mint new series.
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTML errors and unexpected exceptions into JSON, and count every answer."""
    metrics = request.app[METRICS]
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = jsonapi.error(exc.status, exc.reason, allow)
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        response = jsonapi.error(500, "internal error; see the node's log")
    route = _route(request)
    elapsed = time.monotonic() - started
    metrics.http_requests.labels(request.method, route, str(response.status)).inc()
    metrics.http_duration.labels(route).observe(elapsed)
    if (model := request.get(MODEL_KEY)) in request.app[SUPERVISOR].inference.models:
        metrics.model_requests.labels(model, route, str(response.status)).inc()
        metrics.model_duration.labels(model, route).observe(elapsed)
    return response


async def livez(request: web.Request) -> web.Response:
    """200 while the event loop answers."""
    return jsonapi.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """200 when every component is ready, else 503 listing the ones that are not."""
    comps = request.app[SUPERVISOR].components
    if comps.ready():
        return jsonapi.json_response({"ready": True, "not_ready": {}})
    return jsonapi.json_response({"ready": False, "not_ready": comps.not_ready()}, status=503)


async def status(request: web.Request) -> web.Response:
    """The node's full status document."""
    return jsonapi.json_response(request.app[SUPERVISOR].view())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _static(name: str, content_type: str) -> Handler:
    """A handler for a packaged file, read once when the app is built."""
    body = _ASSETS.joinpath(name).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return handler


def create_app(sup: Node) -> web.Application:
    """Build the status app around a node; the daemon mounts the OpenAI app on it."""
    app = web.Application(
        middlewares=[
            errors_as_json,
            auth.middleware(sup.accepted_tokens, sup.peer_keyring, node=sup.config.node.name),
        ]
    )
    app[SUPERVISOR] = sup
    app[METRICS] = Metrics(sup.version, sup.collectors())
    app.router.add_get("/", _static("dashboard.html", "text/html"))
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", _static("openapi.json", "application/json"))
    return app
