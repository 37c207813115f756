"""Inference throughput and time-to-first-token: Cairn beside llama.cpp's and llama-cpp-python's.

Run: `make bench-inference` (or `.venv/bin/python -m tests.bench.inference [--quick]`); one run
does every phase below on both models, `--phases` and `--models` select.

Two generated random-weight llama models (`tiny`: 2 layers, dim 64, overhead-bound; `100m`:
12 layers, dim 768, f16, compute-bound), each served by the contestants with the same thread
count, slots and context per slot, all with their own defaults otherwise:

- cairn: `cairn run` (front API -> worker over a unix socket), `slots` parallel sequences;
- llama-server: llama.cpp's server built from the sources vendored in the installed
  llama-cpp-python's sdist (same llama.cpp commit), `-np slots`, continuous batching, `--jinja`
  (the model's own chat template), and `cache_prompt: true` in every chat request;
- llama-cpp-python: `python -m llama_cpp.server`, one sequence, requests served one at a time
  (`--interrupt_requests False`: by default a new request cuts the running stream short); its
  default repeat_penalty 1.1 can make its greedy text differ from the others';
- in-process: `llama_cpp.Llama` in a child process, no HTTP: the serial floor. Concurrent
  clients are threads queueing on one executor thread that runs every request in turn (FIFO),
  so at concurrency > 1 its TTFT includes the wait for the requests before.

Every contestant of a phase is started at once (idle ones sleep) and the phases are
interleaved: each runs `rounds` times, contestants taking turns in a rotating order, so slow
drift in the machine's speed (other load) spreads over all of them.

Phases:
- plain (all four, `--threads` threads, 512 tokens per slot; 4 slots for concurrency 1 and 4,
  8 for 8): /v1/completions, streaming, temperature 0; every request has its own ~32-token
  prompt (a distinct prefix, so no server reuses a cached prompt) and asks for `max_tokens`.
  `c` clients each send their requests back to back, after one short warm-up request.
  tokens/s: per round, all generated tokens / wall time (first send to last byte); the table
  shows the median round. TTFT: median over every request of every round, send -> first
  streamed text.
- agents (cairn and llama-server, `--threads` threads, 2048 tokens per slot;
  tests/bench/agents.py says exactly what is sent): `conversation`, 6 turns each resending
  the history plus the answer and a new user message, growing to ~1500 prompt tokens, TTFT per
  turn (4 slots); `shared`, 8 agents at once with one ~1000-token system prompt and their own
  user messages, aggregate tokens/s (8 slots); `json`, the same requests with and without
  `response_format` json_schema, decode tokens/s, every constrained answer validated (4 slots).
- legacy (cairn and llama-server): the deployed shape of a legacy node, the plain workload with
  1 compute thread pinned to one core (Cairn's model `cpus`) and Cairn's supervisor on the
  other core (`--legacy-cores`); llama-server runs wholly on the compute core (taskset), the
  load client on the other one; 2048 tokens per slot.

Tokens are counted the same way for everybody: the models' vocabulary is byte-level and
greedy decoding only emits printable ASCII, so one streamed byte is one token (checked against
`usage.completion_tokens` where the server sends it; short answers are reported).

The llama-server binary is built once (~4 min on 2 cores) and cached, with the models and the
servers' logs, under ~/.cache/cairn/bench/. Each phase's error is printed in its cell; the
targets are printed with PASS/MISS; exit status 0 even when a target is missed: this is a
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import msgspec
import psutil

from cairn.inference import demo_gguf
from tests.bench import agents

CTX_PER_SEQ = 512  # context tokens per sequence in the plain phases, for every contestant
AGENT_CTX_PER_SEQ = 2048  # in the agent and legacy phases: room for ~1500-token prompts
START_TIMEOUT_S = 180.0
SETTLE_S = 3.0
# Cairn over llama-server (plain and legacy phases, at concurrency 1, 4 and 8)
TARGET_TPS = 1.0  # tokens/s at least
TARGET_TTFT = 1.05  # time to first token at most
TARGET_C4 = 2.0  # concurrency 4: Cairn's tokens/s over llama-cpp-python's server's
TARGET_TURN_TTFT = 1.1  # the conversation's last turn: TTFT at most
TARGET_SHARED = 1.0  # the shared system prompt: aggregate tokens/s at least
TARGET_JSON = 0.9  # Cairn's json_schema decode tokens/s over its own free text, at least
CAIRN = "cairn"
REFERENCE = "llama-server"
LCP = "llama-cpp-python"
IN_PROCESS = "in-process"
CONTESTANTS = (CAIRN, REFERENCE, LCP, IN_PROCESS)

# ~32 tokens with the byte-level vocabulary: 1 BOS + a 5-byte request number + 26 bytes.
PROMPT_TAIL = "the cairn stands on a hill"


@dataclass(frozen=True)
class ModelSpec:
    """A generated model and the workloads run on it."""

    key: str
    label: str
    kwargs: dict[str, Any]
    max_tokens: int
    requests: dict[int, int]  # concurrency -> requests per client in each round
    conversation: agents.Conversation = field(default_factory=agents.Conversation)
    shared: agents.Shared = field(default_factory=agents.Shared)
    json_requests: int = 2  # per round, each kind (free text, json_schema)
    json_max_tokens: int = 192  # room for a whole hiker object


@dataclass
class Cell:
    """One contestant at one concurrency."""

    tokens: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    requests: int = 0
    short: int = 0  # answers with fewer tokens than asked for
    usage_mismatch: int = 0  # answers whose usage.completion_tokens disagrees with the count
    first_text: str = ""  # the answer to the phase's first prompt, to compare contestants
    error: str = ""
    round_tps: list[float] = field(default_factory=list)  # each round's aggregate tokens/s

    @property
    def tps(self) -> float:
        """The median round's aggregate tokens/s: one hiccup of the machine does not count."""
        if self.round_tps:
            return statistics.median(self.round_tps)
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def ttft_ms(self) -> float:
        return 1000.0 * statistics.median(self.ttfts) if self.ttfts else 0.0


