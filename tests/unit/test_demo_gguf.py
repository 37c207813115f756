"""The generated demo GGUF: llama.cpp loads it, it is deterministic, its size is as documented."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from cairn.inference import demo
from cairn.inference.demo_gguf import (
    BOS_ID,
    CHAT_TEMPLATE,
    SPACE_ID,
    VOCAB_SIZE,
    parameter_count,
    write_tiny_llama,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llm(tiny: Path) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(str(tiny), n_ctx=256, n_threads=2, verbose=False)
    yield model
    model.close()


def test_loads_in_llama_cpp_with_byte_vocab(llm: llama_cpp.Llama) -> None:
    assert llm.n_vocab() == VOCAB_SIZE
    # BOS, then one token per byte (token id == byte value); a space is SentencePiece's "▁".
    assert llm.tokenize("hi é".encode()) == [BOS_ID, 104, 105, SPACE_ID, 0xC3, 0xA9]
    assert llm.detokenize([104, 105, SPACE_ID, 0xC3, 0xA9]).decode() == "hi é"


def test_carries_the_chat_template(llm: llama_cpp.Llama) -> None:
    assert llm.metadata["tokenizer.chat_template"] == CHAT_TEMPLATE


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt as llama-cpp-python's sandboxed Jinja formatter renders the demo template."""
    formatter = Jinja2ChatFormatter(template=CHAT_TEMPLATE, eos_token="</s>", bos_token="<s>")
    return str(formatter(messages=messages, tools=tools).prompt)  # type: ignore[arg-type]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city <now>",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def test_template_without_tools_renders_plain_turns() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    want = "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert render(messages) == want
    assert render(messages, tools=[]) == want
    assert "<tools>" not in render(messages, tools=None)


def test_template_offers_tools_as_json_lines_in_the_system_turn() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = render(messages, tools=[WEATHER, CLOCK])
    system, rest = prompt.split("<|end|>\n", 1)
    assert system.startswith("<|system|>\nBe brief.\n")  # the caller's system text comes first
    block = re.search(r"<tools>\n(.*)\n</tools>", system, re.S)
    assert block is not None
    assert [json.loads(line) for line in block[1].split("\n")] == [WEATHER, CLOCK]
    assert '<tool_call>\n{"name": <function name>, "arguments": <arguments object>}' in system
    assert rest == "<|user|>\nHi<|end|>\n<|assistant|>\n"  # the system message is not repeated


def test_template_offers_tools_without_a_system_message() -> None:
    prompt = render([{"role": "user", "content": "Hi"}], tools=[CLOCK])
    assert prompt.startswith("<|system|>\n# Tools\n")
    assert prompt.endswith("</tool_call><|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n")


def test_template_renders_a_tool_loop() -> None:
    oslo = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    calls = [
        {"id": "c1", "type": "function", "function": oslo},  # OpenAI's shape: a JSON string
        # arguments as an object (what other templates' callers pass), no `function` wrapper
        {"name": "get_weather", "arguments": {"city": "Bergen"}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "assistant", "content": "Sunny, then rain."},
        {"role": "user", "content": "Thanks"},
    ]
    prompt = render(messages, tools=[WEATHER])
    turns = prompt.split("</tools>", 1)[1].split("<|end|>\n")[1:]
    assert turns == [
        "<|user|>\nWeather?",
        '<|assistant|>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n'
        "</tool_call>",
        "<|user|>\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n"
        "</tool_response>",
        "<|assistant|>\nSunny, then rain.",
        "<|user|>\nThanks",
        "<|assistant|>\n",
    ]
    for call in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", prompt.split("</tools>")[1]):
        assert json.loads(call)["name"] == "get_weather"


def test_template_puts_text_before_calls_in_one_turn() -> None:
    call = {"type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    prompt = render(
        [{"role": "assistant", "content": "Let me look.", "tool_calls": [call]}], tools=[CLOCK]
    )
    assert prompt.endswith(
        '<|assistant|>\nLet me look.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n'
        "</tool_call><|end|>\n<|assistant|>\n"
    )


def test_demo_node_slots_hold_2048_tokens_each() -> None:
    chat = next(m for m in demo.models(Path("/models")) if m.name == demo.CHAT)
    assert chat.slots >= 2
    assert chat.context // chat.slots >= 2048


def test_greedy_text_is_printable_ascii(llm: llama_cpp.Llama) -> None:
    out = llm("Once upon a time", max_tokens=64, temperature=0.0)
    text = out["choices"][0]["text"]  # type: ignore[index]
    assert len(text) == 64  # neither EOS nor a multi-byte character cut it short
    assert all(c == "\n" or " " <= c <= "~" for c in text)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_llama(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_llama(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c
    assert len(a) == len(c)


@pytest.mark.parametrize(
    ("layers", "dim", "heads", "ff", "dtype"),
    [(2, 64, 4, None, "f32"), (3, 96, 3, 200, "f16")],
)
def test_parameter_count_formula_matches_llama_cpp(
    tmp_path: Path, layers: int, dim: int, heads: int, ff: int | None, dtype: str
) -> None:
    path = write_tiny_llama(
        tmp_path / "m.gguf",
        layers=layers,
        dim=dim,
        heads=heads,
        ff=ff,
        dtype=dtype,  # type: ignore[arg-type]
    )
    model = llama_cpp.Llama(str(path), n_ctx=256, verbose=False)
    try:
        assert llama_cpp.llama_model_n_params(model.model) == parameter_count(
            layers=layers, dim=dim, ff=ff
        )
        assert model.metadata["llama.block_count"] == str(layers)
    finally:
        model.close()


def test_f16_halves_the_weights(tmp_path: Path) -> None:
    f32 = write_tiny_llama(tmp_path / "a.gguf", dim=128, dtype="f32").stat().st_size
    f16 = write_tiny_llama(tmp_path / "b.gguf", dim=128, dtype="f16").stat().st_size
    assert 0.45 < f16 / f32 < 0.6


def test_benchmark_size_is_about_100m() -> None:
    assert parameter_count(layers=12, dim=768) == 113_664_768


def test_rejects_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        write_tiny_llama(tmp_path / "x.gguf", dim=66, heads=4)
    with pytest.raises(ValueError, match="vocab"):
        write_tiny_llama(tmp_path / "x.gguf", vocab="bpe")  # type: ignore[arg-type]


def test_demo_files_from_an_older_generator_are_written_again(tmp_path: Path) -> None:
    (tmp_path / "demo.gguf").write_bytes(b"GGUF from an older generator")
    (tmp_path / demo.STAMP).write_text("older\n")
    demo.write(tmp_path)
    written = (tmp_path / "demo.gguf").read_bytes()
    assert written.startswith(b"GGUF") and CHAT_TEMPLATE.encode() in written
    assert (tmp_path / demo.STAMP).read_text().strip() == demo.version()


def test_current_demo_files_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo.write(tmp_path)
    files = [Path(m.path) for m in demo.models(tmp_path)]
    before = [f.stat().st_mtime_ns for f in files]
    demo.write(tmp_path)
    assert [f.stat().st_mtime_ns for f in files] == before
    spawned: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **_: spawned.append(cmd))
    demo.ensure(tmp_path)
    assert spawned == []  # nothing to generate: no child process
    (tmp_path / demo.STAMP).write_text("older\n")
    demo.ensure(tmp_path)
    assert spawned and spawned[0][-1] == str(tmp_path)
