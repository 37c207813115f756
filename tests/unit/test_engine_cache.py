"""Prompt-cache reuse: a slot keeps its KV, the next request decodes only what differs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cairn.inference.demo_gguf import write_tiny_llama
from cairn.inference.llama_engine import LlamaEngine
from cairn.inference.types import SamplingParams
from tests.unit.test_llama_engine import (
    GREEDY,
    MakeEngine,
    Result,
    make_engine,
    model_path,
    run,
)

__all__ = ["make_engine", "model_path"]  # fixtures, used by name

SEEDED = SamplingParams(max_tokens=32, temperature=0.9, seed=11)
SYSTEM = "You are a careful agent. Use the tools you are given and answer briefly. " * 3


def common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items a and b share."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


async def fresh(make_engine: MakeEngine, slots: int, prompt: str, params: SamplingParams) -> Result:
    """What a new engine of the same shape, with nothing cached, answers."""
    engine = make_engine(slots=slots)
    try:
        return await run(engine, prompt, params)
    finally:
        engine.close()


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
async def test_a_conversation_reuses_its_history_and_answers_the_same(
    make_engine: MakeEngine, params: SamplingParams
) -> None:
    engine = make_engine(slots=2)
    first_prompt = SYSTEM + "user: hello\nassistant:"
    first = await run(engine, first_prompt, params)
    second_prompt = first_prompt + first.text + "\nuser: and then?\nassistant:"
    second = await run(engine, second_prompt, params)
    # The slot holds the first prompt and every generated token but the last (never decoded);
    # the second prompt reuses as much of that as its own tokens repeat.
    held = engine.tokenize(first_prompt) + first.token_ids[:-1]
    again = engine.tokenize(second_prompt)
    assert first.final.cached_tokens == 0
    assert second.final.cached_tokens == common_prefix(held, again)
    assert second.final.cached_tokens > first.final.prompt_tokens
    assert second.token_ids == (await fresh(make_engine, 2, second_prompt, params)).token_ids
    stats = engine.stats()
    assert stats.cached_tokens_total == second.final.cached_tokens


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("cut", ["same", "prefix", "diverges"])
async def test_a_partly_cached_prompt_answers_as_a_fresh_engine(
    make_engine: MakeEngine, params: SamplingParams, cut: str
) -> None:
    engine = make_engine(slots=1)
    cached = SYSTEM + "user: what is the weather in Paris?"
    await run(engine, cached, params)
    prompt = {
        "same": cached,
        "prefix": cached[:100],
        "diverges": cached[:100] + "something else entirely, of another length",
    }[cut]
    got = await run(engine, prompt, params)
    n_prompt = got.final.prompt_tokens
    # At least the last prompt token is decoded again, for its logits.
    common = common_prefix(cached, prompt)  # one token per byte, after BOS
    assert got.final.cached_tokens == (n_prompt - 1 if cut != "diverges" else 1 + common)
    assert got.token_ids == (await fresh(make_engine, 1, prompt, params)).token_ids


async def test_a_request_goes_to_the_slot_holding_its_prefix(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=3)
    a, b = SYSTEM + "user: A", "Another conversation entirely, " * 4
    await run(engine, a, GREEDY)
    await run(engine, b, GREEDY)
    await run(engine, "x", GREEDY)  # the least recently used slots are now the other two
    got_a = await run(engine, a + " and more", GREEDY)
    got_b = await run(engine, b + " and more", GREEDY)
    # BOS + one token per byte, and maybe the start of what was generated after it.
    assert len(a) + 1 <= got_a.final.cached_tokens < len(a + " and more")
    assert len(b) + 1 <= got_b.final.cached_tokens < len(b + " and more")


async def test_a_prefix_held_by_a_busy_slot_is_copied(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=2)
    busy = engine.generate(SYSTEM + "user: one", SamplingParams(max_tokens=None, temperature=0))
    await busy.__anext__()  # slot 0 holds SYSTEM and keeps generating
    prompt = SYSTEM + "user: two"
    got = await run(engine, prompt, SEEDED)
    await busy.aclose()
    assert got.final.cached_tokens == len(SYSTEM + "user: ") + 1
    assert got.token_ids == (await fresh(make_engine, 2, prompt, SEEDED)).token_ids


async def test_concurrent_requests_decode_a_shared_prefix_once(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=4)
    prompts = [SYSTEM + f"user: question {i}" for i in range(4)]
    together = await asyncio.gather(*(run(engine, p, SEEDED) for p in prompts))
    shared = len(SYSTEM + "user: question ") + 1
    # The first one decodes the prefix; the others wait for it and copy it.
    assert sorted(r.final.cached_tokens for r in together) == [0] + [shared] * 3
    for prompt, got in zip(prompts, together, strict=True):
        assert got.token_ids == (await fresh(make_engine, 4, prompt, SEEDED)).token_ids


@pytest.fixture(scope="module")
def bigger_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = write_tiny_llama(tmp_path_factory.mktemp("gguf") / "bigger.gguf", layers=4, dim=256)
    yield str(path)
    Path(path).unlink()


async def test_reuse_makes_the_second_prompt_cheap(bigger_model: str) -> None:
    # One thread: two would spin at barriers when the machine is busy, making noise.
    engine = LlamaEngine(bigger_model, n_ctx=2048, n_threads=1, slots=1, queue_limit=0)
    engine.start()
    try:
        history = "The agent reads the file, then calls a tool and reports back. " * 22
        params = SamplingParams(max_tokens=8, temperature=0)
        first = await run(engine, history, params)
        second = await run(engine, history + first.text + " next", params)
    finally:
        engine.close()
    assert first.final.prompt_tokens > 1000
    assert second.final.cached_tokens >= first.final.prompt_tokens
    assert first.final.timings is not None and second.final.timings is not None
    # A handful of tokens decoded instead of ~1400 (one step instead of three full ones):
    # well under a fifth even on a busy machine.
    assert second.final.timings.prompt < first.final.timings.prompt / 5
