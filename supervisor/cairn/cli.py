"""The `cairn` command line: run the daemon, read a node's status, check the config."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from cairn import __version__, config
from cairn.errors import ConfigError
from cairn.inference.types import ModelView

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
DEFAULT_URL = f"http://127.0.0.1:{config.DEFAULT_PORT}"


def _load(path: str | None) -> config.Config:
    if path:
        return config.load(path)
    from cairn.inference import demo

    cfg = config.standalone_default()
    models_dir = Path(cfg.node.state_dir) / "models"
    demo.ensure(models_dir)
    return msgspec.structs.replace(cfg, models=demo.models(models_dir))


class _StopEarly(Exception):
    """SIGTERM arrived before the event loop took over signal handling."""


def _stop_early(signum: int, frame: object) -> None:
    raise _StopEarly


def cmd_run(args: argparse.Namespace) -> int:
    """Start the supervisor in the foreground."""
    # Until the loop installs its handlers, SIGTERM/SIGINT still mean a clean exit 0.
    signal.signal(signal.SIGTERM, _stop_early)
    signal.signal(signal.SIGINT, _stop_early)
    try:
        return _run(args)
    except _StopEarly:
        return 0


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)  # validated before anything starts
    from cairn import daemon, logs  # deferred: `cairn status` should not pay for the daemon

    logs.setup(cfg.log.level)
    logging.getLogger(__name__).info(
        "config: %s (%s)", args.config or "built-in standalone default", cfg.digest()
    )
    return daemon.run(cfg)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one model's worker (started by systemd socket activation or by the supervisor)."""
    cfg = config.load(args.config)
    from cairn import logs
    from cairn.inference import worker

    logs.setup(cfg.log.level)
    return worker.main(cfg, args.model, args.socket)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate a config file, and the key and token files it names, without starting anything."""
    cfg = config.load(args.file)
    secrets: list[tuple[str, str, Callable[[str], object]]] = []
    if cfg.api.token_file is not None:
        from cairn.auth import read_token

        secrets.append(("api.token_file", cfg.api.token_file, read_token))
    if (gossip := cfg.gossip) is not None:
        from cairn.gossip.keyring import Keyring

        secrets.append(
            ("gossip.key_file", gossip.key_file, lambda f: Keyring.from_file(f, gossip.cluster))
        )
    for key, path, read in secrets:
        if Path(path).exists():
            read(path)  # raises ConfigError naming the key
        else:  # a system build has no secrets: the daemon refuses to start without them
            print(f"{args.file}: {key} {path} is not here; not checked", file=sys.stderr)
    print(f"{args.file}: ok ({cfg.digest()})")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    """Print the config file's JSON Schema."""
    print(json.dumps(config.json_schema(), indent=2))
    return 0


def _fmt_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}" if i else f"{int(n)} B"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the header) as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _gpu_line(g: dict[str, Any]) -> str:
    parts = [g["name"]]
    if g["utilization_ratio"] is not None:
        parts.append(f"{g['utilization_ratio'] * 100:.0f}% busy")
    if g["memory_total_bytes"] is not None:
        used, total = _fmt_bytes(g["memory_used_bytes"]), _fmt_bytes(g["memory_total_bytes"])
        parts.append(f"{used} of {total}")
    if g["temperature_celsius"] is not None:
        parts.append(f"{g['temperature_celsius']:.0f} °C")
    if g["power_watts"] is not None:
        parts.append(f"{g['power_watts']:.0f} W")
    return ", ".join(parts)


def render_status(doc: dict[str, Any]) -> str:
    """Human-readable status: node, components, machine, generation."""
    node = doc["node"]
    out = [
        f"Node {node['name']} ({node['hostname']})  cairn {doc['version']}  "
        f"{'READY' if doc['ready'] else 'NOT READY'}",
        _table(
            [
                ("uptime", f"{doc['uptime_seconds']:.0f} s"),
                ("config", doc["config_digest"][:19]),
            ]
        ),
        "Components",
        _table(
            [
                (n, c["state"] + (f" ({c['detail']})" if c["detail"] else ""))
                for n, c in sorted(doc["components"].items())
            ]
        ),
    ]
    probe = doc.get("probe")
    if probe:
        cpu, mem, disk = probe["cpu"], probe["memory"], probe["disk"]
        cores = " ".join(f"{r * 100:.0f}%" for r in cpu["usage_ratio"])
        rows = [
            ("cpu", f"{cpu['count']} cores: {cores}"),
            ("isolated", ",".join(map(str, cpu["isolated"])) or "none"),
            ("load", " ".join(f"{x:.2f}" for x in probe["load"])),
            ("memory", f"{_fmt_bytes(mem['used_bytes'])} used of {_fmt_bytes(mem['total_bytes'])}"),
            (
                "disk",
                f"{_fmt_bytes(disk['free_bytes'])} free of "
                f"{_fmt_bytes(disk['total_bytes'])} at {disk['path']}",
            ),
        ]
        temps = [t["celsius"] for t in probe["temperatures"]]
        rows.append(("hottest", f"{max(temps):.0f} °C" if temps else "no sensors"))
        rows += [(f"gpu {g['index']}", _gpu_line(g)) for g in probe["gpus"]] or [
            ("gpus", f"none ({probe['gpu_reason']})")
        ]
        out += ["Machine", _table(rows)]
    else:
        out += ["Machine", "  (no probe sample yet)"]
    models = msgspec.convert(doc.get("models") or {}, dict[str, ModelView])
    if models:
        rows = []
        for name, m in sorted(models.items()):
            st = m.stats
            busy = (
                f"{st.active}/{st.slots} slots, {st.queued} queued" if st.slots is not None else ""
            )
            state = m.state + (f" ({m.reason})" if m.reason else "")
            rows.append((name, ", ".join(x for x in (m.kind, state, m.device or "", busy) if x)))
        out += ["Models", _table(rows)]
    gen = doc.get("generation")
    if gen:
        rows = [
            (
                f"system-{g['number']}",
                " ".join(f for f, on in (("current", g["current"]), ("booted", g["booted"])) if on)
                or "-",
            )
            for g in gen["profiles"]
        ]
        out += ["Generations", _table(rows or [("(none)", "")])]
    else:
        out += ["Generations", f"  unavailable: {doc['generation_reason']}"]
    return "\n".join(out)


