"""Typed, frozen supervisor configuration: loaded once from TOML or JSON, validated, or refused."""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect

from cairn.errors import ConfigError
from cairn.validation import locate

SCHEMA_VERSION = 1
DEFAULT_PORT = 8470
DEFAULT_GOSSIP_PORT = 8471
REQUEST_TIMEOUT_S = 600.0  # a model's default; also the deadline of a hop to a peer
# Every float has finite bounds: msgspec then refuses inf and nan (TOML has them, and Python's
# json reads Infinity and NaN), and no interval can be so small that a loop spins.
DAY_S = 86400  # an int: the JSON Schema keeps printing 86400
LONGEST_S = 30.0 * DAY_S  # no duration in the config is longer
SHORTEST_INTERVAL_S = 0.1  # no period between two rounds of anything is shorter

Port = Annotated[int, msgspec.Meta(ge=1, le=65535, description="TCP port")]
# A hostname or an IPv4/IPv6 address; never empty (an empty host would bind every interface).
Host = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(?!.*\n)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$",
        min_length=1,
        description="an IP address or hostname to bind",
    ),
]
AbsPath = Annotated[str, msgspec.Meta(pattern=r"^/")]
# Every `$`-anchored pattern starts with (?!.*\n): Python's `$` also matches before a final
# newline, JSON Schema's (ECMA-262) does not; the lookahead makes both refuse any newline.


class LogLevel(enum.StrEnum):
    """Closed set of log levels."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


def _default_state_dir() -> str:
    # systemd's StateDirectory= sets STATE_DIRECTORY; standalone falls back to the XDG state home.
    if env := os.environ.get("STATE_DIRECTORY"):
        return env.split(":")[0]
    xdg = os.environ.get("XDG_STATE_HOME")
    if not xdg:
        try:
            xdg = str(Path.home() / ".local" / "state")
        except (RuntimeError, KeyError):  # a systemd DynamicUser has neither HOME nor a passwd home
            return "/var/lib/cairn"
    return str(Path(xdg).absolute() / "cairn")


def _default_name() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config table: immutable, unknown keys refused."""


class NodeConfig(_Section, frozen=True):
    """Identity and local storage of this node."""

    name: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^(?!.*\n)[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
            description="a name of letters, digits, '.', '_' or '-', at most 63 characters;"
            " default: the hostname",
        ),
    ] = msgspec.field(default_factory=_default_name)
    state_dir: Annotated[
        AbsPath,
        msgspec.Meta(
            description="an absolute path, the state directory;"
            " default: $STATE_DIRECTORY, else the XDG state home"
        ),
    ] = msgspec.field(default_factory=_default_state_dir)


SecretFile = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^/(?!nix/store/)",
        description="an absolute path outside the Nix store (the store is world-readable)",
    ),
]


