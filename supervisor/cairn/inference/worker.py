"""The model worker process: loads one model, serves OpenAI endpoints on a unix socket."""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from cairn.config import Config, ModelConfig, ModelKind
from cairn.inference import grammars, openai, pinning, tools
from cairn.inference.chat import ChatTemplate, TemplateError
from cairn.inference.types import (
    Chunk,
    EngineStats,
    ModelLoadError,
    ModelState,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    TokenLogprob,
    TooManyTokens,
    WorkerHealth,
)
from cairn.system.sdnotify import Notifier

log = logging.getLogger(__name__)

SUPERVISOR_PID_ENV = "CAIRN_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1
RETRY_AFTER_S = "1"


class Generator(Protocol):
    """What the worker needs of a text engine (LlamaEngine)."""

    gpu_offload: bool
    chat_template: ChatTemplate

    def generate(self, prompt: str, params: SamplingParams) -> AsyncGenerator[Chunk, None]: ...
    def stats(self) -> EngineStats: ...
    def close(self) -> None: ...


class Embedder(Protocol):
    """What the worker needs of an embedding engine (OnnxEmbedder)."""

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]: ...


class Worker:
    """One loaded model and the counters /health reports."""

    def __init__(self, model: ModelConfig, cores: list[int]) -> None:
        self.model = model
        self.cores = cores
        self.generator: Generator | None = None
        self.embedder: Embedder | None = None
        self.load_seconds = 0.0
        self.device = "cpu"
        self.device_reason = ""
        self._cold = True  # the first request after start pays the load; its timings say so
        # One thread for every embedding call: each thread calling into llama.cpp (or
        # onnxruntime) gets its own OpenMP pool, and several pools fight over the cores.
        # It runs where libgomp put the loading thread, cores[0]: the event loop's thread
        # leaves the compute cores after the load, and this one is started later.
        self.embed_thread = ThreadPoolExecutor(
            1, thread_name_prefix="embed", initializer=_bind, initargs=(cores[:1],)
        )

    def load(self) -> None:
        """Load the model (blocking); raises ModelLoadError."""
        t0 = time.monotonic()
        m = self.model
        if m.kind is ModelKind.GGUF and m.embedding:
            from cairn.inference.llama_embedder import LlamaEmbedder  # after the OMP env is set

            layers, self.device_reason = gpu_layers(m.gpu_layers)
            self.embedder = LlamaEmbedder(
                m.path, n_ctx=m.context, n_threads=m.threads, n_gpu_layers=layers
            )
        elif m.kind is ModelKind.GGUF:
            from cairn.inference.llama_engine import LlamaEngine  # after the OMP env is set

            layers, self.device_reason = gpu_layers(m.gpu_layers)
            engine = LlamaEngine(
                m.path,
                n_ctx=m.context,
                n_threads=m.threads,
                n_gpu_layers=layers,
                n_batch=m.batch,
                slots=m.slots,
                queue_limit=m.queue,
            )
            engine.start()
            self.generator = engine
            self.device = "cuda" if engine.gpu_offload else "cpu"
        else:
            from cairn.inference.onnx_engine import OnnxEmbedder

            embedder = OnnxEmbedder(m.path, threads=m.threads, cores=self.cores or None)
            self.embedder = embedder
            self.device = "cuda" if embedder.providers[0].startswith("CUDA") else "cpu"
            self.device_reason = f"onnxruntime with {', '.join(embedder.providers)}"
        self.load_seconds = time.monotonic() - t0

    def take_cold(self) -> float:
        """Load seconds for the first request after start, 0 for every later one."""
        if self._cold:
            self._cold = False
            return self.load_seconds
        return 0.0

    def health(self) -> WorkerHealth:
        """What /health reports: model, device, pinning, engine counters."""
        return WorkerHealth(
            model=self.model.name,
            kind=self.model.kind,
            state=ModelState.READY,
            pid=os.getpid(),
            load_seconds=self.load_seconds,
            device=self.device,
            device_reason=self.device_reason,
            cores=self.cores,
            threads={str(t): c for t, c in pinning.thread_map(os.getpid()).items()},
            stats=self.generator.stats() if self.generator else EngineStats(),
        )


def _bind(cores: list[int]) -> None:
    """Keep the calling thread on `cores` (all of them where none are given)."""
    if cores:
        os.sched_setaffinity(0, cores)


