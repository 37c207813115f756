"""JSON schemas as grammars: what the converter would not enforce is refused with its path, and
what it builds makes even a random-weight model write JSON that validates (tried with llama.cpp
itself, through llama-cpp-python's own sampler, so this holds apart from Cairn's engine)."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from cairn.inference import grammars, tools
from cairn.inference.demo_gguf import write_tiny_llama
from cairn.inference.tools import ToolFormat


class Address(BaseModel):
    street: str = Field(max_length=10)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int
    height: float
    member: bool
    tags: list[Annotated[str, Field(max_length=5)]] = Field(max_length=2)
    home: Address
    nick: Annotated[str, Field(max_length=4)] | None = None


def test_a_pydantic_models_schema_passes() -> None:
    grammars.check(Person.model_json_schema())


@pytest.mark.parametrize(
    ("schema", "path", "word"),
    [
        ({"type": "integer", "minimum": 0}, "minimum", "minimum"),
        ({"type": "number", "multipleOf": 2}, "multipleOf", "multipleOf"),
        ({"type": "string", "format": "email"}, "format", "email"),
        ({"type": "string", "maxLength": 3, "format": "date"}, "maxLength", "maxLength"),
        ({"oneOf": [{"type": "string"}]}, "oneOf", "anyOf"),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "type", "type"),
        ({"allOf": [{"type": "string"}]}, "allOf", "allOf"),
        ({"not": {"type": "string"}}, "not", "not"),
        ({"type": "array", "minItems": 1}, "minItems", "minItems"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems", ""),
        ({"type": ["string", "null"], "maxLength": 3}, "maxLength", ""),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1},
            "minProperties",
            "",
        ),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required", "'a'"),
        (
            {"type": "object", "patternProperties": {"^a$": {"type": "string"}}},
            "patternProperties",
            "",
        ),
        (
            {"properties": {"a": {"type": "string", "pattern": "^a.b$"}}},
            "properties.a.pattern",
            "'.b'",
        ),
        ({"type": "string", "pattern": "^\\d+$"}, "pattern", ""),
        ({"type": "string", "pattern": "abc"}, "pattern", "anchored"),
        ({"type": "string", "pattern": "^(?=a)a$"}, "pattern", ""),
        ({"$ref": "https://example.com/s.json"}, "$ref", "local"),
        ({"type": "string", "enum": ["a", 1]}, "enum", "type"),
        ({"items": {"type": "string"}, "prefixItems": [{"type": "string"}]}, "prefixItems", ""),
        ({"type": "array", "items": {}}, "items", "non-empty"),
        ({"description": "anything"}, "", "type"),
        ({"type": "object", "properties": {"a": True}}, "properties.a", "boolean"),
        ({"type": "strin"}, "type", "unknown"),
        # Bounds llama.cpp's parser would recurse into until the worker's stack overflows.
        ({"type": "string", "maxLength": 50_000}, "maxLength", "1000"),
        ({"type": "array", "items": {"type": "null"}, "minItems": 5000}, "minItems", "1000"),
        ({"type": "string", "pattern": "^a{1,50000}$"}, "pattern", "1000"),
        (
            {"$defs": {"D": {"type": "integer", "maximum": 3}}, "type": "string"},
            "$defs.D.maximum",
            "",
        ),
    ],
)
def test_what_the_grammar_would_not_enforce_is_refused(
    schema: dict[str, Any], path: str, word: str
) -> None:
    with pytest.raises(grammars.SchemaError) as err:
        grammars.check(schema)
    assert err.value.path == path
    assert word in str(err.value)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(2000):
        schema = {"type": "object", "properties": {"a": schema}}
    with pytest.raises(grammars.SchemaError, match="nested too deeply"):
        grammars.check(schema)


def test_json_strings_cannot_hold_raw_control_characters() -> None:
    grammar = grammars.json_object_grammar()
    (char,) = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert r"\x00-\x1F" in char


def test_two_tools_with_same_named_defs_keep_their_own() -> None:
    def tool(name: str, kind: str) -> dict[str, Any]:
        params = {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/Item"}},
            "required": ["x"],
            "$defs": {"Item": {"type": kind}},
        }
        return {"type": "function", "function": {"name": name, "parameters": params}}

    plan = tools.plan(
        ToolFormat.HERMES,
        [tool("a", "integer"), tool("b", "boolean")],
        "required",
        parallel=False,
        answer=None,
    )
    assert plan.grammar is not None
    rules = dict(line.split(" ::= ", 1) for line in plan.grammar.strip().splitlines())
    assert rules["call-0-arguments-x"] == "integer"
    assert rules["call-1-arguments-x"] == "boolean"


# ---- the grammars, run by llama.cpp on a random model -----------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from llama_cpp import Llama

    path = write_tiny_llama(tmp_path_factory.mktemp("m") / "m.gguf", chat_template=None)
    model = Llama(str(path), n_ctx=2048, n_threads=1, verbose=False)
    yield model
    model.close()


def generate(llama: Any, grammar: str, seed: int) -> tuple[str, str]:
    from llama_cpp.llama_grammar import LlamaGrammar

    out = llama.create_completion(
        "x",
        grammar=LlamaGrammar.from_string(grammar),
        max_tokens=600,
        temperature=1.0,
        seed=seed,
    )
    choice = out["choices"][0]
    return choice["text"], choice["finish_reason"]


@pytest.mark.parametrize("seed", range(4))
def test_a_random_model_writes_json_valid_under_the_schema(llama: Any, seed: int) -> None:
    schema = Person.model_json_schema()
    text, finish = generate(llama, grammars.schema_grammar(schema), seed)
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)
    Person.model_validate_json(text)


@pytest.mark.parametrize("seed", range(3))
def test_a_random_model_writes_json_objects(llama: Any, seed: int) -> None:
    text, finish = generate(llama, grammars.json_object_grammar(), seed)
    if finish == "stop":  # an unbounded object may run to max_tokens
        assert isinstance(json.loads(text), dict)


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "unit": {"enum": ["C", "F"]},
            },
            "required": ["city", "unit"],
        },
    },
}


@pytest.mark.parametrize("fmt", list(ToolFormat))
def test_a_random_model_writes_calls_that_parse(llama: Any, fmt: ToolFormat) -> None:
    plan = tools.plan(fmt, [WEATHER], "required", parallel=False, answer=None)
    assert plan.grammar is not None
    text, finish = generate(llama, plan.grammar, 1)
    assert finish == "stop", text
    parser = tools.CallParser(fmt, plan.names)
    content, calls = tools.collect(parser.feed(text) + parser.finish())
    assert content is None and len(calls) == 1, text
    args = json.loads(calls[0]["function"]["arguments"])
    jsonschema.validate(args, WEATHER["function"]["parameters"])


def test_an_auto_answer_is_a_call_or_the_schema(llama: Any) -> None:
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    plan = tools.plan(ToolFormat.HERMES, [WEATHER], "auto", parallel=False, answer=answer)
    assert plan.grammar is not None and plan.triggers == ()  # eager: either one, from the start
    for seed in range(3):
        text, _ = generate(llama, plan.grammar, seed)
        parser = tools.CallParser(ToolFormat.HERMES, plan.names)
        content, calls = tools.collect(parser.feed(text) + parser.finish())
        if not calls:
            jsonschema.validate(json.loads(content or ""), answer)


def test_the_grammar_paths_use_llama_cpp_parser(tmp_path: Path) -> None:
    """Every kind of grammar built here parses in llama.cpp (a non-null sampler)."""
    import llama_cpp

    path = write_tiny_llama(tmp_path / "m.gguf", chat_template=None)
    model = llama_cpp.llama_model_load_from_file(
        str(path).encode(), llama_cpp.llama_model_default_params()
    )
    vocab = llama_cpp.llama_model_get_vocab(model)
    try:
        built = [
            grammars.json_object_grammar(),
            grammars.schema_grammar(Person.model_json_schema()),
            grammars.schema_grammar({"type": "string", "maxLength": grammars.MAX_REPEAT}),
            grammars.schema_grammar({"type": "string", "pattern": "^a{2,1000}$"}),
            *(
                tools.plan(
                    fmt, [WEATHER], choice, named="get_weather", parallel=True, answer={}
                ).grammar
                for fmt in ToolFormat
                for choice in ("auto", "required", "named")
            ),
        ]
        for g in built:
            assert g is not None
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, g.encode(), b"root")
            assert sampler, g
            llama_cpp.llama_sampler_free(sampler)
        for fmt in ToolFormat:  # tool_choice auto: lazy, from the format's trigger
            lazy = tools.plan(fmt, [WEATHER], "auto", parallel=True, answer=None)
            assert lazy.grammar is not None and len(lazy.triggers) == 1
            patterns = (ctypes.c_char_p * 1)(lazy.triggers[0].encode())
            sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                vocab, lazy.grammar.encode(), b"root", patterns, 1, None, 0
            )
            assert sampler, fmt
            llama_cpp.llama_sampler_free(sampler)
    finally:
        llama_cpp.llama_model_free(model)
