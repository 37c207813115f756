"""The llama engine honours every sampling field: biases, penalties, truncation, logprobs."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import llama_cpp
import pytest

from cairn.inference.llama_engine import LlamaEngine
from cairn.inference.types import SamplingParams
from tests.unit.test_llama_engine import PROMPTS, MakeEngine, make_engine, model_path, run

__all__ = ["make_engine", "model_path"]  # fixtures, used by name

GREEDY = SamplingParams(max_tokens=48, temperature=0.0)
SEEDED = SamplingParams(max_tokens=48, temperature=1.0, top_p=1.0, seed=7)


def distinct_ratio(ids: list[int]) -> float:
    return len(set(ids)) / len(ids)


@pytest.fixture
def engine(make_engine: MakeEngine) -> LlamaEngine:
    return make_engine()


@pytest.mark.parametrize("base", [GREEDY, SEEDED], ids=["greedy", "seeded"])
async def test_a_large_positive_bias_forces_a_token(
    engine: LlamaEngine, base: SamplingParams
) -> None:
    z = ord("z")  # byte vocabulary: token id == byte value
    plain = await run(engine, PROMPTS[0], base)
    assert set(plain.token_ids) != {z}
    biased = replace(base, logit_bias=((z, 100.0),))
    got = await run(engine, PROMPTS[0], biased)
    assert got.token_ids == [z] * 48
    assert got.text == "z" * 48


@pytest.mark.parametrize("base", [GREEDY, SEEDED], ids=["greedy", "seeded"])
async def test_a_large_negative_bias_bans_tokens(engine: LlamaEngine, base: SamplingParams) -> None:
    plain = await run(engine, PROMPTS[0], base)
    banned = tuple((t, -100.0) for t in set(plain.token_ids[:8]))
    got = await run(engine, PROMPTS[0], replace(base, logit_bias=banned))
    assert len(got.token_ids) == 48
    assert not {t for t, _ in banned} & set(got.token_ids)


async def test_a_bias_for_a_token_outside_the_vocabulary_is_refused(engine: LlamaEngine) -> None:
    with pytest.raises(ValueError, match="logit_bias names token 999"):
        await run(engine, "x", SamplingParams(logit_bias=((999, 1.0),)))


@pytest.mark.parametrize(
    "penalty",
    [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repeat_penalty": 1.8}],
    ids=["frequency", "presence", "repeat"],
)
async def test_penalties_make_greedy_output_repeat_less(
    engine: LlamaEngine, penalty: dict[str, Any]
) -> None:
    long = SamplingParams(max_tokens=64, temperature=0.0)
    plain = await run(engine, "aaaa", long)
    got = await run(engine, "aaaa", replace(long, **penalty))
    assert distinct_ratio(got.token_ids) > distinct_ratio(plain.token_ids)
    # A negative frequency penalty rewards repetition instead.
    if "frequency_penalty" in penalty:
        more = replace(long, frequency_penalty=-2.0)
        again = await run(engine, "aaaa", more)
        assert distinct_ratio(again.token_ids) < distinct_ratio(plain.token_ids)


async def test_penalty_window_zero_turns_penalties_off(engine: LlamaEngine) -> None:
    plain = await run(engine, "aaaa", GREEDY)
    off = replace(GREEDY, frequency_penalty=2.0, penalty_last_n=0)
    assert (await run(engine, "aaaa", off)).token_ids == plain.token_ids


@pytest.mark.parametrize(
    "narrow", [{"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-9}], ids=["top_k", "min_p", "top_p"]
)
async def test_truncation_to_one_candidate_is_greedy(
    engine: LlamaEngine, narrow: dict[str, Any]
) -> None:
    greedy = await run(engine, PROMPTS[2], GREEDY)
    wide = await run(engine, PROMPTS[2], SEEDED)
    assert wide.token_ids != greedy.token_ids
    got = await run(engine, PROMPTS[2], replace(SEEDED, **narrow))
    assert got.token_ids == greedy.token_ids


async def test_top_k_narrows_what_a_seed_can_draw(engine: LlamaEngine) -> None:
    # Over many seeded draws, top_k=2 only ever picks one of the two greediest first tokens.
    firsts = set()
    for seed in range(12):
        p = SamplingParams(max_tokens=1, temperature=5.0, top_p=1.0, top_k=2, seed=seed)
        firsts.add((await run(engine, PROMPTS[1], p)).token_ids[0])
    wide = set()
    for seed in range(12):
        p = SamplingParams(max_tokens=1, temperature=5.0, top_p=1.0, seed=seed)
        wide.add((await run(engine, PROMPTS[1], p)).token_ids[0])
    assert len(firsts) <= 2 < len(wide)


async def test_logprobs_ride_with_the_text_of_their_tokens(engine: LlamaEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0, logprobs=3)
    chunks = [c async for c in engine.generate(PROMPTS[0], params)]
    ids = [t for c in chunks for t in c.token_ids]
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert len(logprobs) == len(ids) == 24
    for chunk in chunks:
        assert len(chunk.logprobs) == len(chunk.token_ids)
    for token, lp in zip(ids, logprobs, strict=True):
        assert lp.bytes == (token,)  # byte vocabulary
        assert len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.top[0].bytes == lp.bytes and lp.top[0].logprob == lp.logprob  # greedy: the top
        assert sum(math.exp(t.logprob) for t in lp.top) <= 1.0 + 1e-6


async def test_logprobs_match_llama_cpp_python(engine: LlamaEngine, model_path: str) -> None:
    llm = llama_cpp.Llama(model_path, n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    try:
        out = llm(PROMPTS[0], max_tokens=6, temperature=0.0, logprobs=2)["choices"][0]  # type: ignore[index]
    finally:
        llm.close()
    expected = out["logprobs"]["token_logprobs"]  # type: ignore[index]
    got = await run(engine, PROMPTS[0], SamplingParams(max_tokens=6, temperature=0.0, logprobs=2))
    chunks_lp = [lp.logprob for lp in got.logprobs]
    # Its own batch shapes round differently in the last float32 bits.
    assert chunks_lp == pytest.approx(expected, abs=5e-3)


async def test_logprobs_of_held_back_tokens_come_with_their_text(engine: LlamaEngine) -> None:
    full = await run(engine, PROMPTS[0], SamplingParams(max_tokens=40, temperature=0))
    stop = full.text[20:23]
    got = await run(
        engine,
        PROMPTS[0],
        SamplingParams(max_tokens=40, temperature=0, stop=(stop,), logprobs=0),
    )
    # Tokens of the cut stop string carry their logprobs in the final chunk, as their ids do.
    assert len(got.logprobs) == got.final.completion_tokens == len(got.token_ids)
    assert all(lp.top == () for lp in got.logprobs)


async def test_no_logprobs_unless_asked(engine: LlamaEngine) -> None:
    got = await run(engine, PROMPTS[0], GREEDY)
    assert got.logprobs == []
