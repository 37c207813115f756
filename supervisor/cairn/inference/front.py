"""The front API on :8470/v1: OpenAI routes proxied to each model's worker over its unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from cairn.config import REQUEST_TIMEOUT_S, Config, ModelConfig, ModelKind, WorkerManager
from cairn.guard import BODY_TIMEOUT_S, HEADER_TIMEOUT_S
from cairn.inference import openai
from cairn.inference.children import ChildUnits, ChildWorker
from cairn.inference.types import EngineStats, ModelState, ModelView, WorkerHealth
from cairn.policy.sleep import Kind, Phase, Sleepable, Sleeper, phase_of
from cairn.policy.thermal import ThermalGuard
from cairn.system.units import UnitError, Units, UnitStatus, unit_of

if TYPE_CHECKING:
    from cairn.gossip.service import Cluster, Peer

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0
PEER_CONNECT_TIMEOUT_S = 3.0
PEER_WATCH_S = 0.5  # how often a hop in flight checks that gossip still holds its peer alive
PASS_HEADERS = ("Content-Type", "Retry-After", "Cache-Control")
# Request keys: the response once its headers went out; the model asked for (for the metrics).
_STARTED = web.RequestKey("cairn_response", web.StreamResponse)
MODEL_KEY = web.RequestKey("cairn_model", str)
FORWARDED_BY = "X-Cairn-Forwarded-By"  # set on a request one node passes to another
WAKE_KEEPALIVE_S = 1.0  # a streaming client waiting for a wake hears from us this often
SERVING = (ModelState.READY, ModelState.SOCKET, ModelState.ASLEEP)  # or would, on a request
# A worker unit's phase as the front shows it, with the reason when the backend gives none.
_BY_PHASE = {
    Phase.AWAKE: (ModelState.READY, ""),
    Phase.WAKING: (ModelState.LOADING, "waking"),
    Phase.ASLEEP: (ModelState.ASLEEP, "woken by the next request"),
    Phase.FAILED: (ModelState.FAILED, "the unit failed; the next request starts it again"),
}
_NOT_KNOWN = (ModelState.SOCKET, "started on first request")
EFFECTIVE_CONFIG = "effective-config.json"  # in the run dir: what standalone workers read
# What each POST route's body must be: the front validates it before waking or passing it on.
Request = openai.ChatRequest | openai.CompletionRequest | openai.EmbeddingRequest


def worker_units(config: Config, run_dir: Path, systemd: Units | None = None) -> Units:
    """The units that run the model workers: our own children standalone, else systemd's."""
    if config.inference.workers is not WorkerManager.CHILDREN:
        if systemd is None:
            raise ValueError("systemd workers need a systemd connection")
        return systemd
    return ChildUnits(
        {
            unit_of(m.name): ChildWorker(
                m,
                run_dir / EFFECTIVE_CONFIG,
                config.worker_socket(m.name),
                config.notify_socket(m.name),
            )
            for m in config.models
        }
    )


def sleepables(config: Config, units: Units) -> list[Sleepable]:
    """One sleepable worker per model, each by its idle TTL."""
    return [Sleepable(unit_of(m.name), Kind.MODEL, m.idle_ttl, units) for m in config.models]


def gpu_units(config: Config) -> list[str]:
    """The worker units of the models that offload to the GPU (what the thermal guard pauses)."""
    return [unit_of(m.name) for m in config.models if m.gpu_layers > 0]


def _started(request: web.Request) -> web.StreamResponse | None:
    """The response whose headers already went out, if any."""
    resp = request.get(_STARTED)
    return resp