class ApiConfig(_Section, frozen=True):
    """Where the HTTP API and status endpoint listen."""

    host: Host = "127.0.0.1"
    port: Port = DEFAULT_PORT
    token_file: SecretFile | None = None  # required to bind anything but loopback

    def loopback(self) -> bool:
        """Whether only this machine can reach the API."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a hostname: it may resolve anywhere
            return False


class ProbeConfig(_Section, frozen=True):
    """How often the node probe samples the machine."""

    interval: Annotated[
        float, msgspec.Meta(ge=0.5, le=3600, description="seconds between probe rounds")
    ] = 5.0
    nix_profiles: Annotated[
        AbsPath,
        msgspec.Meta(description="an absolute path, where NixOS keeps its system-N-link profiles"),
    ] = "/nix/var/nix/profiles"


class ModelKind(enum.StrEnum):
    """Which engine serves a model."""

    GGUF = "gguf"  # llama-cpp-python
    ONNX = "onnx"  # onnxruntime (embeddings)


class WorkerManager(enum.StrEnum):
    """Who starts model workers."""

    CHILDREN = "children"  # the supervisor spawns them (standalone, `make run`)
    SYSTEMD = "systemd"  # cairn-model@NAME.socket activates them; the supervisor only connects


ModelName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(?!.*\n)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="a model name of letters, digits, '.', '_' or '-' (it names the worker unit)",
    ),
]
Count = Annotated[int, msgspec.Meta(ge=1, le=1024)]


class ModelConfig(_Section, frozen=True):
    """One model the node serves, in its own worker process."""

    name: ModelName
    path: Annotated[AbsPath, msgspec.Meta(description="an absolute path to the model file")]
    kind: ModelKind
    context: Annotated[int, msgspec.Meta(ge=64, le=1 << 20, description="context size, tokens")] = (
        2048
    )
    threads: Annotated[Count, msgspec.Meta(description="compute threads, one per core")] = 1
    gpu_layers: Annotated[
        int, msgspec.Meta(ge=0, le=4096, description="layers to offload to an NVIDIA GPU")
    ] = 0
    batch: Annotated[int, msgspec.Meta(ge=1, le=65536, description="tokens per decode batch")] = 512
    slots: Annotated[Count, msgspec.Meta(description="requests decoded together")] = 4
    queue: Annotated[
        int, msgspec.Meta(ge=0, le=65536, description="requests waiting behind busy slots")
    ] = 16
    idle_ttl: Annotated[
        float,
        msgspec.Meta(
            ge=1, le=LONGEST_S, description="seconds without requests before the worker sleeps"
        ),
    ] = 300.0
    cpus: Literal["isolated"] | list[Annotated[int, msgspec.Meta(ge=0)]] | None = None
    embedding: Annotated[
        bool, msgspec.Meta(description="a GGUF embedding model: serve /v1/embeddings, not chat")
    ] = False
    startup_timeout: Annotated[
        float,
        msgspec.Meta(ge=1, le=LONGEST_S, description="seconds a worker may take to load its model"),
    ] = 120.0
    request_timeout: Annotated[
        float,
        msgspec.Meta(
            ge=1,
            le=DAY_S,
            description="seconds one request may take in the worker; then the client gets 504",
        ),
    ] = REQUEST_TIMEOUT_S


class InferenceConfig(_Section, frozen=True):
    """How model workers are run and reached."""

    workers: WorkerManager = WorkerManager.CHILDREN
    socket_dir: (
        Annotated[
            AbsPath,
            msgspec.Meta(description="an absolute path, where workers' unix sockets live"),
        ]
        | None
    ) = None  # default: <node.state_dir>/sockets
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 4 << 20


IpAddress = Annotated[
    str,
    msgspec.Meta(pattern=r"^(?!.*\n)[0-9A-Fa-f:.]{2,45}$", description="an IPv4 or IPv6 address"),
]
JoinAddress = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(?!.*\n)(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$",
        description="host or host:port ([v6]:port) of a peer",
    ),
]


class Profile(enum.StrEnum):
    """Which gossip timing set a cluster runs with (`cairn.gossip.profiles`)."""

    LAN = "lan"
    WAN = "wan"
    LOCAL = "local"


class GossipConfig(_Section, frozen=True):
    """Membership and health gossip with the other nodes (absent: a standalone node)."""

    key_file: SecretFile
    bind: IpAddress = "0.0.0.0"
    port: Port = DEFAULT_GOSSIP_PORT
    advertise: IpAddress | None = None  # default: `bind`, or the address routing to a peer
    join: list[JoinAddress] = msgspec.field(default_factory=list)
    cluster: Annotated[
        str, msgspec.Meta(pattern=r"^(?!.*\n)[A-Za-z0-9._-]{1,64}$", description="the cluster name")
    ] = "cairn"
    profile: Profile = Profile.LAN  # memberlist's timing defaults for each kind of network


UnitName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(?!.*\n)[A-Za-z0-9:_.@\\-]{1,250}\.(service|socket)$",
        description="a systemd unit name",
    ),
]


class SleepableService(_Section, frozen=True):
    """A socket-activated service the sleeper stops when idle (its socket keeps listening)."""

    unit: UnitName
    socket: UnitName
    ttl: Annotated[
        float,
        msgspec.Meta(
            ge=1, le=LONGEST_S, description="seconds without connections before it sleeps"
        ),
    ] = 300.0


class SleepConfig(_Section, frozen=True):
    """Idle sleep: model workers (each by its `idle_ttl`) and the services listed here."""

    enable: bool = True
    services: list[SleepableService] = msgspec.field(default_factory=list)
    min_available_mb: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="below this much available memory the least recently used unit sleeps"
            " at once (0: never for memory)",
        ),
    ] = 0
    interval: Annotated[
        float,
        msgspec.Meta(ge=SHORTEST_INTERVAL_S, le=60, description="seconds between idleness checks"),
    ] = 1.0


class HealConfig(_Section, frozen=True):
    """Self-healing: the generation gate (confirm or roll back) and its critical checks."""

    confirm_window: Annotated[
        float,
        msgspec.Meta(
            ge=1,
            le=LONGEST_S,
            description="seconds a new generation has to pass the critical checks",
        ),
    ] = 120.0
    critical_units: list[UnitName] = msgspec.field(default_factory=list)  # must be active
    probe_models: bool = True  # each model must answer a one-token probe in the window
    rollback_unit: UnitName = "cairn-rollback.service"  # the privileged helper
    probe_timeout: Annotated[
        float,
        msgspec.Meta(
            ge=0.5, le=600, description="seconds a model may take to answer its one-token probe"
        ),
    ] = 30.0
    stall_timeout: Annotated[
        float,
        msgspec.Meta(
            ge=1,
            le=DAY_S,
            description="seconds a busy worker's decoding may stand still (no step finished)"
            " before its failed probe counts as a hang; a slow CPU's longest batch must fit",
        ),
    ] = 300.0
    interval: Annotated[
        float,
        msgspec.Meta(
            ge=SHORTEST_INTERVAL_S, le=600, description="seconds between rounds of checks"
        ),
    ] = 10.0
    restart_backoff_max: Annotated[
        float,
        msgspec.Meta(
            ge=SHORTEST_INTERVAL_S,
            le=LONGEST_S,
            description="longest wait between two restarts, seconds",
        ),
    ] = 60.0
    reset_cooldown: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=LONGEST_S,
            description="seconds after systemd's start limit before reset-failed",
        ),
    ] = 60.0
    resets_per_hour: Annotated[
        int, msgspec.Meta(ge=0, le=100, description="reset-failed tries an hour, then give up")
    ] = 3
    disk_min_free: Annotated[
        float, msgspec.Meta(ge=0, le=1, description="free share of the state dir's disk")
    ] = 0.05
    memory_min_mb: Annotated[int, msgspec.Meta(ge=0)] = 256  # available memory below: incident
    gpu_warn_celsius: Annotated[float, msgspec.Meta(gt=0, le=150)] = 80.0
    gpu_pause_celsius: Annotated[float, msgspec.Meta(gt=0, le=150)] = 85.0
    gpu_resume_celsius: Annotated[float, msgspec.Meta(gt=0, le=150)] = 75.0
    gpu_pause_after: Annotated[
        float,
        msgspec.Meta(ge=0, le=LONGEST_S, description="seconds at gpu_pause_celsius before pausing"),
    ] = 300.0
    gpu_warn_memory: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9


class PowerConfig(_Section, frozen=True):
    """Suspend this node while the cluster does not need it; peers wake it with Wake-on-LAN."""

    enable: bool = False
    idle_after: Annotated[
        float,
        msgspec.Meta(
            ge=1, le=LONGEST_S, description="seconds without any use before it may suspend"
        ),
    ] = 3600.0
    mac: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=r"^(?!.*\n)[0-9a-f]{2}(:[0-9a-f]{2}){5}$",
                description="a MAC address in lower case, e.g. 52:54:00:12:34:56",
            ),
        ]
        | None
    ) = None  # default: the MAC of the interface holding the gossip address


class LogConfig(_Section, frozen=True):
    """Logging verbosity."""

    level: LogLevel = LogLevel.INFO


class Config(_Section, frozen=True):
    """The whole supervisor configuration."""

    version: Annotated[
        int,
        msgspec.Meta(ge=SCHEMA_VERSION, le=SCHEMA_VERSION, description="config schema version"),
    ]
    node: NodeConfig = msgspec.field(default_factory=NodeConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    probe: ProbeConfig = msgspec.field(default_factory=ProbeConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    inference: InferenceConfig = msgspec.field(default_factory=InferenceConfig)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    gossip: GossipConfig | None = None
    sleep: SleepConfig = msgspec.field(default_factory=SleepConfig)
    power: PowerConfig = msgspec.field(default_factory=PowerConfig)
    heal: HealConfig = msgspec.field(default_factory=HealConfig)

    def model(self, name: str) -> ModelConfig | None:
        """The model of that name, if configured."""
        return next((m for m in self.models if m.name == name), None)

    # Where the node's unix sockets live: one place, for the code that binds them and for
    # _check_socket_paths, which holds each to the kernel's length limit.
    def operator_socket(self) -> Path:
        """The operator socket (confirm, roll back)."""
        return Path(self.node.state_dir) / OPERATOR_SOCKET

    def socket_dir(self) -> Path:
        """Where the workers' unix sockets live."""
        return Path(self.inference.socket_dir or Path(self.node.state_dir) / "sockets")

    def worker_socket(self, model: str) -> Path:
        """A model's worker socket."""
        return self.socket_dir() / f"{model}.sock"

    def run_dir(self) -> Path:
        """Standalone mode's runtime files: the workers' config and their sd_notify sockets."""
        return Path(self.node.state_dir) / "run"

    def notify_socket(self, model: str) -> Path:
        """A standalone worker's sd_notify socket."""
        return self.run_dir() / f"{model}.notify"

    def digest(self) -> str:
        """Stable sha256 over the effective settings, shown in /status."""
        blob = json.dumps(msgspec.to_builtins(self), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()


def _translate(err: msgspec.ValidationError, source: str) -> ConfigError:
    path, msg, key = locate(err)
    if key is not None:
        return ConfigError(
            path, "unknown key" if key == "unknown" else "required key is missing", source
        )
    if "matching regex" in msg:  # the regex itself means little to a person; say what fits
        return ConfigError(path, f"expected {_description(path)}", source)
    problem = msg[0].lower() + msg[1:] if msg else "invalid value"
    return ConfigError(path or "(root)", problem, source)


def _optional(info: Any) -> Any:
    """The type inside `T | None`; any other type as it is."""
    if isinstance(info, msgspec.inspect.UnionType):
        inner = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(inner) == 1:
            return inner[0]
    return info


def _description(path: str) -> str:
    """The schema description of the field at a dotted path."""
    info: Any = msgspec.inspect.type_info(Config)
    for part in path.split("."):
        while isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        info = _optional(info)
        if part.isdigit():  # an element of a list, e.g. models.0
            info = info.item_type
            continue
        info = _optional(next(f for f in info.fields if f.encode_name == part).type)
    extra = info.extra_json_schema if isinstance(info, msgspec.inspect.Metadata) else None
    return str((extra or {}).get("description", "a valid value"))


def from_mapping(data: Any, source: str = "") -> Config:
    """Validate a parsed document into a frozen Config."""
    if not isinstance(data, dict):
        raise ConfigError("(root)", "expected a table of settings", source)
    try:
        cfg = msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as err:
        raise _translate(err, source) from None
    if not cfg.api.loopback() and cfg.api.token_file is None:
        raise ConfigError(
            "api.token_file",
            f"required when api.host ({cfg.api.host}) is not a loopback address:"
            " the API must not be open to the network without a token",
            source,
        )
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if m.name in seen:
            raise ConfigError(f"models.{i}.name", f"duplicate model name '{m.name}'", source)
        seen.add(m.name)
        if isinstance(m.cpus, list) and m.cpus and len(m.cpus) < m.threads:
            raise ConfigError(
                f"models.{i}.cpus",
                f"{len(m.cpus)} cores for {m.threads} threads: each thread needs its own core",
                source,
            )
    if cfg.heal.gpu_resume_celsius >= cfg.heal.gpu_pause_celsius:
        raise ConfigError(
            "heal.gpu_resume_celsius",
            f"must be below heal.gpu_pause_celsius ({cfg.heal.gpu_pause_celsius:g})",
            source,
        )
    if cfg.power.enable and cfg.gossip is None:
        raise ConfigError(
            "power.enable", "needs [gossip]: peers must know when the node is needed", source
        )
    _check_socket_paths(cfg, source)
    units: set[str] = set()
    for i, svc in enumerate(cfg.sleep.services):
        if not svc.unit.endswith(".service") or not svc.socket.endswith(".socket"):
            where = "unit" if not svc.unit.endswith(".service") else "socket"
            raise ConfigError(
                f"sleep.services.{i}.{where}",
                f"expected a .{'service' if where == 'unit' else 'socket'} unit",
                source,
            )
        if svc.unit in units:
            raise ConfigError(f"sleep.services.{i}.unit", f"'{svc.unit}' is listed twice", source)
        units.add(svc.unit)
    return cfg


# A unix socket's path must fit sockaddr_un.sun_path (108 bytes with the final NUL on Linux).
UNIX_PATH_MAX = 107
OPERATOR_SOCKET = "operator.sock"  # in node.state_dir


def _check_socket_paths(cfg: Config, source: str) -> None:
    """Every unix socket the node binds fits the kernel's limit, named by the key that sets it."""
    places = [("node.state_dir", cfg.operator_socket())]
    key = "inference.socket_dir" if cfg.inference.socket_dir else "node.state_dir"
    places += [(key, cfg.worker_socket(m.name)) for m in cfg.models]
    if cfg.inference.workers is WorkerManager.CHILDREN:  # each child's sd_notify socket
        places += [("node.state_dir", cfg.notify_socket(m.name)) for m in cfg.models]
    for key, path in places:
        if len(str(path).encode()) > UNIX_PATH_MAX:
            raise ConfigError(
                key,
                f"the unix socket {path} would be {len(str(path).encode())} bytes long; the kernel"
                f" takes at most {UNIX_PATH_MAX}: choose a shorter directory",
                source,
            )


def load(path: str | Path) -> Config:
    """Read a TOML (.toml) or JSON (.json) config file and validate it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("(file)", f"cannot read: {err.strerror}", str(p)) from None
    except UnicodeDecodeError as err:
        raise ConfigError("(file)", f"not UTF-8 text: {err.reason}", str(p)) from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError("(file)", "unknown format: name it *.toml or *.json", str(p))
    except RecursionError:  # both parsers recurse per level of nesting
        raise ConfigError("(file)", "nested too deeply", str(p)) from None
    except ValueError as err:  # a syntax error, or an integer of more than 4300 digits
        raise ConfigError("(file)", f"not valid {p.suffix[1:].upper()}: {err}", str(p)) from None
    return from_mapping(data, str(p))


def standalone_default() -> Config:
    """The built-in config of `cairn run` without a file: one node on 127.0.0.1:8470."""
    return Config(version=SCHEMA_VERSION)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file (draft 2020-12)."""
    schema: dict[str, Any] = msgspec.json.schema(Config)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Cairn supervisor configuration"
    return schema