# ---- setup: cache, models, llama-server --------------------------------------------------


def cache_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cairn" / "bench"


def cpu_key() -> str:
    """The CPU's instruction-set flags, hashed: native builds are only valid on such a CPU."""
    with open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    return hashlib.md5(flags.encode()).hexdigest()[:12]


def ensure_model(cache: Path, spec: ModelSpec) -> Path:
    """Generate the model once; the file name changes when the generator or its sizes do."""
    digest = hashlib.sha256(
        inspect.getsource(demo_gguf).encode() + json.dumps(spec.kwargs, sort_keys=True).encode()
    ).hexdigest()[:12]
    path = cache / "models" / f"{spec.key}-{digest}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        tmp = path.with_suffix(".tmp")
        demo_gguf.write_tiny_llama(tmp, **spec.kwargs)
        tmp.replace(path)
        print(f"generated {path.name} in {time.monotonic() - t0:.1f} s", flush=True)
    return path


def ensure_llama_server(cache: Path, jobs: int) -> Path:
    """llama-server from the llama.cpp vendored in this llama-cpp-python's sdist, built once."""
    version = importlib.metadata.version("llama-cpp-python")
    binary = cache / f"llama-server-{version}-{cpu_key()}" / "llama-server"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second run waits for the first one's build
        if binary.exists():
            return binary
        return build_llama_server(cache, version, binary, jobs)


def build_llama_server(cache: Path, version: str, binary: Path, jobs: int) -> Path:
    print(f"building llama-server from the llama-cpp-python {version} sdist (once, minutes)")
    work = cache / "build-tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "build.log"
    try:
        with open(log, "w") as out:

            def step(*cmd: str | Path) -> None:
                print("  $", " ".join(map(str, cmd)), flush=True)
                subprocess.run(list(map(str, cmd)), check=True, stdout=out, stderr=out)

            step(
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                work,
                f"llama-cpp-python=={version}",
            )
            sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
            prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
                tar.extractall(work, members=members, filter="data")
            src, build = work / prefix, work / "build"
            # No OpenSSL, no web UI (it would be downloaded), one static binary, tuned for this
            # CPU like the llama-cpp-python wheel (-march=native).
            step(
                "cmake",
                "-S",
                src,
                "-B",
                build,
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=OFF",
                "-DGGML_NATIVE=ON",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
            )
            step("cmake", "--build", build, "--target", "llama-server", f"-j{jobs}")
    except (subprocess.CalledProcessError, StopIteration) as err:
        raise SystemExit(f"building llama-server failed ({err}); see {log}") from err
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    shutil.copy2(work / "build" / "bin" / "llama-server", tmp)
    tmp.replace(binary)
    shutil.rmtree(work, ignore_errors=True)
    print(f"built {binary}", flush=True)
    return binary