def render_generations(doc: dict[str, Any]) -> str:
    """The NixOS generations with the gate's verdicts."""
    gate, gens = doc["gate"], doc.get("generation")
    head = f"gate: {gate['status']}" + (f" ({gate['detail']})" if gate["detail"] else "")
    if not gens:
        return f"{head}\nno generations: {doc['generation_reason']}"
    rows = [("GENERATION", "CREATED", "STATUS")]
    for g in reversed(gens["profiles"]):
        flags = [
            f
            for f, on in (
                ("current", g["current"]),
                ("booted", g["booted"]),
                ("confirmed", g["number"] in gate["confirmed"]),
                ("bad", g["number"] in gate["bad"]),
            )
            if on
        ]
        rows.append((str(g["number"]), g["created"][:19].replace("T", " "), " ".join(flags) or "-"))
    return "\n".join([head, _columns(rows)])


def render_incidents(incidents: list[dict[str, Any]]) -> str:
    """Open incidents (with their fix attempts), then recently closed ones."""
    if not incidents:
        return "no incidents"
    out = []
    for i in incidents:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i["since"]))
        state = "OPEN" if i["closed"] is None else "closed"
        out.append(f"{i['id']}  {state}  since {since}  {i['subject']}: {i['detail']}")
        if i["closed"] is None:
            out += [f"    fix: {i['fix']}"] if i["fix"] else []
            out += [f"    {fix}" for fix in i["fixes"]]
    return "\n".join(out)


def render_units(units: list[dict[str, Any]]) -> str:
    """The sleepable units as a table."""
    if not units:
        return "no sleepable units"
    head = ("UNIT", "KIND", "STATE", "BUSY", "IDLE", "TTL", "SLEEPS", "WAKES", "LAST WAKE")
    rows = [head]
    for u in units:
        sleeps = ", ".join(f"{n} {r}" for r, n in sorted(u["sleeps"].items())) or "0"
        last = u["last_wake_seconds"]
        rows.append(
            (
                u["unit"],
                u["kind"],
                u["state"],
                str(u["busy"]),
                f"{u['idle_seconds']:.0f} s",
                f"{u['ttl_seconds']:g} s",
                sleeps,
                str(u["wakes"]),
                "-" if last is None else f"{last:.2f} s",
            )
        )
    return _columns(rows)


def _fetch_status(args: argparse.Namespace) -> dict[str, Any] | None:
    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"cairn {args.command}: cannot read {url}: {err}", file=sys.stderr)
        return None


def _show(
    args: argparse.Namespace,
    pick: Callable[[dict[str, Any]], Any],
    render: Callable[[Any], str],
) -> int:
    """Fetch a node's /status; print the part `pick` takes, as JSON or as `render` says."""
    doc = _fetch_status(args)
    if doc is None:
        return EXIT_UNREACHABLE
    part = pick(doc)
    print(json.dumps(part, indent=2) if args.json else render(part))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print a node's /status."""
    return _show(args, lambda d: d, render_status)


def cmd_incidents(args: argparse.Namespace) -> int:
    """Print a node's incidents."""
    return _show(args, lambda d: d.get("incidents", []), render_incidents)


def cmd_generations(args: argparse.Namespace) -> int:
    """Print a node's generations and the gate's verdicts."""
    keys = ("gate", "generation", "generation_reason")
    return _show(args, lambda d: {k: d.get(k) for k in keys}, render_generations)


def _operator_socket(args: argparse.Namespace) -> Path:
    """--socket; else the state dir of --config; else the first of the usual places that exists."""
    if args.socket:
        return Path(args.socket)
    if args.config:
        return _load(args.config).operator_socket()
    places = [Path(config.NodeConfig().state_dir), Path("/var/lib/cairn")]
    sockets = [p / config.OPERATOR_SOCKET for p in places]
    return next((s for s in sockets if s.exists()), sockets[0])