def gpu_layers(wanted: int) -> tuple[int, str]:
    """Layers to offload, and why: NVML must see a GPU and llama.cpp must be built for it."""
    if wanted == 0:
        return 0, "gpu_layers = 0: CPU only"
    from cairn.system.gpu import Nvml

    nv = Nvml()
    nv.start()
    gpus, reason = nv.sample()
    nv.stop()
    if not gpus:
        return 0, f"no GPU, running on CPU ({reason})"
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return 0, "llama-cpp-python is built without GPU support, running on CPU"
    return wanted, f"offloading {wanted} layers to {gpus[0].name}"


WORKER = web.AppKey("worker", Worker)


def _sse(data: Any) -> bytes:
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


async def _first(gen: AsyncIterator[Chunk]) -> Chunk:
    """The first chunk; QueueFull surfaces here, before any response has started."""
    return await gen.__anext__()


def _busy(model: str) -> web.Response:
    return openai.error(
        429,
        f"model '{model}' is busy: every slot and queue place is taken; retry shortly",
        "server_busy",
        code="queue_full",
        headers={"Retry-After": RETRY_AFTER_S},
    )


@dataclass
class _Job:
    """One validated text request, ready for the engine."""

    prompt: str
    params: SamplingParams
    req: openai.ChatRequest | openai.CompletionRequest
    parser: tools.CallParser | None = None  # chat: splits the output into content and calls
    grammar_param: str | None = None  # the request field the grammar came from

    @property
    def chat(self) -> bool:
        return self.parser is not None


def _refused(job: _Job, err: ValueError) -> web.Response:
    """The engine's ValueError as a 400 naming the field the request got wrong."""
    chat = job.chat
    if isinstance(err, TooManyTokens):
        param: str | None = job.req.limit_param()
    elif isinstance(err, PromptTooLong):
        param = "messages" if chat else "prompt"
    else:
        param = getattr(err, "param", None)
        if param is None and job.params.grammar and "grammar" in str(err).lower():
            param = job.grammar_param
    code = "context_length_exceeded" if isinstance(err, PromptTooLong | TooManyTokens) else None
    return openai.error(400, str(err), "invalid_request_error", param=param, code=code)


def _finish(reason: str | None, called: bool) -> str:
    """OpenAI's finish_reason: "tool_calls" for an answer that ended by itself with calls.

    An answer cut by max_tokens says "length" even after a whole call: what came after it,
    perhaps another call, is missing.
    """
    return "tool_calls" if called and reason == "stop" else str(reason)


def _deltas(events: list[tools.Event]) -> list[dict[str, Any]]:
    """Parser events as chat.completion.chunk deltas, shaped as OpenAI streams tool calls."""
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, tools.Content):
            out.append({"content": e.text})
        elif isinstance(e, tools.CallStart):
            call = {"index": e.index, "id": e.id, "type": "function"}
            out.append({"tool_calls": [{**call, "function": {"name": e.name, "arguments": ""}}]})
        else:
            out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
    return out