# ---- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # polling period while the server loads
    raise RuntimeError(f"{url} not ready after {START_TIMEOUT_S:.0f} s; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL; then kill what is left of its process group (its workers)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group is ours alone


@contextlib.contextmanager
def server(
    name: str, cmd: list[str], ready_path: str, port: int, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start a server in its own process group; yield its base URL and process; always stop it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        wait_ready(base + ready_path, proc, log)
        print(f"    {name} ready in {time.monotonic() - t0:.1f} s", flush=True)
        yield base, proc
    finally:
        stop(proc)


class Runner(Protocol):
    """Runs one measured phase against a started contestant."""

    def phase(self, concurrency: int, per_client: int, max_tokens: int, base: int) -> Cell: ...


@dataclass
class HttpRunner:
    url: str
    extra: dict[str, Any] = field(default_factory=dict)  # added to every chat request's body

    def phase(self, concurrency: int, per_client: int, max_tokens: int, base: int) -> Cell:
        return asyncio.run(http_phase(self.url, concurrency, per_client, max_tokens, base))


@dataclass
class InProcessRunner:
    proc: subprocess.Popen[bytes]
    log: Path

    def phase(self, concurrency: int, per_client: int, max_tokens: int, base: int) -> Cell:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([concurrency, per_client, max_tokens, base]).encode())
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process child exited; see {self.log}")
        return msgspec.json.decode(line, type=Cell)


@dataclass(frozen=True)
class Shape:
    """How every contestant is started: compute threads, slots, context per slot, pinning."""

    threads: int
    slots: int = 4
    ctx_per_seq: int = CTX_PER_SEQ
    # The legacy node (housekeeping core, compute core): one compute thread alone on its core;
    # Cairn's supervisor (and this load client) on the other. The peer runs wholly on the
    # compute core (taskset), as a lone llama-server would be deployed.
    pin: tuple[int, int] | None = None

    @property
    def context(self) -> int:
        return self.slots * self.ctx_per_seq


@contextlib.contextmanager
def start_contestant(
    who: str, model: Path, shape: Shape, logs: Path, llama_server: Path
) -> Iterator[Runner]:
    port = free_port()
    pinned = f"-pin{shape.pin[1]}" if shape.pin else ""
    log = logs / f"{model.stem}-{who}-{shape.slots}x{shape.ctx_per_seq}{pinned}.log"
    if shape.pin and who not in (CAIRN, REFERENCE):
        raise ValueError(f"{who} has no pinned (legacy node) shape")
    if who == CAIRN:
        with tempfile.TemporaryDirectory(prefix="cairn-bench-") as tmp:
            cfg = Path(tmp) / "cairn.json"
            model_doc: dict[str, Any] = {
                "name": "bench",
                "path": str(model),
                "kind": "gguf",
                "context": shape.context,
                "threads": shape.threads,
                "slots": shape.slots,
                "queue": 64,
            }
            if shape.pin:
                model_doc["cpus"] = [shape.pin[1]]
                # No sleep in mid-run: a worker spawned again would inherit the supervisor's
                # housekeeping core (see confine_supervisor).
                model_doc["idle_ttl"] = 3600
            doc = {
                "version": 1,
                "node": {"name": "bench", "state_dir": tmp},
                "api": {"host": "127.0.0.1", "port": port},
                "log": {"level": "warning"},
                "models": [model_doc],
            }
            cfg.write_text(json.dumps(doc))
            cmd = [sys.executable, "-m", "cairn", "run", "--config", str(cfg)]
            with server(who, cmd, "/readyz", port, log) as (url, proc):
                if shape.pin:
                    confine_supervisor(url, proc.pid, shape.pin)
                yield HttpRunner(url)
    elif who == REFERENCE:
        cmd = [
            str(llama_server), "-m", str(model), "-a", "bench",
            "-t", str(shape.threads), "-tb", str(shape.threads),
            "-np", str(shape.slots), "-c", str(shape.context),
            "--host", "127.0.0.1", "--port", str(port), "--no-webui", "--jinja",
        ]  # fmt: skip
        if shape.pin:
            cmd = ["taskset", "-c", str(shape.pin[1]), *cmd]
        with server(who, cmd, "/health", port, log) as (url, _):
            # llama-server's default already, said out loud: reuse the slot's cached prompt.
            yield HttpRunner(url, {"cache_prompt": True})
    elif who == LCP:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--model_alias", "bench", "--n_threads", str(shape.threads),
            "--n_threads_batch", str(shape.threads), "--n_ctx", str(shape.ctx_per_seq),
            "--interrupt_requests", "False",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        with server(who, cmd, "/v1/models", port, log) as (url, _):
            yield HttpRunner(url)
    elif who == IN_PROCESS:
        cmd = [
            sys.executable, "-m", "tests.bench.inference", "--in-process", str(model),
            "--threads", str(shape.threads), "--ctx-per-seq", str(shape.ctx_per_seq),
        ]  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                cwd=Path(__file__).resolve().parents[2],
            )
        try:
            yield InProcessRunner(proc, log)
        finally:
            stop(proc)
    else:
        raise ValueError(who)


