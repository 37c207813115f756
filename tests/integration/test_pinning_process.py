"""A real engine process pinned to cores [0, 1]: each compute thread on exactly one distinct core.

How compute threads are told apart from the rest: the child reports its thread ids once the
model is loaded, before the first decode, and which thread will run the decodes. Compute
threads are that decoding thread plus every thread that appeared after the snapshot (llama.cpp
with OpenMP: libgomp starts its team workers at the first parallel region; onnxruntime starts
its intra-op pool when the session is built, so there the snapshot is taken before that).
Threads that existed before (numpy's OpenBLAS helper, Python's own) are not compute threads
and are not asserted on.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cairn.inference.demo_gguf import write_tiny_llama
from cairn.inference.demo_onnx import write_tiny_embedder
from cairn.inference.pinning import thread_map

CORES = [0, 1]

pytestmark = pytest.mark.skipif(
    not set(CORES) <= os.sched_getaffinity(0),
    reason=f"needs cores {CORES} in this process's CPU mask",
)

CHILD = '''
"""Load a model with its threads bound to CORES, then compute until stdin says stop."""
import json
import os
import select
import sys
import threading

from cairn.inference.pinning import omp_environment

kind, model, cores = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def report(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def tids():
    return sorted(int(t) for t in os.listdir("/proc/self/task"))


def stop_requested():
    # stdin turns readable on "exit" or on EOF (the test died): either way, stop.
    return bool(select.select([sys.stdin], [], [], 0)[0])


if kind == "llama":
    os.environ.update(omp_environment(cores))
    import llama_cpp  # libgomp loads here and reads OMP_* once: after the update, never before

    llm = llama_cpp.Llama(
        model_path=model, n_threads=len(cores), n_threads_batch=len(cores), n_ctx=128,
        verbose=False,
    )
    prompt = llm.tokenize(b"The quick brown fox")
    report("loaded", tids=tids(), decode_tid=threading.get_native_id())

    def step():
        llm.reset()
        llm.eval(prompt)  # a batch decode (n_threads_batch)
        for token in prompt[:4]:
            llm.eval([token])  # single-token decodes (n_threads)
else:
    from cairn.inference.onnx_engine import OnnxEmbedder

    before = tids()  # onnxruntime starts its intra-op pool while building the session
    embedder = OnnxEmbedder(model, threads=len(cores), cores=cores)
    report("loaded", tids=before, decode_tid=threading.get_native_id())

    def step():
        embedder.embed(["The quick brown fox jumps over the lazy dog"] * 16)

step()
report("computing")
while not stop_requested():
    step()
report("stopped")
'''


class Child:
    """The child process and a line reader that never waits past a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the child's next JSON line and check it is `name`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready = select.select([self.proc.stdout], [], [], max(left, 0))[0]
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"child exited before {name!r}:\n{self.log.read_text()}")
                msg: dict[str, Any] = json.loads(line)
                assert msg["event"] == name, msg
                return msg
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {name!r}")


@pytest.fixture
def start_child(tmp_path: Path) -> Iterator[Callable[[str, Path], Child]]:
    """Factory: run CHILD for a model kind and file; kills any child still running after."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children: list[Child] = []

    def start(kind: str, model: Path) -> Child:
        log = tmp_path / f"{kind}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(script), kind, str(model), json.dumps(CORES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,  # unbuffered: a line Python buffered would hide from select()
            )
        child = Child(proc, log)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()
        for pipe in (child.proc.stdin, child.proc.stdout):
            if pipe is not None:
                pipe.close()


def compute_thread_cores(child: Child) -> dict[int, list[int]]:
    """Thread id -> allowed cores for the compute threads of the running child."""
    loaded = child.event("loaded")
    child.event("computing")
    threads = thread_map(child.proc.pid)
    assert child.proc.poll() is None, "the child must still be computing while we look"
    compute = {loaded["decode_tid"]} | (set(threads) - set(loaded["tids"]))
    return {tid: threads[tid] for tid in sorted(compute) if tid in threads}


def stop(child: Child) -> None:
    """Ask the child to stop and check it exits cleanly."""
    assert child.proc.stdin is not None
    child.proc.stdin.write(b"exit\n")
    child.proc.stdin.flush()
    child.event("stopped")
    assert child.proc.wait(timeout=10) == 0, child.log.read_text()


def test_llama_compute_threads_each_pinned_to_one_distinct_core(
    tmp_path: Path, start_child: Callable[[str, Path], Child]
) -> None:
    child = start_child("llama", write_tiny_llama(tmp_path / "tiny.gguf"))
    compute = compute_thread_cores(child)
    every = thread_map(child.proc.pid)
    assert len(compute) == len(CORES), f"compute threads {compute}, all threads {every}"
    assert sorted(compute.values()) == [[c] for c in CORES], f"all threads {every}"
    assert all(len(every[tid]) == 1 for tid in compute)  # each bound to exactly one core
    stop(child)


def test_llama_decode_thread_is_bound_to_the_first_core(
    tmp_path: Path, start_child: Callable[[str, Path], Child]
) -> None:
    # libgomp binds the thread that loads it to place 0, so the decoding (main) thread sits on
    # cores[0] and the team worker it starts on cores[1].
    child = start_child("llama", write_tiny_llama(tmp_path / "tiny.gguf"))
    loaded = child.event("loaded")
    child.event("computing")
    threads = thread_map(child.proc.pid)
    assert threads[loaded["decode_tid"]] == [CORES[0]]
    assert [threads[t] for t in sorted(set(threads) - set(loaded["tids"]))] == [[CORES[1]]]
    stop(child)


def test_onnx_intra_op_threads_each_pinned_to_one_distinct_core(
    tmp_path: Path, start_child: Callable[[str, Path], Child]
) -> None:
    child = start_child("onnx", write_tiny_embedder(tmp_path / "tiny.onnx"))
    compute = compute_thread_cores(child)
    every = thread_map(child.proc.pid)
    assert len(compute) == len(CORES), f"compute threads {compute}, all threads {every}"
    assert sorted(compute.values()) == [[c] for c in CORES], f"all threads {every}"
    stop(child)
