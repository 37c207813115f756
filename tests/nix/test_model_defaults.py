"""Model defaults are written once, in ModelConfig; the Nix module reads them from its schema."""

from __future__ import annotations

import json
import re

import msgspec

from cairn import config
from cairn.config import ModelConfig
from tests.nix import REPO, nix_eval_file

SCHEMA = REPO / "modules" / "config-schema.json"
DEFAULTS = REPO / "modules" / "model-defaults.nix"
INFERENCE = REPO / "modules" / "inference.nix"


def _nix_name(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def test_the_committed_schema_is_what_cairn_config_schema_prints() -> None:
    # `cairn config schema` prints exactly this: json.dumps(indent=2) and a newline.
    fresh = json.dumps(config.json_schema(), indent=2) + "\n"
    rerun = "cairn config schema > modules/config-schema.json"
    assert SCHEMA.read_text() == fresh, f"modules/config-schema.json is stale: run `{rerun}`"


def test_every_python_model_default_reaches_the_nix_options_unchanged() -> None:
    python = {
        _nix_name(f.name): f.default
        for f in msgspec.structs.fields(ModelConfig)
        if f.default is not msgspec.NODEFAULT
    }
    assert nix_eval_file(DEFAULTS) == python  # 300.0 s reads as 300: equal, as numbers


def test_the_model_options_take_their_defaults_from_there() -> None:
    text = INFERENCE.read_text()
    assert "defaults = import ./model-defaults.nix;" in text
    for name in nix_eval_file(DEFAULTS):
        option = re.search(rf"\n      {name} = mkOption {{\n(.*?)\n      }};\n", text, re.S)
        assert option is not None, name
        assert f"default = defaults.{name};" in option.group(1), name