async def _generate(request: web.Request, job: _Job) -> web.StreamResponse:
    worker = request.app[WORKER]
    assert worker.generator is not None
    name = worker.model.name
    chat, stream, parser = job.chat, bool(job.req.stream), job.parser
    include_usage = job.req.wants_usage()
    env = openai.Envelope(name, "chatcmpl" if chat else "cmpl", stream_usage=include_usage)
    want_lp = job.params.logprobs is not None
    offset = 0 if chat else len(job.prompt)  # completions' text_offset counts the prompt too
    gen = worker.generator.generate(job.prompt, job.params)
    try:
        try:
            chunk = await _first(gen)
        except QueueFull:
            return _busy(name)
        except ValueError as err:  # prompt or max_tokens too long, a grammar refused, ...
            return _refused(job, err)
        if not stream:
            parts, lps = [chunk.text], list(chunk.logprobs)
            while chunk.finish_reason is None:
                chunk = await gen.__anext__()
                parts.append(chunk.text)
                lps.extend(chunk.logprobs)
            extra = {"timings": openai.timings_json(chunk.timings, worker.take_cold())}
            text = "".join(parts)
            if parser is None:
                lp = openai.text_logprobs(lps, offset) if want_lp else None
                return _json(env.text(text, chunk, lp, extra))
            content, calls = tools.collect(parser.whole(text))
            message: dict[str, Any] = {"content": content}
            if calls:
                message["tool_calls"] = calls
            finish = _finish(chunk.finish_reason, bool(calls))
            lp = openai.chat_logprobs(lps) if want_lp else None
            return _json(env.chat(message, finish, chunk, lp, extra))
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        if chat:
            await resp.write(_sse(env.chat_chunk({"role": "assistant", "content": ""}, None)))
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text is still held back

        def logprobs() -> dict[str, Any] | None:
            nonlocal offset
            if not (want_lp and pending):
                return None
            lp = openai.chat_logprobs(pending) if chat else openai.text_logprobs(pending, offset)
            offset += sum(len(e.token) for e in pending)
            pending.clear()
            return lp

        while True:
            pending.extend(chunk.logprobs)
            if parser is not None:
                events = parser.feed(chunk.text)
                if chunk.finish_reason is not None:
                    events += parser.finish()
                for delta in _deltas(events):
                    await resp.write(_sse(env.chat_chunk(delta, None, logprobs())))
            elif chunk.text:
                await resp.write(_sse(env.text_chunk(chunk.text, None, logprobs())))
            if chunk.finish_reason is not None:
                break
            chunk = await gen.__anext__()
        if parser is not None:
            reason = _finish(chunk.finish_reason, parser.calls > 0)
            last = env.chat_chunk({}, reason, logprobs())
        else:
            last = env.text_chunk("", str(chunk.finish_reason), logprobs())
        last["timings"] = openai.timings_json(chunk.timings, worker.take_cold())
        await resp.write(_sse(last))
        if include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            await resp.write(_sse(env.usage_chunk(obj, chunk)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    finally:
        # On a client disconnect the handler is cancelled here; closing the generator takes
        # the sequence out of the batch and frees its slot.
        await gen.aclose()


def _json(body: dict[str, Any]) -> web.Response:
    return web.json_response(body, dumps=lambda o: msgspec.json.encode(o).decode())


def _bad_request(err: openai.RequestError) -> web.Response:
    return openai.error(400, str(err), "invalid_request_error", param=err.param)


def _function_tool(tool: openai.Tool) -> dict[str, Any]:
    """A tools entry as OpenAI's JSON (unset fields left out), what templates expect."""
    f = tool.function
    function: dict[str, Any] = {"name": f.name}
    if f.description is not None:
        function["description"] = f.description
    if f.parameters is not None:
        function["parameters"] = f.parameters
    return {"type": "function", "function": function}


def chat_job(req: openai.ChatRequest, template: ChatTemplate) -> _Job:
    """Render a checked chat request's prompt and build its sampling settings."""
    fmt = template.tool_format
    offered = [_function_tool(t) for t in req.tools or []]
    choice, named = req.choice()
    try:
        plan = tools.plan(
            fmt,
            offered,
            choice,
            named=named,
            parallel=req.parallel_tool_calls is not False,
            answer=req.answer_schema(),
        )
    except grammars.SchemaError as err:  # what check() let through but the converter refused
        raise openai.RequestError(str(err), "tools" if offered else "response_format") from None
    messages = tools.template_messages([m.template() for m in req.messages], fmt, plan.system)
    try:
        prompt = template.render(messages, plan.template_tools)
    except TemplateError as err:
        raise openai.RequestError(str(err), "messages") from None
    return _Job(
        prompt=prompt,
        params=req.sampling(plan.grammar, plan.triggers),
        req=req,
        parser=tools.CallParser(fmt, plan.names),
        grammar_param="tools" if plan.names else "response_format",
    )


async def _text(
    request: web.Request, kind: type[openai.ChatRequest] | type[openai.CompletionRequest]
) -> web.StreamResponse:
    worker = request.app[WORKER]
    try:
        req = openai.parse(await request.read(), kind)
        if worker.generator is None:
            raise openai.RequestError(
                f"model '{worker.model.name}' serves embeddings only", "model"
            )
        req.check()
        if isinstance(req, openai.ChatRequest):
            job = chat_job(req, worker.generator.chat_template)
        else:
            job = _Job(prompt=req.text(), params=req.sampling(), req=req)
    except openai.RequestError as err:
        return _bad_request(err)
    return await _generate(request, job)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions."""
    return await _text(request, openai.ChatRequest)


async def completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/completions."""
    return await _text(request, openai.CompletionRequest)


async def embeddings(request: web.Request) -> web.Response:
    """POST /v1/embeddings."""
    worker = request.app[WORKER]
    try:
        req = openai.parse(await request.read(), openai.EmbeddingRequest)
        req.check()
        if worker.embedder is None:
            raise openai.RequestError(
                f"model '{worker.model.name}' is not an embedding model", "model"
            )
    except openai.RequestError as err:
        return _bad_request(err)
    t0 = time.monotonic()
    try:
        vectors, tokens = await asyncio.get_running_loop().run_in_executor(
            worker.embed_thread, worker.embedder.embed, req.texts()
        )
    except ValueError as err:  # an empty input
        return _bad_request(openai.RequestError(str(err), "input"))
    # The official client asks for base64: little-endian float32, as OpenAI sends it.
    encode: Callable[[list[float]], Any] = (
        (lambda v: base64.b64encode(array.array("f", v).tobytes()).decode())
        if req.encoding_format == "base64"
        else (lambda v: v)
    )
    body = {
        "object": "list",
        "model": worker.model.name,
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "timings": {
            "queue": 0.0,
            "load": worker.take_cold(),
            "prompt": time.monotonic() - t0,
            "generation": 0.0,
        },
    }
    return _json(body)


async def health(request: web.Request) -> web.Response:
    """GET /health: the worker's own view."""
    health = request.app[WORKER].health()
    return web.json_response(health, dumps=lambda o: msgspec.json.encode(o).decode())


@web.middleware
async def errors_as_openai(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unexpected failures answer 500 in OpenAI's shape; the trace goes to the log only."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return openai.error(500, "internal error in the model worker; see its log", "server_error")


def create_app(worker: Worker) -> web.Application:
    """The worker's internal HTTP app (reached only through the supervisor's front)."""
    app = web.Application(client_max_size=64 << 20, middlewares=[errors_as_openai])
    app[WORKER] = worker
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


def listening_socket(path: str | None) -> socket.socket:
    """The socket systemd passed (socket activation), else one bound at `path`."""
    from systemd import daemon

    fds = daemon.listen_fds()
    if fds:
        return socket.socket(fileno=fds[0])
    if path is None:
        raise SystemExit("cairn worker: no socket from systemd and no --socket PATH")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(p))
    sock.listen(128)
    return sock


async def serve(worker: Worker, sock: socket.socket, notifier: Notifier) -> None:
    """Serve on `sock` until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # handler_cancellation: a client that hangs up cancels its handler, and with it the
    # generation (see _generate's finally).
    runner = web.AppRunner(create_app(worker), handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        notifier.send(f"READY=1\nSTATUS=serving {worker.model.name} on {worker.device}")
        log.info("serving %s (%s) on %s", worker.model.name, worker.device, sock.getsockname())
        watchdog = asyncio.create_task(notifier.watchdog())
        await stop.wait()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    finally:
        notifier.send("STOPPING=1")
        await runner.cleanup()
        if worker.generator is not None:
            worker.generator.close()


def die_with_supervisor() -> None:
    """A standalone worker ends when its supervisor does, even one killed with SIGKILL."""
    parent = os.environ.get(SUPERVISOR_PID_ENV)
    if not parent:
        return  # under systemd the unit's lifecycle is systemd's business
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != int(parent):  # it died before prctl took effect
        raise SystemExit(1)


def main(config: Config, name: str, socket_path: str | None) -> int:
    """Entry point of `cairn worker`: pin, load, notify, serve."""
    die_with_supervisor()
    notifier = Notifier()
    model = config.model(name)
    if model is None:
        notifier.send(f"STATUS=failed: no model '{name}' in the config")
        log.error("no model %r in the config", name)
        return 2
    try:
        cores = (
            pinning.plan(pinning.resolve_cpus(model.cpus), model.threads)
            if (model.cpus is not None)
            else []
        )
    except ValueError as err:
        notifier.send(f"STATUS=failed: {err}")
        log.error("cannot pin %s: %s", name, err)
        return 2
    start_mask = sorted(os.sched_getaffinity(0))
    # OpenMP reads its binding once, when libgomp loads: set it before any engine import.
    if cores:
        os.environ.update(pinning.omp_environment(cores))
    sock = listening_socket(socket_path)
    notifier.send(f"STATUS=loading {model.path}")
    worker = Worker(model, cores)
    try:
        worker.load()
    except ModelLoadError as err:
        notifier.send(f"STATUS=failed: {err}")
        log.error("cannot load %s: %s", name, err)
        return 1
    if cores and (rest := pinning.leave_cores(start_mask, cores)):
        log.info("compute on cores %s; requests served from cores %s", cores, rest)
    log.info("loaded %s in %.2f s (%s)", name, worker.load_seconds, worker.device_reason)
    asyncio.run(serve(worker, sock, notifier))
    return 0
