"""The front API on :8470/v1: OpenAI routes proxied to each model's worker over its unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from cairn.config import Config, ModelConfig, WorkerManager
from cairn.inference import openai
from cairn.inference.children import ChildWorker

if TYPE_CHECKING:
    from cairn.gossip.service import Cluster, Peer

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
PEER_CONNECT_TIMEOUT_S = 3.0
PASS_HEADERS = ("Content-Type", "Retry-After", "Cache-Control")
_STARTED = "cairn_response"  # request key: the response once its headers went out
FORWARDED_BY = "X-Cairn-Forwarded-By"  # set on a request one node passes to another


def _started(request: web.Request) -> web.StreamResponse | None:
    """The response whose headers already went out, if any."""
    resp: web.StreamResponse | None = request.get(_STARTED)
    return resp


class Model:
    """One configured model as the front sees it: its worker, its state, its last health."""

    def __init__(self, cfg: ModelConfig, socket_path: Path, child: ChildWorker | None) -> None:
        self.cfg = cfg
        self.socket_path = socket_path
        self.child = child
        self.health: dict[str, Any] | None = None
        self.created = int(time.time())
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """A client bound to the worker's unix socket, made on first use."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.startup_timeout),
            )
        return self._session

    def full(self) -> bool:
        """Whether its queue is full by the last health report (the next request waits long)."""
        stats = (self.health or {}).get("stats", {})
        return bool(stats) and stats.get("queued", 0) >= self.cfg.queue

    def state(self) -> tuple[str, str]:
        """(state, reason): starting, loading, ready, failed, or socket (systemd activates it)."""
        if self.child is None:
            return ("ready", "") if self.health else ("socket", "started on first request")
        return self.child.state, self.child.reason

    async def close(self) -> None:
        """Close the client session."""
        if self._session is not None:
            await self._session.close()


