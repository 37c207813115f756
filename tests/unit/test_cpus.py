"""The kernel's CPU-list format and the sysfs files in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn.system.cpus import parse_cpu_list, read_cpu_list


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("", []),
        ("\n", []),
        ("3", [3]),
        ("0-2,5,7-8\n", [0, 1, 2, 5, 7, 8]),
        ("2-5,12-15", [2, 3, 4, 5, 12, 13, 14, 15]),
    ],
)
def test_parse_cpu_list(text: str, cores: list[int]) -> None:
    assert parse_cpu_list(text) == cores


@pytest.mark.parametrize("text", ["a", "5-2", "1-x"])
def test_parse_cpu_list_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_read_cpu_list_reads_a_sysfs_file(tmp_path: Path) -> None:
    f = tmp_path / "isolated"
    f.write_text("1,3-4\n")
    assert read_cpu_list(f) == [1, 3, 4]
    assert read_cpu_list(tmp_path / "absent") == []
