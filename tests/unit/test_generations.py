"""NixOS generation reading on a fake profiles tree built from real symlinks."""

from __future__ import annotations

from pathlib import Path

from cairn.system import generations


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


def test_nix_on_another_distro_is_not_nixos(tmp_path: Path) -> None:
    profiles, run = make_tree(tmp_path)
    (run / "current-system").unlink()  # Debian with nix-bin: profiles exist, no NixOS system
    gens, reason = generations.read(profiles, run)
    assert gens is None and "not a NixOS system" in reason


def test_only_the_selected_generation_is_current(tmp_path: Path) -> None:
    profiles, run = make_tree(tmp_path)
    # Roll back to 1, then switch to a 4th generation that reuses 3's store path.
    (profiles / "system-4-link").symlink_to(tmp_path / "store" / "nixos-system-3")
    (profiles / "system").unlink()
    (profiles / "system").symlink_to("system-4-link")
    gens, _ = generations.read(profiles, run)
    assert gens is not None
    assert [g.number for g in gens.profiles if g.current] == [4]
