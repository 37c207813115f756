"""The supervisor's polkit rule under real polkit 126 and systemd 257 (a Debian trixie node)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import rootfs, wait_until
from tests.harness.fixtures import require_or_skip
from tests.nix import lib_expr, need, nix_eval, nix_string

USER = "cairn"
PWNED = "/run/pwned"
# What the user would run as root through a transient unit: a mark only root can leave.
PAYLOAD = ["/bin/sh", "-c", f"id -u > {PWNED}"]

# The rule modules/supervisor.nix rendered before issue 13 (commit 8688992) on a host that
# declares no model (long lines wrapped): unit-name globs, so any cairn-model@ name passes, file
# or no file.
GLOB_RULE = r"""
polkit.addRule(function (action, subject) {
  if (action.id !== "org.freedesktop.systemd1.manage-units" || subject.user !== "cairn") {
    return polkit.Result.NOT_HANDLED;
  }
  var unit = action.lookup("unit");
  var verb = action.lookup("verb");
  var allowed = [
    { unit: /^cairn-model@[^/]+\.service$/,
      verbs: [ "start", "stop", "restart", "try-restart", "kill", "reset-failed", "freeze",
               "thaw" ] },
    { unit: /^cairn-model@[^/]+\.socket$/,
      verbs: [ "start", "stop", "restart", "reset-failed" ] },
    { unit: /^cairn-rollback\.service$/, verbs: [ "start" ] }
  ];
  for (var i = 0; i < allowed.length; i++) {
    if (allowed[i].unit.test(unit) && allowed[i].verbs.indexOf(verb) !== -1) {
      return polkit.Result.YES;
    }
  }
  return polkit.Result.NOT_HANDLED;
});
"""

# What the module allows on a host without models, and on one that declares model `tiny`.
NO_MODELS: dict[str, list[str]] = {"cairn-rollback.service": ["start"]}
WITH_MODEL: dict[str, list[str]] = {
    **NO_MODELS,
    "cairn-model@tiny.service": ["start", "stop", "restart"],
    "cairn-model@tiny.socket": ["start", "stop"],
}

SYSUSERS = f'u {USER} - "Cairn supervisor" /var/lib/cairn\n'
# Stand-ins with unit files, as NixOS installs them: the rollback helper, the model templates,
# and a unit the supervisor has no business with.
ROLLBACK_UNIT = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
MODEL_SOCKET = "[Socket]\nListenStream=/run/cairn-%i.sock\n"
MODEL_SERVICE = "[Service]\nExecStart=/bin/sleep infinity\n"
FOREIGN_UNIT = "[Service]\nExecStart=/bin/sleep infinity\n"
UNITS = {
    "/etc/systemd/system/cairn-rollback.service": ROLLBACK_UNIT,
    "/etc/systemd/system/not-cairn.service": FOREIGN_UNIT,
}
TEMPLATES = {
    "/etc/systemd/system/cairn-model@.service": MODEL_SERVICE,
    "/etc/systemd/system/cairn-model@.socket": MODEL_SOCKET,
}


def rendered_rule(units: dict[str, list[str]]) -> str:
    """The rule text modules/lib/polkit.nix renders for user cairn, as the module calls it."""
    args = f"builtins.fromJSON {nix_string(json.dumps(units))}"
    text: str = nix_eval(
        lib_expr(f'lib.polkit.manageUnitsRule {{ user = "{USER}"; units = {args}; }}')
    )
    return text


@pytest.fixture
def trixie() -> Path:
    """The trixie rootfs (built and cached on first use)."""
    require_or_skip()
    if not rootfs.is_cached(flavour=rootfs.TRIXIE):
        need("debootstrap", "debootstrap")
    return rootfs.ensure_rootfs(flavour=rootfs.TRIXIE)


@pytest.fixture
def boot(cluster_factory, trixie: Path) -> Callable[..., Any]:
    """Boot a trixie node with this polkit rule and these unit files, user cairn created."""

    def start(rule: str, units: dict[str, str]) -> Any:
        files = {
            "/etc/polkit-1/rules.d/50-cairn.rules": rule,
            "/etc/sysusers.d/cairn.conf": SYSUSERS,
            **units,
        }
        node = cluster_factory(1, files=files, rootfs_dir=trixie).nodes[0]
        version = node.exec(["systemctl", "--version"]).stdout.split()[1]
        assert int(version) >= 257, f"systemd {version} does not show transient names to polkit"
        return node

    return start


def as_user(node: Any, *argv: str, user: str = USER, group: str = USER) -> Any:
    """Run argv in the node as user:group, no other groups; the result, whatever its status."""
    return node.exec(
        ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", "--", *argv],
        check=False,
    )


def transient(node: Any, unit: str) -> Any:
    """As cairn, ask systemd to create and start `unit` as a transient unit running PAYLOAD."""
    return as_user(
        node, "systemd-run", "--no-ask-password", f"--unit={unit}", "--quiet", "--", *PAYLOAD
    )


def pwned(node: Any) -> str | None:
    """The uid the payload ran as, or None when it never ran."""
    out = node.exec(["cat", PWNED], check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def test_the_glob_rule_lets_cairn_run_a_transient_unit_as_root(boot) -> None:
    # The control: this node reproduces the hole of issue 13 under the old rule, so the
    # refusals below are the new rule's doing, not the node's.
    node = boot(GLOB_RULE, UNITS)
    run = transient(node, "cairn-model@pwn.service")
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: pwned(node), 10, what="the payload to run") == "0"


def test_no_transient_unit_on_a_host_without_models(boot) -> None:
    node = boot(rendered_rule(NO_MODELS), UNITS)
    run = transient(node, "cairn-model@pwn.service")
    assert run.returncode != 0
    assert "Access denied" in run.stderr, run.stderr
    assert pwned(node) is None


def test_no_transient_unit_under_an_allowed_name(boot) -> None:
    # polkit says yes to these (start of an allowed name); systemd refuses because each name
    # is loaded from a unit file: the template's, for the model's instance.
    node = boot(rendered_rule(WITH_MODEL), {**UNITS, **TEMPLATES})
    for unit in ("cairn-rollback.service", "cairn-model@tiny.service"):
        run = transient(node, unit)
        assert run.returncode != 0, f"{unit}: {run.stdout}"
        assert "Access denied" not in run.stderr, f"{unit}: polkit, not systemd, refused"
        assert "already" in run.stderr, f"{unit}: {run.stderr}"
    assert pwned(node) is None


def test_units_and_verbs_the_rule_does_not_name_are_refused(boot) -> None:
    node = boot(rendered_rule(WITH_MODEL), {**UNITS, **TEMPLATES})
    refused = [
        ("start", "not-cairn.service"),  # a unit with a file, not the supervisor's
        ("start", "cairn-model@other.service"),  # an instance of the template, not declared
        ("stop", "cairn-rollback.service"),  # an allowed unit, a verb it does not allow
        ("reload", "cairn-model@tiny.service"),
        ("restart", "cairn-model@tiny.socket"),
    ]
    for verb, unit in refused:
        run = as_user(node, "systemctl", "--no-ask-password", verb, unit)
        assert run.returncode != 0, f"{verb} {unit} was allowed"
        # The rule's own NO, not polkit's default (which would ask for a password).
        assert "Access denied" in run.stderr, f"{verb} {unit}: {run.stderr}"
    assert node.unit("not-cairn.service").ActiveState == "inactive"
    assert node.unit("cairn-model@other.service").ActiveState == "inactive"


def test_cairn_starts_and_stops_its_own_units(boot) -> None:
    node = boot(rendered_rule(WITH_MODEL), {**UNITS, **TEMPLATES})
    for verb, unit, state in [
        ("start", "cairn-model@tiny.service", "active"),
        ("restart", "cairn-model@tiny.service", "active"),
        ("stop", "cairn-model@tiny.service", "inactive"),
        ("start", "cairn-rollback.service", "active"),
    ]:
        run = as_user(node, "systemctl", "--no-ask-password", verb, unit)
        assert run.returncode == 0, f"{verb} {unit}: {run.stderr}"
        assert node.unit(unit).ActiveState == state, f"{verb} {unit}"


def test_other_users_get_nothing(boot) -> None:
    node = boot(rendered_rule(WITH_MODEL), {**UNITS, **TEMPLATES})
    argv = ("systemctl", "--no-ask-password", "start", "cairn-model@tiny.service")
    run = as_user(node, *argv, user="nobody", group="nogroup")
    assert run.returncode != 0
    assert "Interactive authentication required" in run.stderr, run.stderr
    assert node.unit("cairn-model@tiny.service").ActiveState == "inactive"