def confine_supervisor(url: str, pid: int, pin: tuple[int, int]) -> None:
    """Cairn on the legacy node's shape: worker on the compute core, the rest on the other.

    The worker gets its core from its config (`cpus`): it binds its compute thread there, and
    the threads it starts later inherit that core. It inherits the supervisor's cores when it
    is spawned, so it is woken first, then the supervisor's threads move to the housekeeping
    core (threads the supervisor starts later inherit that). Where every thread of both may
    run is printed, so a shape that did not take is seen.
    """
    housekeeping, compute = pin
    body = json.dumps({"model": "bench", "prompt": "wake", "max_tokens": 1}).encode()
    wake = urllib.request.Request(
        url + "/v1/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(wake, timeout=START_TIMEOUT_S) as r:
        r.read()
    supervisor = psutil.Process(pid)
    for thread in supervisor.threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(thread.id, {housekeeping})
    where = {"supervisor": masks(supervisor)}
    for child in supervisor.children(recursive=True):
        where[f"worker {child.pid}"] = masks(child)
    print(f"    cairn's threads (cores: threads): {where}", flush=True)
    for name, got in where.items():
        want = housekeeping if name == "supervisor" else compute
        if set(got) != {str(want)}:
            print(f"  ! cairn's {name} is not confined to core {want}: {got}", flush=True)


def masks(proc: psutil.Process) -> dict[str, int]:
    """How many of proc's threads may run on each set of cores."""
    out: dict[str, int] = {}
    for thread in proc.threads():
        with contextlib.suppress(ProcessLookupError):
            cores = ",".join(map(str, sorted(os.sched_getaffinity(thread.id))))
            out[cores] = out.get(cores, 0) + 1
    return out


# ---- the load client ---------------------------------------------------------------------


def prompt(i: int) -> str:
    return f"{i:05d} {PROMPT_TAIL}"


@dataclass
class Answer:
    ttft: float
    tokens: int
    usage: int | None
    text: str


async def one_request(
    session: aiohttp.ClientSession, url: str, text: str, max_tokens: int
) -> Answer:
    body = agents.request_body(max_tokens, prompt=text)
    sent = time.monotonic()
    ttft = 0.0
    parts: list[str] = []
    usage: int | None = None
    async for doc in agents.events(session, url + "/v1/completions", body):
        for choice in doc.get("choices") or ():
            piece = choice.get("text") or ""
            if piece:
                if not parts:
                    ttft = time.monotonic() - sent
                parts.append(piece)
        if doc.get("usage"):
            usage = doc["usage"].get("completion_tokens")
    out = "".join(parts)
    return Answer(ttft, len(out.encode()), usage, out)


def tally(answers: list[list[Answer]], seconds: float, max_tokens: int) -> Cell:
    cell = Cell(seconds=seconds, first_text=answers[0][0].text)
    for a in (a for client in answers for a in client):
        cell.requests += 1
        cell.tokens += a.tokens
        cell.ttfts.append(a.ttft)
        cell.short += a.tokens < max_tokens
        cell.usage_mismatch += a.usage is not None and a.usage != a.tokens
    return cell


async def http_phase(
    url: str, concurrency: int, per_client: int, max_tokens: int, base: int
) -> Cell:
    async with agents.client_session(concurrency) as session:
        await one_request(session, url, prompt(base + 999), min(max_tokens, 8))  # warm-up

        async def client(c: int) -> list[Answer]:
            return [
                await one_request(session, url, prompt(base + c * per_client + k), max_tokens)
                for k in range(per_client)
            ]

        t0 = time.monotonic()
        answers = await asyncio.gather(*(client(c) for c in range(concurrency)))
        seconds = time.monotonic() - t0
    return tally(answers, seconds, max_tokens)


def in_process_child(model: Path, threads: int, ctx_per_seq: int) -> None:
    """The in-process contestant (--in-process): one Llama on one thread, c client threads.

    Reads phases as JSON lines on stdin, answers one Cell per line on stdout. Every llama call
    runs on the same single thread (a FIFO executor), as in a serial server: libgomp keeps a
    thread team per calling thread, and with several live teams on 2 cores it stops spinning
    and every decode pays for waking its worker (measured: up to 5x slower on the tiny model).
    """
    results_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever llama.cpp prints goes to the log, not into the answers
    import llama_cpp

    llama = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
    llm = llama.submit(
        llama_cpp.Llama,
        str(model),
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=ctx_per_seq,
        verbose=False,
    ).result()

    def generate(text: str, n: int, sent: float) -> Answer:
        ttft = 0.0
        parts: list[str] = []
        stream = llm.create_completion(text, max_tokens=n, temperature=0.0, stream=True)
        for chunk in stream:
            piece: str = chunk["choices"][0]["text"]  # type: ignore[index]
            if piece:
                if not parts:
                    ttft = time.monotonic() - sent
                parts.append(piece)
        out = "".join(parts)
        return Answer(ttft, len(out.encode()), None, out)

    def run(text: str, n: int) -> Answer:
        # TTFT counts from the submission: waiting for the requests before is part of it.
        return llama.submit(generate, text, n, time.monotonic()).result()

    def client(first: int, count: int, max_tokens: int, into: list[Answer]) -> None:
        into.extend(run(prompt(first + k), max_tokens) for k in range(count))

    for line in sys.stdin:
        concurrency, per_client, max_tokens, base = json.loads(line)
        run(prompt(base + 999), min(max_tokens, 8))  # warm-up
        answers: list[list[Answer]] = [[] for _ in range(concurrency)]
        workers = [
            threading.Thread(
                target=client, args=(base + c * per_client, per_client, max_tokens, answers[c])
            )
            for c in range(concurrency)
        ]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        cell = tally(answers, time.monotonic() - t0, max_tokens)
        results_out.write(msgspec.json.encode(cell).decode() + "\n")
        results_out.flush()
    llama.shutdown()


# ---- the run -----------------------------------------------------------------------------

ERRORS = (RuntimeError, OSError, aiohttp.ClientError, TimeoutError, ValueError)


def merge(into: Cell, cell: Cell) -> None:
    into.tokens += cell.tokens
    into.seconds += cell.seconds
    into.ttfts += cell.ttfts
    into.requests += cell.requests
    into.short += cell.short
    into.usage_mismatch += cell.usage_mismatch
    into.first_text = into.first_text or cell.first_text
    into.round_tps.append(cell.tps)


def start_all(
    stack: contextlib.ExitStack,
    contestants: tuple[str, ...],
    model: Path,
    shape: Shape,
    logs: Path,
    llama_server: Path,
) -> tuple[dict[str, Runner], dict[str, str]]:
    """Every contestant up at once (idle ones sleep): the runners, and why others did not start."""
    runners: dict[str, Runner] = {}
    failed: dict[str, str] = {}
    for who in contestants:
        try:
            runners[who] = stack.enter_context(
                start_contestant(who, model, shape, logs, llama_server)
            )
        except ERRORS as err:
            failed[who] = f"{who} did not start: {err}"
    time.sleep(SETTLE_S)  # let start-up work (first probes, health polls) pass
    return runners, failed


def rotated(names: list[str], r: int) -> list[str]:
    """Round r's order: who goes first rotates, so drift in the machine's speed evens out."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


@contextlib.contextmanager
def client_on(core: int | None) -> Iterator[None]:
    """Run this (load client) thread on one core meanwhile: the legacy node's other core."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def bench_model(
    spec: ModelSpec,
    model: Path,
    base: Shape,
    llama_server: Path,
    logs: Path,
    contestants: tuple[str, ...],
    rounds: int,
) -> dict[str, dict[int, Cell]]:
    """The plain phases: short distinct prompts at each concurrency, interleaved round by round."""
    levels = sorted(spec.requests)
    results = {who: {c: Cell() for c in levels} for who in contestants}
    # Batching servers get 4 slots for concurrency 1 and 4, and 8 for concurrency 8.
    groups: dict[int, list[int]] = {}
    for c in levels:
        groups.setdefault(max(4, min(c, 8)), []).append(c)
    phase_no = 0
    for slots, group in groups.items():
        with contextlib.ExitStack() as stack:
            shape = dataclasses.replace(base, slots=slots)
            runners, failed = start_all(stack, contestants, model, shape, logs, llama_server)
            for who, why in failed.items():
                for c in group:
                    results[who][c].error = why
            with client_on(base.pin[0] if base.pin else None):
                for c in group:
                    for r in range(rounds):
                        # The same prompts for every contestant in a round, new ones every round.
                        phase_no += 1
                        for who in rotated(list(runners), r):
                            if results[who][c].error:
                                continue
                            try:
                                cell = runners[who].phase(
                                    c, spec.requests[c], spec.max_tokens, base=phase_no * 1000
                                )
                            except ERRORS as err:
                                results[who][c].error = f"{type(err).__name__}: {err}"
                                continue
                            merge(results[who][c], cell)
                            print(
                                f"    c={c} round {r + 1}/{rounds} {who:<17} {cell.tps:8.1f}"
                                f" tok/s, TTFT {cell.ttft_ms:7.1f} ms ({cell.requests} requests,"
                                f" {cell.seconds:.1f} s)",
                                flush=True,
                            )
    return results