class Inference:
    """Owns the models: starts children in standalone mode, proxies requests, polls health."""

    def __init__(self, config: Config, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        sockets = self.socket_dir = Path(
            config.inference.socket_dir or Path(config.node.state_dir) / "sockets"
        )
        children = config.inference.workers is WorkerManager.CHILDREN
        config_path = run_dir / "effective-config.json"
        self.models = {
            m.name: Model(
                m,
                sockets / f"{m.name}.sock",
                ChildWorker(m, config_path, sockets / f"{m.name}.sock", run_dir)
                if children
                else None,
            )
            for m in config.models
        }
        self._config_path = config_path
        self.cluster: Cluster | None = None  # set by the supervisor when gossip is on
        self._peers: aiohttp.ClientSession | None = None
        self.forwarded = 0

    async def start(self) -> None:
        """Write the config the workers read, then start the children (standalone)."""
        children = [m.child for m in self.models.values() if m.child is not None]
        if not children:  # systemd mode: units bring their own config and sockets
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._config_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self.config))
        tmp.replace(self._config_path)
        for child in children:
            child.start()

    async def stop(self) -> None:
        """Stop the children and close the sessions."""
        await asyncio.gather(*(m.child.stop() for m in self.models.values() if m.child))
        for m in self.models.values():
            await m.close()
        if self._peers is not None:
            await self._peers.close()

    def not_ready(self) -> dict[str, str]:
        """Models that are not (yet) serving, with why."""
        out = {}
        for name, m in self.models.items():
            state, reason = m.state()
            if state not in ("ready", "socket"):
                out[name] = f"{state}: {reason}" if reason else state
        return out

    async def poll_health(self) -> None:
        """Refresh each running worker's /health (never wakes a socket-activated one)."""
        for m in self.models.values():
            if m.child is None or m.child.state != "ready":
                if m.child is not None:
                    m.health = None
                continue
            try:
                async with m.session.get(
                    "http://worker/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
                ) as resp:
                    m.health = await resp.json()
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as err:
                log.warning("health of %s failed: %s", m.cfg.name, err)
                m.health = None

    def status(self) -> dict[str, Any]:
        """Per-model state for /status."""
        out = {}
        for name, m in self.models.items():
            state, reason = m.state()
            h = m.health or {}
            out[name] = {
                "kind": str(m.cfg.kind),
                "state": state,
                "reason": reason,
                "pid": m.child.pid if m.child else h.get("pid"),
                "starts": m.child.starts if m.child else None,
                "load_seconds": h.get("load_seconds"),
                "device": h.get("device"),
                "device_reason": h.get("device_reason"),
                "cores": h.get("cores", []),
                "threads": h.get("threads", {}),
                "stats": h.get("stats", {}),
            }
        return out

    # --- HTTP -----------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        data = [
            {"id": n, "object": "model", "created": m.created, "owned_by": "cairn"}
            for n, m in self.models.items()
        ]
        return web.json_response({"object": "list", "data": data})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/...: pick the model from the body, forward to its worker, stream back."""
        limit = self.config.inference.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return openai.error(413, f"request body over {limit} bytes", "invalid_request_error")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return openai.error(413, f"request body over {limit} bytes", "invalid_request_error")
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError as err:
            return openai.error(
                400, f"request body is not valid JSON: {err}", "invalid_request_error"
            )
        name = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(name, str):
            return openai.error(
                400,
                "'model' is required and must be a string",
                "invalid_request_error",
                param="model",
            )
        request["cairn_model"] = name  # the metrics middleware counts per model
        model = self.models.get(name)
        hop = FORWARDED_BY in request.headers  # one hop at most: never pass a request on twice
        if (model is None or model.full()) and self.cluster is not None and not hop:
            for peer in self.cluster.peers_serving(name):
                resp = await self._to_peer(request, peer, body)
                if resp is not None:
                    return resp
        if model is None:
            if hop or (self.cluster is not None and self.cluster.knows_model(name)):
                return openai.error(
                    503,
                    f"model '{name}' is unavailable: no live node with room serves it",
                    "model_unavailable",
                    param="model",
                    code="model_unavailable",
                    headers={"Retry-After": "5"},
                )
            return openai.error(
                404,
                f"The model '{name}' does not exist",
                "invalid_request_error",
                param="model",
                code="model_not_found",
            )
        unavailable = await self._wait_available(model)
        if unavailable:
            return openai.error(
                503,
                f"model '{name}' is unavailable: {unavailable}",
                "model_unavailable",
                param="model",
                code="model_unavailable",
                headers={"Retry-After": "5"},
            )
        return await self._forward(request, model, body)

    async def _wait_available(self, model: Model) -> str:
        """'' when the worker can take the request, else why not (waits while it loads)."""
        child = model.child
        if child is None:
            return ""
        if child.state in ("starting", "loading"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.ready.wait(), model.cfg.startup_timeout)
        if child.state != "ready":
            return child.reason or child.state
        return ""

    async def _to_peer(
        self, request: web.Request, peer: Peer, body: bytes
    ) -> web.StreamResponse | None:
        """Relay to a peer's front; None if it cannot be reached (the caller tries the next)."""
        assert self.cluster is not None
        if self._peers is None:
            self._peers = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=PEER_CONNECT_TIMEOUT_S)
            )
        host = f"[{peer.host}]" if ":" in peer.host else peer.host
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.cluster.keyring.api_token()}",
            FORWARDED_BY: self.cluster.name,
        }
        try:
            async with self._peers.post(
                f"http://{host}:{peer.api_port}{request.path}", data=body, headers=headers
            ) as upstream:
                self.forwarded += 1
                return await self._relay(request, upstream)
        except (aiohttp.ClientConnectionError, OSError) as err:
            if (started := _started(request)) is not None:  # a side hung up mid-stream
                log.info("stream from peer %s ended early: %s", peer.name, err)
                return started
            log.warning("peer %s unreachable for %s: %s", peer.name, request.path, err)
            return None

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Stream an upstream answer back to the client as it arrives."""
        resp = web.StreamResponse(
            status=upstream.status,
            headers={h: upstream.headers[h] for h in PASS_HEADERS if h in upstream.headers},
        )
        request[_STARTED] = resp
        await resp.prepare(request)
        # A client that goes away cancels this handler; leaving the caller's `async with`
        # closes the upstream connection, and the worker cancels the generation.
        async for piece in upstream.content.iter_any():
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def _forward(self, request: web.Request, model: Model, body: bytes) -> web.StreamResponse:
        try:
            async with model.session.post(
                f"http://worker{request.path}",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as upstream:
                return await self._relay(request, upstream)
        except (aiohttp.ClientConnectionError, OSError) as err:
            if (started := _started(request)) is not None:  # a side hung up mid-stream
                log.info("stream of %s ended early: %s", model.cfg.name, err)
                return started
            if model.child is None:
                model.health = None
            return openai.error(
                503,
                f"model '{model.cfg.name}' is unavailable: {err}",
                "model_unavailable",
                param="model",
                code="model_unavailable",
            )

    def add_routes(self, app: web.Application) -> None:
        """Register /v1 routes on the supervisor's app."""
        app.router.add_get("/v1/models", self.list_models)
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self.proxy)
