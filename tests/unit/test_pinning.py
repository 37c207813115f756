"""CPU pinning: resolving the configured cores, the plan, OpenMP settings, /proc thread masks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cairn.inference.pinning import (
    PinningError,
    omp_environment,
    plan,
    resolve_cpus,
    thread_map,
)


@pytest.fixture
def sysfs(tmp_path: Path) -> tuple[Path, Path]:
    """An `isolated` file listing 2-3 and an `online` file listing 0-3."""
    isolated, online = tmp_path / "isolated", tmp_path / "online"
    isolated.write_text("2-3\n")
    online.write_text("0-3\n")
    return isolated, online


def resolve(spec: str | list[int] | None, files: tuple[Path, Path]) -> list[int]:
    return resolve_cpus(spec, isolated_path=files[0], online_path=files[1])


def test_none_means_the_current_mask(sysfs: tuple[Path, Path]) -> None:
    assert resolve(None, sysfs) == sorted(os.sched_getaffinity(0))


def test_isolated_reads_the_isolated_cores(sysfs: tuple[Path, Path]) -> None:
    assert resolve("isolated", sysfs) == [2, 3]


def test_isolated_without_isolated_cores_is_an_error(sysfs: tuple[Path, Path]) -> None:
    sysfs[0].write_text("\n")  # what the kernel shows without isolcpus=
    with pytest.raises(PinningError, match="no core is isolated"):
        resolve("isolated", sysfs)


def test_isolated_without_the_sysfs_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PinningError, match="no core is isolated"):
        resolve_cpus("isolated", isolated_path=tmp_path / "absent")


def test_explicit_list_is_kept_sorted(sysfs: tuple[Path, Path]) -> None:
    assert resolve([3, 0], sysfs) == [0, 3]


def test_explicit_kernel_format_string(sysfs: tuple[Path, Path]) -> None:
    assert resolve("0-1,3", sysfs) == [0, 1, 3]


def test_core_not_online_is_named(sysfs: tuple[Path, Path]) -> None:
    with pytest.raises(PinningError, match=r"cpus \[7\] not online \(online: 0,1,2,3\)"):
        resolve([1, 7], sysfs)


def test_isolated_cores_outside_this_process_mask_are_accepted(sysfs: tuple[Path, Path]) -> None:
    # The supervisor runs on housekeeping cores but places workers on isolated ones.
    sysfs[1].write_text(f"0-{max(os.sched_getaffinity(0)) + 4}\n")
    beyond = max(os.sched_getaffinity(0)) + 3
    assert resolve([beyond], sysfs) == [beyond]


@pytest.mark.parametrize(
    ("spec", "message"),
    [([], "empty"), ([1, 1], "twice"), ("some", "neither 'isolated' nor a CPU list")],
)
def test_bad_specs_are_errors(
    sysfs: tuple[Path, Path], spec: list[int] | str, message: str
) -> None:
    with pytest.raises(PinningError, match=message):
        resolve(spec, sysfs)


def test_pinning_errors_are_value_errors() -> None:
    # The worker reports bad pinning settings by catching ValueError.
    assert issubclass(PinningError, ValueError)


def test_plan_takes_one_core_per_thread() -> None:
    assert plan([5, 2, 3], 2) == [2, 3]


def test_plan_with_too_many_threads_names_both_numbers() -> None:
    with pytest.raises(PinningError, match=r"3 threads need 3 cores, only 2 given \(0,1\)"):
        plan([0, 1], 3)


def test_plan_needs_a_thread() -> None:
    with pytest.raises(PinningError, match="at least 1"):
        plan([0, 1], 0)


def test_omp_environment_binds_one_thread_per_core() -> None:
    assert omp_environment([2, 5, 6]) == {
        "OMP_NUM_THREADS": "3",
        "OMP_PLACES": "{2},{5},{6}",
        "OMP_PROC_BIND": "close",
    }


def test_omp_environment_needs_cores() -> None:
    with pytest.raises(PinningError):
        omp_environment([])


def fake_proc(root: Path, pid: int, masks: dict[int, str]) -> Path:
    for tid, mask in masks.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        task.joinpath("status").write_text(
            f"Name:\tpython\nCpus_allowed:\tff\nCpus_allowed_list:\t{mask}\nMems_allowed:\t1\n"
        )
    return root


def test_thread_map_reads_each_threads_allowed_cores(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 42, {42: "0-3", 43: "2", 44: "3"})
    assert thread_map(42, proc=proc) == {42: [0, 1, 2, 3], 43: [2], 44: [3]}


def test_thread_map_of_a_gone_process_is_empty(tmp_path: Path) -> None:
    assert thread_map(42, proc=tmp_path) == {}


def test_thread_map_of_this_process_has_this_thread() -> None:
    here = thread_map(os.getpid())
    assert here[threading.get_native_id()] == sorted(os.sched_getaffinity(0))


def test_the_worker_command_loads_no_engine_before_its_openmp_environment() -> None:
    """libgomp reads OMP_* once, when it loads: `cairn worker` must import no engine early.

    An import of llama_cpp (or anything linking libgomp) on the way to worker.main would
    load it unpinned, and every compute thread would then float over the whole mask.
    """
    code = (
        "import sys, cairn.cli, cairn.inference.worker\n"
        "engines = ('llama_cpp', 'onnxruntime')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in engines)\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(loaded, 'libgomp' in maps)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False", out.stdout