@dataclass
class AgentResults:
    """The agent phases of one model, per contestant."""

    conversation: dict[str, agents.Turns] = field(default_factory=dict)
    shared: dict[str, agents.Aggregate] = field(default_factory=dict)
    json: dict[str, dict[bool, agents.Decode]] = field(default_factory=dict)  # constrained?

    def cells(self, phase: str, who: str) -> list[agents.Turns | agents.Aggregate | agents.Decode]:
        """A contestant's result holders for one phase (each carries its own error)."""
        if phase == "conversation":
            return [self.conversation[who]]
        if phase == "shared":
            return [self.shared[who]]
        return list(self.json[who].values())


def bench_agents(
    spec: ModelSpec,
    model: Path,
    base: Shape,
    llama_server: Path,
    logs: Path,
    contestants: tuple[str, ...],
    rounds: int,
    phases: set[str],
) -> AgentResults:
    """Conversation and JSON on `base.slots` slots, the shared prompt on shared.agents slots."""
    who_all = tuple(w for w in contestants if w in (CAIRN, REFERENCE))
    res = AgentResults(
        conversation={w: agents.Turns() for w in who_all},
        shared={w: agents.Aggregate() for w in who_all},
        json={w: {False: agents.Decode(), True: agents.Decode()} for w in who_all},
    )
    groups: dict[int, list[str]] = {
        base.slots: [p for p in ("conversation", "json") if p in phases]
    }
    if "shared" in phases:
        groups.setdefault(max(spec.shared.agents, 1), []).append("shared")
    for slots, group in groups.items():
        if not group:
            continue
        with contextlib.ExitStack() as stack:
            shape = dataclasses.replace(base, slots=slots)
            runners, failed = start_all(stack, who_all, model, shape, logs, llama_server)
            for who, why in failed.items():
                for phase in group:
                    for cell in res.cells(phase, who):
                        cell.error = why
            for phase in group:
                for r in range(rounds):
                    for who in rotated(list(runners), r):
                        runner = runners[who]
                        assert isinstance(runner, HttpRunner)
                        for line in agent_round(phase, res, who, runner, spec, f"r{r + 1}"):
                            print(
                                f"    {phase} round {r + 1}/{rounds} {who:<13} {line}", flush=True
                            )
    return res


def agent_round(
    phase: str, res: AgentResults, who: str, runner: HttpRunner, spec: ModelSpec, tag: str
) -> list[str]:
    """One contestant's round of one agent phase: a line per measurement, or per error (which
    stays in its cell, and that cell is not run again)."""
    url, extra = runner.url, runner.extra
    jobs: list[tuple[str, Any, Callable[[], Any]]]  # label, result holder, measurement
    if phase == "conversation":
        conv = spec.conversation
        jobs = [("", res.conversation[who], lambda: agents.run_conversation(url, extra, conv, tag))]
    elif phase == "shared":
        shared = spec.shared
        jobs = [("", res.shared[who], lambda: agents.run_shared_prompt(url, extra, shared, tag))]
    else:
        jobs = [
            (
                "json_schema" if constrained else "free text",
                res.json[who][constrained],
                functools.partial(
                    agents.run_json,
                    url,
                    extra,
                    spec.json_requests,
                    spec.json_max_tokens,
                    constrained,
                    tag,
                ),
            )
            for constrained in (False, True)
        ]
    lines = []
    for label, holder, measure in jobs:
        if holder.error:
            continue
        try:
            lines.append(f"{label} {holder.add(measure())}".strip())
        except ERRORS as err:
            holder.error = f"{type(err).__name__}: {err}"
            lines.append(f"{label} ERROR {holder.error}".strip())
    return lines


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a > 0 and b > 0 else "n/a"


WIDTH = 19


