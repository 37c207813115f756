"""Config loading: valid files load frozen; each kind of mistake names its key path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from cairn import config
from cairn.errors import ConfigError


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_and_json_give_the_same_config(tmp_path: Path) -> None:
    toml = write(tmp_path, "c.toml", 'version = 1\n[api]\nport = 9000\n[node]\nname = "n1"\n')
    js = write(
        tmp_path,
        "c.json",
        json.dumps({"version": 1, "api": {"port": 9000}, "node": {"name": "n1"}}),
    )
    a, b = config.load(toml), config.load(js)
    assert a.api.port == 9000 and a.node.name == "n1"
    assert a.digest() == b.digest()


def test_config_is_frozen() -> None:
    cfg = config.standalone_default()
    with pytest.raises(AttributeError):
        cfg.api.port = 1  # type: ignore[misc]


def test_standalone_default_binds_loopback_8470() -> None:
    cfg = config.standalone_default()
    assert (cfg.api.host, cfg.api.port) == ("127.0.0.1", 8470)


@pytest.mark.parametrize(
    ("doc", "path", "problem"),
    [
        ({"version": 1, "api": {"port": "80"}}, "api.port", "expected `int`, got `str`"),
        ({"version": 1, "api": {"prot": 80}}, "api.prot", "unknown key"),
        ({"version": 1, "bogus": {}}, "bogus", "unknown key"),
        ({"api": {"port": 80}}, "version", "required key is missing"),
        ({"version": 1, "api": {"port": 70000}}, "api.port", "expected `int` <= 65535"),
        ({"version": 1, "log": {"level": "loud"}}, "log.level", "invalid enum value 'loud'"),
        ({"version": 2}, "version", "expected `int` <= 1"),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, doc: dict, path: str, problem: str) -> None:
    f = write(tmp_path, "bad.json", json.dumps(doc))
    with pytest.raises(ConfigError) as exc:
        config.load(f)
    assert exc.value.path == path
    assert exc.value.problem == problem
    assert str(exc.value) == f"{f}: config error at {path}: {problem}"


def test_unparseable_toml_is_a_config_error(tmp_path: Path) -> None:
    f = write(tmp_path, "bad.toml", "version = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(f)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"version": 1, "models": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("deep.toml", "version = 1\nx = " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("deep-tables.toml", "version = 1\nx = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n"),
    ],
)
def test_a_deeply_nested_file_is_a_config_error(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(ConfigError, match="nested too deeply") as exc:
        config.load(write(tmp_path, name, text))
    assert exc.value.path == "(file)"


@pytest.mark.parametrize("name", ["big.json", "big.toml"])
def test_an_integer_of_5000_digits_is_a_config_error(tmp_path: Path, name: str) -> None:
    text = ('{"version": %s}' if name.endswith(".json") else "version = %s\n") % ("1" * 5000)
    with pytest.raises(ConfigError, match="Exceeds the limit"):
        config.load(write(tmp_path, name, text))


# Every float in the config: none takes inf or nan, none of the intervals a vanishing period.
FLOATS = [
    ("probe", "interval"),
    ("sleep", "interval"),
    ("heal", "confirm_window"),
    ("heal", "interval"),
    ("heal", "probe_timeout"),
    ("heal", "stall_timeout"),
    ("heal", "restart_backoff_max"),
    ("heal", "reset_cooldown"),
    ("heal", "disk_min_free"),
    ("heal", "gpu_warn_celsius"),
    ("heal", "gpu_pause_celsius"),
    ("heal", "gpu_resume_celsius"),
    ("heal", "gpu_pause_after"),
    ("heal", "gpu_warn_memory"),
    ("power", "idle_after"),
    ("models.0", "idle_ttl"),
    ("models.0", "startup_timeout"),
    ("models.0", "request_timeout"),
    ("sleep.services.0", "ttl"),
]


def test_every_float_of_the_config_is_listed() -> None:
    def floats(info: Any, path: str) -> list[tuple[str, str]]:
        while isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        if isinstance(info, msgspec.inspect.UnionType):
            return [f for t in info.types for f in floats(t, path)]
        if isinstance(info, msgspec.inspect.ListType):
            return floats(info.item_type, f"{path}.0")
        if isinstance(info, msgspec.inspect.StructType):
            return [
                f
                for field in info.fields
                for f in (
                    [(path.lstrip("."), field.encode_name)]
                    if isinstance(_bare(field.type), msgspec.inspect.FloatType)
                    else floats(field.type, f"{path}.{field.encode_name}")
                )
            ]
        return []

    assert sorted(floats(msgspec.inspect.type_info(config.Config), "")) == sorted(FLOATS)


def _bare(info: Any) -> Any:
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return info


def _with(section: str, key: str, value: float) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "models": [{"name": "m", "path": "/m.gguf", "kind": "gguf"}],
        "sleep": {"services": [{"unit": "a.service", "socket": "a.socket"}]},
    }
    parts = section.split(".")
    target: Any = doc
    for part in parts:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    target[key] = value
    return doc


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 1e300])
@pytest.mark.parametrize(("section", "key"), FLOATS)
def test_no_float_takes_inf_or_nan(tmp_path: Path, section: str, key: str, value: float) -> None:
    f = write(tmp_path, "c.json", json.dumps(_with(section, key, value)))  # Infinity, NaN
    with pytest.raises(ConfigError) as exc:
        config.load(f)
    assert exc.value.path == f"{section}.{key}"


# The periods and timeouts; the others may be 0 ("at once") or are no time at all.
PERIODS = [f for f in FLOATS if f[1] not in ("reset_cooldown", "gpu_pause_after")]
PERIODS = [f for f in PERIODS if not f[1].startswith(("disk_", "gpu_"))]


@pytest.mark.parametrize(("section", "key"), PERIODS)
def test_no_period_vanishes(tmp_path: Path, section: str, key: str) -> None:
    f = write(tmp_path, "c.json", json.dumps(_with(section, key, 1e-300)))
    with pytest.raises(ConfigError, match=">=") as exc:
        config.load(f)
    assert exc.value.path == f"{section}.{key}"


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "c.yaml", "version: 1\n")
    with pytest.raises(ConfigError, match=r"name it \*\.toml or \*\.json"):
        config.load(f)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "absent.toml")


def test_state_dir_defaults_to_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/cairn:/var/lib/other")
    assert config.standalone_default().node.state_dir == "/var/lib/cairn"


def test_schema_describes_every_section_and_rejects_extras() -> None:
    schema = config.json_schema()
    root = schema["$defs"]["Config"]
    assert set(root["properties"]) == {
        "version",
        "node",
        "api",
        "probe",
        "log",
        "inference",
        "models",
        "gossip",
        "sleep",
        "power",
        "heal",
    }
    assert root["required"] == ["version"]
    assert root["additionalProperties"] is False
    assert schema["$defs"]["ApiConfig"]["properties"]["port"]["maximum"] == 65535


def test_schema_accepts_what_the_loader_accepts() -> None:
    doc = msgspec.to_builtins(config.standalone_default())
    jsonschema.validate(doc, config.json_schema())


def test_models_are_validated_with_their_paths() -> None:
    good = {
        "version": 1,
        "models": [
            {"name": "m1", "path": "/m/a.gguf", "kind": "gguf", "cpus": [0, 1], "threads": 2},
            {"name": "e1", "path": "/m/e.onnx", "kind": "onnx", "cpus": "isolated"},
        ],
    }
    cfg = config.from_mapping(good)
    assert cfg.model("m1") is not None and cfg.model("m1").cpus == [0, 1]  # type: ignore[union-attr]
    cases = [
        ([{"name": "a", "path": "/x", "kind": "pt"}], "models.0.kind"),
        ([{"name": "a", "kind": "gguf"}], "models.0.path"),
        ([{"name": "a", "path": "x.gguf", "kind": "gguf"}], "models.0.path"),
        ([{"name": "a b", "path": "/x", "kind": "gguf"}], "models.0.name"),
        ([{"name": "a", "path": "/x", "kind": "gguf", "slots": 0}], "models.0.slots"),
        ([{"name": "a", "path": "/x", "kind": "gguf", "cpus": [0], "threads": 2}], "models.0.cpus"),
        (
            [
                {"name": "a", "path": "/x", "kind": "gguf"},
                {"name": "a", "path": "/y", "kind": "onnx"},
            ],
            "models.1.name",
        ),
    ]
    for models, path in cases:
        with pytest.raises(ConfigError) as exc:
            config.from_mapping({"version": 1, "models": models})
        assert exc.value.path == path, (models, exc.value)


def test_state_dir_without_any_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # A DynamicUser worker: no HOME, no STATE_DIRECTORY, no passwd entry for its uid.
    for var in ("STATE_DIRECTORY", "XDG_STATE_HOME", "HOME"):
        monkeypatch.delenv(var, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert config.standalone_default().node.state_dir == "/var/lib/cairn"


@pytest.mark.parametrize(
    ("gossip", "path", "problem"),
    [
        ({}, "gossip.key_file", "required key is missing"),
        ({"key_file": "/nix/store/abc-key"}, "gossip.key_file", "outside the Nix store"),
        ({"key_file": "/k", "join": ["a b"]}, "gossip.join.0", "host or host:port"),
        ({"key_file": "/k", "advertise": "node1"}, "gossip.advertise", "an IPv4 or IPv6"),
        ({"key_file": "/k", "profile": "fast"}, "gossip.profile", "invalid enum value"),
    ],
)
def test_bad_gossip_settings_name_the_key(gossip: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"version": 1, "gossip": gossip})
    assert err.value.path == path
    assert problem in err.value.problem


def test_gossip_defaults() -> None:
    cfg = config.from_mapping({"version": 1, "gossip": {"key_file": "/run/keys/gossip"}})
    assert cfg.gossip is not None
    assert (cfg.gossip.port, cfg.gossip.profile, cfg.gossip.cluster) == (8471, "lan", "cairn")
    assert config.standalone_default().gossip is None


@pytest.mark.parametrize(
    ("service", "path", "problem"),
    [
        ({"socket": "nb.socket"}, "sleep.services.0.unit", "required key is missing"),
        ({"unit": "nb.socket", "socket": "nb.socket"}, "sleep.services.0.unit", ".service"),
        ({"unit": "nb.service", "socket": "nb.service"}, "sleep.services.0.socket", ".socket"),
        ({"unit": "nb.service", "socket": "nb.socket", "ttl": 0}, "sleep.services.0.ttl", ">"),
        ({"unit": "nb service", "socket": "nb.socket"}, "sleep.services.0.unit", "unit name"),
    ],
)
def test_bad_sleep_settings_name_the_key(service: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"version": 1, "sleep": {"services": [service]}})
    assert err.value.path == path
    assert problem in err.value.problem


def test_a_service_listed_twice_is_refused() -> None:
    svc = {"unit": "nb.service", "socket": "nb.socket"}
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"version": 1, "sleep": {"services": [svc, svc]}})
    assert err.value.path == "sleep.services.1.unit"


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 1, "node": {"name": "n1\n"}},
        {"version": 1, "models": [{"name": "m\n", "path": "/m", "kind": "gguf"}]},
        {"version": 1, "sleep": {"services": [{"unit": "a.service\n", "socket": "a.socket"}]}},
    ],
)
def test_a_trailing_newline_is_refused_by_the_loader_and_the_schema(doc: dict[str, Any]) -> None:
    # Python's `$` matches before a final newline; the patterns must not, here or in the schema.
    with pytest.raises(ConfigError):
        config.from_mapping(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, config.json_schema())


def test_power_needs_gossip_and_a_well_formed_mac() -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"version": 1, "power": {"enable": True}})
    assert err.value.path == "power.enable"
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"version": 1, "power": {"mac": "52:54:00:12:34"}})
    assert err.value.path == "power.mac"
    cfg = config.from_mapping(
        {
            "version": 1,
            "gossip": {"key_file": "/k"},
            "power": {"enable": True, "mac": "52:54:00:12:34:56"},
        }
    )
    assert cfg.power.idle_after == 3600.0 and not config.standalone_default().power.enable


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"node": {"state_dir": "/" + "s" * 100}}, "node.state_dir"),  # its operator.sock
        (
            {
                "inference": {"socket_dir": "/" + "d" * 100},
                "models": [{"name": "chat", "path": "/m.gguf", "kind": "gguf"}],
            },
            "inference.socket_dir",
        ),
        (
            {
                "node": {"state_dir": "/" + "s" * 90},
                "inference": {"socket_dir": "/run/s"},
                "models": [{"name": "a-long-model-name", "path": "/m.gguf", "kind": "gguf"}],
            },
            "node.state_dir",  # a standalone child's notify socket under <state_dir>/run
        ),
    ],
)
def test_a_unix_socket_path_over_the_kernels_limit_names_its_key(
    settings: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match="at most 107") as exc:
        config.from_mapping({"version": 1, **settings})
    assert exc.value.path == key


def test_a_unix_socket_path_at_the_limit_is_taken() -> None:
    state = "/" + "s" * (config.UNIX_PATH_MAX - len("/operator.sock") - 1)
    assert len(f"{state}/operator.sock") == config.UNIX_PATH_MAX
    assert config.from_mapping({"version": 1, "node": {"state_dir": state}}).node.state_dir == state
