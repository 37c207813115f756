"""The batched llama engine against a generated tiny GGUF: batching, queueing, stops, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import pytest

from cairn.inference.demo_gguf import write_tiny_llama
from cairn.inference.llama_engine import LlamaEngine, _TextStream
from cairn.inference.types import (
    Chunk,
    FinishReason,
    ModelLoadError,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    TokenLogprob,
    TooManyTokens,
)

GREEDY = SamplingParams(max_tokens=32, temperature=0.0)
MakeEngine = Callable[..., LlamaEngine]
PROMPTS = ["The quick brown fox", "x", "Lorem ipsum dolor sit amet, consectetur", "42"]


@dataclass
class Result:
    text: str
    token_ids: list[int]
    final: Chunk
    logprobs: list[TokenLogprob]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


@pytest.fixture
def make_engine(model_path: str) -> Iterator[MakeEngine]:
    engines: list[LlamaEngine] = []

    def make(**kwargs: int) -> LlamaEngine:
        opts = {"n_ctx": 2048, "n_threads": 2, "slots": 4, "queue_limit": 4} | kwargs
        engine = LlamaEngine(model_path, **opts)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine: MakeEngine) -> LlamaEngine:
    return make_engine()


async def run(engine: LlamaEngine, prompt: str, params: SamplingParams = GREEDY) -> Result:
    parts: list[str] = []
    ids: list[int] = []
    logprobs: list[TokenLogprob] = []
    async for chunk in engine.generate(prompt, params):
        parts.append(chunk.text)
        ids.extend(chunk.token_ids)
        logprobs.extend(chunk.logprobs)
        last = chunk
    return Result("".join(parts), ids, last, logprobs)


async def wait_for_event(event: asyncio.Event, *tasks: asyncio.Task[object]) -> None:
    """Wait for event; a task that ends first (with an engine error, say) fails the test."""
    waiter = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for task in done:
            task.result()
        raise AssertionError("a task ended before the event was set")


async def test_greedy_matches_llama_cpp_python(engine: LlamaEngine, model_path: str) -> None:
    llm = llama_cpp.Llama(model_path, n_ctx=512, n_threads=2, verbose=False)
    try:
        expected = llm(PROMPTS[0], max_tokens=32, temperature=0.0)["choices"][0]["text"]  # type: ignore[index]
    finally:
        llm.close()
    got = await run(engine, PROMPTS[0])
    assert got.text == expected
    assert got.final.finish_reason is FinishReason.LENGTH
    assert got.final.completion_tokens == 32
    assert len(got.token_ids) == 32
    assert got.final.prompt_tokens == len(PROMPTS[0]) + 1  # BOS, then one token per byte


async def test_batching_does_not_change_output(engine: LlamaEngine) -> None:
    # Four prompts of different lengths, one of them sampled with a seed; each alone first.
    params = [GREEDY, GREEDY, SamplingParams(max_tokens=40, temperature=0.9, seed=3), GREEDY]
    solo = [await run(engine, p, sp) for p, sp in zip(PROMPTS, params, strict=True)]
    # Then all at once, in reverse order so that each lands in another seq_id than alone.
    together = await asyncio.gather(*(run(engine, PROMPTS[i], params[i]) for i in (3, 2, 1, 0)))
    for alone, batched in zip(solo, reversed(together), strict=True):
        assert batched.token_ids == alone.token_ids
        assert batched.text == alone.text


async def test_joining_a_running_batch_does_not_change_greedy_output(
    engine: LlamaEngine,
) -> None:
    solo = await run(engine, PROMPTS[2])
    started = asyncio.Event()

    async def neighbour(prompt: str) -> None:
        async for _ in engine.generate(prompt, SamplingParams(max_tokens=60, temperature=0)):
            started.set()

    tasks = [asyncio.create_task(neighbour(p)) for p in PROMPTS[:2]]
    await wait_for_event(started, *tasks)
    # They are generating: our prompt is decoded in the same batches as their tokens.
    late = await run(engine, PROMPTS[2])
    await asyncio.gather(*tasks)
    assert late.token_ids == solo.token_ids


async def test_prompt_chunking_does_not_change_output(make_engine: MakeEngine) -> None:
    long_prompt = "A longer prompt that takes several batches. " * 3
    reference = await run(make_engine(), long_prompt)
    small_batches = make_engine(n_batch=8)
    together = await asyncio.gather(run(small_batches, long_prompt), run(small_batches, "zz"))
    assert together[0].token_ids == reference.token_ids


async def test_four_requests_overlap_in_time(engine: LlamaEngine) -> None:
    arrivals: list[int] = []
    most_active = 0

    async def consume(i: int) -> None:
        nonlocal most_active
        async for _ in engine.generate(PROMPTS[i], SamplingParams(max_tokens=48, temperature=0)):
            arrivals.append(i)
            most_active = max(most_active, engine.stats().active or 0)

    await asyncio.gather(*(consume(i) for i in range(4)))
    assert most_active == 4
    spans = {i: (arrivals.index(i), len(arrivals) - 1 - arrivals[::-1].index(i)) for i in range(4)}
    for i in range(4):
        for j in range(4):
            # Each request's stream starts before every other one ends: they interleave.
            assert spans[i][0] < spans[j][1], arrivals


async def test_full_queue_refuses_at_once_and_the_queued_one_runs_next(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(slots=1, queue_limit=1)
    order: list[str] = []

    async def consume(name: str, gen: AsyncGenerator[Chunk, None]) -> Chunk:
        async for chunk in gen:
            order.append(name)
            last = chunk
        return last

    first = engine.generate("a", SamplingParams(max_tokens=None, temperature=0))
    await first.__anext__()  # "first" holds the only slot, and keeps it until closed
    order.append("first")
    second = asyncio.create_task(consume("second", engine.generate("b", GREEDY)))
    await asyncio.sleep(0)  # one loop turn: generate() enqueues before its first await
    assert engine.stats().queued == 1

    third = engine.generate("c", GREEDY)
    with pytest.raises(QueueFull):
        await third.__anext__()
    assert not second.done()

    await first.aclose()
    last_of_second = await second
    assert order[0] == "first" and set(order[1:]) == {"second"}
    assert last_of_second.completion_tokens == GREEDY.max_tokens
    assert last_of_second.timings is not None and last_of_second.timings.queue > 0
    stats = engine.stats()
    assert (stats.requests_total, stats.active, stats.queued) == (2, 0, 0)


async def test_queued_requests_run_in_arrival_order(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1, queue_limit=2)
    order: list[str] = []

    async def consume(name: str) -> None:
        async for _ in engine.generate(name, SamplingParams(max_tokens=8, temperature=0)):
            order.append(name)

    busy = engine.generate("a", SamplingParams(max_tokens=None, temperature=0))
    await busy.__anext__()
    tasks = []
    for name in ("b", "c"):
        tasks.append(asyncio.create_task(consume(name)))
        await asyncio.sleep(0)  # one loop turn: enqueued, in this order
    assert engine.stats().queued == 2
    await busy.aclose()
    await asyncio.gather(*tasks)
    assert order == ["b"] * 9 + ["c"] * 9  # 8 text chunks and the final one, each


async def test_max_tokens_ends_with_length(engine: LlamaEngine) -> None:
    got = await run(engine, "abc", SamplingParams(max_tokens=5, temperature=0))
    assert got.final.finish_reason is FinishReason.LENGTH
    assert got.final.completion_tokens == 5
    assert len(got.token_ids) == 5
    assert got.final.text == ""
    timings = got.final.timings
    assert timings is not None and timings.prompt > 0 and timings.generation > 0


async def test_stop_sequence_is_cut_and_ends_with_stop(engine: LlamaEngine) -> None:
    full = await run(engine, PROMPTS[0], SamplingParams(max_tokens=40, temperature=0))
    stop = full.text[20:23]
    expected = full.text[: full.text.find(stop)]
    got = await run(
        engine, PROMPTS[0], SamplingParams(max_tokens=40, temperature=0, stop=("\x00never", stop))
    )
    assert got.text == expected
    assert stop not in got.text
    assert got.final.finish_reason is FinishReason.STOP
    assert got.final.completion_tokens < 40


async def test_context_limit_ends_with_length(make_engine: MakeEngine) -> None:
    engine = make_engine(n_ctx=256, slots=1)
    assert engine.n_ctx_seq == 256
    prompt = "p" * 200
    got = await run(engine, prompt, SamplingParams(max_tokens=None, temperature=0))
    assert got.final.finish_reason is FinishReason.LENGTH
    assert got.final.prompt_tokens + got.final.completion_tokens == engine.n_ctx_seq
    with pytest.raises(PromptTooLong):
        await run(engine, "p" * 300)


async def test_max_tokens_beyond_the_slot_is_refused_naming_the_numbers(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(n_ctx=256, slots=1)
    # 200 bytes + BOS = 201 prompt tokens; 55 more fill the slot exactly.
    got = await run(engine, "p" * 200, SamplingParams(max_tokens=55, temperature=0))
    assert got.final.completion_tokens == 55
    with pytest.raises(TooManyTokens, match=r"201 tokens.*max_tokens is 56.*257.*256"):
        await run(engine, "p" * 200, SamplingParams(max_tokens=56, temperature=0))
    assert (await run(engine, "ok")).final.completion_tokens == GREEDY.max_tokens


async def test_same_seed_same_sample_other_seed_other_sample(engine: LlamaEngine) -> None:
    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=48, temperature=1.0, top_p=0.9, seed=seed)

    a, b, c = await asyncio.gather(
        run(engine, "s", params(1)), run(engine, "s", params(1)), run(engine, "s", params(2))
    )
    greedy = await run(engine, "s", SamplingParams(max_tokens=48, temperature=0))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert a.token_ids != greedy.token_ids


@pytest.mark.parametrize("how", ["aclose", "task_cancel"])
async def test_cancel_frees_the_slot_and_its_kv_cells(make_engine: MakeEngine, how: str) -> None:
    engine = make_engine(slots=1, queue_limit=0)
    fresh = await run(engine, PROMPTS[2])
    gen = engine.generate(PROMPTS[0], SamplingParams(max_tokens=None, temperature=0))
    if how == "aclose":
        first = await gen.__anext__()
        assert first.finish_reason is None
        assert engine.stats().active == 1
        await gen.aclose()
    else:
        got_one = asyncio.Event()

        async def consume() -> None:
            async with contextlib.aclosing(gen):
                async for _ in gen:
                    got_one.set()

        task = asyncio.create_task(consume())
        await wait_for_event(got_one, task)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = engine.stats()
    assert (stats.active, stats.cancelled_total) == (0, 1)
    assert stats.completion_tokens_total is not None and stats.completion_tokens_total < 500
    # Same seq_id again: leftover KV cells would shift positions or leak into attention.
    again = await run(engine, PROMPTS[2])
    assert again.token_ids == fresh.token_ids


async def test_cancel_while_queued_leaves_the_queue(make_engine: MakeEngine) -> None:
    engine = make_engine(slots=1, queue_limit=1)
    busy = engine.generate("a", SamplingParams(max_tokens=None, temperature=0))
    await busy.__anext__()
    queued = asyncio.create_task(run(engine, "b"))
    await asyncio.sleep(0)  # one loop turn: generate() enqueues before its first await
    assert engine.stats().queued == 1
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert engine.stats().queued == 0
    await busy.aclose()
    assert (await run(engine, "c")).final.completion_tokens == GREEDY.max_tokens


def test_corrupt_file_is_a_load_error_with_a_reason(tmp_path: Path, model_path: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="invalid magic"):
        LlamaEngine(str(bad), n_ctx=256, n_threads=1)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(Path(model_path).read_bytes()[:100_000])
    with pytest.raises(ModelLoadError, match="corrupted or incomplete"):
        LlamaEngine(str(truncated), n_ctx=256, n_threads=1)
    with pytest.raises(ModelLoadError, match="no such file"):
        LlamaEngine(str(tmp_path / "missing.gguf"), n_ctx=256, n_threads=1)
    # The process is fine: a good model still loads afterwards.
    LlamaEngine(model_path, n_ctx=256, n_threads=1).close()


def test_chat_prompt_applies_the_gguf_template(engine: LlamaEngine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert engine.chat_template.render(messages) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    )


def test_chat_prompt_without_template_uses_role_lines(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "plain.gguf", chat_template=None)
    engine = LlamaEngine(str(path), n_ctx=256, n_threads=1)
    try:
        assert (
            engine.chat_template.render([{"role": "user", "content": "Hi"}])
            == "user: Hi\nassistant:"
        )
    finally:
        engine.close()


def test_attributes_report_the_layout(engine: LlamaEngine) -> None:
    assert (engine.slots, engine.n_threads, engine.n_ctx) == (4, 2, 2048)
    assert engine.n_ctx_seq == 2048 // 4
    assert engine.gpu_offload is False  # n_gpu_layers=0: nothing offloaded, whatever the build


async def test_stats_count_tokens_and_rate(engine: LlamaEngine) -> None:
    got = await run(engine, "abc", SamplingParams(max_tokens=7, temperature=0))
    stats = engine.stats()
    assert stats.prompt_tokens_total == got.final.prompt_tokens == 4
    assert stats.cached_tokens_total == got.final.cached_tokens == 0
    assert stats.completion_tokens_total == 7
    assert stats.requests_total == 1
    assert stats.tokens_per_second is not None and stats.tokens_per_second > 0


def test_text_stream_holds_back_partial_utf8() -> None:
    stream = _TextStream(())
    assert stream.feed(b"a\xc3") == "a"
    assert stream.feed(b"\xa9") == "é"
    assert stream.feed(b"\xff") == "\ufffd"  # invalid bytes become U+FFFD, they do not stall
    assert stream.feed(b"\xe2\x82") == ""
    assert stream.finish() == "\ufffd"  # a sequence cut off by the end


def test_text_stream_holds_back_a_possible_stop_and_cuts_a_real_one() -> None:
    stream = _TextStream(("END",))
    assert stream.feed(b"abE") == "ab"
    assert stream.feed(b"N") == ""
    assert stream.feed(b"x") == "ENx"  # not a stop after all: released
    assert stream.feed(b"yEN") == "y"
    assert stream.feed(b"Dzz") == ""
    assert stream.stopped


def test_text_stream_flushes_a_held_prefix_at_the_end() -> None:
    stream = _TextStream(("END",))
    assert stream.feed(b"okEN") == "ok"
    assert stream.finish() == "EN"
    assert not stream.stopped


async def test_a_hung_decode_shows_as_stalled_work(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine()
    assert engine.stats().stalled_seconds == 0.0  # idle is not stalled
    await run(engine, "warm")  # a long idle gap before the hang must not count as stalled
    release = threading.Event()
    real = llama_cpp.llama_decode

    def hung(ctx: object, batch: object) -> int:
        release.wait(30)
        return int(real(ctx, batch))

    monkeypatch.setattr(llama_cpp, "llama_decode", hung)
    task = asyncio.create_task(run(engine, PROMPTS[0]))
    await asyncio.sleep(0.3)
    first = engine.stats()
    assert (first.active, first.queued) in ((1, 0), (0, 1))
    stalled = first.stalled_seconds
    assert stalled is not None and 0.2 <= stalled < 5
    await asyncio.sleep(0.5)
    later = engine.stats().stalled_seconds
    assert later is not None and later >= stalled + 0.4
    monkeypatch.setattr(llama_cpp, "llama_decode", real)
    release.set()
    assert len((await task).token_ids) == 32
    assert engine.stats().stalled_seconds == 0.0