def print_table(
    spec: ModelSpec, results: dict[str, dict[int, Cell]], title: str, rounds: int
) -> None:
    who = list(results)
    levels = sorted(spec.requests)
    ref = results.get(REFERENCE, {})
    print()
    print(
        f"== {spec.label}: {title}, prompt ~32 tokens, {spec.max_tokens} new tokens,"
        f" {rounds} rounds x requests per client {spec.requests}"
    )
    header = f"{'':<22}" + "".join(f"{w:>{WIDTH}}" for w in who)
    metrics: list[tuple[str, Callable[[Cell], float]]] = [
        ("tokens/s (aggregate)", lambda c: c.tps),
        ("TTFT median (ms)", lambda c: c.ttft_ms),
    ]
    for name, metric in metrics:
        print(f"{name} [ratio to {REFERENCE}]")
        print(header)
        for lvl in levels:
            row = f"{'concurrency ' + str(lvl):<22}"
            for w in who:
                got = results[w].get(lvl)
                if got is None or got.error:
                    row += f"{'ERROR':>{WIDTH}}"
                    continue
                base = ref.get(lvl)
                r = ratio(metric(got), metric(base)) if base and not base.error else "n/a"
                row += f"{f'{metric(got):.1f} [{r}]':>{WIDTH}}"
            print(row)
    for w in who:
        for lvl in levels:
            cell = results[w].get(lvl)
            if cell is None:
                continue
            if cell.error:
                print(f"  ! {w} c={lvl}: {cell.error}")
            if cell.short:
                print(f"  ! {w} c={lvl}: {cell.short}/{cell.requests} answers were short")
            if cell.usage_mismatch:
                print(f"  ! {w} c={lvl}: {cell.usage_mismatch} answers' usage != streamed count")
    base_text = ref.get(1, Cell()).first_text
    if base_text:
        same = [w for w in who if results[w].get(1, Cell()).first_text == base_text]
        print(f"  same greedy text as {REFERENCE} for the first prompt: {', '.join(same)}")


def cells(values: list[tuple[float, float]]) -> str:
    """Value [ratio to the first column's reference] cells; the reference is the last pair."""
    return "".join(f"{f'{v:.1f} [{ratio(v, ref)}]':>{WIDTH}}" for v, ref in values)


def print_agents(spec: ModelSpec, res: AgentResults, shape: Shape, rounds: int) -> None:
    who = list(res.conversation)
    header = "".join(f"{w:>{WIDTH}}" for w in who)
    conv, shared = spec.conversation, spec.shared
    print()
    print(
        f"== {spec.label}: agents, {shape.threads} threads, {shape.ctx_per_seq} tokens per slot,"
        f" {rounds} rounds; {REFERENCE} with cache_prompt"
    )
    print(
        f"conversation ({shape.slots} slots): {conv.turns} turns, each resending the history"
        f" + a {conv.user_bytes}-token message, {conv.answer_tokens}-token answers;"
        f" TTFT median (ms) [ratio to {REFERENCE}]"
    )
    print(f"{'turn (prompt tokens)':<22}{header}")
    ref = res.conversation.get(REFERENCE)
    for t in range(conv.turns):
        prompt = max((res.conversation[w].prompt_tokens(t) or 0 for w in who), default=0)
        label = f"{t + 1} ({prompt or '?'})"
        row = f"{label:<22}"
        for w in who:
            turns = res.conversation[w]
            if turns.error or t >= len(turns.replies):
                row += f"{'ERROR':>{WIDTH}}"
                continue
            base = ref.ttft_ms(t) if ref and not ref.error else 0.0
            row += cells([(turns.ttft_ms(t), base)])
        print(row)
    last = conv.turns - 1
    cached = ", ".join(f"{w} {res.conversation[w].cached_tokens(last)}" for w in who)
    print(f"  cached prompt tokens reported at turn {conv.turns} (None: not reported): {cached}")
    print(
        f"shared system prompt ({shared.agents} slots): {shared.agents} agents x"
        f" {shared.per_agent} requests, one {shared.system_bytes}-token system prompt,"
        f" {shared.answer_tokens}-token answers [ratio to {REFERENCE}]"
    )
    print(f"{'':<22}{header}")
    sref = res.shared.get(REFERENCE)
    metrics: list[tuple[str, Callable[[agents.Aggregate], float]]] = [
        ("tokens/s (aggregate)", lambda a: a.tps),
        ("TTFT median (ms)", lambda a: a.ttft_ms),
    ]
    for name, metric in metrics:
        row = f"{name:<22}"
        for w in who:
            agg = res.shared[w]
            base = metric(sref) if sref and not sref.error else 0.0
            row += f"{'ERROR':>{WIDTH}}" if agg.error else cells([(metric(agg), base)])
        print(row)
    print(
        f"JSON schema (1 client, {spec.json_requests} requests per round, up to"
        f" {spec.json_max_tokens} tokens): decode tokens/s [constrained over free text]"
    )
    print(f"{'':<22}{header}")
    for constrained, name in ((False, "free text"), (True, "json_schema")):
        row = f"{name:<22}"
        for w in who:
            cell, free = res.json[w][constrained], res.json[w][False]
            if cell.error:
                row += f"{'ERROR':>{WIDTH}}"
            elif constrained:
                row += cells([(cell.tps, free.tps if not free.error else 0.0)])
            else:
                row += f"{cell.tps:>{WIDTH}.1f}"
        print(row)
    for w in who:
        for phase, err in (
            ("conversation", res.conversation[w].error),
            ("shared", res.shared[w].error),
            ("json free text", res.json[w][False].error),
            ("json_schema", res.json[w][True].error),
        ):
            if err:
                print(f"  ! {w} {phase}: {err}")
        if res.shared[w].short:
            print(f"  ! {w} shared: {res.shared[w].short}/{res.shared[w].requests} answers short")
        invalid = res.json[w][True].invalid
        if invalid:
            print(f"  ! {w} json_schema: {len(invalid)} answers not valid, e.g. {invalid[0]}")


