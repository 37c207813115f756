"""NixOS generation reading on a fake profiles tree built from real symlinks."""

from __future__ import annotations

from pathlib import Path

from cairn import generations


def make_tree(tmp_path: Path) -> tuple[Path, Path]:
    store, profiles, run = tmp_path / "store", tmp_path / "profiles", tmp_path / "run"
    for d in (store, profiles, run):
        d.mkdir()
    for n in (1, 2, 3):
        (store / f"nixos-system-{n}").mkdir()
        (profiles / f"system-{n}-link").symlink_to(store / f"nixos-system-{n}")
    (profiles / "system").symlink_to("system-3-link")
    (profiles / "system-9-link").symlink_to(store / "gone")  # dangling: garbage-collected
    (run / "current-system").symlink_to(store / "nixos-system-3")
    (run / "booted-system").symlink_to(store / "nixos-system-2")
    return profiles, run


def test_lists_profiles_in_order_with_current_and_booted(tmp_path: Path) -> None:
    profiles, run = make_tree(tmp_path)
    gens, reason = generations.read(profiles, run)
    assert reason == "" and gens is not None
    assert [g.number for g in gens.profiles] == [1, 2, 3]
    assert [(g.current, g.booted) for g in gens.profiles] == [
        (False, False),
        (False, True),
        (True, False),
    ]
    assert gens.current is not None and gens.current.endswith("nixos-system-3")


def test_not_nixos_is_none_with_reason(tmp_path: Path) -> None:
    gens, reason = generations.read(tmp_path / "nope", tmp_path)
    assert gens is None and "not a NixOS system" in reason