def _operate(args: argparse.Namespace, action: str, body: dict[str, Any]) -> int:
    from cairn import operator

    path = _operator_socket(args)
    try:
        status, answer = operator.call(path, action, body, args.timeout)
    except operator.OperatorError as err:
        print(f"cairn {args.command}: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if status >= 400:
        message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
        print(f"cairn {args.command}: {message or status}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    """Confirm the running generation."""
    return _operate(args, "confirm", {})


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll back to generation N (default: the newest confirmed one)."""
    return _operate(args, "rollback", {"to": args.generation})


def cmd_rollback_helper(args: argparse.Namespace) -> int:
    """The privileged helper: carry out the rollback the supervisor asked for."""
    from cairn import logs, rollback
    from cairn.state import StateFile

    cfg = config.load(args.config)
    logs.setup(cfg.log.level)
    state_dir = Path(args.state_dir or cfg.node.state_dir)
    return rollback.run(StateFile(state_dir / "state.json"), Path(cfg.probe.nix_profiles))


def cmd_units(args: argparse.Namespace) -> int:
    """Print a node's sleepable units."""
    return _show(args, lambda d: d.get("sleep", []), render_units)


def parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="cairn", description=__doc__)
    p.add_argument("--version", action="version", version=f"cairn {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the supervisor in the foreground",
        description="Run the supervisor; without --config, a standalone node.",
    )
    run.add_argument("--config", metavar="FILE", help="config file (.toml or .json)")
    run.set_defaults(func=cmd_run)

    wk = sub.add_parser(
        "worker",
        help="run one model's inference worker",
        description="Serve one model on a unix socket (systemd socket activation, or --socket).",
    )
    wk.add_argument("--config", metavar="FILE", required=True, help="config file (.toml or .json)")
    wk.add_argument("--model", metavar="NAME", required=True, help="the model to serve")
    wk.add_argument("--socket", metavar="PATH", help="bind this unix socket (standalone)")
    wk.set_defaults(func=cmd_worker)

    st = sub.add_parser(
        "status",
        help="show a node's status",
        description="Print a running node's status as a table, or JSON.",
    )
    un = sub.add_parser(
        "units",
        help="list the sleepable units",
        description="Print a running node's sleepable units: state, idleness, sleeps, wakes.",
    )
    gens = sub.add_parser(
        "generations",
        help="list the NixOS generations and the gate's verdicts",
        description="Print the node's generations: current, booted, confirmed, bad.",
    )
    inc = sub.add_parser(
        "incidents",
        help="list open and recent incidents",
        description="Print the node's open incidents with their fix attempts, then closed ones.",
    )
    conf = sub.add_parser(
        "confirm",
        help="confirm the running generation",
        description="Confirm the running generation now (it will never be rolled back).",
    )
    rb = sub.add_parser(
        "rollback",
        help="roll back to a generation",
        description="Switch back to generation N, default the newest confirmed one.",
    )
    rb.add_argument("generation", nargs="?", type=int, metavar="N")
    for p_ in (st, un, gens, inc):
        p_.add_argument("--url", default=DEFAULT_URL, help=f"node address (default {DEFAULT_URL})")
        p_.add_argument("--json", action="store_true", help="print the raw JSON")
    for p_ in (conf, rb):
        p_.add_argument(
            "--socket",
            metavar="PATH",
            help="the node's operator socket (default: <state dir>/operator.sock of --config,"
            " else of the default state dir, else /var/lib/cairn/operator.sock)",
        )
        p_.add_argument("--config", metavar="FILE", help="the node's config, for its state dir")
    for p_ in (st, un, gens, inc, conf, rb):
        p_.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    st.set_defaults(func=cmd_status)
    gens.set_defaults(func=cmd_generations)
    inc.set_defaults(func=cmd_incidents)
    conf.set_defaults(func=cmd_confirm)
    rb.set_defaults(func=cmd_rollback)
    helper = sub.add_parser(
        "rollback-helper",
        help="(root) carry out a requested rollback; run by cairn-rollback.service",
        description="Switch to the generation the supervisor asked for, if it exists and is"
        " not marked bad.",
    )
    helper.add_argument("--config", metavar="FILE", required=True)
    helper.add_argument("--state-dir", metavar="DIR", help="default: node.state_dir")
    helper.set_defaults(func=cmd_rollback_helper)
    un.set_defaults(func=cmd_units)

    cfg = sub.add_parser(
        "config",
        help="check the config or print its schema",
        description="Validate a config file, or print its JSON Schema.",
    )
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = csub.add_parser(
        "check",
        help="validate a config file without starting",
        description="Validate FILE; exit 2 naming the bad key.",
    )
    chk.add_argument("file", metavar="FILE")
    chk.set_defaults(func=cmd_config_check)
    sch = csub.add_parser(
        "schema",
        help="print the config JSON Schema",
        description="Print the JSON Schema of the config file.",
    )
    sch.set_defaults(func=cmd_config_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cairn` console script."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"cairn: {err}", file=sys.stderr)
        return EXIT_CONFIG