@dataclass
class ModelResults:
    plain: dict[str, dict[int, Cell]] | None = None
    legacy: dict[str, dict[int, Cell]] | None = None
    agents: AgentResults | None = None


@dataclass(frozen=True)
class Check:
    """A target: Cairn's ratio on the ~100M model (tiny beside), None where not measured."""

    text: str
    target: float
    big: float | None
    tiny: float | None
    at_least: bool  # the ratio must be >= target (else <=)


def plain_ratio(
    res: ModelResults | None, which: str, peer: str, c: int, ttft: bool
) -> float | None:
    table = getattr(res, which) if res else None
    mine, theirs = (table or {}).get(CAIRN, {}).get(c), (table or {}).get(peer, {}).get(c)
    if not mine or not theirs or mine.error or theirs.error:
        return None
    a, b = (mine.ttft_ms, theirs.ttft_ms) if ttft else (mine.tps, theirs.tps)
    return a / b if a > 0 and b > 0 else None


def plain_checks(big: ModelResults, tiny: ModelResults | None) -> list[Check]:
    checks = []
    for which, label in (("plain", "plain"), ("legacy", "legacy node")):
        for c in (1, 4, 8):
            for ttft, target, what in (
                (False, TARGET_TPS, "tokens/s"),
                (True, TARGET_TTFT, "TTFT"),
            ):
                checks.append(
                    Check(
                        f"{label}, concurrency {c}: {what} vs {REFERENCE}",
                        target,
                        plain_ratio(big, which, REFERENCE, c, ttft),
                        plain_ratio(tiny, which, REFERENCE, c, ttft),
                        at_least=not ttft,
                    )
                )
    checks.append(
        Check(
            f"plain, concurrency 4: tokens/s vs {LCP}",
            TARGET_C4,
            plain_ratio(big, "plain", LCP, 4, False),
            plain_ratio(tiny, "plain", LCP, 4, False),
            at_least=True,
        )
    )
    return checks


def turn_ratio(res: AgentResults | None) -> float | None:
    mine, peer = (res.conversation.get(w) if res else None for w in (CAIRN, REFERENCE))
    if not mine or not peer or mine.error or peer.error or not mine.replies:
        return None
    last = len(mine.replies) - 1
    a, b = mine.ttft_ms(last), peer.ttft_ms(last)
    return a / b if a > 0 and b > 0 else None


def shared_ratio(res: AgentResults | None) -> float | None:
    mine, peer = (res.shared.get(w) if res else None for w in (CAIRN, REFERENCE))
    if not mine or not peer or mine.error or peer.error:
        return None
    return mine.tps / peer.tps if mine.tps > 0 and peer.tps > 0 else None


def json_ratio(res: AgentResults | None) -> float | None:
    kinds = res.json.get(CAIRN) if res else None
    if not kinds or kinds[False].error or kinds[True].error or kinds[True].invalid:
        return None  # an invalid constrained answer has no constrained speed to speak of
    free, constrained = kinds[False].tps, kinds[True].tps
    return constrained / free if free > 0 and constrained > 0 else None


def check_targets(all_results: dict[str, ModelResults]) -> bool:
    big, tiny = all_results.get("100m"), all_results.get("tiny")
    if big is None:
        print("targets: the ~100M model was not run; nothing to check")
        return True
    big_a, tiny_a = big.agents, tiny.agents if tiny else None
    checks = [
        *plain_checks(big, tiny),
        Check(
            f"conversation, last turn: TTFT vs {REFERENCE}",
            TARGET_TURN_TTFT,
            turn_ratio(big_a),
            turn_ratio(tiny_a),
            at_least=False,
        ),
        Check(
            f"shared system prompt: tokens/s vs {REFERENCE}",
            TARGET_SHARED,
            shared_ratio(big_a),
            shared_ratio(tiny_a),
            at_least=True,
        ),
        Check(
            "json_schema (every answer valid): decode tokens/s vs free text",
            TARGET_JSON,
            json_ratio(big_a),
            json_ratio(tiny_a),
            at_least=True,
        ),
    ]
    print()
    print("== Targets on the ~100M model, Cairn's ratio (tiny beside: Cairn's own overhead)")
    ok = True
    for check in checks:
        bound = f"{'>=' if check.at_least else '<='} {check.target}x"
        if check.big is None:
            print(f"  n/a   {check.text} {bound}: not measured (see the errors above)")
            continue
        passed = check.big >= check.target if check.at_least else check.big <= check.target
        ok &= passed
        beside = f"{check.tiny:.2f}x" if check.tiny is not None else "n/a"
        print(
            f"  {'PASS' if passed else 'MISS'}  {check.text} {bound}: {check.big:.2f}x"
            f"   (tiny: {beside})"
        )
    if not ok:
        print()
        print("!" * 78)
        print("!!  TARGET MISSED: Cairn is below at least one target above.")
        print("!!  (exit status stays 0: this is a measurement; the logs are in the cache dir)")
        print("!" * 78)
    return ok