class Model:
    """One configured model as the front sees it: its worker, its state, its last health."""

    def __init__(
        self, cfg: ModelConfig, socket_path: Path, units: Units, sleepable: Sleepable | None
    ) -> None:
        self.cfg = cfg
        self.unit = unit_of(cfg.name)
        self.sleepable = sleepable  # the sleeper's, which keeps it true
        self.socket_path = socket_path
        self.units = units
        self.health: WorkerHealth | None = None
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

    def known(self) -> UnitStatus:
        """Its worker unit as the backend knows it now."""
        return self.units.known(self.unit)

    @property
    def stats(self) -> EngineStats:
        """The engine's counters by the last health report; none without one."""
        return self.health.stats if self.health is not None else EngineStats()

    def full(self) -> bool:
        """Whether its queue is full by the last health report (the next request waits long)."""
        queued = self.stats.queued
        return queued is not None and queued >= self.cfg.queue

    def state(self) -> tuple[ModelState, str]:
        """(state, reason): starting, loading, ready, failed, asleep, or socket (not known yet)."""
        seen = self.known()
        state, why = _BY_PHASE.get(phase_of(seen.state), _NOT_KNOWN)
        if state is ModelState.LOADING and seen.spawned:
            state = ModelState.STARTING
        return state, why if seen.reason is None else seen.reason

    async def close(self) -> None:
        """Close the client session."""
        if self._session is not None:
            await self._session.close()


