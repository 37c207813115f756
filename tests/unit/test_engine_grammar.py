"""Grammar-constrained generation: eager, lazy (triggered), JSON schemas, invalid grammars."""

from __future__ import annotations

import json
import re

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from cairn.inference.llama_engine import InvalidGrammar, LlamaEngine
from cairn.inference.types import FinishReason, SamplingParams
from tests.unit.test_llama_engine import PROMPTS, MakeEngine, make_engine, model_path, run

__all__ = ["make_engine", "model_path"]  # fixtures, used by name

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "ok", "tags"],
    "additionalProperties": False,
}


@pytest.fixture
def engine(make_engine: MakeEngine) -> LlamaEngine:
    return make_engine()


@pytest.mark.parametrize("seed", range(5))
async def test_json_schema_output_always_parses_and_validates(
    engine: LlamaEngine, seed: int
) -> None:
    grammar = json_schema_to_gbnf(json.dumps(SCHEMA))
    # llama-cpp-python's converter lets raw control characters into strings, which strict
    # JSON forbids (llama.cpp's own converter does not): close that hole.
    loose = 'char ::= [^"\\\\]'
    assert loose in grammar
    grammar = grammar.replace(loose, 'char ::= [^"\\\\\\x7F\\x00-\\x1F]')
    params = SamplingParams(max_tokens=None, temperature=1.0, seed=seed, grammar=grammar)
    got = await run(engine, PROMPTS[seed % len(PROMPTS)], params)
    value = json.loads(got.text)
    assert set(value) == {"name", "age", "ok", "tags"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 6
    assert isinstance(value["age"], int) and isinstance(value["ok"], bool)
    assert set(value["tags"]) <= {"a", "b"} and len(value["tags"]) <= 3
    # The grammar, once complete, allows only end-of-generation: the request ends there.
    assert got.final.finish_reason is FinishReason.STOP


async def test_greedy_output_follows_the_grammar_and_ends_with_it(engine: LlamaEngine) -> None:
    params = SamplingParams(max_tokens=64, temperature=0.0, grammar='root ::= "yes" | "no"')
    got = await run(engine, PROMPTS[0], params)
    assert got.text in {"yes", "no"}
    assert got.final.finish_reason is FinishReason.STOP


async def test_grammar_and_logit_bias_together(engine: LlamaEngine) -> None:
    # The bias pushes towards "n"; the grammar still decides what is possible.
    grammar = 'root ::= ("yes" | "no") " " [0-9] [0-9]'
    params = SamplingParams(
        max_tokens=64, temperature=0.0, grammar=grammar, logit_bias=((ord("n"), 50.0),)
    )
    got = await run(engine, PROMPTS[1], params)
    assert re.fullmatch(r"no [0-9]{2}", got.text)


async def test_a_lazy_grammar_constrains_only_after_its_trigger(engine: LlamaEngine) -> None:
    free = await run(engine, PROMPTS[2], SamplingParams(max_tokens=64, temperature=0.0))
    # Trigger on the first ASCII letter the free output has after a few tokens of free text.
    at, letter = next(
        (i, chr(t)) for i, t in enumerate(free.token_ids) if i >= 3 and chr(t).isalpha()
    )
    lazy = SamplingParams(
        max_tokens=64,
        temperature=0.0,
        grammar=f'root ::= "{letter}" "=" [0-9] [0-9] [0-9]',
        grammar_triggers=(rf"[\s\S]*?({letter}[\s\S]*)",),
    )
    got = await run(engine, PROMPTS[2], lazy)
    prefix = bytes(free.token_ids[: at + 1])
    assert bytes(got.token_ids[: at + 1]) == prefix  # unconstrained until the trigger
    assert re.fullmatch(rb"=[0-9]{3}", bytes(got.token_ids[at + 1 :]))
    assert got.final.finish_reason is FinishReason.STOP


@pytest.mark.parametrize(
    ("grammar", "triggers"),
    [
        ('root ::= "unterminated', ()),
        ('root ::= "a" | undefined_rule', ()),
        ('start ::= "a"', ()),  # no root rule
        ('root ::= "a"', ("([unclosed",)),
        ('root ::= "a"', ("(?P<name>a)",)),  # Python-only syntax: std::regex would abort
    ],
)
async def test_an_invalid_grammar_is_a_value_error_and_the_engine_goes_on(
    engine: LlamaEngine, grammar: str, triggers: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidGrammar) as caught:
        await run(engine, "x", SamplingParams(grammar=grammar, grammar_triggers=triggers))
    assert isinstance(caught.value, ValueError)
    assert (
        await run(engine, "x", SamplingParams(max_tokens=4, temperature=0))
    ).final.completion_tokens == 4
