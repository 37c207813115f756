"""Inference throughput and time-to-first-token: Cairn beside llama.cpp's and llama-cpp-python's.

Run: `make bench-inference` (or `.venv/bin/python -m tests.bench.inference [--quick]`).

Two generated random-weight llama models (`tiny`: 2 layers, dim 64, overhead-bound; `100m`:
12 layers, dim 768, f16, compute-bound), each served by four contestants with the same thread
count and 512 context tokens per sequence, all with their own defaults otherwise:

- cairn: `cairn run` (front API -> worker over a unix socket), `slots` parallel sequences;
- llama-server: llama.cpp's server built from the sources vendored in the installed
  llama-cpp-python's sdist (same llama.cpp commit), `-np slots`, continuous batching;
- llama-cpp-python: `python -m llama_cpp.server`, one sequence, requests served one at a time
  (`--interrupt_requests False`: by default a new request cuts the running stream short); its
  default repeat_penalty 1.1 can make its greedy text differ from the others';
- in-process: `llama_cpp.Llama` in a child process, no HTTP: the serial floor. Concurrent
  clients are threads queueing on one executor thread that runs every request in turn (FIFO),
  so at concurrency > 1 its TTFT includes the wait for the requests before.

Batching servers get 4 slots for concurrency 1 and 4, and 8 for concurrency 8.

Workload: /v1/completions, streaming, temperature 0; every request has its own ~32-token
prompt (a distinct prefix, so no server reuses a cached prompt) and asks for `max_tokens`.
In a phase, `c` clients each send their requests back to back, after one short warm-up
request. Every contestant is started at once (idle ones sleep) and the phases are interleaved:
each runs `rounds` times, contestants taking turns in a rotating order, so slow drift in the
machine's speed (other load) spreads over all of them.
- tokens/s: per round, all generated tokens / wall time (first send to last byte); the table
  shows the median round.
- TTFT: median over every request of every round, send -> first streamed text.
Tokens are counted the same way for everybody: the models' vocabulary is byte-level and
greedy decoding only emits printable ASCII, so one streamed byte is one token (checked against
`usage.completion_tokens` where the server sends it; short answers are reported).

The llama-server binary is built once (~4 min on 2 cores) and cached, with the models and the
servers' logs, under ~/.cache/cairn/bench/. Exit status 0 even when a target is missed: this is
a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
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

from cairn.inference import demo_gguf

CTX_PER_SEQ = 512  # context tokens per sequence, for every contestant
START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 600.0
SETTLE_S = 3.0
TARGET_C1 = 0.95  # concurrency 1: Cairn's tokens/s over llama-server's
TARGET_C4 = 2.0  # concurrency 4: Cairn's tokens/s over llama-cpp-python's server's
REFERENCE = "llama-server"
LCP = "llama-cpp-python"
IN_PROCESS = "in-process"
CONTESTANTS = ("cairn", REFERENCE, LCP, IN_PROCESS)

# ~32 tokens with the byte-level vocabulary: 1 BOS + a 5-byte request number + 26 bytes.
PROMPT_TAIL = "the cairn stands on a hill"


@dataclass(frozen=True)
class ModelSpec:
    """A generated model and the workload run on it."""

    key: str
    label: str
    kwargs: dict[str, Any]
    max_tokens: int
    requests: dict[int, int]  # concurrency -> requests per client in each round


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
def server(name: str, cmd: list[str], ready_path: str, port: int, log: Path) -> Iterator[str]:
    """Start a server in its own process group; yield its base URL; always stop it."""
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
        yield base
    finally:
        stop(proc)


class Runner(Protocol):
    """Runs one measured phase against a started contestant."""

    def phase(self, concurrency: int, per_client: int, max_tokens: int, base: int) -> Cell: ...


@dataclass
class HttpRunner:
    url: str

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


@contextlib.contextmanager
def start_contestant(
    who: str, model: Path, threads: int, slots: int, logs: Path, llama_server: Path
) -> Iterator[Runner]:
    port = free_port()
    log = logs / f"{model.stem}-{who}-{slots}.log"
    if who == "cairn":
        with tempfile.TemporaryDirectory(prefix="cairn-bench-") as tmp:
            cfg = Path(tmp) / "cairn.json"
            doc = {
                "version": 1,
                "node": {"name": "bench", "state_dir": tmp},
                "api": {"host": "127.0.0.1", "port": port},
                "log": {"level": "warning"},
                "models": [
                    {
                        "name": "bench",
                        "path": str(model),
                        "kind": "gguf",
                        "context": slots * CTX_PER_SEQ,
                        "threads": threads,
                        "slots": slots,
                        "queue": 64,
                    }
                ],
            }
            cfg.write_text(json.dumps(doc))
            cmd = [sys.executable, "-m", "cairn", "run", "--config", str(cfg)]
            with server(who, cmd, "/readyz", port, log) as url:
                yield HttpRunner(url)
    elif who == REFERENCE:
        cmd = [
            str(llama_server), "-m", str(model), "-a", "bench",
            "-t", str(threads), "-tb", str(threads),
            "-np", str(slots), "-c", str(slots * CTX_PER_SEQ),
            "--host", "127.0.0.1", "--port", str(port), "--no-webui",
        ]  # fmt: skip
        with server(who, cmd, "/health", port, log) as url:
            yield HttpRunner(url)
    elif who == LCP:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--model_alias", "bench", "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--n_ctx", str(CTX_PER_SEQ),
            "--interrupt_requests", "False",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        with server(who, cmd, "/v1/models", port, log) as url:
            yield HttpRunner(url)
    elif who == IN_PROCESS:
        cmd = [
            sys.executable, "-m", "tests.bench.inference", "--in-process", str(model),
            "--threads", str(threads),
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
    body = {
        "model": "bench",
        "prompt": text,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.monotonic()
    ttft = 0.0
    parts: list[str] = []
    usage: int | None = None
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue  # read on to the end of the body: the response is complete then
            doc = msgspec.json.decode(data)
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
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    # A new connection per request: llama-server closes a streamed response's connection
    # without saying so, and a reused one then fails. Connecting costs ~0.1 ms on loopback.
    connector = aiohttp.TCPConnector(limit=concurrency + 1, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
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


def in_process_child(model: Path, threads: int) -> None:
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
        n_ctx=CTX_PER_SEQ,
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


def merge(into: Cell, cell: Cell) -> None:
    into.tokens += cell.tokens
    into.seconds += cell.seconds
    into.ttfts += cell.ttfts
    into.requests += cell.requests
    into.short += cell.short
    into.usage_mismatch += cell.usage_mismatch
    into.first_text = into.first_text or cell.first_text
    into.round_tps.append(cell.tps)


def bench_model(
    spec: ModelSpec,
    model: Path,
    threads: int,
    llama_server: Path,
    logs: Path,
    contestants: tuple[str, ...],
    rounds: int,
) -> dict[str, dict[int, Cell]]:
    """Every contestant up at once (idle ones sleep); phases interleaved round by round."""
    levels = sorted(spec.requests)
    results = {who: {c: Cell() for c in levels} for who in contestants}
    # Batching servers get 4 slots for concurrency 1 and 4, and 8 for concurrency 8.
    groups: dict[int, list[int]] = {}
    for c in levels:
        groups.setdefault(max(4, min(c, 8)), []).append(c)
    phase_no = 0
    for slots, group in groups.items():
        with contextlib.ExitStack() as stack:
            runners: dict[str, Runner] = {}
            for who in contestants:
                try:
                    runners[who] = stack.enter_context(
                        start_contestant(who, model, threads, slots, logs, llama_server)
                    )
                except RuntimeError as err:
                    for c in group:
                        results[who][c].error = f"{who} did not start: {err}"
            time.sleep(SETTLE_S)  # let start-up work (first probes, health polls) pass
            for c in group:
                for r in range(rounds):
                    # The same prompts for every contestant in a round, new ones every round.
                    phase_no += 1
                    # Rotate who goes first, so drift in the machine's speed evens out.
                    names = list(runners)
                    k = r % len(names) if names else 0
                    for who in names[k:] + names[:k]:
                        if results[who][c].error:
                            continue
                        try:
                            cell = runners[who].phase(
                                c, spec.requests[c], spec.max_tokens, base=phase_no * 1000
                            )
                        except (RuntimeError, OSError, aiohttp.ClientError, TimeoutError) as err:
                            results[who][c].error = f"{type(err).__name__}: {err}"
                            continue
                        merge(results[who][c], cell)
                        print(
                            f"    c={c} round {r + 1}/{rounds} {who:<17} {cell.tps:8.1f} tok/s,"
                            f" TTFT {cell.ttft_ms:7.1f} ms ({cell.requests} requests,"
                            f" {cell.seconds:.1f} s)",
                            flush=True,
                        )
    return results


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a > 0 and b > 0 else "n/a"


def print_table(
    spec: ModelSpec, results: dict[str, dict[int, Cell]], threads: int, rounds: int
) -> None:
    who = list(results)
    levels = sorted(spec.requests)
    ref = results.get(REFERENCE, {})
    print()
    print(
        f"== {spec.label}: {threads} threads, prompt ~32 tokens, {spec.max_tokens} new tokens,"
        f" {rounds} rounds x requests per client {spec.requests}"
    )
    width = 19
    header = f"{'':<22}" + "".join(f"{w:>{width}}" for w in who)
    metrics: list[tuple[str, Callable[[Cell], float]]] = [
        ("tokens/s (aggregate)", lambda c: c.tps),
        ("TTFT median (ms)", lambda c: c.ttft_ms),
    ]
    for title, metric in metrics:
        print(f"{title} [ratio to {REFERENCE}]")
        print(header)
        for lvl in levels:
            row = f"{'concurrency ' + str(lvl):<22}"
            for w in who:
                got = results[w].get(lvl)
                if got is None or got.error:
                    row += f"{'ERROR':>{width}}"
                    continue
                base = ref.get(lvl)
                r = ratio(metric(got), metric(base)) if base and not base.error else "n/a"
                row += f"{f'{metric(got):.1f} [{r}]':>{width}}"
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


def check_targets(all_results: dict[str, dict[str, dict[int, Cell]]]) -> bool:
    big, tiny = all_results.get("100m"), all_results.get("tiny")
    if big is None:
        print("targets: the ~100M model was not run; nothing to check")
        return True

    def tps(res: dict[str, dict[int, Cell]] | None, who: str, c: int) -> float:
        cell = (res or {}).get(who, {}).get(c)
        return cell.tps if cell and not cell.error else 0.0

    ok = True
    print()
    print("== Targets on the ~100M model (tiny model beside: the cost of Cairn's own path)")
    checks = (
        (f"concurrency 1: cairn >= {TARGET_C1} x llama-server", 1, REFERENCE, TARGET_C1),
        (f"concurrency 4: cairn >= {TARGET_C4} x llama-cpp-python", 4, LCP, TARGET_C4),
    )
    for text, c, peer, target in checks:
        got, peer_tps = tps(big, "cairn", c), tps(big, peer, c)
        if got <= 0 or peer_tps <= 0:
            print(f"  n/a   {text}: cairn or {peer} was not measured")
            continue
        passed = got / peer_tps >= target
        ok &= passed
        tiny_got, tiny_peer = tps(tiny, "cairn", c), tps(tiny, peer, c)
        print(
            f"  {'PASS' if passed else 'FAIL'}  {text}: {got:.1f} vs {peer_tps:.1f} tok/s"
            f" = {ratio(got, peer_tps)}   (tiny: {tiny_got:.1f} vs {tiny_peer:.1f} tok/s"
            f" = {ratio(tiny_got, tiny_peer)})"
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
    ),
}
ROUNDS = 3
QUICK = {
    "tiny": ModelSpec("tiny", MODELS["tiny"].label, {}, 32, {1: 1, 4: 1, 8: 1}),
    "100m": ModelSpec("100m", MODELS["100m"].label, MODELS["100m"].kwargs, 8, {1: 1, 4: 1, 8: 1}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: one short request per client")
    ap.add_argument("--threads", type=int, default=2, help="compute threads for every server")
    ap.add_argument("--models", default="tiny,100m", help="comma-separated: tiny, 100m")
    ap.add_argument(
        "--contestants", default=",".join(CONTESTANTS), help="comma-separated subset to run"
    )
    ap.add_argument(
        "--rounds", type=int, help=f"interleaved rounds per phase (default {ROUNDS}, quick 1)"
    )
    ap.add_argument("--cache-dir", help="default: ~/.cache/cairn/bench")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="build parallelism")
    ap.add_argument("--in-process", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.in_process:  # the child side of the in-process contestant
        in_process_child(Path(args.in_process), args.threads)
        return 0

    cache = cache_dir(args.cache_dir)
    specs = QUICK if args.quick else MODELS
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    contestants = tuple(w.strip() for w in args.contestants.split(",") if w.strip())
    unknown = [k for k in keys if k not in specs] + [w for w in contestants if w not in CONTESTANTS]
    if unknown:
        ap.error(f"unknown model or contestant: {', '.join(unknown)}")
    needs_build = REFERENCE in contestants
    llama_server = ensure_llama_server(cache, args.jobs) if needs_build else Path("/nonexistent")
    paths = {k: ensure_model(cache, specs[k]) for k in keys}
    logs = cache / "logs"
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    all_results = {}
    for k in keys:
        print(f"benchmarking {specs[k].label}", flush=True)
        all_results[k] = bench_model(
            specs[k], paths[k], args.threads, llama_server, logs, contestants, rounds
        )
    elapsed = time.monotonic() - t0
    for k in keys:
        print_table(specs[k], all_results[k], args.threads, rounds)
    check_targets(all_results)
    print()
    print(
        f"{elapsed / 60:.1f} min; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after"
        f" ({os.cpu_count()} CPUs; other load skews every column); server logs in {logs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