# requests: concurrency -> requests per client in each round.
MODELS = {
    "tiny": ModelSpec(
        "tiny", "tiny (2 layers, dim 64, f32, 0.16M params)", {}, 256, {1: 16, 4: 4, 8: 2}
    ),
    "100m": ModelSpec(
        "100m",
        "~100M (12 layers, dim 768, f16, 113.7M params)",
        {"layers": 12, "dim": 768, "heads": 12, "dtype": "f16"},
        64,
        {1: 6, 4: 2, 8: 2},
        json_requests=1,
    ),
}
ROUNDS = 3
QUICK_AGENTS: dict[str, Any] = {
    "conversation": agents.Conversation(answer_tokens=8),
    "shared": agents.Shared(per_agent=1, answer_tokens=8),
    "json_requests": 1,
}
QUICK = {
    "tiny": ModelSpec("tiny", MODELS["tiny"].label, {}, 32, {1: 1, 4: 1, 8: 1}, **QUICK_AGENTS),
    "100m": ModelSpec(
        "100m", MODELS["100m"].label, MODELS["100m"].kwargs, 8, {1: 1, 4: 1, 8: 1}, **QUICK_AGENTS
    ),
}
PHASES = ("plain", "conversation", "shared", "json", "legacy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: one short request per client")
    ap.add_argument("--threads", type=int, default=2, help="compute threads for every server")
    ap.add_argument("--models", default="tiny,100m", help="comma-separated: tiny, 100m")
    ap.add_argument(
        "--contestants", default=",".join(CONTESTANTS), help="comma-separated subset to run"
    )
    ap.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset to run (default: all)"
    )
    ap.add_argument(
        "--legacy-cores",
        default="0,1",
        help="the legacy node's shape: HOUSEKEEPING,COMPUTE cores (default 0,1)",
    )
    ap.add_argument(
        "--rounds", type=int, help=f"interleaved rounds per phase (default {ROUNDS}, quick 1)"
    )
    ap.add_argument("--cache-dir", help="default: ~/.cache/cairn/bench")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build parallelism")
    ap.add_argument("--in-process", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--ctx-per-seq", type=int, default=CTX_PER_SEQ, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.in_process:  # the child side of the in-process contestant
        in_process_child(Path(args.in_process), args.threads, args.ctx_per_seq)
        return 0

    cache = cache_dir(args.cache_dir)
    specs = QUICK if args.quick else MODELS
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    contestants = tuple(w.strip() for w in args.contestants.split(",") if w.strip())
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = [k for k in keys if k not in specs] + [w for w in contestants if w not in CONTESTANTS]
    unknown += sorted(phases - set(PHASES))
    if unknown:
        ap.error(f"unknown model, contestant or phase: {', '.join(unknown)}")
    try:
        housekeeping, compute = (int(c) for c in args.legacy_cores.split(","))
    except ValueError:
        ap.error(f"--legacy-cores takes two cores, HOUSEKEEPING,COMPUTE: {args.legacy_cores!r}")
    if "legacy" in phases and not {housekeeping, compute} <= os.sched_getaffinity(0):
        ap.error(f"--legacy-cores {args.legacy_cores}: not cores this process may use")
    needs_build = REFERENCE in contestants
    llama_server = ensure_llama_server(cache, args.jobs) if needs_build else Path("/nonexistent")
    paths = {k: ensure_model(cache, specs[k]) for k in keys}
    logs = cache / "logs"
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    plain_shape = Shape(args.threads)
    agent_shape = Shape(args.threads, ctx_per_seq=AGENT_CTX_PER_SEQ)
    legacy_shape = Shape(1, ctx_per_seq=AGENT_CTX_PER_SEQ, pin=(housekeeping, compute))
    legacy_who = tuple(w for w in contestants if w in (CAIRN, REFERENCE))
    all_results: dict[str, ModelResults] = {}
    for k in keys:
        spec, got = specs[k], ModelResults()
        all_results[k] = got
        if "plain" in phases:
            print(f"benchmarking {spec.label}: plain", flush=True)
            got.plain = bench_model(
                spec, paths[k], plain_shape, llama_server, logs, contestants, rounds
            )
        if phases & {"conversation", "shared", "json"}:
            print(f"benchmarking {spec.label}: agents", flush=True)
            got.agents = bench_agents(
                spec, paths[k], agent_shape, llama_server, logs, contestants, rounds, phases
            )
        if "legacy" in phases:
            print(f"benchmarking {spec.label}: legacy node shape", flush=True)
            got.legacy = bench_model(
                spec, paths[k], legacy_shape, llama_server, logs, legacy_who, rounds
            )
    elapsed = time.monotonic() - t0
    for k in keys:
        spec, got = specs[k], all_results[k]
        if got.plain is not None:
            print_table(spec, got.plain, f"{args.threads} threads", rounds)
        if got.agents is not None:
            print_agents(spec, got.agents, agent_shape, rounds)
        if got.legacy is not None:
            title = (
                f"legacy node: 1 compute thread on core {compute}, Cairn's supervisor and the"
                f" client on core {housekeeping}, {REFERENCE} wholly on core {compute}"
            )
            print_table(spec, got.legacy, title, rounds)
    check_targets(all_results)
    print()
    print(
        f"{elapsed / 60:.1f} min; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after"
        f" ({os.cpu_count()} CPUs; other load skews every column); server logs in {logs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