class Inference:
    """Owns the models: starts children in standalone mode, proxies requests, polls health."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        units: Units,
        *,
        sleeper: Sleeper | None = None,
        cluster: Cluster | None = None,
        thermal: ThermalGuard | None = None,
    ) -> None:
        """`units` from `worker_units`; the sleeper, gossip and thermal guard when there are."""
        self.config = config
        self.run_dir = run_dir
        self.socket_dir = config.socket_dir()
        self._config_path = run_dir / EFFECTIVE_CONFIG
        # Standalone: the workers are ours to run.
        self._children = units if isinstance(units, ChildUnits) else None
        self.units = units
        self.sleeper = sleeper
        self.cluster = cluster
        # Worker units paused by the thermal guard (its own set, kept true by it).
        self.paused: AbstractSet[str] = thermal.paused_units if thermal else frozenset()
        self.models = {
            m.name: Model(
                m,
                config.worker_socket(m.name),
                units,
                sleeper.units.get(unit_of(m.name)) if sleeper else None,
            )
            for m in config.models
        }
        self._peers: aiohttp.ClientSession | None = None
        self.forwarded = 0
        self.streams_broken = 0  # answers whose worker or peer failed after the status line
        self.last_request = time.monotonic()  # any /v1 request, served here or passed on

    async def start(self) -> None:
        """Write the config the workers read, then start the children (standalone)."""
        if self._children is None or not self.models:  # systemd units bring their own
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._config_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(self.config))
        tmp.replace(self._config_path)
        self._children.open()

    async def stop(self) -> None:
        """Stop the children and close the sessions."""
        if self._children is not None:
            await self._children.close()
        for m in self.models.values():
            await m.close()
        if self._peers is not None:
            await self._peers.close()

    def not_ready(self) -> dict[str, tuple[ModelState, str]]:
        """Models that are not (yet) serving: their state, and why."""
        out = {}
        for name, m in self.models.items():
            state, reason = m.state()
            if state not in SERVING:
                out[name] = (state, reason)
        return out

    async def poll_health(self) -> None:
        """Refresh each awake worker's /health; never wakes one, nor counts as its use."""
        for m in self.models.values():
            if not _awake(m):  # asleep, or being put to sleep
                m.health = None
                continue
            with _probing(m):
                try:
                    async with m.session.get(
                        "http://worker/health",
                        timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S),
                    ) as resp:
                        m.health = msgspec.json.decode(await resp.read(), type=WorkerHealth)
                except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as err:
                    log.warning("health of %s failed: %s", m.cfg.name, err)
                    m.health = None

    def view(self) -> dict[str, ModelView]:
        """Per-model state for /status."""
        out = {}
        for name, m in self.models.items():
            state, reason = m.state()
            h, process = m.health, m.known().process
            out[name] = ModelView(
                kind=m.cfg.kind,
                state=state,
                reason=reason,
                pid=process.pid if process else h.pid if h else None,
                starts=process.starts if process else None,
                load_seconds=h.load_seconds if h else None,
                device=h.device if h else None,
                device_reason=h.device_reason if h else None,
                cores=h.cores if h else [],
                threads=h.threads if h else {},
                stats=m.stats,
            )
        return out

    # --- HTTP -----------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the models configured here (peers' are not listed)."""
        data = [_model_object(m) for m in self.models.values()]
        return web.json_response({"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}: one of the models /v1/models lists, else 404."""
        name = request.match_info["model"]
        model = self.models.get(name)
        if model is None:
            return _not_found(name)
        return web.json_response(_model_object(model))

    def _proxy(self, kind: type[Request]) -> Handler:
        """The handler of one POST route, whose bodies are `kind` requests."""

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.proxy(request, kind)

        return handler

    async def proxy(self, request: web.Request, kind: type[Request]) -> web.StreamResponse:
        """POST /v1/...: validate the body, pick its model's worker (or a peer), stream back.

        The body is validated here, before anything is woken or passed on: an invalid request
        gets its 400 with a status line, never an event stream already promised as a 200.
        """
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        try:
            body.decode()  # the decoder below skips unknown fields unread, even broken ones
        except UnicodeDecodeError as err:
            return openai.error(
                400, f"request body is not valid UTF-8: {err}", "invalid_request_error"
            )
        try:
            req = openai.parse(body, kind)
            req.check()  # ranges, refused fields, schemas: a 400 before any wake or hop
        except openai.RequestError as err:
            return openai.error(400, str(err), "invalid_request_error", param=err.param)
        name = req.model
        request[MODEL_KEY] = name  # the metrics middleware counts per model
        self.last_request = time.monotonic()
        model = self.models.get(name)
        paused = model is not None and model.unit in self.paused
        hop = FORWARDED_BY in request.headers  # one hop at most: never pass a request on twice
        if (model is None or paused or model.full()) and self.cluster is not None and not hop:
            for peer in self.cluster.peers_serving(name):
                resp = await self._to_peer(request, peer, body)
                if resp is not None:
                    return resp
        if model is None:
            asleep = self.cluster.wake(name) if self.cluster is not None and not hop else []
            if asleep:  # only suspended nodes serve it: they are being woken
                return openai.error(
                    503,
                    f"model '{name}' is on suspended node(s) {', '.join(asleep)}, which are"
                    " being woken; retry shortly",
                    "model_unavailable",
                    param="model",
                    code="model_unavailable",
                    headers={"Retry-After": "15"},
                )
            if hop or (self.cluster is not None and self.cluster.knows_model(name)):
                return _unavailable(name, "no live node with room serves it")
            return _not_found(name)
        if paused:
            return _unavailable(name, "paused while the GPU cools down")
        streaming = not isinstance(req, openai.EmbeddingRequest) and req.stream is True
        if self.sleeper is None:
            return await self._serve(request, model, body, streaming)
        self.sleeper.begin(model.unit)  # from here on it is in use: nothing puts it to sleep
        try:
            return await self._serve(request, model, body, streaming)
        finally:
            self.sleeper.end(model.unit)

    async def _body(self, request: web.Request) -> bytes | web.Response:
        """The whole body (to EOF, however it was split), or the error answer: too big, too slow."""
        limit = self.config.inference.max_body_bytes

        def too_big() -> web.Response:
            return openai.error(413, f"request body over {limit} bytes", "invalid_request_error")

        if request.content_length is not None and request.content_length > limit:
            return too_big()
        body = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):  # a client trickling its body is cut off
                async for piece in request.content.iter_any():
                    body += piece
                    if len(body) > limit:
                        return too_big()
        except TimeoutError:
            return openai.error(
                408,
                f"request body not received within {BODY_TIMEOUT_S:g} s",
                "invalid_request_error",
            )
        except RequestPayloadError as err:  # e.g. a gzip body that does not decompress
            return openai.error(400, f"request body is malformed: {err}", "invalid_request_error")
        return bytes(body)

    async def _serve(
        self, request: web.Request, model: Model, body: bytes, streaming: bool
    ) -> web.StreamResponse:
        """Wake the worker if it sleeps (a streaming client hears why it waits), then forward."""
        seen = model.known()
        if seen.restarting:  # failed, in its restart backoff: say why now
            return _unavailable(model.cfg.name, seen.reason or "failed")
        if _ready(model):
            return await self._forward(request, model, body)
        resp = None
        keepalive = None
        if streaming:  # the answer is an event stream anyway: start it, and say we are waking
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            request[_STARTED] = resp
            await resp.prepare(request)
            keepalive = asyncio.create_task(self._keepalive(resp, model.cfg.name))
        try:
            why = await self._wake(model)
        finally:
            if keepalive is not None:  # it may also have ended on its own: the client left
                keepalive.cancel()
                await asyncio.gather(keepalive, return_exceptions=True)
        if why:
            if resp is None:
                return _unavailable(model.cfg.name, why)
            await _sse_error(resp, _unavailable_error(model.cfg.name, why))
            return resp
        return await self._forward(request, model, body, resp)

    async def _wake(self, model: Model) -> str:
        """'' once the worker is ready, else why it is not."""
        timeout = model.cfg.startup_timeout
        assert self.sleeper is not None
        try:
            await self.sleeper.wake(model.unit, timeout)
        except TimeoutError:
            return f"not ready after {timeout:g} s"
        except UnitError as err:
            return str(err)
        return ""

    async def probe(self, name: str, wake: bool = True) -> str:
        """'' when the model answers a one-token request, else why not.

        wake=True (the generation gate): a sleeping worker is woken, and the probe counts as
        use. wake=False (the healer's checks): only an awake worker is asked, and the probe is
        not use, so it never keeps a worker from sleeping.
        """
        model = self.models[name]
        if model.unit in self.paused:
            return ""  # stopped while the GPU cools: not this check's business
        if not wake:
            if not _awake(model):
                return ""  # asleep, or being put to sleep: nothing to ask
            with _probing(model):
                why = await self._ask(model)
            stats = model.stats
            busy = stats.active or stats.queued
            if why and busy and (stats.stalled_seconds or 0.0) < self.config.heal.stall_timeout:
                return ""  # slow because it is busy, not hung: its decode steps go on
            return why
        if self.sleeper is not None:
            self.sleeper.begin(model.unit)
        try:
            seen = model.known()
            if seen.restarting:  # failed, in its restart backoff: starting it only waits
                return seen.reason or "failed"
            if not _ready(model) and (why := await self._wake(model)):
                return why
            return await self._ask(model)
        finally:
            if self.sleeper is not None:
                self.sleeper.end(model.unit)

    async def _ask(self, model: Model) -> str:
        name = model.cfg.name
        try:
            doc: dict[str, str | int]
            if model.cfg.kind is ModelKind.ONNX or model.cfg.embedding:
                path, doc = "/v1/embeddings", {"model": name, "input": "probe"}
            else:
                path, doc = "/v1/completions", {"model": name, "prompt": "probe", "max_tokens": 1}
            timeout = aiohttp.ClientTimeout(total=self.config.heal.probe_timeout)
            async with model.session.post(f"http://worker{path}", json=doc, timeout=timeout) as r:
                if r.status != 200:
                    return f"the probe got {r.status}: {(await r.text())[:200]}"
            return ""
        except (aiohttp.ClientError, TimeoutError) as err:
            return f"the probe failed: {err or type(err).__name__}"

    async def _keepalive(self, resp: web.StreamResponse, name: str) -> None:
        """SSE comment lines (ignored by clients) while the worker wakes."""
        while True:
            await resp.write(f": waking {name}\n\n".encode())
            await asyncio.sleep(WAKE_KEEPALIVE_S)

    async def _to_peer(
        self, request: web.Request, peer: Peer, body: bytes
    ) -> web.StreamResponse | None:
        """Relay to a peer's front; None if it cannot be reached (the caller tries the next)."""
        assert self.cluster is not None
        if self._peers is None:
            self._peers = aiohttp.ClientSession(
                # Idle connections go before the peer's header timeout would close them.
                connector=aiohttp.TCPConnector(keepalive_timeout=HEADER_TIMEOUT_S / 2),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=PEER_CONNECT_TIMEOUT_S),
            )
        host = f"[{peer.host}]" if ":" in peer.host else peer.host
        me = self.cluster.name
        headers = {
            "Content-Type": "application/json",
            # Signed for this one request: a captured header opens nothing else, and only once.
            "Authorization": self.cluster.keyring.sign_request(
                "POST", request.path, me, peer.name, time.time()
            ),
            FORWARDED_BY: me,
        }
        local = self.models.get(request.get(MODEL_KEY, ""))
        deadline = aiohttp.ClientTimeout(
            total=local.cfg.request_timeout if local else REQUEST_TIMEOUT_S
        )

        async def hop() -> web.StreamResponse:
            async with self._peers.post(  # type: ignore[union-attr]
                f"http://{host}:{peer.api_port}{request.path}",
                data=body,
                headers=headers,
                timeout=deadline,
            ) as upstream:
                self.forwarded += 1
                return await self._relay(request, upstream)

        try:
            return await self._while_live(peer.name, hop())
        # TimeoutError and the gossip watch's ConnectionError are OSErrors; a ClientPayloadError
        # is an answer cut off mid-body (the peer died or hung up).
        except (aiohttp.ClientError, OSError) as err:
            if (started := _started(request)) is not None:  # a side hung up mid-stream
                return await self._broke_off(request, started, f"peer {peer.name}", err)
            log.warning("peer %s unreachable for %s: %s", peer.name, request.path, err)
            return None

    async def _while_live(
        self, name: str, work: Coroutine[Any, Any, web.StreamResponse]
    ) -> web.StreamResponse:
        """Await a hop to peer `name`, given up once gossip no longer holds the peer alive.

        A peer that freezes or loses power mid-request never closes the connection; gossip
        finds it suspect within seconds, and the request ends then, not at its deadline.
        """
        assert self.cluster is not None
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=PEER_WATCH_S)
                if done:
                    return task.result()
                if not self.cluster.is_alive(name):
                    raise ConnectionError(f"peer {name} is no longer alive (gossip)")
        finally:
            task.cancel()  # done already, or given up, or this handler was cancelled

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        resp: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """Stream an upstream answer back to the client as it arrives.

        `resp`: an event stream already started (a wake was announced on it); an error answer
        then arrives as an SSE error event carrying the upstream's error object unchanged, since
        the status line is gone.
        """
        if resp is not None:
            if upstream.status != 200:
                await _sse_error(resp, _carried(upstream.status, await upstream.read()))
                return resp
        else:
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

    async def _forward(
        self,
        request: web.Request,
        model: Model,
        body: bytes,
        resp: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        # A hung worker (stopped, deadlocked) must not hold the client for ever: the healer's
        # probe restarts it within about a minute, and no call outlives request_timeout.
        deadline = aiohttp.ClientTimeout(total=model.cfg.request_timeout)
        try:
            async with model.session.post(
                f"http://worker{request.path}",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=deadline,
            ) as upstream:
                return await self._relay(request, upstream, resp)
        except TimeoutError:
            why = f"no answer within request_timeout ({model.cfg.request_timeout:g} s)"
            log.warning("model %s: %s", model.cfg.name, why)
            message = f"model '{model.cfg.name}': {why}"
            if resp is not None or (resp := _started(request)) is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await _sse_error(resp, _error_object(message, "timeout", "timeout"))
                return resp
            return openai.error(504, message, "timeout", code="timeout")
        # A ClientPayloadError is an answer cut off mid-body: the worker died (or was killed).
        except (aiohttp.ClientError, OSError) as err:
            if (started := _started(request)) is not None:
                if resp is None:  # the worker's own answer was under way
                    return await self._broke_off(request, started, f"model {model.cfg.name}", err)
                # Our own event stream (a wake was announced): say what failed.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await _sse_error(resp, _unavailable_error(model.cfg.name, str(err)))
                return resp
            model.health = None  # what it last said of itself is stale now
            return _unavailable(model.cfg.name, str(err))

    async def _broke_off(
        self, request: web.Request, resp: web.StreamResponse, source: str, err: BaseException
    ) -> web.StreamResponse:
        """End an answer whose status line went out when its source failed mid-body.

        An event stream ends with an SSE error event and `data: [DONE]`, so the client learns
        the answer is incomplete; any other body is cut off (the connection closed without its
        last chunk), so a client never takes a truncated body for a whole one. Nothing is
        written after the status line but the body: aiohttp would otherwise send a second one.
        """
        transport = request.transport
        if transport is None or transport.is_closing():  # the client hung up: nobody to tell
            log.info("%s: the client left mid-answer (%s)", source, err)
            return resp
        self.streams_broken += 1
        log.warning("%s: the answer broke off mid-body: %s", source, err or type(err).__name__)
        if resp.content_type != "text/event-stream":
            transport.abort()
            return resp
        message = f"{source} broke off mid-answer: {err or type(err).__name__}"
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client left meanwhile
            await _sse_error(resp, _error_object(message, "server_error", "stream_interrupted"))
        return resp

    def routes(self) -> list[web.RouteDef]:
        """The OpenAI API's route table, relative to openai.PREFIX (openai.create_app serves it)."""
        return [
            web.get("/models", self.list_models),
            web.get("/models/{model}", self.get_model),
            web.post("/chat/completions", self._proxy(openai.ChatRequest)),
            web.post("/completions", self._proxy(openai.CompletionRequest)),
            web.post("/embeddings", self._proxy(openai.EmbeddingRequest)),
        ]


def _ready(model: Model) -> bool:
    """Whether the worker can take a request now (else it has to be woken, or waited for)."""
    if model.sleepable is not None and model.sleepable.stopping:
        return False  # going to sleep: the request waits for the stop, then wakes it
    # Not known yet: a socket-activated worker, which the request's connection starts.
    return phase_of(model.known().state) in (Phase.AWAKE, Phase.UNKNOWN)


def _awake(model: Model) -> bool:
    """Known to be up, and not being put to sleep: what health requests may be sent to."""
    return phase_of(model.known().state) is Phase.AWAKE and _ready(model)


@contextlib.contextmanager
def _probing(model: Model) -> Iterator[None]:
    """A health request in flight: the sleeper lets it finish before stopping the worker."""
    s = model.sleepable
    if s is not None:
        s.probe_began()
    try:
        yield
    finally:
        if s is not None:
            s.probe_ended()


def _model_object(model: Model) -> dict[str, str | int]:
    """OpenAI's Model object for a model configured here."""
    return {"id": model.cfg.name, "object": "model", "created": model.created, "owned_by": "cairn"}


def _not_found(name: str) -> web.Response:
    """404 in OpenAI's shape: no such model."""
    return openai.error(
        404,
        f"The model '{name}' does not exist",
        "invalid_request_error",
        param="model",
        code="model_not_found",
    )


def _unavailable(name: str, why: str) -> web.Response:
    """503 in OpenAI's shape, naming the model and why."""
    return openai.error(
        503,
        f"model '{name}' is unavailable: {why}",
        "model_unavailable",
        param="model",
        code="model_unavailable",
        headers={"Retry-After": "5"},
    )


def _error_object(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object, for a stream whose status line already went out."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _unavailable_error(name: str, why: str) -> dict[str, Any]:
    """What _unavailable says, as an error object inside a stream."""
    message = f"model '{name}' is unavailable: {why}"
    return _error_object(message, "model_unavailable", "model_unavailable", "model")


def _carried(status: int, body: bytes) -> dict[str, Any]:
    """An upstream's error answer as the error object to stream: its own, unchanged."""
    with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        doc = msgspec.json.decode(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return doc
    text = body.decode(errors="replace")[:500]
    return _error_object(f"upstream answered {status}: {text}", "server_error", None)


async def _sse_error(resp: web.StreamResponse, doc: dict[str, Any]) -> None:
    """An error inside an event stream whose status line already went out, then its end."""
    await resp.write(b"data: " + msgspec.json.encode(doc) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
