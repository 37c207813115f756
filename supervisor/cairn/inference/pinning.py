"""Pin a worker's compute threads one per core, and read back where every thread may run.

Why one thread per core: isolcpus= takes the isolated cores out of the scheduler's load
balancing. A process allowed on cores 2-5 whose threads are not pinned individually does not
spread over them: its threads stay where they were woken, typically piled onto one core. A
process-wide mask (taskset, systemd CPUAffinity=) is therefore not enough; each compute
thread must be bound to its own core.

How: llama.cpp's ggml-cpu links libgomp here, so `omp_environment(cores)` goes into
os.environ *before* anything loads libgomp, i.e. before importing llama_cpp in the worker.
libgomp reads OMP_* once, when it loads, and then binds every thread of every team itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from cairn.errors import CairnError
from cairn.system.cpus import ISOLATED_PATH, ONLINE_PATH, parse_cpu_list, read_cpu_list

PROC = Path("/proc")


class PinningError(CairnError, ValueError):
    """The requested cores or thread count cannot be honoured; the message says why."""


def resolve_cpus(
    spec: str | list[int] | None,
    *,
    isolated_path: Path = ISOLATED_PATH,
    online_path: Path = ONLINE_PATH,
) -> list[int]:
    """The cores a worker may use: "isolated", an explicit list, or (None) the current mask."""
    if spec is None:
        return sorted(os.sched_getaffinity(0))
    if spec == "isolated":
        cores = read_cpu_list(isolated_path)
        if not cores:
            raise PinningError(f"cpus = 'isolated' but no core is isolated ({isolated_path})")
        return cores
    if isinstance(spec, str):
        try:
            cores = parse_cpu_list(spec)
        except ValueError as err:
            raise PinningError(f"cpus {spec!r} is neither 'isolated' nor a CPU list") from err
    else:
        cores = list(spec)
    if not cores:
        raise PinningError("cpus is empty")
    if len(set(cores)) != len(cores):
        raise PinningError(f"cpus {cores} names a core twice")
    # Validate against the online cores, not this process's mask: under isolcpus the
    # supervisor itself runs on the housekeeping cores yet may place workers on isolated ones.
    online = _online_cpus(online_path)
    missing = [c for c in cores if c not in online]
    if missing:
        raise PinningError(f"cpus {missing} not online (online: {_render(online)})")
    return sorted(cores)


def plan(cpus: list[int], threads: int) -> list[int]:
    """One core per compute thread: the first `threads` of cpus."""
    if threads < 1:
        raise PinningError(f"threads must be at least 1, not {threads}")
    if threads > len(cpus):
        raise PinningError(
            f"{threads} threads need {threads} cores, only {len(cpus)} given ({_render(cpus)})"
        )
    return sorted(cpus)[:threads]


def omp_environment(cores: list[int]) -> dict[str, str]:
    """OpenMP settings that bind thread i of every team to cores[i] (one place per core).

    libgomp reads these once, when it is loaded: set them in os.environ before importing
    llama_cpp (or anything else that links libgomp), or pass them to the child's environment.
    The thread that loads libgomp must still be allowed on all of `cores` at that moment:
    libgomp silently drops places outside the loading thread's mask. That thread is bound to
    cores[0] on load and threads it creates later inherit that one-core mask.
    """
    if not cores:
        raise PinningError("no cores to bind OpenMP threads to")
    # isolcpus disables load balancing, so a team allowed on several isolated cores piles up
    # on one: one single-core place per thread plus OMP_PROC_BIND=close puts the master on
    # place 0 and worker i on place i, each bound to exactly that core.
    return {
        "OMP_NUM_THREADS": str(len(cores)),
        "OMP_PLACES": ",".join(f"{{{c}}}" for c in cores),
        "OMP_PROC_BIND": "close",
    }


def leave_cores(start_mask: list[int], cores: list[int]) -> list[int]:
    """Move the calling thread off the compute cores, onto the rest of `start_mask`.

    The thread that loaded libgomp is bound to cores[0], where the first compute thread runs.
    In the worker that is the event loop's thread, which parses requests and writes every
    streamed token: left there, it takes turns with the decode on a node with one compute
    core. Threads it starts from now on inherit the new mask. Returns the cores it moved to
    (empty: no other core in the mask, it stays).
    """
    rest = [c for c in start_mask if c not in cores]
    if rest:
        os.sched_setaffinity(0, rest)  # 0: the calling thread only (Linux)
    return rest


def thread_map(pid: int, *, proc: Path = PROC) -> dict[int, list[int]]:
    """Thread id -> cores it is allowed on, from /proc/PID/task/*/status Cpus_allowed_list."""
    out: dict[int, list[int]] = {}
    for tid in sorted(_tids(pid, proc=proc)):
        try:
            status = (proc / str(pid) / "task" / str(tid) / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # threads come and go while we read; a vanished one has no mask
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key == "Cpus_allowed_list":
                out[tid] = parse_cpu_list(value)
                break
    return out


def _tids(pid: int, *, proc: Path = PROC) -> set[int]:
    """The thread ids of pid right now."""
    try:
        return {int(name) for name in os.listdir(proc / str(pid) / "task")}
    except FileNotFoundError:
        return set()  # the process is gone: it has no threads


def _online_cpus(path: Path) -> list[int]:
    """Online cores from sysfs, or this process's mask where sysfs is missing (containers)."""
    return read_cpu_list(path) or sorted(os.sched_getaffinity(0))


def _render(cores: list[int]) -> str:
    """Cores as a short comma list for messages."""
    return ",".join(map(str, cores))
